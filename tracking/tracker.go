package tracking

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Tracer is the message trace API (graphmail.Client).
type Tracer interface {
	MessageTraces(ctx context.Context, q graphmail.TraceQuery, onRequest func(context.Context) error) ([]graphmail.MessageTrace, error)
	TraceDetails(ctx context.Context, traceID, recipient string) ([]graphmail.TraceDetail, error)
}

// Config tunes the tracker. Zero values take the defaults.
type Config struct {
	// Interval between passes. Default 1m.
	Interval time.Duration
	// Horizon: a recipient without a final trace status this long after
	// the send gets `delivery_unknown`. Default 24h: Exchange retries a
	// deferred delivery and sends its NDR within about a day (message trace
	// shows it `pending` meanwhile).
	Horizon time.Duration
	// SuppressFor is how long a hard bounce keeps an address suppressed.
	// Default 90 days.
	SuppressFor time.Duration
	// Skew widens each sender's query window before the first send (clock
	// differences between the worker and Exchange). Default 2m.
	Skew time.Duration
	// AmbiguityWait: when several jobs of one sender to one address wait
	// for their rows without a Message-ID, they are matched in order only
	// once all their rows are in the trace, or this long after the last
	// was sent. Default 10m.
	AmbiguityWait time.Duration
	// BudgetLimit requests per BudgetWindow across all replicas. Default 80
	// per 5m: Microsoft's tenant limit is 100, shared with the admins'
	// own message trace (Get-MessageTraceV2 counts against the same limit).
	BudgetLimit  int
	BudgetWindow time.Duration
	Now          func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = time.Minute
	}
	if c.Horizon <= 0 {
		c.Horizon = 24 * time.Hour
	}
	if c.SuppressFor <= 0 {
		c.SuppressFor = 90 * 24 * time.Hour
	}
	if c.Skew <= 0 {
		c.Skew = 2 * time.Minute
	}
	if c.AmbiguityWait <= 0 {
		c.AmbiguityWait = 10 * time.Minute
	}
	if c.BudgetLimit <= 0 {
		c.BudgetLimit = 80
	}
	if c.BudgetWindow <= 0 {
		c.BudgetWindow = 5 * time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Tracker publishes delivery events for the records in the store.
type Tracker struct {
	cfg    Config
	st     *Store
	states *queue.States
	events *queue.Events
	tracer Tracer
	budget *Budget
	log    zerolog.Logger
	m      *metrics
	spent  atomic.Int64 // trace requests granted by the budget
	// afterPublish and afterRecord, when set (tests), run after an event
	// is stored, and after the record says so: an error there is a crash.
	afterPublish, afterRecord func(contract.Event) error
}

type metrics struct {
	events   *prometheus.CounterVec
	requests *prometheus.CounterVec
}

// Delivery event types the tracker publishes (a closed set: a metric label).
var deliveryEvents = []contract.EventType{contract.EventDelivered, contract.EventBounced, contract.EventQuarantined,
	contract.EventFilteredAsSpam, contract.EventExpanded, contract.EventDeliveryUnknown, contract.EventSuppressed}

// RegisterMetrics registers the tracker's metrics with reg, every label value
// of profiles pre-created (New does it; the README's metrics table test
// calls it alone).
func RegisterMetrics(reg prometheus.Registerer, profiles []string) { newMetrics(reg, profiles) }

func newMetrics(reg prometheus.Registerer, profiles []string) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mailworker", Name: "delivery_events_total",
			Help: "Delivery events published per profile and event (delivered, bounced, …), from Exchange message trace."}, []string{"profile", "event"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mailworker", Name: "trace_requests_total",
			Help: "Message trace requests by outcome (ok, throttled, error)."}, []string{"outcome"}),
	}
	for _, p := range profiles {
		for _, e := range deliveryEvents {
			m.events.WithLabelValues(p, string(e))
		}
	}
	for _, o := range []string{"ok", "throttled", "error"} {
		m.requests.WithLabelValues(o)
	}
	if reg != nil {
		reg.MustRegister(m.events, m.requests)
	}
	return m
}

