package console

import (
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/support"
)

// maxResults caps a search's result list.
const maxResults = 200

type hit struct {
	JobID, Profile, Where string
	At                    time.Time
	Reason                contract.Reason
	Subject               string
	Seq                   uint64
}

type searchData struct {
	Kind, Q string
	Hours   int
	Ran     bool
	Hits    []hit
	More    bool
	Err     string
	CSRF    string
}

var reHash = regexp.MustCompile(`^[0-9a-f]{64}$`)

// handleSearch searches by job id (straight to the job), by metadata value
// (status events of the last hours, then dead-letter bodies), or by the
// keyed hash of a recipient (dead-letter bodies; see handleSearchRecipient).
func (s *Server) handleSearch(w http.ResponseWriter, r *http.Request, sess *session) {
	q := r.URL.Query()
	d := searchData{Kind: q.Get("kind"), Q: strings.TrimSpace(q.Get("q")), Hours: 24, CSRF: sess.CSRF}
	if h, err := strconv.Atoi(q.Get("hours")); err == nil && h > 0 && h <= 24*31 {
		d.Hours = h
	}
	rh := q.Get("rh")
	switch {
	case d.Kind == "id" && d.Q != "":
		if !contract.ValidJobID(d.Q) {
			d.Err = "A job id is 1 to 128 letters, digits, _ or -."
			break
		}
		// A job id is unique within its profile: find the profiles that
		// know it (job state, dead letters), and go straight to the job when
		// there is one.
		d.Ran = true
		if err := s.searchID(r, &d); err != nil {
			s.searchFailed(w, r, sess, err)
			return
		}
		if len(d.Hits) == 1 && sess.canIn(RoleReader, d.Hits[0].Profile) {
			http.Redirect(w, r, jobURL(d.Hits[0].Profile, d.Hits[0].JobID), http.StatusSeeOther)
			return
		}
	case d.Kind == "meta" && d.Q != "":
		d.Ran = true
		if err := s.searchMetadata(r, &d); err != nil {
			s.searchFailed(w, r, sess, err)
			return
		}
	case rh != "":
		d.Kind, d.Ran = "rcpt", true
		if !reHash.MatchString(rh) {
			d.Err = "Search again from the form."
			break
		}
		if err := s.searchRecipient(r, &d, rh); err != nil {
			s.searchFailed(w, r, sess, err)
			return
		}
	}
	// Only the profiles the person may read.
	if scoped, all := sess.scope(RoleReader); !all {
		kept := d.Hits[:0]
		for _, h := range d.Hits {
			if slices.Contains(scoped, h.Profile) {
				kept = append(kept, h)
			}
		}
		d.Hits = kept
	}
	s.render(w, http.StatusOK, "search", s.view(sess, "Search", "search", d))
}

func (s *Server) searchID(r *http.Request, d *searchData) error {
	seen := map[string]bool{}
	profiles := make([]string, 0, len(s.cfg.AllowedSenders))
	for p := range s.cfg.AllowedSenders {
		profiles = append(profiles, p)
	}
	sort.Strings(profiles)
	for _, p := range profiles {
		st, _, err := s.q.States.Get(r.Context(), p, d.Q)
		if err == nil {
			seen[p] = true
			d.Hits = append(d.Hits, hit{JobID: d.Q, Profile: p, Where: "job state " + string(st.State), At: st.UpdatedAt})
		}
	}
	return s.scanDLQ(r, queue.DLQQuery{JobID: d.Q}, d, func(*jobHead) bool { return true }, map[string]bool{}, func(profile, id string) bool {
		return id == d.Q && !seen[profile]
	})
}

