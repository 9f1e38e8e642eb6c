package console

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/tracking"
)

// TestSuppressionPage: the suppression list in the console. A reader sees
// the entries of the profiles it may read, addresses masked (also in the
// reason), and finds one by its full address sent by POST (the address is
// in no URL); support removes an entry through the support service, which
// records it in MAIL_AUDIT (actor, console, the address's key, never the
// address) before the entry goes; a second removal is a 404, a reader's a
// 403.
func TestSuppressionPage(t *testing.T) {
	s, q := deskServer(t, Config{})
	ctx := context.Background()
	st, err := tracking.Open(ctx, q.States.JetStream(), 1)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, e := range []tracking.Suppression{
		{Address: "jane.doe@example.com", Profile: "billing", Reason: "550 5.1.10 jane.doe@example.com not found", JobID: "b-1", At: now, ExpiresAt: now.Add(time.Hour)},
		{Address: "old.friend@example.com", Profile: "billing", Reason: "550 5.1.1", JobID: "b-2", At: now.Add(-time.Hour), ExpiresAt: now.Add(time.Hour)},
		{Address: "hr.person@example.com", Profile: "hr", Reason: "550 5.1.1", JobID: "h-1", At: now, ExpiresAt: now.Add(time.Hour)},
	} {
		if err := st.Suppress(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	reader := s.cookieFor(t, session{Sub: "r", Roles: []string{ScopedRole(RoleReader, "billing")}, CSRF: "tok"})
	sup := s.cookieFor(t, session{Sub: "s", User: "sam@contoso.example", Roles: []string{RoleSupport}, CSRF: "tok"})

	w := do(s, reader, "GET", "/suppressions", nil)
	page := w.Body.String()
	if w.Code != http.StatusOK || !strings.Contains(page, "j•••@example.com") || !strings.Contains(page, "o•••@example.com") {
		t.Fatalf("reader's list: %d\n%s", w.Code, page)
	}
	for _, leak := range []string{"jane.doe@", "old.friend@", "hr.person", "h•••@example.com"} {
		if strings.Contains(page, leak) {
			t.Errorf("reader's list shows %q (an address in clear, or another profile's entry)", leak)
		}
	}
	if strings.Contains(page, "/suppressions/remove") {
		t.Error("a reader is offered removal")
	}
	if w := do(s, reader, "GET", "/suppressions?profile=hr", nil); w.Code != http.StatusForbidden {
		t.Errorf("billing reader, hr's list: %d, want 403", w.Code)
	}

	// Search: POST, then a URL with the keyed hash only.
	w = do(s, reader, "POST", "/suppressions/search", url.Values{"csrf": {"tok"}, "rcpt": {"Jane.Doe@example.com"}})
	loc := w.Header().Get("Location")
	if w.Code != http.StatusSeeOther || !strings.Contains(loc, "rh=") || strings.Contains(strings.ToLower(loc), "jane") {
		t.Fatalf("search: %d, Location %q", w.Code, loc)
	}
	page = do(s, reader, "GET", loc, nil).Body.String()
	if !strings.Contains(page, "j•••@example.com") || strings.Contains(page, "o•••@example.com") || !strings.Contains(page, "1 entry") {
		t.Errorf("search result:\n%s", page)
	}

	key := queue.RecipientKey("jane.doe@example.com")
	form := url.Values{"csrf": {"tok"}, "profile": {"billing"}, "key": {key}}
	if w := do(s, reader, "POST", "/suppressions/remove", form); w.Code != http.StatusForbidden {
		t.Errorf("reader removes: %d, want 403", w.Code)
	}
	w = do(s, sup, "POST", "/suppressions/remove", form)
	if w.Code != http.StatusSeeOther {
		t.Fatalf("support removes: %d\n%s", w.Code, w.Body.String())
	}
	if e, err := st.Suppressed(ctx, "billing", "jane.doe@example.com", time.Now()); err != nil || e != nil {
		t.Fatalf("after removal: %+v, %v", e, err)
	}
	recs, err := q.Audit.ForJob(ctx, "billing", "b-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Action != queue.AuditUnsuppress || recs[0].Actor != "sam@contoso.example" || recs[0].Via != "console" ||
		!strings.Contains(recs[0].Detail, key) || strings.Contains(recs[0].Detail, "jane") {
		t.Errorf("audit: %+v", recs)
	}
	if page := do(s, sup, "GET", w.Header().Get("Location"), nil).Body.String(); !strings.Contains(page, "removed from the suppression list") {
		t.Errorf("no confirmation after removal:\n%s", page)
	}
	if w := do(s, sup, "POST", "/suppressions/remove", form); w.Code != http.StatusNotFound {
		t.Errorf("second removal: %d, want 404", w.Code)
	}
	if w := do(s, sup, "POST", "/suppressions/remove", url.Values{"csrf": {"tok"}, "profile": {"billing"}, "key": {"billing.>"}}); w.Code != http.StatusBadRequest {
		t.Errorf("a wildcard key: %d, want 400", w.Code)
	}
}
