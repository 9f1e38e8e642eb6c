package console

// Support actions: replay (one, selected, all matching), purge; each goes
// through the support service, which records it in MAIL_AUDIT first.

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/support"
)

// who is the signed-in person acting through the console.
func who(sess *session) support.Who {
	return support.Who{Actor: sess.actor(), Via: support.ViaConsole}
}

// done logs an audited action's outcome (the audit record is the service's).
func (s *Server) done(r *http.Request, sess *session, action, profile, id string, n int) {
	s.log(r, sess).Info().Str("action", action).Str("jobId", id).Str("profile", profile).Int("count", n).Msg("console: audited action")
}

func (s *Server) handleReplay(w http.ResponseWriter, r *http.Request, sess *session) {
	profile, id, ok := jobRef(r)
	if !ok {
		s.renderStatus(w, r, sess, http.StatusNotFound, "Not a job.")
		return
	}
	dl, err := s.desk.Replay(r.Context(), who(sess), profile, id, "")
	s.countsChanged()
	if errors.Is(err, queue.ErrNotInDLQ) {
		s.renderStatus(w, r, sess, http.StatusNotFound, "This job is not in the dead-letter queue (already replayed or purged?).")
		return
	}
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	s.done(r, sess, queue.AuditReplay, dl.Profile, id, 1)
	http.Redirect(w, r, jobURL(dl.Profile, id)+"?done=replayed", http.StatusSeeOther)
}

func (s *Server) handleReplaySelected(w http.ResponseWriter, r *http.Request, sess *session) {
	var refs []support.Ref
	for _, v := range r.PostForm["sel"] {
		// seq:profile:id, as the list writes it.
		parts := strings.SplitN(v, ":", 3)
		if len(parts) != 3 {
			continue
		}
		seq, err := strconv.ParseUint(parts[0], 10, 64)
		if err != nil || !reProfile.MatchString(parts[1]) || !contract.ValidJobID(parts[2]) {
			continue
		}
		if !sess.canIn(RoleSupport, parts[1]) {
			s.renderStatus(w, r, sess, http.StatusForbidden, "You do not have the role "+ScopedRole(RoleSupport, parts[1])+" for a job you selected: nothing replayed.")
			return
		}
		refs = append(refs, support.Ref{Seq: seq, Profile: parts[1], JobID: parts[2]})
	}
	n, err := s.desk.ReplaySelected(r.Context(), who(sess), refs)
	s.countsChanged()
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	s.done(r, sess, queue.AuditReplay, "", "", n)
	s.render(w, http.StatusOK, "status", s.view(sess, "Replayed", "dlq", fmt.Sprintf("Replayed %d job(s).", n)))
}

type confirmData struct {
	Action, Profile, Reason string
	JobID                   string
	Count                   int
	Warning                 string // what support must read first (replaying invalid_job)
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
	if !sess.can(RoleSupport) && (profile == "" || !sess.canIn(RoleSupport, profile)) {
		s.renderStatus(w, r, sess, http.StatusForbidden, "A bulk action across profiles needs the global role "+RoleSupport+"; with a scoped role, pick one of your profiles.")
		return
	}
	c, err := s.q.DLQ.Counts(r.Context()) // counted now, not from the cache
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	d := confirmData{Action: action, Profile: profile, Reason: string(reason), Count: matching(&c, profile, reason), CSRF: sess.CSRF}
	if action == "replay" {
		// The CLI's `dlq replay --all` warns from the same preview.
		p, err := s.desk.Preview(r.Context(), queue.DLQQuery{Profile: profile, Reason: reason})
		if err != nil {
			s.fail(w, r, sess, err)
			return
		}
		d.Warning = p.Warning()
	}
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
	if !sess.can(RoleSupport) && (profile == "" || !sess.canIn(RoleSupport, profile)) {
		s.renderStatus(w, r, sess, http.StatusForbidden, "A bulk action across profiles needs the global role "+RoleSupport+"; with a scoped role, pick one of your profiles.")
		return
	}
	detail := "bulk: profile=" + profile + " reason=" + string(reason)
	q := queue.DLQQuery{Profile: profile, Reason: reason}
	var n int
	var err error
	title := "Replayed"
	if action == "replay" {
		n, err = s.desk.ReplayMatching(r.Context(), who(sess), q, detail)
	} else {
		title = "Purged"
		n, err = s.desk.Purge(r.Context(), who(sess), q, detail)
	}
	s.countsChanged()
	if err != nil {
		s.fail(w, r, sess, fmt.Errorf("%s %d, then: %w", strings.ToLower(title), n, err))
		return
	}
	s.done(r, sess, action, profile, "", n)
	s.render(w, http.StatusOK, "status", s.view(sess, title, "dlq", fmt.Sprintf("%s %d dead letter(s).", title, n)))
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
	if _, err := s.desk.Purge(r.Context(), who(sess), queue.DLQQuery{Profile: dl.Profile, JobID: id}, ""); err != nil {
		s.fail(w, r, sess, err)
		return
	}
	s.countsChanged()
	s.done(r, sess, queue.AuditPurge, dl.Profile, id, 1)
	http.Redirect(w, r, jobURL(dl.Profile, id)+"?done=purged", http.StatusSeeOther)
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
	dl, err := s.desk.Find(r.Context(), profile, id)
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
