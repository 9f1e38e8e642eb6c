package console

// The dead-letter list: filters, paging and the counts per profile and reason.

import (
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

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
	// A person with profile-scoped roles only sees the profiles they
	// hold: the list opens on the first, and any other is refused.
	scoped, all := sess.scope(RoleReader)
	if p := q.Get("profile"); !all && p == "" && len(scoped) > 0 {
		nq := r.URL.Query()
		nq.Set("profile", scoped[0])
		http.Redirect(w, r, "/dlq?"+nq.Encode(), http.StatusSeeOther)
		return
	}
	if p := q.Get("profile"); p != "" && !sess.canIn(RoleReader, p) {
		s.renderStatus(w, r, sess, http.StatusForbidden, "You do not have the role "+RoleReader+" (or "+ScopedRole(RoleReader, p)+") for this profile.")
		return
	}
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
	if d.Counts != nil && !all {
		d.Counts = onlyProfiles(d.Counts, scoped)
	}
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
	v := s.view(sess, "Dead letters", "dlq", d)
	v.Support = sess.can(RoleSupport) || d.Profile != "" && sess.canIn(RoleSupport, d.Profile)
	s.render(w, http.StatusOK, "list", v)
}

// onlyProfiles is c narrowed to profiles (a copy).
func onlyProfiles(c *queue.DLQCounts, profiles []string) *queue.DLQCounts {
	out := &queue.DLQCounts{ByProfile: map[string]map[contract.Reason]int{}, LastSeq: c.LastSeq}
	for _, p := range profiles {
		if byReason, ok := c.ByProfile[p]; ok {
			out.ByProfile[p] = byReason
			for _, n := range byReason {
				out.Total += n
			}
		}
	}
	return out
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