// handleSearchRecipient takes a recipient by POST (so the address never
// appears in a URL, a proxy log or the browser history), and redirects to
// the search by its keyed hash.
func (s *Server) handleSearchRecipient(w http.ResponseWriter, r *http.Request, sess *session) {
	a := strings.TrimSpace(r.PostForm.Get("rcpt"))
	if a == "" {
		http.Redirect(w, r, "/search", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/search?rh="+s.rcptHash(a), http.StatusSeeOther)
}

func (s *Server) searchMetadata(r *http.Request, d *searchData) error {
	seen := map[string]bool{}
	want := strings.ToLower(d.Q)
	since := s.cfg.Now().Add(-time.Duration(d.Hours) * time.Hour)
	err := s.q.Events.EventsSince(r.Context(), since, func(ev contract.Event) bool {
		for _, v := range ev.Metadata {
			if strings.ToLower(v) == want && !seen[ev.Profile+"/"+ev.JobID] {
				seen[ev.Profile+"/"+ev.JobID] = true
				if len(d.Hits) == maxResults {
					d.More = true
					return false
				}
				d.Hits = append(d.Hits, hit{JobID: ev.JobID, Profile: ev.Profile, Where: "status " + string(ev.Event), At: ev.At})
			}
		}
		return true
	})
	if err != nil || d.More {
		return err
	}
	return s.scanDLQ(r, queue.DLQQuery{}, d, func(j *jobHead) bool {
		for _, v := range j.Metadata {
			if strings.ToLower(v) == want {
				return true
			}
		}
		return false
	}, seen)
}

// jobHead is the part of a job body a search reads.
type jobHead struct {
	Subject  string            `json:"subject"`
	To       []string          `json:"to"`
	Cc       []string          `json:"cc"`
	Bcc      []string          `json:"bcc"`
	Metadata map[string]string `json:"metadata"`
}

// searchRecipient compares the keyed hash of every recipient of every dead
// letter with rh: the address looked for is never held in clear, and no
// index of recipients is written anywhere.
func (s *Server) searchRecipient(r *http.Request, d *searchData, rh string) error {
	return s.scanDLQ(r, queue.DLQQuery{}, d, func(j *jobHead) bool {
		for _, l := range [][]string{j.To, j.Cc, j.Bcc} {
			for _, a := range l {
				if constantEq(s.rcptHash(a), rh) {
					return true
				}
			}
		}
		return false
	}, map[string]bool{})
}

// scanDLQ runs a search over the dead letters' bodies through the support
// service, which bounds how many run at once (support.ErrBusy beyond) and
// how much of the records each holds in memory. Per record, only the head
// of the job is decoded (jobHead: no body text, no attachment).
func (s *Server) scanDLQ(r *http.Request, q queue.DLQQuery, d *searchData, match func(*jobHead) bool, seen map[string]bool, pre ...func(profile, id string) bool) error {
	return s.desk.Scan(r.Context(), q, func(dl contract.DeadLetter) bool {
		for _, f := range pre {
			if !f(dl.Profile, dl.JobID) {
				return true
			}
		}
		var j jobHead
		if json.Unmarshal(dl.Body, &j) != nil || !match(&j) {
			return true
		}
		if seen[dl.Profile+"/"+dl.JobID] {
			return true
		}
		seen[dl.Profile+"/"+dl.JobID] = true
		if len(d.Hits) == maxResults {
			d.More = true
			return false
		}
		d.Hits = append(d.Hits, hit{JobID: dl.JobID, Profile: dl.Profile, Where: "dead letter",
			Reason: dl.Reason, Subject: j.Subject, At: dl.FailedAt, Seq: dl.Seq})
		return true
	})
}

// searchFailed answers a search that could not run: 503 with Retry-After
// when the scans allowed are all running, else as fail does.
func (s *Server) searchFailed(w http.ResponseWriter, r *http.Request, sess *session, err error) {
	if errors.Is(err, support.ErrBusy) {
		w.Header().Set("Retry-After", strconv.Itoa(int(support.RetryAfter.Seconds())))
		s.log(r, sess).Warn().Msg("console: search refused: scans busy")
		s.renderStatus(w, r, sess, http.StatusServiceUnavailable, "Other searches are running: try again in a few seconds.")
		return
	}
	s.fail(w, r, sess, err)
}