// New returns a tracker. reg may be nil. profiles pre-creates the metric
// labels (bounce rate per profile: mailworker_delivery_events_total).
func New(cfg Config, st *Store, states *queue.States, events *queue.Events, tracer Tracer, log zerolog.Logger,
	reg prometheus.Registerer, profiles []string) *Tracker {
	cfg = cfg.withDefaults()
	m := newMetrics(reg, profiles)
	return &Tracker{cfg: cfg, st: st, states: states, events: events, tracer: tracer,
		budget: st.NewBudget(cfg.BudgetLimit, cfg.BudgetWindow, cfg.Now), log: log, m: m}
}

// Run makes a pass every Interval until ctx ends, on the one replica that
// holds the tracking lease (3 intervals long, renewed every pass; another
// replica takes over when it lapses). A pass that spent k requests is
// followed by a wait of at least k × BudgetWindow / BudgetLimit, so that
// the budget is spread evenly instead of spent in a burst and then waited
// for in the middle of a pass.
func (t *Tracker) Run(ctx context.Context) {
	l := newLease(t.st.budget, 3*t.cfg.Interval, t.cfg.Now)
	for {
		wait := t.cfg.Interval
		mine, err := l.hold(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			t.log.Warn().Err(err).Msg("delivery tracking: lease unavailable; trying again next interval")
		case mine:
			before := t.spent.Load()
			if err := t.Pass(ctx); err != nil && ctx.Err() == nil {
				t.log.Warn().Err(err).Msg("delivery tracking pass failed; the next pass catches up")
			}
			used := t.spent.Load() - before
			wait = max(wait, time.Duration(used)*t.cfg.BudgetWindow/time.Duration(t.cfg.BudgetLimit))
			l.ttl = max(l.ttl, 3*wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

type open struct {
	key string
	rec *Record
	rev uint64
}

// Pass reads every open record, settles those whose job is no longer in
// flight, queries message trace once per sender mailbox over the window of
// its open sends, and publishes what it finds. It returns the first error
// that stopped it (the records stay: the next pass resumes).
func (t *Tracker) Pass(ctx context.Context) error {
	lister, err := t.st.records.ListKeys(ctx)
	if err != nil {
		return err
	}
	now := t.cfg.Now()
	bySender := map[string][]*open{}
	// Every record still in the bucket, settled ones included: a settled
	// record's Message-ID keeps its rows from being matched to a later
	// job of the same sender and recipient (closeSettled).
	var all []*open
	for key := range lister.Keys() {
		rec, rev, err := t.st.get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		o := &open{key: key, rec: rec, rev: rev}
		if rec.SentAt.IsZero() {
			done, err := t.settleUnsent(ctx, o, now)
			if err != nil {
				return err
			}
			if done {
				continue
			}
		}
		all = append(all, o)
		if o.rec.SentAt.IsZero() {
			continue // still in flight
		}
		if err := t.publishSuppressed(ctx, o); err != nil {
			return err
		}
		bySender[rec.From] = append(bySender[rec.From], o)
	}
	senders := make([]string, 0, len(bySender))
	for s := range bySender {
		senders = append(senders, s)
	}
	sort.Strings(senders)
	var failures []failure
	for _, s := range senders {
		recs := bySender[s]
		if !slices.ContainsFunc(recs, func(o *open) bool { return o.rec.open() }) {
			continue // only settled records: nothing to ask message trace
		}
		f, err := t.traceSender(ctx, s, recs, now)
		if err != nil {
			return err
		}
		failures = append(failures, f...)
	}
	if err := t.bounces(ctx, failures, now); err != nil {
		return err
	}
	return t.closeSettled(ctx, all, now)
}

// settleUnsent looks at the job state of a record without SentAt: sent →
// SentAt is filled in; dead-lettered → the suppressed recipients' events are
// published and the record removed (true).
func (t *Tracker) settleUnsent(ctx context.Context, o *open, now time.Time) (bool, error) {
	st, _, err := t.states.Get(ctx, o.rec.Profile, o.rec.JobID)
	switch {
	case errors.Is(err, contract.ErrNoState):
		if now.Sub(o.rec.Attempted) > t.cfg.Horizon {
			return true, t.st.records.Delete(ctx, o.key) // the state expired: nothing to learn
		}
		return false, nil
	case err != nil:
		return false, err
	}
	switch st.State {
	case contract.StateSent:
		o.rec.SentAt = st.UpdatedAt
		rev, err := t.st.put(ctx, o.rec, o.rev)
		if err != nil {
			return false, err
		}
		o.rev = rev
		return false, nil
	case contract.StateDeadLettered:
		if err := t.publishSuppressed(ctx, o); err != nil {
			return false, err
		}
		return true, t.st.records.Delete(ctx, o.key)
	}
	return false, nil
}

func (t *Tracker) publishSuppressed(ctx context.Context, o *open) error {
	for i := range o.rec.Recipients {
		r := &o.rec.Recipients[i]
		if r.Suppressed && r.Outcome == "" {
			if err := t.publish(ctx, o, i, contract.EventSuppressed, nil, t.cfg.Now()); err != nil {
				return err
			}
		}
	}
	return nil
}

// traceSender queries the sender's traces over the window of its open
// records (paged; each page one request of the shared budget) and
// publishes every final status it can match (correlate). recs are the
// sender's sent records, settled ones included (their Message-IDs claim
// their rows).
func (t *Tracker) traceSender(ctx context.Context, sender string, recs []*open, now time.Time) ([]failure, error) {
	from := now
	for _, o := range recs {
		if o.rec.open() {
			from = minTime(from, o.rec.SentAt, o.rec.Attempted)
		}
	}
	from = from.Add(-t.cfg.Skew)
	rows, err := t.tracer.MessageTraces(ctx, graphmail.TraceQuery{Sender: sender, From: from, To: now.Add(t.cfg.Skew)}, t.take)
	if err != nil {
		return nil, t.traceFailed(ctx, err)
	}
	t.m.requests.WithLabelValues("ok").Inc()
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].ReceivedDateTime.Before(rows[j].ReceivedDateTime) })
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].rec.Attempted.Before(recs[j].rec.Attempted) })
	var failures []failure
	for _, m := range t.correlate(recs, rows, now) {
		o, i := m.o, m.i
		if m.row < 0 {
			if now.Sub(o.rec.SentAt) > t.cfg.Horizon {
				if err := t.publish(ctx, o, i, contract.EventDeliveryUnknown, nil, now); err != nil {
					return nil, err
				}
			}
			continue
		}
		row := rows[m.row]
		ev, final := eventFor(row.Status)
		if !final {
			if now.Sub(o.rec.SentAt) > t.cfg.Horizon {
				if err := t.publish(ctx, o, i, contract.EventDeliveryUnknown, &row, now); err != nil {
					return nil, err
				}
			}
			continue // pending, gettingStatus: the next pass reads the window again
		}
		if ev == contract.EventBounced {
			// Its reason needs a detail request: after the rest, as far as
			// the budget goes without waiting (the others are not held
			// up behind a burst of bounces).
			failures = append(failures, failure{o: o, i: i, row: row})
			continue
		}
		if err := t.publishRow(ctx, o, i, ev, &row, ""); err != nil {
			return nil, err
		}
	}
	return failures, nil
}

