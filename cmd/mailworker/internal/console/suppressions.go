package console

// The suppression list (delivery tracking): every entry of the profiles the
// person may read, addresses masked as on the job page; a search by
// address (POST, compared as a keyed hash, as the recipient search); and
// removal (support role), through the support service, which records it in
// MAIL_AUDIT first.

import (
	"errors"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/support"
)

// suppressionRow is one entry as the page shows it: the address masked,
// the reason with its mailboxes masked, and the entry's key (queue.RecipientKey:
// what a removal names, never the address).
type suppressionRow struct {
	Profile, Masked, Key, Reason, JobID string
	At, ExpiresAt                       time.Time
	Expired, CanRemove                  bool
}

type suppressionsData struct {
	Profile  string
	Profiles []string
	Searched bool // the list is filtered by a searched address
	Rows     []suppressionRow
	More     bool
	CSRF     string
	Err      string
}

// reKey is a recipient key (queue.RecipientKey: base32 of 20 bytes, lower-case).
var reKey = regexp.MustCompile(`^[a-z2-7]{32}$`)

// maxSuppressionRows caps the page.
const maxSuppressionRows = 500

func (s *Server) handleSuppressions(w http.ResponseWriter, r *http.Request, sess *session) {
	q := r.URL.Query()
	d := suppressionsData{Profile: q.Get("profile"), CSRF: sess.CSRF}
	if d.Profile != "" && (!reProfile.MatchString(d.Profile) || !sess.canIn(RoleReader, d.Profile)) {
		s.renderStatus(w, r, sess, http.StatusForbidden, "You do not have the role "+ScopedRole(RoleReader, d.Profile)+".")
		return
	}
	rh := q.Get("rh")
	if rh != "" && !reHash.MatchString(rh) {
		d.Err = "Search again from the form."
		rh = ""
	}
	d.Searched = rh != ""
	for p := range s.cfg.AllowedSenders {
		if sess.canIn(RoleReader, p) {
			d.Profiles = append(d.Profiles, p)
		}
	}
	sort.Strings(d.Profiles)
	all, err := s.desk.Suppressions(r.Context(), d.Profile)
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	now := s.cfg.Now()
	sort.Slice(all, func(i, j int) bool { return all[i].At.After(all[j].At) })
	for _, e := range all {
		if !sess.canIn(RoleReader, e.Profile) {
			continue
		}
		if rh != "" && !constantEq(s.rcptHash(e.Address), rh) {
			continue
		}
		if len(d.Rows) == maxSuppressionRows {
			d.More = true
			break
		}
		d.Rows = append(d.Rows, suppressionRow{Profile: e.Profile, Masked: support.MaskAddr(e.Address), Key: queue.RecipientKey(e.Address),
			Reason: support.MaskText(e.Reason, ""), JobID: e.JobID, At: e.At, ExpiresAt: e.ExpiresAt,
			Expired: !now.Before(e.ExpiresAt), CanRemove: sess.canIn(RoleSupport, e.Profile)})
	}
	v := s.view(sess, "Suppressed recipients", "suppressions", d)
	if q.Get("done") == "removed" {
		v.Flash = "removed from the suppression list (recorded in the audit log)"
	}
	s.render(w, http.StatusOK, "suppressions", v)
}

// handleSuppressionSearch takes the address by POST (never in a URL, a
// proxy log or the browser history) and redirects to the list filtered by
// its keyed hash.
func (s *Server) handleSuppressionSearch(w http.ResponseWriter, r *http.Request, sess *session) {
	a := strings.TrimSpace(r.PostForm.Get("rcpt"))
	u := "/suppressions"
	if p := r.PostForm.Get("profile"); reProfile.MatchString(p) {
		u += "?profile=" + p
	}
	if a != "" {
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		u += sep + "rh=" + s.rcptHash(a)
	}
	http.Redirect(w, r, u, http.StatusSeeOther)
}

// handleUnsuppress removes one entry, named by profile and key.
func (s *Server) handleUnsuppress(w http.ResponseWriter, r *http.Request, sess *session) {
	profile, key := r.PostForm.Get("profile"), r.PostForm.Get("key")
	if !reProfile.MatchString(profile) || !reKey.MatchString(key) {
		s.renderStatus(w, r, sess, http.StatusBadRequest, "Not a suppression list entry.")
		return
	}
	if !sess.canIn(RoleSupport, profile) {
		s.renderStatus(w, r, sess, http.StatusForbidden, "You do not have the role "+ScopedRole(RoleSupport, profile)+": nothing removed.")
		return
	}
	err := s.desk.Unsuppress(r.Context(), who(sess), profile, key, "")
	if errors.Is(err, support.ErrNotSuppressed) {
		s.renderStatus(w, r, sess, http.StatusNotFound, "This address is no longer on the suppression list (removed or expired meanwhile?).")
		return
	}
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	s.done(r, sess, queue.AuditUnsuppress, profile, "", 1)
	http.Redirect(w, r, "/suppressions?profile="+profile+"&done=removed", http.StatusSeeOther)
}
