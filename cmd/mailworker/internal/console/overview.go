package console

import (
	"fmt"
	"html"
	"html/template"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// maxOverviewEvents caps the events one overview reads.
const maxOverviewEvents = 500000

// series drawn per profile, with their colours (also in the legend).
var outcomes = []struct {
	Event contract.EventType
	Color string
}{
	{contract.EventSent, "#2e7d32"},
	{contract.EventDeadLettered, "#c62828"},
	{contract.EventRetrying, "#ef6c00"},
	{contract.EventDeferred, "#6a7a8c"},
}

type profileChart struct {
	Profile string
	Totals  map[string]int
	SVG     template.HTML
	// Delivery is the per-recipient delivery summary from Exchange message
	// trace (package tracking): "" when the window has no delivery event.
	Delivery string
}

// deliverySummary is the delivered and bounce rates of a profile's settled
// recipients (delivered, bounced, quarantined, filtered as spam) in the window.
func deliverySummary(t map[string]int) string {
	settled := t[string(contract.EventDelivered)] + t[string(contract.EventBounced)] +
		t[string(contract.EventQuarantined)] + t[string(contract.EventFilteredAsSpam)]
	if settled == 0 {
		return ""
	}
	pct := func(n int) string { return strconv.FormatFloat(100*float64(n)/float64(settled), 'f', 1, 64) + "%" }
	return "delivered " + pct(t[string(contract.EventDelivered)]) + " · bounced " + pct(t[string(contract.EventBounced)]) +
		" of " + strconv.Itoa(settled) + " recipients (message trace)"
}

type mailboxRow struct {
	Mailbox    string
	Recipients int
	Throttled  bool
}

type overviewData struct {
	Hours      int
	From, To   time.Time
	Charts     []profileChart
	Causes     template.HTML
	CauseList  []kv
	Waiting    []kv
	Mailboxes  []mailboxRow
	MailboxSVG template.HTML
	Limit      int
	Truncated  bool
	Legend     []legend
}

type kv struct {
	K string
	V int
}

type legend struct{ Name, Color string }

// deferCause names why a deferred event waited: the event's cause when the
// worker gave one, else what the event carries (Graph's answer).
func deferCause(ev *contract.Event) string {
	switch {
	case ev.Cause != "":
		return ev.Cause
	case ev.Graph != nil && ev.Graph.Status == http.StatusTooManyRequests:
		return "retry_after"
	case ev.Graph != nil && ev.Graph.Status >= 500:
		return "unavailable"
	default:
		return "unknown"
	}
}

func (s *Server) handleOverview(w http.ResponseWriter, r *http.Request, sess *session) {
	if !sess.can(RoleReader) {
		// Its charts and mailbox budgets span every profile.
		s.renderStatus(w, r, sess, http.StatusForbidden, "The overview spans every profile: it needs the global role "+RoleReader+" (or "+RoleSupport+").")
		return
	}
	hours := 3
	if h, err := strconv.Atoi(r.URL.Query().Get("hours")); err == nil && h >= 1 && h <= 24 {
		hours = h
	}
	now := s.cfg.Now().UTC().Truncate(time.Minute).Add(time.Minute)
	from := now.Add(-time.Duration(hours) * time.Hour)
	bins := hours * 60
	per := map[string]map[contract.EventType][]int{}
	totals := map[string]map[string]int{}
	causes := map[string]int{}
	last := map[string]contract.Event{}
	n := 0
	d := overviewData{Hours: hours, From: from, To: now, Limit: s.cfg.RecipientsPerDay}
	err := s.q.Events.EventsSince(r.Context(), from, func(ev contract.Event) bool {
		n++
		if n > maxOverviewEvents {
			d.Truncated = true
			return false
		}
		last[ev.JobID] = ev
		b := int(ev.At.Sub(from) / time.Minute)
		if b < 0 || b >= bins {
			return true
		}
		if per[ev.Profile] == nil {
			per[ev.Profile] = map[contract.EventType][]int{}
			totals[ev.Profile] = map[string]int{}
		}
		if per[ev.Profile][ev.Event] == nil {
			per[ev.Profile][ev.Event] = make([]int, bins)
		}
		per[ev.Profile][ev.Event][b]++
		totals[ev.Profile][string(ev.Event)]++
		if ev.Event == contract.EventDeferred {
			causes[deferCause(&ev)]++
		}
		return true
	})
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	profiles := make([]string, 0, len(per))
	for p := range per {
		profiles = append(profiles, p)
	}
	sort.Strings(profiles)
	for _, p := range profiles {
		d.Charts = append(d.Charts, profileChart{Profile: p, Totals: totals[p], SVG: lineChart(per[p], from, hours),
			Delivery: deliverySummary(totals[p])})
	}
	for _, o := range outcomes {
		d.Legend = append(d.Legend, legend{Name: string(o.Event), Color: o.Color})
	}
	d.CauseList = sortedKV(causes)
	d.Causes = barChart(d.CauseList, 0, "#6a7a8c")
	waiting := map[string]int{}
	real := s.cfg.Now()
	for _, ev := range last {
		if (ev.Event == contract.EventDeferred || ev.Event == contract.EventRetrying) && ev.RetryAt != nil && ev.RetryAt.After(real) {
			waiting[ev.Profile]++
		}
	}
	d.Waiting = sortedKV(waiting)
	boxes, err := s.q.Pacing.Mailboxes(r.Context(), real)
	if err != nil {
		s.fail(w, r, sess, err)
		return
	}
	sort.Slice(boxes, func(i, j int) bool { return boxes[i].Recipients > boxes[j].Recipients })
	var bars []kv
	for _, b := range boxes {
		d.Mailboxes = append(d.Mailboxes, mailboxRow{Mailbox: b.Mailbox, Recipients: b.Recipients, Throttled: b.Recipients >= s.cfg.RecipientsPerDay})
		if len(bars) < 20 {
			bars = append(bars, kv{b.Mailbox, b.Recipients})
		}
	}
	d.MailboxSVG = barChart(bars, s.cfg.RecipientsPerDay, "#1565c0")
	s.render(w, http.StatusOK, "overview", s.view(sess, "Overview", "overview", d))
}

func sortedKV(m map[string]int) []kv {
	out := make([]kv, 0, len(m))
	for k, v := range m {
		out = append(out, kv{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].V > out[j].V || out[i].V == out[j].V && out[i].K < out[j].K })
	return out
}

// lineChart draws outcomes per minute as an SVG of polylines. Only numbers
// and escaped text go into it; colours are presentation attributes (no
// style attribute: the CSP allows no inline style).
func lineChart(series map[contract.EventType][]int, from time.Time, hours int) template.HTML {
	const W, H, left, bottom, top = 760, 180, 40, 22, 10
	bins := hours * 60
	maxV := 1
	for _, s := range series {
		for _, v := range s {
			maxV = max(maxV, v)
		}
	}
	pw, ph := float64(W-left-10), float64(H-bottom-top)
	x := func(i int) float64 { return float64(left) + pw*float64(i)/float64(max(bins-1, 1)) }
	y := func(v int) float64 { return float64(top) + ph - ph*float64(v)/float64(maxV) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="outcomes per minute">`, W, H, W, H)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>`, left, H-bottom, W-10, H-bottom)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>`, left, top, left, H-bottom)
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="10" text-anchor="end">%d</text>`, left-4, top+8, maxV)
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="10" text-anchor="end">0</text>`, left-4, H-bottom)
	step := 60
	if hours > 6 {
		step = 180
	}
	for i := 0; i < bins; i += step {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="10" text-anchor="middle">%s</text>`, x(i), H-6, from.Add(time.Duration(i)*time.Minute).Format("15:04"))
	}
	for _, o := range outcomes {
		s := series[o.Event]
		if s == nil {
			continue
		}
		var pts strings.Builder
		for i, v := range s {
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(i), y(v))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"><title>%s</title></polyline>`, o.Color, strings.TrimSpace(pts.String()), html.EscapeString(string(o.Event)))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // #nosec G203 -- built from numbers and escaped text above
}

// barChart draws horizontal bars; with limit > 0 a red line marks it.
func barChart(rows []kv, limit int, color string) template.HTML {
	if len(rows) == 0 {
		return ""
	}
	const W, rowH, label = 760, 22, 260
	H := rowH*len(rows) + 10
	maxV := max(limit, 1)
	for _, r := range rows {
		maxV = max(maxV, r.V)
	}
	pw := float64(W - label - 70)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img">`, W, H, W, H)
	for i, r := range rows {
		yy := 5 + i*rowH
		wv := pw * float64(r.V) / float64(maxV)
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" text-anchor="end">%s</text>`, label-6, yy+14, html.EscapeString(truncRunes(r.K, 40)))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`, label, yy+2, wv, rowH-6, color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="12">%d</text>`, float64(label)+wv+4, yy+14, r.V)
	}
	if limit > 0 {
		lx := float64(label) + pw*float64(limit)/float64(maxV)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="0" x2="%.1f" y2="%d" stroke="#c62828" stroke-dasharray="4 3"><title>limit %d</title></line>`, lx, lx, H, limit)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // #nosec G203 -- built from numbers and escaped text above
}

func truncRunes(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