func minTime(a time.Time, ts ...time.Time) time.Time {
	for _, t := range ts {
		if !t.IsZero() && t.Before(a) {
			a = t
		}
	}
	return a
}

// matched is one open recipient (record o, index i) and its trace row
// (an index into rows; -1: none found yet).
type matched struct {
	o   *open
	i   int
	row int
}

// correlate pairs the open recipients of recs (one sender, sorted by
// Attempted) with rows (sorted by ReceivedDateTime):
//
//  1. By Message-ID: a record that knows its Message-ID (draft mode, or
//     learned in step 2) takes only the rows of that Message-ID, and no
//     other record may take them. Settled records still in the bucket
//     claim their rows too.
//  2. By sender, recipient and time, for records without a Message-ID:
//     per recipient address, the records' sends in order take the rows
//     received at or after them (less Skew) in order, skipping rows
//     claimed by a Message-ID. When several such records wait for the
//     same address, they are matched only once as many rows are there as
//     records (or AmbiguityWait after the last of them was sent), so that
//     a later mail's row is not given to an earlier one whose row has not
//     appeared yet. A matched row's Message-ID is learned by the record
//     (MessageIDLearned), so that its other recipients, and every later
//     pass, match by Message-ID.
//
// What stays possible (docs/microsoft.md, "Correlation"): two sendMail
// jobs from one mailbox to one address within Skew that Exchange received
// in the other order than the worker called Graph, or a mail sent from the
// mailbox outside mailworker to the same address in the same minutes, can
// swap rows between those jobs.
func (t *Tracker) correlate(recs []*open, rows []graphmail.MessageTrace, now time.Time) []matched {
	used := make([]bool, len(rows))
	claimed := map[string]bool{}
	for _, o := range recs {
		if o.rec.MessageID != "" {
			claimed[strings.ToLower(o.rec.MessageID)] = true
		}
	}
	type rk struct {
		o *open
		i int
	}
	found := map[rk]int{}
	// Rows by recipient (each list in time order, as rows are) and by
	// Message-ID and recipient: a pass over many open jobs stays linear.
	byRcpt := map[string][]int{}
	byMID := map[string][]int{}
	for k, row := range rows {
		a := strings.ToLower(row.RecipientAddress)
		byRcpt[a] = append(byRcpt[a], k)
		if row.MessageID != "" {
			id := strings.ToLower(row.MessageID) + "\x00" + a
			byMID[id] = append(byMID[id], k)
		}
	}
	byID := func() {
		for _, o := range recs {
			if o.rec.MessageID == "" {
				continue
			}
			for i := range o.rec.Recipients {
				r := &o.rec.Recipients[i]
				if r.Outcome != "" || r.Suppressed {
					continue
				}
				if _, ok := found[rk{o, i}]; ok {
					continue
				}
				for _, k := range byMID[strings.ToLower(o.rec.MessageID)+"\x00"+strings.ToLower(r.Address)] {
					if !used[k] {
						used[k] = true
						found[rk{o, i}] = k
						break
					}
				}
			}
		}
	}
	// byHint: a MIME job whose own Message-ID field is on a row to one of
	// its recipients has that Message-ID (Exchange kept it): from then on
	// it is matched by it.
	byHint := func() {
		for _, o := range recs {
			if o.rec.MessageID != "" || o.rec.MessageIDHint == "" || !o.rec.open() || claimed[strings.ToLower(o.rec.MessageIDHint)] {
				continue
			}
			for _, r := range o.rec.Recipients {
				if r.Outcome != "" || r.Suppressed {
					continue
				}
				if len(byMID[strings.ToLower(o.rec.MessageIDHint)+"\x00"+strings.ToLower(r.Address)]) > 0 {
					o.rec.MessageID = o.rec.MessageIDHint
					claimed[strings.ToLower(o.rec.MessageID)] = true
					break
				}
			}
		}
	}
	// byTime matches the records without a Message-ID and reports whether
	// one learned its Message-ID.
	byTime := func() bool {
		groups := map[string][]rk{}
		var addrs []string
		for _, o := range recs {
			if o.rec.MessageID != "" || !o.rec.open() {
				continue
			}
			for i, r := range o.rec.Recipients {
				if r.Outcome != "" || r.Suppressed {
					continue
				}
				if _, ok := groups[r.Address]; !ok {
					addrs = append(addrs, r.Address)
				}
				groups[r.Address] = append(groups[r.Address], rk{o, i})
			}
		}
		// Addresses that one record waits for first: what they learn
		// (a Message-ID) settles the same records' other recipients, and
		// takes those rows out of the ambiguous groups, before any group
		// of several is matched in order.
		sort.SliceStable(addrs, func(i, j int) bool { return len(groups[addrs[i]]) == 1 && len(groups[addrs[j]]) > 1 })
		learned := false
		for _, a := range addrs {
			g := groups[a]
			if len(g) > 1 && learned {
				return true // match again by Message-ID first
			}
			var cands []int
			for _, k := range byRcpt[strings.ToLower(a)] {
				row := rows[k]
				if !used[k] && !claimed[strings.ToLower(row.MessageID)] && !row.ReceivedDateTime.Before(g[0].o.rec.Attempted.Add(-t.cfg.Skew)) {
					cands = append(cands, k)
				}
			}
			if len(g) > 1 && len(cands) < len(g) {
				youngest := g[len(g)-1].o.rec
				if now.Sub(maxTime(youngest.SentAt, youngest.Attempted)) < t.cfg.AmbiguityWait {
					continue // wait until every one of these mails is in the trace
				}
			}
			next := 0
			for _, x := range g {
				if x.o.rec.MessageID != "" {
					// Learned from another of its recipients in this round:
					// the next round matches it by Message-ID.
					continue
				}
				for next < len(cands) && rows[cands[next]].ReceivedDateTime.Before(x.o.rec.Attempted.Add(-t.cfg.Skew)) {
					next++
				}
				if next == len(cands) {
					break
				}
				k := cands[next]
				next++
				used[k] = true
				found[x] = k
				if mid := rows[k].MessageID; mid != "" {
					x.o.rec.MessageID, x.o.rec.MessageIDLearned = mid, true
					claimed[strings.ToLower(mid)] = true
					learned = true
				}
			}
		}
		return learned
	}
	byHint()
	for range len(recs) + 1 {
		byID()
		if !byTime() {
			break
		}
	}
	byID()
	var out []matched
	for _, o := range recs {
		for i, r := range o.rec.Recipients {
			if r.Outcome != "" || r.Suppressed || o.rec.SentAt.IsZero() {
				continue
			}
			k, ok := found[rk{o, i}]
			if !ok {
				k = -1
			}
			out = append(out, matched{o: o, i: i, row: k})
		}
	}
	return out
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// bounces publishes the failures with their reason, one detail request
// each, as far as the budget goes without waiting; the rest wait for the
// next pass (their records stay open).
func (t *Tracker) bounces(ctx context.Context, failures []failure, now time.Time) error {
	for _, f := range failures {
		wait, err := t.budget.try(ctx)
		if err != nil {
			return err
		}
		if wait > 0 {
			break // the next pass reads them again
		}
		t.spent.Add(1)
		detail, err := t.failureDetail(ctx, f.row)
		if err != nil {
			return err
		}
		// The suppression first: a pass that stops after the event is
		// recorded never comes back to this recipient, one that stops
		// before comes back and suppresses again (the same entry).
		if hardBounce(detail) {
			r := f.o.rec.Recipients[f.i]
			if err := t.st.Suppress(ctx, Suppression{Address: r.Address, Profile: f.o.rec.Profile, Reason: detail,
				JobID: f.o.rec.JobID, At: now, ExpiresAt: now.Add(t.cfg.SuppressFor)}); err != nil {
				return err
			}
		}
		if err := t.publishRow(ctx, f.o, f.i, contract.EventBounced, &f.row, detail); err != nil {
			return err
		}
	}
	return nil
}

// closeSettled removes the records whose recipients all have their event,
// once no open or future record of the same sender can see their rows: a
// settled record's Message-ID keeps its rows from being taken by a later
// job to the same address (correlate), so it stays while a record of its
// sender attempted before its SentAt + 2×Skew is open, and at least until
// now is past that (a record without a Message-ID claims nothing and goes
// at once; every record goes past the Horizon).
func (t *Tracker) closeSettled(ctx context.Context, recs []*open, now time.Time) error {
	firstOpen := map[string]time.Time{} // per sender, the earliest Graph call of an open record
	for _, o := range recs {
		if f, ok := firstOpen[o.rec.From]; o.rec.open() && (!ok || o.rec.Attempted.Before(f)) {
			firstOpen[o.rec.From] = o.rec.Attempted
		}
	}
	for _, o := range recs {
		if o.rec.open() {
			continue
		}
		if o.rec.MessageID != "" && now.Sub(o.rec.SentAt) <= t.cfg.Horizon {
			until := o.rec.SentAt.Add(2 * t.cfg.Skew)
			if f, ok := firstOpen[o.rec.From]; now.Before(until) || ok && !f.After(until) {
				continue
			}
		}
		if err := t.st.records.Delete(ctx, o.key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
	}
	return nil
}

type failure struct {
	o   *open
	i   int
	row graphmail.MessageTrace
}

func eventFor(status string) (contract.EventType, bool) {
	switch status {
	case graphmail.TraceDelivered:
		return contract.EventDelivered, true
	case graphmail.TraceFailed:
		return contract.EventBounced, true
	case graphmail.TraceQuarantined:
		return contract.EventQuarantined, true
	case graphmail.TraceFilteredAsSpam:
		return contract.EventFilteredAsSpam, true
	case graphmail.TraceExpanded:
		return contract.EventExpanded, true
	}
	return "", false // pending, gettingStatus, unknownFutureValue
}

var enhancedStatus = regexp.MustCompile(`\b([245])\.\d{1,3}\.\d{1,3}\b`)

// tenantBlocks are permanent codes that say nothing about the recipient:
// Exchange refused the tenant, not the address. 5.7.233 is the tenant
// external recipient rate limit (TERRL) and 5.7.232 its trial-tenant form
// ("Your message can't be sent because your tenant exceeded its daily limit
// for sending email to external recipients", Email non-delivery reports and
// SMTP errors in Exchange Online,
// https://learn.microsoft.com/troubleshoot/exchange/email-delivery/ndr/non-delivery-reports-in-exchange-online;
// docs/microsoft.md, "Tenant external recipient rate limit"). Such a bounce
// is reported, never suppresses the address: it heals when the tenant's
// 24-hour window drops under its quota.
var tenantBlocks = regexp.MustCompile(`\b5\.7\.23[23]\b`)

// hardBounce: the failure's enhanced status code (RFC 3463) is permanent
// (5.x.x) and about the recipient. A failure without a code counts as hard:
// message trace says the delivery failed for good.
func hardBounce(detail string) bool {
	if tenantBlocks.MatchString(detail) {
		return false
	}
	m := enhancedStatus.FindStringSubmatch(detail)
	return m == nil || m[1] == "5"
}

func (t *Tracker) take(ctx context.Context) error {
	if err := t.budget.Take(ctx); err != nil {
		return err
	}
	t.spent.Add(1)
	return nil
}

func (t *Tracker) traceFailed(ctx context.Context, err error) error {
	if ra, ok := graphmail.Throttled(err); ok {
		t.m.requests.WithLabelValues("throttled").Inc()
		if ra <= 0 {
			ra = time.Minute
		}
		return errors.Join(err, t.budget.Pause(ctx, ra))
	}
	t.m.requests.WithLabelValues("error").Inc()
	return err
}

// failureDetail reads the recipient's trace details (one request of the
// budget) and returns the Fail event's description.
func (t *Tracker) failureDetail(ctx context.Context, row graphmail.MessageTrace) (string, error) {
	ds, err := t.tracer.TraceDetails(ctx, row.ID, row.RecipientAddress)
	if err != nil {
		return "", t.traceFailed(ctx, err)
	}
	t.m.requests.WithLabelValues("ok").Inc()
	detail := ""
	for _, d := range ds {
		if strings.EqualFold(d.Event, "Fail") || detail == "" && d.Description != "" {
			detail = d.Description
		}
	}
	if len(detail) > 500 {
		detail = detail[:500]
	}
	return detail, nil
}

func (t *Tracker) publishRow(ctx context.Context, o *open, i int, ev contract.EventType, row *graphmail.MessageTrace, detail string) error {
	return t.publish(ctx, o, i, ev, &traceRow{row: row, detail: detail}, row.ReceivedDateTime)
}

type traceRow struct {
	row    *graphmail.MessageTrace
	detail string
}

// deliveryKey is the Nats-Msg-Id of a recipient's delivery event: one per
// job, tracked send (the record's Attempted: a replayed job is a new send
// with events of its own) and recipient, whatever the event, so that a
// recipient gets one event even when the tracker decides differently after
// a crash (delivery_unknown, then the trace's final status).
func deliveryKey(r *Record, addr string) string {
	return r.Profile + "." + r.JobID + "-delivery-r" + queue.RecipientKey(addr) + "-a" + strconv.FormatInt(r.Attempted.UnixNano(), 36)
}

// publish stores one delivery event for recipient i of o, exactly once
// (queue.Events.PublishOnce: the record's StatusSeq is how far the tracker
// has read the job's status subject; an event a crashed pass published but
// did not record is found there, not published again, whatever the stream's
// duplicate window), and then marks the recipient in the record with
// compare-and-set.
func (t *Tracker) publish(ctx context.Context, o *open, i int, ev contract.EventType, src any, at time.Time) error {
	r := &o.rec.Recipients[i]
	e := contract.Event{JobID: o.rec.JobID, Profile: o.rec.Profile, Event: ev, At: at.UTC(), Recipient: r.Address,
		Metadata: o.rec.Metadata}
	if !o.rec.MessageIDLearned {
		e.InternetMessageID = o.rec.MessageID // known from the send (draft mode)
	}
	switch s := src.(type) {
	case *traceRow:
		e.Trace = &contract.TraceInfo{Status: s.row.Status, MessageTraceID: s.row.ID, MessageID: s.row.MessageID,
			ReceivedAt: s.row.ReceivedDateTime, Detail: s.detail, Correlation: o.rec.correlation()}
		if ev == contract.EventBounced {
			e.Error = &contract.ErrorInfo{Reason: contract.ReasonRecipientInvalid, Message: s.detail}
		}
	case *graphmail.MessageTrace:
		if s != nil {
			e.Trace = &contract.TraceInfo{Status: s.Status, MessageTraceID: s.ID, MessageID: s.MessageID, ReceivedAt: s.ReceivedDateTime,
				Correlation: o.rec.correlation()}
		}
	}
	if ev == contract.EventSuppressed {
		e.Error = &contract.ErrorInfo{Reason: contract.ReasonRecipientInvalid, Message: "on the profile's suppression list: not sent to"}
	}
	keys := make(map[string]int, len(o.rec.Recipients))
	for j, x := range o.rec.Recipients {
		keys[deliveryKey(o.rec, x.Address)] = j
	}
	// Events of this send found on the subject (published by a pass that
	// stopped before recording them) are recorded now, this recipient's
	// included.
	seen := func(id string, x contract.Event) {
		if j, ok := keys[id]; ok && o.rec.Recipients[j].Outcome == "" && x.Event != "" {
			o.rec.Recipients[j].Outcome = x.Event
		}
	}
	seq, stored, err := t.events.PublishOnce(ctx, e, deliveryKey(o.rec, r.Address), o.rec.StatusSeq, seen)
	if err != nil {
		return err
	}
	o.rec.StatusSeq = seq
	if stored {
		r.Outcome = ev
		if t.afterPublish != nil {
			if err := t.afterPublish(e); err != nil {
				return err
			}
		}
	}
	rev, err := t.st.put(ctx, o.rec, o.rev)
	if err != nil {
		return err
	}
	o.rev = rev
	if stored && t.afterRecord != nil {
		if err := t.afterRecord(e); err != nil {
			return err
		}
	}
	if !stored {
		t.log.Info().Str("job_id", o.rec.JobID).Str("profile", o.rec.Profile).Str("event", string(r.Outcome)).
			Msg("delivery event found on the status stream (published before a restart): recorded, not published again")
		return nil
	}
	t.m.events.WithLabelValues(o.rec.Profile, string(ev)).Inc()
	// No recipient in the log (personal data): the job id finds the event.
	t.log.Info().Str("job_id", o.rec.JobID).Str("profile", o.rec.Profile).Str("event", string(ev)).Msg("delivery event")
	return nil
}
