package console

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

func constantEq(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// view is what every page template gets.
type view struct {
	Title   string
	Sess    *session
	Support bool
	Nav     string
	Flash   string
	Data    any
}

func (s *Server) parseTemplates() error {
	funcs := template.FuncMap{
		"ts": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"trunc": func(n int, v string) string {
			if len([]rune(v)) <= n {
				return v
			}
			return string([]rune(v)[:n-1]) + "…"
		},
		"mask": maskAddr,
		"maskAll": func(l []string) []string {
			out := make([]string, len(l))
			for i, a := range l {
				out[i] = maskAddr(a)
			}
			return out
		},
		"join":    strings.Join,
		"runbook": func(r contract.Reason) string { return s.cfg.RunbookURL },
		"advice":  func(r contract.Reason) string { return advice[r] },
		"dict": func(kv ...any) map[string]any {
			m := map[string]any{}
			for i := 0; i+1 < len(kv); i += 2 {
				m[kv[i].(string)] = kv[i+1]
			}
			return m
		},
		"hoursList": func() []int { return []int{1, 3, 6, 12, 24} },
	}
	s.pages = map[string]*template.Template{}
	for _, name := range []string{"list", "job", "edit", "search", "overview", "confirm", "status"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return fmt.Errorf("console: template %s: %w", name, err)
		}
		s.pages[name] = t
	}
	return nil
}

