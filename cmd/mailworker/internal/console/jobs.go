package console

// A job's page: its state, dead letter, timeline (events and audit records),
// the reveal of its content and its HTML body in a sandboxed frame.

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"time"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/support"
)

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
	Changes                []queue.AuditChange // an edited replay's, masked
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
	// Called: a Graph request was made for the job (a call recorded on
	// the dead letter or in an event, or a send that may have delivered):
	// only then can Exchange message trace know of it.
	Called bool
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
		dl, err := s.desk.Find(ctx, profile, id)
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
		d.Timeline = append(d.Timeline, entry{At: a.At, Kind: "audit", Event: a.Action, Actor: a.Actor, Via: a.Via, Detail: a.Detail, Count: a.Count, Changes: a.Changes})
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
		d.Called = d.DL.Ambiguous || d.DL.GraphRequestID != "" || len(d.DL.GraphCalls) > 0
	}
	for _, e := range d.Timeline {
		if e.Ambiguous || e.Graph != nil && (e.Graph.Status != 0 || e.Graph.RequestID != "") {
			d.Called = true
		}
	}
	return d, nil
}

// mask hides recipients quoted in the job's error texts (until revealed).
func (d *jobData) mask() {
	from := ""
	if d.DL != nil {
		from = d.DL.From
		d.DL.Error = support.MaskText(d.DL.Error, from)
	}
	for i := range d.Timeline {
		if r := d.Timeline[i].Recipient; r != "" {
			d.Timeline[i].Recipient = support.MaskAddr(r)
		}
		if e := d.Timeline[i].Error; e != nil {
			c := *e
			c.Message = support.MaskText(c.Message, from)
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
	v.Support = sess.canIn(RoleSupport, profile)
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
	if err := s.desk.Reveal(r.Context(), who(sess), d.DL.Profile, id, "recipients and content"); err != nil {
		s.fail(w, r, sess, err)
		return
	}
	s.done(r, sess, queue.AuditReveal, d.DL.Profile, id, 1)
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
	v := s.view(sess, "Job "+id, "", d)
	v.Support = sess.canIn(RoleSupport, profile)
	s.render(w, http.StatusOK, "job", v)
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
	dl, err := s.desk.Find(r.Context(), profile, id)
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
