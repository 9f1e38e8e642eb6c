package console

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/support"
)

// deskServer is a console over a real queue (embedded JetStream).
func deskServer(t *testing.T, cfg Config) (*Server, *queue.Queue) {
	t.Helper()
	q, js := openQueue(t)
	// Each profile's job stream, for the replays (per-profile streams).
	if err := queue.Provision(context.Background(), js, queue.Config{Profiles: []string{"billing", "hr"}}); err != nil {
		t.Fatal(err)
	}
	cfg.PublicURL, cfg.Authority, cfg.ClientID, cfg.ClientSecret = "http://console.test", "http://127.0.0.1:1/t", "c", "x"
	cfg.Secret = []byte(strings.Repeat("s", 32))
	s, err := New(cfg, q)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, q
}

// do serves one request as the holder of cookie and returns the recorder.
func do(s *Server, c *http.Cookie, method, path string, form url.Values) *httptest.ResponseRecorder {
	var r *http.Request
	if form != nil {
		r = httptest.NewRequest(method, path, strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		r = httptest.NewRequest(method, path, nil)
	}
	if c != nil {
		r.AddCookie(c)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func putDL(t *testing.T, q *queue.Queue, dl contract.DeadLetter) {
	t.Helper()
	if err := q.DLQ.Put(context.Background(), dl); err != nil {
		t.Fatal(err)
	}
}

const invalidBody = `{"id":"inv1","from":"billing@contoso.example","to":["jane.doe@example.com","bad address"],"subject":"Invoice 7","text":"t"}`

// TestSupportPages: what support sees around a dead letter that never
// reached Graph (invalid_job): the list's error column (masked), a warning
// before replaying all of them, no message-trace advice, no "Graph 0", and
// the editor repeating the error.
func TestSupportPages(t *testing.T) {
	s, q := deskServer(t, Config{})
	ctx := context.Background()
	putDL(t, q, contract.DeadLetter{JobID: "inv1", Profile: "billing", Reason: contract.ReasonInvalidJob,
		Error: "invalid job: to[1]: \"bad address\" is not an address (next to jane.doe@example.com)", Body: []byte(invalidBody)})
	// The worker's dead_lettered event of a job that made no call carries
	// an empty Graph block.
	if err := q.Events.Publish(ctx, contract.Event{JobID: "inv1", Profile: "billing", Event: contract.EventDeadLettered, Graph: &contract.GraphInfo{},
		Error: &contract.ErrorInfo{Reason: contract.ReasonInvalidJob, Message: "invalid job"}}); err != nil {
		t.Fatal(err)
	}
	sup := s.cookieFor(t, session{Sub: "s", User: "sam@contoso.example", Roles: []string{RoleSupport}, CSRF: "tok"})

	list := do(s, sup, http.MethodGet, "/dlq", nil).Body.String()
	if !strings.Contains(list, "<th>error</th>") || !strings.Contains(list, "is not an address") {
		t.Errorf("the list has no error column:\n%s", list)
	}
	if strings.Contains(list, "jane.doe@example.com") || !strings.Contains(list, "j•••@example.com") {
		t.Error("the list's error column does not mask the recipient it quotes")
	}

	confirm := do(s, sup, http.MethodGet, "/dlq/bulk?action=replay&reason=invalid_job", nil).Body.String()
	if !strings.Contains(confirm, `id="confirm-warning"`) || !strings.Contains(confirm, "invalid_job") {
		t.Errorf("replaying all invalid_job gives no warning:\n%s", confirm)
	}
	if c := do(s, sup, http.MethodGet, "/dlq/bulk?action=purge&reason=invalid_job", nil).Body.String(); strings.Contains(c, "confirm-warning") {
		t.Error("a purge warns that a replay fails again")
	}

	job := do(s, sup, http.MethodGet, "/jobs/billing/inv1", nil).Body.String()
	if strings.Contains(job, "message trace by the header") || !strings.Contains(job, `id="no-call"`) {
		t.Errorf("a job that made no Graph call is sent to message trace:\n%s", job)
	}
	if strings.Contains(job, "Graph 0") || strings.Contains(job, `class="graph"`) {
		t.Error("the timeline shows a Graph call that was not made")
	}

	editor := do(s, sup, http.MethodPost, "/jobs/billing/inv1/edit", url.Values{"csrf": {"tok"}}).Body.String()
	if !strings.Contains(editor, `id="original-error"`) || !strings.Contains(editor, "is not an address") || strings.Contains(editor, "next to jane.doe@example.com") {
		t.Errorf("the editor does not repeat the original error (masked):\n%s", editor)
	}
}

// TestEditedReplayAuditKeepsMaskedChanges: the audit record of an edited
// replay says what changed, masked as the job page masks a job.
func TestEditedReplayAuditKeepsMaskedChanges(t *testing.T) {
	s, q := deskServer(t, Config{})
	ctx := context.Background()
	putDL(t, q, contract.DeadLetter{JobID: "inv1", Profile: "billing", Reason: contract.ReasonInvalidJob, Error: "to[1]", Body: []byte(invalidBody)})
	sup := s.cookieFor(t, session{Sub: "s", User: "sam@contoso.example", Roles: []string{RoleSupport}, CSRF: "tok"})
	w := do(s, sup, http.MethodPost, "/jobs/billing/inv1/edit", url.Values{"csrf": {"tok"}, "op": {"replay"},
		"from": {"billing@contoso.example"}, "to": {"jane.doe@example.com\nrobert@fabrikam.example"}, "subject": {"Invoice 7"}, "text": {"t"}})
	if w.Code != http.StatusSeeOther {
		t.Fatalf("edit and replay: %d\n%s", w.Code, w.Body)
	}
	recs, err := q.Audit.ForJob(ctx, "billing", "inv1")
	if err != nil {
		t.Fatal(err)
	}
	var edited *queue.AuditRecord
	for i := range recs {
		if recs[i].Action == queue.AuditReplayEdited {
			edited = &recs[i]
		}
	}
	if edited == nil || len(edited.Changes) != 1 {
		t.Fatalf("audit records %+v: want one replay_edited with one change", recs)
	}
	c := edited.Changes[0]
	if c.Field != "to" || c.Before != "j•••@example.com, •••" || c.After != "j•••@example.com, r•••@fabrikam.example" {
		t.Errorf("change %+v: want to, masked before and after", c)
	}
	job := do(s, sup, http.MethodGet, "/jobs/billing/inv1", nil).Body.String()
	if !strings.Contains(job, "r•••@fabrikam.example") || strings.Contains(job, "robert@") {
		t.Error("the timeline does not show the masked change")
	}
}

// TestScopedRoles: roles scoped to a profile open that profile only, on
// every page and action (TestGuard's style).
func TestScopedRoles(t *testing.T) {
	s, q := deskServer(t, Config{})
	putDL(t, q, contract.DeadLetter{JobID: "b1", Profile: "billing", Reason: contract.ReasonExpired, Body: []byte(`{"from":"billing@contoso.example"}`)})
	putDL(t, q, contract.DeadLetter{JobID: "h1", Profile: "hr", Reason: contract.ReasonExpired, Body: []byte(`{"from":"hr@contoso.example"}`)})
	billingReader := s.cookieFor(t, session{Sub: "r", Roles: []string{ScopedRole(RoleReader, "billing")}, CSRF: "tok"})
	billingSupport := s.cookieFor(t, session{Sub: "s", User: "sam@contoso.example", Roles: []string{ScopedRole(RoleSupport, "billing")}, CSRF: "tok"})
	hrSeq := func() string {
		dl, err := q.DLQ.Get(context.Background(), "hr", "h1")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join([]string{strconv.FormatUint(dl.Seq, 10), "hr", "h1"}, ":")
	}()
	csrf := url.Values{"csrf": {"tok"}}
	for _, tt := range []struct {
		name         string
		c            *http.Cookie
		method, path string
		form         url.Values
		want         int
	}{
		{"billing reader, billing job", billingReader, "GET", "/jobs/billing/b1", nil, 200},
		{"billing reader, hr job", billingReader, "GET", "/jobs/hr/h1", nil, 403},
		{"billing reader, hr list", billingReader, "GET", "/dlq?profile=hr", nil, 403},
		{"billing reader, list without profile: to billing", billingReader, "GET", "/dlq", nil, 303},
		{"billing reader, overview (every profile)", billingReader, "GET", "/overview", nil, 403},
		{"billing reader, replay billing", billingReader, "POST", "/jobs/billing/b1/replay", csrf, 403},
		{"billing support, hr reveal", billingSupport, "POST", "/jobs/hr/h1/reveal", csrf, 403},
		{"billing support, hr purge", billingSupport, "POST", "/jobs/hr/h1/purge", csrf, 403},
		{"billing support, hr edit", billingSupport, "POST", "/jobs/hr/h1/edit", csrf, 403},
		{"billing support, hr body", billingSupport, "GET", "/jobs/hr/h1/body.html", nil, 403},
		{"billing support, bulk purge of a reason across profiles", billingSupport, "POST", "/dlq/bulk", url.Values{"csrf": {"tok"}, "action": {"purge"}, "reason": {"expired"}}, 403},
		{"billing support, bulk purge of hr", billingSupport, "POST", "/dlq/bulk", url.Values{"csrf": {"tok"}, "action": {"purge"}, "profile": {"hr"}}, 403},
		{"billing support, replay of a selected hr record", billingSupport, "POST", "/dlq/replay", url.Values{"csrf": {"tok"}, "sel": {hrSeq}}, 403},
		{"billing support, billing job", billingSupport, "GET", "/jobs/billing/b1", nil, 200},
		{"billing support, billing purge page", billingSupport, "GET", "/jobs/billing/b1/purge", nil, 200},
	} {
		w := do(s, tt.c, tt.method, tt.path, tt.form)
		if w.Code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, w.Code, tt.want)
		}
	}
	// Nothing of hr was touched, and hr is not listed to billing's people.
	if _, err := q.DLQ.Get(context.Background(), "hr", "h1"); err != nil {
		t.Fatalf("hr's dead letter after billing's attempts: %v", err)
	}
	list := do(s, billingReader, "GET", "/dlq?profile=billing", nil).Body.String()
	if strings.Contains(list, "/jobs/hr/") || strings.Contains(list, ">hr<") {
		t.Error("the billing reader's list shows hr")
	}
	if job := do(s, billingReader, "GET", "/jobs/billing/b1", nil).Body.String(); strings.Contains(job, `id="replay"`) {
		t.Error("a reader sees the replay button")
	}
	if job := do(s, billingSupport, "GET", "/jobs/billing/b1", nil).Body.String(); !strings.Contains(job, `id="replay"`) {
		t.Error("billing's support person has no replay button on a billing job")
	}
}

// TestLogoutRevokesTheSession: after signing out, the same cookie (a copy
// kept elsewhere) no longer opens the console.
func TestLogoutRevokesTheSession(t *testing.T) {
	s := testServer(t)
	c := s.cookieFor(t, session{Sub: "r", Roles: []string{RoleReader}, CSRF: "tok"})
	if w := do(s, c, "GET", "/jobs/billing/j1/body.html", nil); w.Code == http.StatusSeeOther {
		t.Fatal("the session does not open the console before signing out")
	}
	if w := do(s, c, "POST", "/logout", url.Values{}); w.Code != http.StatusSeeOther {
		t.Fatalf("logout: %d", w.Code)
	}
	if w := do(s, c, "GET", "/dlq", nil); w.Code != http.StatusSeeOther || !strings.HasPrefix(w.Header().Get("Location"), "/login") {
		t.Fatalf("the signed-out cookie still opens the console: %d %s", w.Code, w.Header().Get("Location"))
	}
	// Another process (a restart) does not take the session either.
	other := testServer(t)
	if w := do(other, s.cookieFor(t, session{Sub: "r", Roles: []string{RoleReader}, CSRF: "tok"}), "GET", "/overview", nil); w.Code != http.StatusSeeOther {
		t.Fatalf("a session of another console process: %d", w.Code)
	}
}

// busyDesk is a support service whose scans are all taken.
type busyDesk struct{ support.Service }

func (busyDesk) Scan(context.Context, queue.DLQQuery, func(contract.DeadLetter) bool) error {
	return support.ErrBusy
}

// TestSearchWhenScansAreBusy: a search beyond the scans allowed is refused
// at once with 503 and Retry-After, not queued behind them.
func TestSearchWhenScansAreBusy(t *testing.T) {
	s, _ := deskServer(t, Config{Support: busyDesk{}})
	c := s.cookieFor(t, session{Sub: "r", Roles: []string{RoleReader}, CSRF: "tok"})
	w := do(s, c, "GET", "/search?rh="+strings.Repeat("a", 64), nil)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("a search while the scans are busy: %d, Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
}