func (s *Server) render(w http.ResponseWriter, status int, name string, v view) {
	var buf bytes.Buffer
	if err := s.pages[name].Execute(&buf, v); err != nil {
		s.cfg.Logger.Error().Err(err).Str("page", name).Msg("console: render")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

func (s *Server) view(sess *session, title, nav string, data any) view {
	return view{Title: title, Sess: sess, Support: sess != nil && sess.can(RoleSupport), Nav: nav, Data: data}
}

func (s *Server) renderStatus(w http.ResponseWriter, r *http.Request, sess *session, status int, msg string) {
	s.render(w, status, "status", s.view(sess, http.StatusText(status), "", msg))
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, sess *session, err error) {
	s.log(r, sess).Error().Err(err).Msg("console: request failed")
	s.renderStatus(w, r, sess, http.StatusBadGateway, "The queue could not be read or written: "+err.Error())
}

// advice is the console's one-line "what next" per reason; the runbook row
// (linked) has the long form.
var advice = map[contract.Reason]string{
	contract.ReasonInvalidJob:        "The job failed validation: fix it in the editor (the error names the field) and replay, or have the producer fixed.",
	contract.ReasonSenderNotAllowed:  "The sender is not an approved mailbox of the profile: fix the sender, or onboard the mailbox, then replay.",
	contract.ReasonRecipientInvalid:  "Graph rejected a recipient address: correct it in the editor and replay, or purge.",
	contract.ReasonMailboxNotFound:   "The sender mailbox does not exist in Exchange Online (typo, renamed, on-premises): fix the sender or the mailbox, then replay.",
	contract.ReasonAccessDenied:      "The sender is outside the app's RBAC scope, or a scope change is still propagating (30 min to 2 h): check the scope, wait, then replay.",
	contract.ReasonMessageTooLarge:   "The mail is over Graph's 4 MB request limit: shrink or move attachments to objectRef, then replay; or purge.",
	contract.ReasonAuthFailed:        "Entra refused the profile's credential: fix the certificate or secret (AADSTS code below), then replay all of this reason.",
	contract.ReasonExpired:           "expiresAt passed before the mail could go: usually purge; replay only with a new expiresAt.",
	contract.ReasonAttemptsExhausted: "Graph kept failing: check its health and throttling; the mail may have been delivered (ambiguous): check message trace for the job id before replaying.",
	contract.ReasonGraphRejected:     "Graph refused the message for another reason: read the error, fix the job or the config, replay or purge.",
	contract.ReasonInternal:          "A worker fault: collect the job id and the worker logs, file a bug; replay after the fix.",
}

// maskAddr hides a mailbox but its first letter and domain:
// "Jane <jane@contoso.com>" → "j•••@contoso.com".
func maskAddr(a string) string {
	_, addr, err := contract.ParseAddress(a)
	if err != nil {
		addr = a
	}
	local, domain, ok := strings.Cut(addr, "@")
	if !ok || local == "" {
		return "•••"
	}
	r := []rune(local)
	return string(r[0]) + "•••@" + domain
}

var reAddr = regexp.MustCompile(`[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*`)

// maskText masks the mailboxes in a free text (an error message may quote
// a recipient), except keep (the sender, shown anyway).
func maskText(text, keep string) string {
	keep = normAddr(keep)
	return reAddr.ReplaceAllStringFunc(text, func(a string) string {
		if keep != "" && strings.EqualFold(a, keep) {
			return a
		}
		return maskAddr(a)
	})
}

// normAddr is the form a recipient is hashed in: the address part only,
// trimmed and lower-cased.
func normAddr(a string) string {
	if _, addr, err := contract.ParseAddress(a); err == nil {
		a = addr
	}
	return strings.ToLower(strings.TrimSpace(a))
}

func (s *Server) rcptHash(a string) string {
	m := hmac.New(sha256.New, s.rcpt)
	m.Write([]byte(normAddr(a)))
	return hex.EncodeToString(m.Sum(nil))
}

// ---- dead-letter list

type listData struct {
	Profile, Reason, From, Since, Until string
	Reasons                             []contract.Reason
	Items                               []contract.DeadLetter
	Next                                template.URL // the next page ("" = none)
	First                               template.URL // the first page
	Counts                              *queue.DLQCounts
	CountsAt                            time.Time
	Profiles                            []string
	Matching                            int // records matching profile+reason (from the counts)
	BulkReplay, BulkPurge               template.URL
	CSRF                                string
	Err                                 string
}

const timeForm = "2006-01-02T15:04"

func (s *Server) handleList(w http.ResponseWriter, r *http.Request, sess *session) {
	q := r.URL.Query()
	d := listData{Profile: q.Get("profile"), Reason: q.Get("reason"), From: q.Get("from"), Since: q.Get("since"),
		Until: q.Get("until"), Reasons: contract.Reasons, CSRF: sess.CSRF}
	dq := queue.DLQQuery{Profile: d.Profile, Reason: contract.Reason(d.Reason), From: d.From, Limit: 50}
	if dq.Reason != "" && !dq.Reason.Valid() {
		d.Err = "unknown reason"
		dq.Reason = "invalid"
	}
	var err error
	if d.Since != "" {
		if dq.Since, err = time.ParseInLocation(timeForm, d.Since, time.UTC); err != nil {
			d.Err = "since: not a date and time"
		}
	}
	if d.Until != "" {
		if dq.Until, err = time.ParseInLocation(timeForm, d.Until, time.UTC); err != nil {
			d.Err = "until: not a date and time"
		}
	}
	if a := q.Get("after"); a != "" {
		dq.After, _ = strconv.ParseUint(a, 10, 64)
	}
	if d.Err == "" {
		page, err := s.q.DLQ.Page(r.Context(), dq)
		if err != nil {
			if strings.Contains(err.Error(), "invalid profile") {
				d.Err = "no such profile"
			} else {
				s.fail(w, r, sess, err)
				return
			}
		}
		d.Items = page.Items
		base := url.Values{}
		for _, k := range []string{"profile", "reason", "from", "since", "until"} {
			if v := q.Get(k); v != "" {
				base.Set(k, v)
			}
		}
		// Built from url.Values.Encode: safe as a URL, not to be escaped again.
		d.First = template.URL("/dlq?" + base.Encode())
		if page.Next != 0 {
			nx := url.Values{}
			for k, v := range base {
				nx[k] = v
			}
			nx.Set("after", strconv.FormatUint(page.Next, 10))
			d.Next = template.URL("/dlq?" + nx.Encode())
		}
	}
	d.Counts, d.CountsAt = s.dlqCounts(r)
	if d.Counts != nil {
		for p := range d.Counts.ByProfile {
			d.Profiles = append(d.Profiles, p)
		}
		sort.Strings(d.Profiles)
		d.Matching = matching(d.Counts, d.Profile, contract.Reason(d.Reason))
	}
	if d.Profile != "" || d.Reason != "" {
		bq := url.Values{}
		if d.Profile != "" {
			bq.Set("profile", d.Profile)
		}
		if d.Reason != "" {
			bq.Set("reason", d.Reason)
		}
		d.BulkReplay = template.URL("/dlq/bulk?action=replay&" + bq.Encode())
		d.BulkPurge = template.URL("/dlq/bulk?action=purge&" + bq.Encode())
	}
	s.render(w, http.StatusOK, "list", s.view(sess, "Dead letters", "dlq", d))
}

func matching(c *queue.DLQCounts, profile string, reason contract.Reason) int {
	n := 0
	for p, byReason := range c.ByProfile {
		if profile != "" && p != profile {
			continue
		}
		for r, k := range byReason {
			if reason == "" || r == reason {
				n += k
			}
		}
	}
	return n
}

// countsTTL is how long counts are served before they are brought up to
// date in the background (the page shows their time).
const countsTTL = 10 * time.Second

// dlqCounts returns the counts per profile and reason: counted on the first
// call, then served from memory and updated in the background when older
// than countsTTL (or after an action here), so a list page never waits for
// a count of 100,000 records but the first. An update reads only the
// records appended since, unless some were deleted (queue.DLQ.Recount).
func (s *Server) dlqCounts(r *http.Request) (*queue.DLQCounts, time.Time) {
	s.countsMu.Lock()
	c, at := s.counts, s.countsAt
	stale := c == nil || time.Since(at) > countsTTL
	if c != nil && stale && !s.refreshing {
		s.refreshing = true
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.recount()
		}()
	}
	s.countsMu.Unlock()
	if c != nil {
		return c, at
	}
	s.recountWith(r)
	s.countsMu.Lock()
	defer s.countsMu.Unlock()
	return s.counts, s.countsAt
}

func (s *Server) recount() {
	s.countsMu.Lock()
	prev := s.counts
	s.countsMu.Unlock()
	c, err := s.q.DLQ.Recount(s.ctx, prev)
	s.countsMu.Lock()
	defer s.countsMu.Unlock()
	s.refreshing = false
	if err == nil {
		s.counts, s.countsAt = &c, time.Now()
	}
}

func (s *Server) recountWith(r *http.Request) {
	c, err := s.q.DLQ.Counts(r.Context())
	if err != nil {
		s.cfg.Logger.Warn().Err(err).Msg("console: counting dead letters failed")
		return
	}
	s.countsMu.Lock()
	s.counts, s.countsAt = &c, time.Now()
	s.countsMu.Unlock()
}

// countsChanged marks the counts stale after an action.
func (s *Server) countsChanged() {
	s.countsMu.Lock()
	s.countsAt = time.Time{}
	s.countsMu.Unlock()
}

// ---- a job

type entry struct {
	At                     time.Time
	Kind                   string // event | audit
	Event                  string
	Attempt                int
	Graph                  *contract.GraphInfo
	Error                  *contract.ErrorInfo
	AADSTS, Trace, Corr    string
	RetryAt                *time.Time
	Cause                  string
	Ambiguous, PossibleDup bool
	LatencyMs              int64
	Actor, Via, Detail     string
	Count                  int
	// Recipient and TraceStatus of a delivery event (Exchange message
	// trace); the address is shown masked.
	Recipient, TraceStatus string
}

type jobData struct {
	ID         string
	Profile    string
	State      *contract.JobState
	DL         *contract.DeadLetter
	Job        *contract.Job // parsed body (lenient); nil when not a job object
	RawLen     int
	Timeline   []entry
	Metadata   map[string]string
	Revealed   bool
	Raw        string // revealed body when it is not a job object
	BodyToken  string
	CSRF       string
	Advice     string
	Runbook    string
	Attachment []attInfo
}

type attInfo struct {
	Name, ContentType string
	Size              int
	Ref               bool
}

var (
	reAADSTS = regexp.MustCompile(`AADSTS\d+`)
	reTrace  = regexp.MustCompile(`(?i)trace id:?\s*([0-9a-f-]{36})`)
	reCorr   = regexp.MustCompile(`(?i)correlation id:?\s*([0-9a-f-]{36})`)
)

func (s *Server) loadJob(r *http.Request, profile, id string) (*jobData, error) {
	ctx := r.Context()
	d := &jobData{ID: id, Profile: profile}
	st, _, err := s.q.States.Get(ctx, profile, id)
	switch {
	case err == nil:
		d.State = &st
	case !errors.Is(err, contract.ErrNoState):
		return nil, err
	}
	if d.State == nil || d.State.State == contract.StateDeadLettered {
		dl, err := s.findDL(r, profile, id, d.State)
		switch {
		case err == nil:
			d.DL = &dl
		case !errors.Is(err, queue.ErrNotInDLQ):
			return nil, err
		}
	}
	evs, err := s.q.Events.History(ctx, profile, id)
	if err != nil {
		return nil, err
	}
	for _, ev := range evs {
		e := entry{At: ev.At, Kind: "event", Event: string(ev.Event), Attempt: ev.Attempt, Graph: ev.Graph, Error: ev.Error,
			RetryAt: ev.RetryAt, Cause: ev.Cause, Ambiguous: ev.Ambiguous, PossibleDup: ev.PossibleDuplicate, LatencyMs: ev.LatencyMs,
			Recipient: ev.Recipient}
		if ev.Trace != nil {
			e.TraceStatus = ev.Trace.Status
		}
		if ev.Error != nil {
			e.AADSTS = reAADSTS.FindString(ev.Error.Message)
			if m := reTrace.FindStringSubmatch(ev.Error.Message); m != nil {
				e.Trace = m[1]
			}
			if m := reCorr.FindStringSubmatch(ev.Error.Message); m != nil {
				e.Corr = m[1]
			}
		}
		if len(ev.Metadata) > 0 {
			d.Metadata = ev.Metadata
		}
		d.Timeline = append(d.Timeline, e)
	}
	// A job's audit records are not older than the job: read from its
	// first known moment (a day's margin for clock skew and late events).
	var since time.Time
	if len(d.Timeline) > 0 {
		since = d.Timeline[0].At
	}
	if d.DL != nil && !d.DL.FailedAt.IsZero() && (since.IsZero() || d.DL.FailedAt.Before(since)) {
		since = d.DL.FailedAt
	}
	if !since.IsZero() {
		since = since.Add(-24 * time.Hour)
	}
	recs, err := s.q.Audit.ForJobSince(ctx, id, since)
	if err != nil {
		return nil, err
	}
	for _, a := range recs {
		if a.Profile != profile {
			continue // the same id in another profile is another job
		}
		d.Timeline = append(d.Timeline, entry{At: a.At, Kind: "audit", Event: a.Action, Actor: a.Actor, Via: a.Via, Detail: a.Detail, Count: a.Count})
	}
	sort.SliceStable(d.Timeline, func(i, j int) bool { return d.Timeline[i].At.Before(d.Timeline[j].At) })
	if d.DL != nil {
		d.RawLen = len(d.DL.Body)
		var j contract.Job
		if json.Unmarshal(d.DL.Body, &j) == nil {
			d.Job = &j
			if len(j.Metadata) > 0 {
				d.Metadata = j.Metadata
			}
			for _, a := range j.Attachments {
				d.Attachment = append(d.Attachment, attInfo{Name: a.Name, ContentType: a.ContentType, Size: len(a.ContentBase64) * 3 / 4, Ref: a.ObjectRef != ""})
			}
		}
		d.Advice, d.Runbook = advice[d.DL.Reason], s.cfg.RunbookURL
	}
	return d, nil
}

// findDL finds the dead letter of job id, starting near the time its state
// says it was dead-lettered (st may be nil: then it is looked up).
func (s *Server) findDL(r *http.Request, profile, id string, st *contract.JobState) (contract.DeadLetter, error) {
	if st == nil {
		if got, _, err := s.q.States.Get(r.Context(), profile, id); err == nil {
			st = &got
		}
	}
	if st != nil && st.State == contract.StateDeadLettered {
		return s.q.DLQ.FindNear(r.Context(), st.Profile, id, st.UpdatedAt)
	}
	return s.q.DLQ.Find(r.Context(), profile, id)
}

// mask hides recipients quoted in the job's error texts (until revealed).
func (d *jobData) mask() {
	from := ""
	if d.DL != nil {
		from = d.DL.From
		d.DL.Error = maskText(d.DL.Error, from)
	}
	for i := range d.Timeline {
		if r := d.Timeline[i].Recipient; r != "" {
			d.Timeline[i].Recipient = maskAddr(r)
		}
		if e := d.Timeline[i].Error; e != nil {
			c := *e
			c.Message = maskText(c.Message, from)
			d.Timeline[i].Error = &c
		}
	}
}

func (s *Server) handleJob(w http.ResponseWriter, r *http.Request, sess *session) {
	profile, id, ok := jobRef(r)
	if !ok {
		s.renderStatus(w, r, sess, http.StatusNotFound, "Not a job.")
		return
	}
	d, err := s.loadJob(r, profile, id)
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	d.CSRF = sess.CSRF
	d.mask()
	v := s.view(sess, "Job "+id, "", d)
	v.Flash = r.URL.Query().Get("done")
	s.render(w, http.StatusOK, "job", v)
}

var reProfile = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// jobRef reads the profile and job id of a /jobs/{profile}/{id} path; a job
// id is unique within its profile.
func jobRef(r *http.Request) (profile, id string, ok bool) {
	profile, id = r.PathValue("profile"), r.PathValue("id")
	return profile, id, reProfile.MatchString(profile) && contract.ValidJobID(id)
}

// jobURL is the page of profile's job id.
func jobURL(profile, id string) string {
	return "/jobs/" + url.PathEscape(profile) + "/" + url.PathEscape(id)
}

type revealToken struct {
	Job string `json:"job"`
	Sub string `json:"sub"`
	Exp int64  `json:"exp"`
}

func (s *Server) audit(r *http.Request, sess *session, rec queue.AuditRecord) error {
	rec.Actor, rec.Via = sess.actor(), "console"
	if err := s.q.Audit.Append(r.Context(), rec); err != nil {
		return err
	}
	s.log(r, sess).Info().Str("action", rec.Action).Str("jobId", rec.JobID).Str("profile", rec.Profile).Int("count", rec.Count).Msg("console: audited action")
	return nil
}

func (s *Server) handleReveal(w http.ResponseWriter, r *http.Request, sess *session) {
	profile, id, ok := jobRef(r)
	if !ok {
		s.renderStatus(w, r, sess, http.StatusNotFound, "Not a job.")
		return
	}
	d, err := s.loadJob(r, profile, id)
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	if d.DL == nil {
		s.renderStatus(w, r, sess, http.StatusNotFound, "This job has no dead letter: there is no body to reveal.")
		return
	}
	// Audit first: no record, no reveal.
	if err := s.audit(r, sess, queue.AuditRecord{Action: queue.AuditReveal, Profile: d.DL.Profile, JobID: id, Detail: "recipients and content"}); err != nil {
		s.fail(w, r, sess, err)
		return
	}
	d, err = s.loadJob(r, profile, id) // the timeline now shows the reveal
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	d.Revealed, d.CSRF = true, sess.CSRF
	if d.Job == nil {
		d.Raw = string(d.DL.Body)
	} else if d.Job.HTML != "" {
		d.BodyToken, _ = s.seal.seal("reveal", revealToken{Job: profile + "/" + id, Sub: sess.Sub, Exp: s.cfg.Now().Add(5 * time.Minute).Unix()})
	}
	s.render(w, http.StatusOK, "job", s.view(sess, "Job "+id, "", d))
}

// handleBodyHTML serves a revealed HTML body for the sandboxed frame: only
// with a fresh reveal token of this person and job, under a CSP that allows
// no script, no network and no form, and a sandbox without allow-scripts.
func (s *Server) handleBodyHTML(w http.ResponseWriter, r *http.Request, sess *session) {
	profile, id, _ := jobRef(r)
	var tok revealToken
	if s.seal.open("reveal", r.URL.Query().Get("t"), &tok) != nil || tok.Job != profile+"/"+id || tok.Sub != sess.Sub || s.cfg.Now().Unix() > tok.Exp {
		http.Error(w, "reveal the job first", http.StatusForbidden)
		return
	}
	dl, err := s.findDL(r, profile, id, nil)
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	var j contract.Job
	if json.Unmarshal(dl.Body, &j) != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'")
	h.Set("X-Frame-Options", "SAMEORIGIN")
	h.Set("Content-Type", "text/html; charset=utf-8")
	w.Write([]byte(j.HTML))
}

func (s *Server) handleReplay(w http.ResponseWriter, r *http.Request, sess *session) {
	dl, id, ok := s.deadLetterOf(w, r, sess, "This job is not in the dead-letter queue (already replayed or purged?).")
	if !ok {
		return
	}
	if err := s.replayOne(r, sess, dl, nil, ""); err != nil {
		s.fail(w, r, sess, err)
		return
	}
	http.Redirect(w, r, jobURL(dl.Profile, id)+"?done=replayed", http.StatusSeeOther)
}

// replayOne audits, then replays one record (with a fixed body when set).
func (s *Server) replayOne(r *http.Request, sess *session, dl contract.DeadLetter, body []byte, detail string) error {
	action := queue.AuditReplay
	if body != nil {
		action = queue.AuditReplayEdited
	}
	if err := s.audit(r, sess, queue.AuditRecord{Action: action, Profile: dl.Profile, JobID: dl.JobID, Detail: detail}); err != nil {
		return err
	}
	defer s.countsChanged()
	return s.q.DLQ.ReplayRecord(r.Context(), dl, queue.ReplayOptions{Body: body})
}

func (s *Server) handleReplaySelected(w http.ResponseWriter, r *http.Request, sess *session) {
	n := 0
	for _, v := range r.PostForm["sel"] {
		seqStr, id, _ := strings.Cut(v, ":")
		seq, err := strconv.ParseUint(seqStr, 10, 64)
		if err != nil || !contract.ValidJobID(id) {
			continue
		}
		dl, err := s.q.DLQ.At(r.Context(), seq)
		if errors.Is(err, queue.ErrNotInDLQ) || (err == nil && dl.JobID != id) {
			continue // replayed or purged meanwhile
		}
		if err != nil {
			s.fail(w, r, sess, err)
			return
		}
		if err := s.replayOne(r, sess, dl, nil, "selected"); err != nil {
			s.fail(w, r, sess, fmt.Errorf("replayed %d, then: %w", n, err))
			return
		}
		n++
	}
	s.render(w, http.StatusOK, "status", s.view(sess, "Replayed", "dlq", fmt.Sprintf("Replayed %d job(s).", n)))
}

// ---- bulk replay / purge of a profile and reason

type confirmData struct {
	Action, Profile, Reason string
	JobID                   string
	Count                   int
	CSRF                    string
}

func bulkFilter(v url.Values) (string, contract.Reason, bool) {
	p, r := v.Get("profile"), contract.Reason(v.Get("reason"))
	if r != "" && !r.Valid() {
		return "", "", false
	}
	return p, r, p != "" || r != ""
}

func (s *Server) handleBulkConfirm(w http.ResponseWriter, r *http.Request, sess *session) {
	q := r.URL.Query()
	action := q.Get("action")
	profile, reason, ok := bulkFilter(q)
	if !ok || (action != "replay" && action != "purge") {
		s.renderStatus(w, r, sess, http.StatusBadRequest, "Pick a profile and/or a reason, and replay or purge.")
		return
	}
	c, err := s.q.DLQ.Counts(r.Context()) // counted now, not from the cache
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	d := confirmData{Action: action, Profile: profile, Reason: string(reason), Count: matching(&c, profile, reason), CSRF: sess.CSRF}
	s.render(w, http.StatusOK, "confirm", s.view(sess, "Confirm", "dlq", d))
}

func (s *Server) handleBulk(w http.ResponseWriter, r *http.Request, sess *session) {
	f := r.PostForm
	action := f.Get("action")
	profile, reason, ok := bulkFilter(f)
	if !ok || (action != "replay" && action != "purge") {
		s.renderStatus(w, r, sess, http.StatusBadRequest, "Pick a profile and/or a reason, and replay or purge.")
		return
	}
	detail := "bulk: profile=" + profile + " reason=" + string(reason)
	if action == "replay" {
		n, err := s.q.DLQ.ReplayMatching(r.Context(), queue.DLQQuery{Profile: profile, Reason: reason}, func(dl contract.DeadLetter) error {
			return s.audit(r, sess, queue.AuditRecord{Action: queue.AuditReplay, Profile: dl.Profile, JobID: dl.JobID, Detail: detail})
		})
		s.countsChanged()
		if err != nil {
			s.fail(w, r, sess, fmt.Errorf("replayed %d, then: %w", n, err))
			return
		}
		s.render(w, http.StatusOK, "status", s.view(sess, "Replayed", "dlq", fmt.Sprintf("Replayed %d dead letter(s).", n)))
		return
	}
	n := 0
	var after uint64
	for {
		page, err := s.q.DLQ.Page(r.Context(), queue.DLQQuery{Profile: profile, Reason: reason, After: after, Limit: 200})
		if err != nil {
			s.fail(w, r, sess, fmt.Errorf("purged %d, then: %w", n, err))
			return
		}
		for _, dl := range page.Items {
			err := s.audit(r, sess, queue.AuditRecord{Action: queue.AuditPurge, Profile: dl.Profile, JobID: dl.JobID, Detail: detail})
			if err == nil {
				err = s.q.DLQ.PurgeRecord(r.Context(), dl.Seq)
			}
			if err != nil {
				s.fail(w, r, sess, fmt.Errorf("purged %d, then: %w", n, err))
				return
			}
			n++
		}
		if page.Next == 0 {
			break
		}
		after = page.Next
	}
	s.countsChanged()
	s.render(w, http.StatusOK, "status", s.view(sess, "Purged", "dlq", fmt.Sprintf("Purged %d dead letter(s).", n)))
}

func (s *Server) handlePurgeConfirm(w http.ResponseWriter, r *http.Request, sess *session) {
	profile, id, ok := jobRef(r)
	if !ok {
		s.renderStatus(w, r, sess, http.StatusNotFound, "Not a job.")
		return
	}
	s.render(w, http.StatusOK, "confirm", s.view(sess, "Confirm", "dlq", confirmData{Action: "purge", Profile: profile, JobID: id, Count: 1, CSRF: sess.CSRF}))
}

func (s *Server) handlePurge(w http.ResponseWriter, r *http.Request, sess *session) {
	dl, id, ok := s.deadLetterOf(w, r, sess, "This job is not in the dead-letter queue.")
	if !ok {
		return
	}
	if err := s.audit(r, sess, queue.AuditRecord{Action: queue.AuditPurge, Profile: dl.Profile, JobID: id}); err != nil {
		s.fail(w, r, sess, err)
		return
	}
	if _, err := s.q.DLQ.Purge(r.Context(), queue.DLQFilter{Profile: dl.Profile, JobID: id}); err != nil {
		s.fail(w, r, sess, err)
		return
	}
	s.countsChanged()
	http.Redirect(w, r, jobURL(dl.Profile, id)+"?done=purged", http.StatusSeeOther)
}

// ---- edit and replay

// editFields are the job fields the editor shows as their own inputs; the
// rest of the job is edited as JSON in "other".
var editFields = []string{"from", "to", "cc", "bcc", "replyTo", "subject", "text", "html"}

var listFields = map[string]bool{"to": true, "cc": true, "bcc": true, "replyTo": true}

type editData struct {
	ID, Profile string
	Values      map[string]string
	Errors      map[string]string
	CSRF        string
}

func (s *Server) handleEdit(w http.ResponseWriter, r *http.Request, sess *session) {
	dl, id, ok := s.deadLetterOf(w, r, sess, "This job is not in the dead-letter queue.")
	if !ok {
		return
	}
	d := editData{ID: id, Profile: dl.Profile, Values: map[string]string{}, Errors: map[string]string{}, CSRF: sess.CSRF}
	f := r.PostForm
	if f.Get("op") != "replay" {
		// Opening the editor shows the content: audited as a reveal.
		if err := s.audit(r, sess, queue.AuditRecord{Action: queue.AuditReveal, Profile: dl.Profile, JobID: id, Detail: "opened the editor"}); err != nil {
			s.fail(w, r, sess, err)
			return
		}
		fillForm(d.Values, dl.Body)
		s.render(w, http.StatusOK, "edit", s.view(sess, "Edit "+id, "", d))
		return
	}
	for _, k := range append(editFields, "other") {
		d.Values[k] = f.Get(k)
	}
	body, changed, field, msg := s.buildJob(dl, d.Values)
	if field != "" {
		d.Errors[field] = msg
		s.render(w, http.StatusUnprocessableEntity, "edit", s.view(sess, "Edit "+id, "", d))
		return
	}
	if err := s.replayOne(r, sess, dl, body, "changed: "+strings.Join(changed, ", ")); err != nil {
		var ie *contract.InvalidError
		if errors.As(err, &ie) {
			d.Errors[formField(ie.Field)] = ie.Error()
			s.render(w, http.StatusUnprocessableEntity, "edit", s.view(sess, "Edit "+id, "", d))
			return
		}
		s.fail(w, r, sess, err)
		return
	}
	http.Redirect(w, r, jobURL(dl.Profile, id)+"?done=replayed", http.StatusSeeOther)
}

// fillForm splits a job body into the editor's inputs.
func fillForm(vals map[string]string, body []byte) {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		vals["other"] = string(body)
		return
	}
	for _, k := range editFields {
		raw, ok := m[k]
		if !ok {
			continue
		}
		delete(m, k)
		if listFields[k] {
			var l []string
			if json.Unmarshal(raw, &l) == nil {
				vals[k] = strings.Join(l, "\n")
				continue
			}
		} else {
			var str string
			if json.Unmarshal(raw, &str) == nil {
				vals[k] = str
				continue
			}
		}
		m[k] = raw // not the expected type: leave it to "other"
	}
	delete(m, "id")
	if len(m) > 0 {
		b, _ := json.MarshalIndent(m, "", "  ")
		vals["other"] = string(b)
	}
}

// buildJob assembles the edited job and validates it with the worker's own
// decoder (contract.DecodeJob: the rules a job is dead-lettered by) and the
// profile's approved senders. It returns the body and the fields changed,
// or the form field at fault and why.
func (s *Server) buildJob(dl contract.DeadLetter, vals map[string]string) (body []byte, changed []string, field, msg string) {
	m := map[string]any{}
	if o := strings.TrimSpace(vals["other"]); o != "" {
		if err := json.Unmarshal([]byte(o), &m); err != nil {
			return nil, nil, "other", "not a JSON object: " + err.Error()
		}
	}
	for _, k := range editFields {
		v := vals[k]
		if listFields[k] {
			var l []string
			for _, line := range strings.Split(v, "\n") {
				if line = strings.TrimSpace(line); line != "" {
					l = append(l, line)
				}
			}
			if len(l) > 0 {
				m[k] = l
			}
		} else if strings.TrimSpace(v) != "" {
			if k == "from" {
				v = strings.TrimSpace(v)
			}
			m[k] = v
		}
	}
	m["id"] = dl.JobID
	body, err := json.Marshal(m)
	if err != nil {
		return nil, nil, "other", err.Error()
	}
	j, err := contract.DecodeJob(body)
	if err != nil {
		var ie *contract.InvalidError
		if errors.As(err, &ie) {
			return nil, nil, formField(ie.Field), ie.Error()
		}
		return nil, nil, "other", err.Error()
	}
	if allowed, ok := s.cfg.AllowedSenders[dl.Profile]; ok {
		_, addr, _ := contract.ParseAddress(j.From)
		if !slices.ContainsFunc(allowed, func(a string) bool { return strings.EqualFold(a, addr) }) {
			return nil, nil, "from", fmt.Sprintf("from: %s is not an approved sender of profile %s", addr, dl.Profile)
		}
	}
	var before map[string]json.RawMessage
	_ = json.Unmarshal(dl.Body, &before)
	var after map[string]json.RawMessage
	_ = json.Unmarshal(body, &after)
	for k, v := range after {
		if k != "id" && !bytes.Equal(compact(before[k]), compact(v)) {
			changed = append(changed, k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok && k != "id" {
			changed = append(changed, k)
		}
	}
	sort.Strings(changed)
	return body, changed, "", ""
}

func compact(b []byte) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return b
	}
	return buf.Bytes()
}

// formField maps a validation error's JSON path (to[2], attachments[0].name)
// to the editor input that holds it.
func formField(path string) string {
	head := path
	if i := strings.IndexAny(head, "[."); i >= 0 {
		head = head[:i]
	}
	if slices.Contains(editFields, head) {
		return head
	}
	return "other"
}

// deadLetterOf finds the dead letter of the job the request names. When
// there is none it answers (404 with notInDLQ, or the error) and reports
// false.
func (s *Server) deadLetterOf(w http.ResponseWriter, r *http.Request, sess *session, notInDLQ string) (contract.DeadLetter, string, bool) {
	profile, id, ok := jobRef(r)
	if !ok {
		s.renderStatus(w, r, sess, http.StatusNotFound, "Not a job.")
		return contract.DeadLetter{}, "", false
	}
	dl, err := s.findDL(r, profile, id, nil)
	if errors.Is(err, queue.ErrNotInDLQ) {
		s.renderStatus(w, r, sess, http.StatusNotFound, notInDLQ)
		return contract.DeadLetter{}, "", false
	}
	if err != nil {
		s.fail(w, r, sess, err)
		return contract.DeadLetter{}, "", false
	}
	return dl, id, true
}
