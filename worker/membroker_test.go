package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/worker/ledger"
)

// memBroker is an in-memory Broker for the pool's rule tests (STYLE.md 12):
// a work-queue stream of job messages per profile with JetStream's delivery
// rules as the worker sees them (ack, nak, nak with a delay, term, in
// progress, redelivery after the ack wait, a delivery count), a due stream
// that message schedules fire into, and the key-value stores the queue keeps
// (job states with compare-and-set revisions, final events stored once, dead
// letters, attachment sizes, the recipient ledger, replica membership).
// Values pass through JSON as they do in the queue, so no write shares memory
// with a later read.
//
// What JetStream itself does (duplicate windows, message schedules,
// provisioning, replays of dead letters) is tested against a real server in
// package queue and in this package's JetStream tests (TestPoolJetStream).
type memBroker struct {
	ackWait time.Duration

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change a Next may wait for
	seq     map[string]uint64
	msgs    []*memMsg // stored, not yet acked or terminated
	closed  bool      // cleanup ran: no more schedules fire
	answers []string  // "<stream>/<seq> ack|term|nak", "schedule <profile>/<job>", in order

	stateRev  uint64
	states    map[string]memState
	events    []contract.Event
	finals    map[string]bool
	dead      []contract.DeadLetter
	sizes     map[string]int // profile/ref → bytes
	schedules map[string]*memSchedule
	ledger    map[string]int // mailbox → recipients counted
	live      map[string]bool
}

type memState struct {
	data []byte
	rev  uint64
}

// memMsg is one stored message of the jobs stream ("jobs") or the due stream
// ("due").
type memMsg struct {
	stream    string
	seq       uint64
	subject   string
	header    map[string]string
	data      []byte
	published time.Time

	delivered int       // deliveries so far
	out       bool      // handed out and not yet answered
	deadline  time.Time // out: redelivered after this (the ack wait)
	readyAt   time.Time // not out: not delivered before this
}

type memSchedule struct {
	timer   *time.Timer
	profile string
	jobID   string
	header  map[string]string
	data    []byte
}

func newMemBroker(t *testing.T, ackWait time.Duration) *memBroker {
	m := &memBroker{ackWait: ackWait, changed: make(chan struct{}), seq: map[string]uint64{},
		states: map[string]memState{}, finals: map[string]bool{}, sizes: map[string]int{},
		schedules: map[string]*memSchedule{}, ledger: map[string]int{}, live: map[string]bool{}}
	t.Cleanup(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.closed = true
		for _, s := range m.schedules {
			s.timer.Stop()
		}
	})
	return m
}

// broker returns the Broker that a pool is given.
func (m *memBroker) broker() Broker {
	return Broker{Consumer: m, States: memStates{m}, DeadLetters: memDeadLetters{m}, Events: memEvents{m},
		Attachments: memAttachments{m}, Scheduler: memScheduler{m}, Ledger: memLedger{m}, Membership: memMembership{m}}
}

// notify wakes every Next waiting for a message. m.mu is held.
func (m *memBroker) notify() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// store appends a message to stream. m.mu is held.
func (m *memBroker) store(stream, subject string, header map[string]string, data []byte) uint64 {
	m.seq[stream]++
	m.msgs = append(m.msgs, &memMsg{stream: stream, seq: m.seq[stream], subject: subject, header: header,
		data: append([]byte(nil), data...), published: time.Now().UTC()})
	m.notify()
	return m.seq[stream]
}

// publish stores a job message on subject, as a producer does.
func (m *memBroker) publish(subject string, header map[string]string, data []byte) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.store("jobs", subject, header, data)
}

// pending is the number of job messages stored and not acked or
// terminated (the jobs stream's message count: it is a work queue).
func (m *memBroker) pending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, msg := range m.msgs {
		if msg.stream == "jobs" {
			n++
		}
	}
	return n
}

// answerLog returns the answers given to deliveries and the schedules
// stored, in order: "jobs/1 ack", "due/1 nak", "schedule demo/job-1".
func (m *memBroker) answerLog() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.answers...)
}

// Messages implements Consumer. prefetch does not matter: Next takes the
// next deliverable message when it is called.
func (m *memBroker) Messages(int) (Messages, error) {
	return &memMessages{m: m, drained: make(chan struct{})}, nil
}

type memMessages struct {
	m       *memBroker
	once    sync.Once
	drained chan struct{}
}

func (it *memMessages) Drain() { it.once.Do(func() { close(it.drained) }) }

func (it *memMessages) Next() (Delivery, error) {
	m := it.m
	for {
		select {
		case <-it.drained:
			return nil, ErrClosed
		default:
		}
		m.mu.Lock()
		now := time.Now()
		var next time.Time // the earliest time a message becomes deliverable
		for _, msg := range m.msgs {
			at := msg.readyAt
			if msg.out {
				at = msg.deadline
			}
			if !at.After(now) {
				msg.out, msg.deadline = true, now.Add(m.ackWait)
				msg.delivered++
				d := &memDelivery{m: m, msg: msg, delivered: msg.delivered}
				m.mu.Unlock()
				return d, nil
			}
			if next.IsZero() || at.Before(next) {
				next = at
			}
		}
		changed := m.changed
		m.mu.Unlock()
		var wake <-chan time.Time
		if !next.IsZero() {
			t := time.NewTimer(time.Until(next))
			defer t.Stop()
			wake = t.C
		}
		select {
		case <-it.drained:
			return nil, ErrClosed
		case <-changed:
		case <-wake:
		}
	}
}

// memDelivery is one delivery of a memMsg.
type memDelivery struct {
	m         *memBroker
	msg       *memMsg
	delivered int
}

func (d *memDelivery) Data() []byte    { return d.msg.data }
func (d *memDelivery) Subject() string { return d.msg.subject }
func (d *memDelivery) Header(name string) string {
	return d.msg.header[name]
}

func (d *memDelivery) Meta() (uint64, uint64, time.Time, bool) {
	return d.msg.seq, uint64(d.delivered), d.msg.published, true
}

// remove drops the message from its stream (ack, term).
func (d *memDelivery) remove(verb string) error {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	d.m.answers = append(d.m.answers, fmt.Sprintf("%s/%d %s", d.msg.stream, d.msg.seq, verb))
	for i, msg := range d.m.msgs {
		if msg == d.msg {
			d.m.msgs = append(d.m.msgs[:i], d.m.msgs[i+1:]...)
			d.m.notify()
			return nil
		}
	}
	return nil // already gone: JetStream ignores a second ack too
}

// putBack makes the message deliverable again after delay, if this is still
// its latest delivery.
func (d *memDelivery) putBack(delay time.Duration) error {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	d.m.answers = append(d.m.answers, fmt.Sprintf("%s/%d nak", d.msg.stream, d.msg.seq))
	if d.msg.out && d.msg.delivered == d.delivered {
		d.msg.out, d.msg.readyAt = false, time.Now().Add(delay)
		d.m.notify()
	}
	return nil
}

func (d *memDelivery) Ack() error                             { return d.remove("ack") }
func (d *memDelivery) Term() error                            { return d.remove("term") }
func (d *memDelivery) Nak() error                             { return d.putBack(0) }
func (d *memDelivery) NakWithDelay(delay time.Duration) error { return d.putBack(delay) }

func (d *memDelivery) InProgress() error {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	if d.msg.out && d.msg.delivered == d.delivered {
		d.msg.deadline = time.Now().Add(d.m.ackWait)
	}
	return nil
}

// memStates implements States: one revision counter for all keys, as a
// key-value bucket's stream has.
type memStates struct{ m *memBroker }

func stateKeyOf(profile, jobID string) string { return profile + "." + jobID }

func (s memStates) Get(_ context.Context, profile, jobID string) (contract.JobState, uint64, error) {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	e, ok := s.m.states[stateKeyOf(profile, jobID)]
	if !ok {
		return contract.JobState{}, 0, contract.ErrNoState
	}
	var st contract.JobState
	if err := json.Unmarshal(e.data, &st); err != nil {
		return contract.JobState{}, 0, err
	}
	return st, e.rev, nil
}

func (s memStates) Latest(ctx context.Context, profile, jobID string) (contract.JobState, uint64, error) {
	return s.Get(ctx, profile, jobID)
}

func (s memStates) write(st contract.JobState, lastRev uint64, create bool) (uint64, error) {
	if st.UpdatedAt.IsZero() {
		st.UpdatedAt = time.Now().UTC()
	}
	b, err := json.Marshal(st)
	if err != nil {
		return 0, err
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	key := stateKeyOf(st.Profile, st.JobID)
	e, ok := s.m.states[key]
	switch {
	case create && ok:
		return 0, contract.ErrStateExists
	case !create && (!ok || e.rev != lastRev):
		return 0, contract.ErrStateConflict
	}
	s.m.stateRev++
	s.m.states[key] = memState{data: b, rev: s.m.stateRev}
	return s.m.stateRev, nil
}

func (s memStates) Create(_ context.Context, st contract.JobState) (uint64, error) {
	return s.write(st, 0, true)
}

func (s memStates) Update(_ context.Context, st contract.JobState, lastRev uint64) (uint64, error) {
	return s.write(st, lastRev, false)
}

// memEvents implements Events.
type memEvents struct{ m *memBroker }

func (e memEvents) store(ev contract.Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	var copied contract.Event
	if err := json.Unmarshal(b, &copied); err != nil {
		return err
	}
	e.m.mu.Lock()
	defer e.m.mu.Unlock()
	e.m.events = append(e.m.events, copied)
	return nil
}

func (e memEvents) Publish(_ context.Context, ev contract.Event) error { return e.store(ev) }

func (e memEvents) PublishFinal(_ context.Context, ev contract.Event, key string) error {
	e.m.mu.Lock()
	seen := e.m.finals[key]
	e.m.finals[key] = true
	e.m.mu.Unlock()
	if seen {
		return nil
	}
	return e.store(ev)
}

func (e memEvents) PublishAsync(ev contract.Event) (func(time.Duration) error, error) {
	err := e.store(ev)
	return func(time.Duration) error { return err }, nil
}

// history returns the events of profile's job jobID in the order stored.
func (m *memBroker) history(profile, jobID string) []contract.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []contract.Event
	for _, ev := range m.events {
		if ev.Profile == profile && ev.JobID == jobID {
			out = append(out, ev)
		}
	}
	return out
}

// memDeadLetters implements DeadLetters with the checks queue.DLQ.Put makes.
type memDeadLetters struct{ m *memBroker }

func (d memDeadLetters) Put(_ context.Context, dl contract.DeadLetter) error {
	switch {
	case !contract.ValidJobID(dl.JobID):
		return fmt.Errorf("dead letter: invalid job id %q", dl.JobID)
	case dl.Profile == "" || strings.ContainsAny(dl.Profile, ".*> "):
		return fmt.Errorf("dead letter %s: invalid profile %q", dl.JobID, dl.Profile)
	case !dl.Reason.Valid():
		return fmt.Errorf("dead letter %s: unknown reason %q", dl.JobID, dl.Reason)
	}
	if dl.FailedAt.IsZero() {
		dl.FailedAt = time.Now()
	}
	dl.Body = append([]byte(nil), dl.Body...)
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	d.m.dead = append(d.m.dead, dl)
	return nil
}

// deadLetters returns the dead letters stored so far, oldest first.
func (m *memBroker) deadLetters() []contract.DeadLetter {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]contract.DeadLetter(nil), m.dead...)
}

// memAttachments implements AttachmentSizes.
type memAttachments struct{ m *memBroker }

func (a memAttachments) Size(_ context.Context, profile, ref string) (int, error) {
	a.m.mu.Lock()
	defer a.m.mu.Unlock()
	n, ok := a.m.sizes[profile+"/"+ref]
	if !ok {
		return 0, contract.ErrNoAttachment
	}
	return n, nil
}

// putAttachment stores the size of an object of profile and returns its ref.
func (m *memBroker) putAttachment(profile, name string, size int) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ref := fmt.Sprintf("%s-%d", name, len(m.sizes)+1)
	m.sizes[profile+"/"+ref] = size
	return ref
}

// memScheduler implements Scheduler: at the time asked, the job's bytes come
// back as a message of the due stream carrying the headers the queue's
// schedule carries (job id, replay generation, origin sequence).
type memScheduler struct{ m *memBroker }

func (s memScheduler) Schedule(_ context.Context, profile, jobID string, data []byte, replay string, origin uint64, at time.Time) error {
	h := map[string]string{contract.HeaderJobID: jobID}
	if replay != "" {
		h[contract.HeaderReplay] = replay
	}
	if origin != 0 {
		h[contract.HeaderOriginSeq] = strconv.FormatUint(origin, 10)
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.m.scheduleLocked(&memSchedule{profile: profile, jobID: jobID, header: h, data: append([]byte(nil), data...)}, at)
	return nil
}

func (s memScheduler) Reschedule(_ context.Context, profile, jobID string, at time.Time) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	old, ok := s.m.schedules[profile+"/"+jobID]
	if !ok {
		return nil // fired already
	}
	s.m.scheduleLocked(&memSchedule{profile: profile, jobID: jobID, header: old.header, data: old.data}, at)
	return nil
}

// scheduleLocked stores sc to fire at at, replacing the job's waiting one
// (a newer schedule of a subject replaces the older). m.mu is held.
func (m *memBroker) scheduleLocked(sc *memSchedule, at time.Time) {
	key := sc.profile + "/" + sc.jobID
	m.answers = append(m.answers, "schedule "+key)
	if old, ok := m.schedules[key]; ok {
		old.timer.Stop()
	}
	m.schedules[key] = sc
	sc.timer = time.AfterFunc(time.Until(at), func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.closed || m.schedules[key] != sc {
			return
		}
		delete(m.schedules, key)
		m.store("due", contract.DueSubject(sc.profile), sc.header, sc.data)
	})
}

// memLedger implements Ledger: one count per mailbox (the hours do not
// matter to the rule tests), leases granted while they fit the limit.
type memLedger struct{ m *memBroker }

func (l memLedger) Lease(_ context.Context, le ledger.Lease) (int, time.Time, error) {
	l.m.mu.Lock()
	defer l.m.mu.Unlock()
	key := strings.ToLower(le.Mailbox)
	l.m.ledger[key] = max(0, l.m.ledger[key]-le.GiveBack)
	free := le.Want
	if le.Limit >= 0 {
		free = min(le.Want, le.Limit-l.m.ledger[key])
	}
	if free < le.Need || free <= 0 {
		return 0, le.Now.Add(time.Hour), nil
	}
	l.m.ledger[key] += free
	return free, time.Time{}, nil
}

// memMembership implements Membership.
type memMembership struct{ m *memBroker }

func (s memMembership) Beat(_ context.Context, id string) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.m.live[id] = true
	return nil
}

func (s memMembership) Live(context.Context) (int, error) {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	return len(s.m.live), nil
}

func (s memMembership) Leave(_ context.Context, id string) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	delete(s.m.live, id)
	return nil
}

// memBundle is a pool running against a memBroker.
type memBundle struct {
	t      *testing.T
	mem    *memBroker
	pool   *Pool
	cancel context.CancelFunc
	done   chan error
}

// memSetup runs a pool with sender on a fresh memBroker; cfg's zero fields
// take the values setup gives them.
func memSetup(t *testing.T, cfg Config, sender Sender) *memBundle {
	t.Helper()
	cfg = testConfig(cfg)
	mem := newMemBroker(t, cfg.AckWait)
	pool, err := New(cfg, mem.broker(), sender, Options{Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel),
		MembershipEvery: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &memBundle{t: t, mem: mem, pool: pool, cancel: cancel, done: make(chan error, 1)}
	go func() { b.done <- pool.Run(ctx) }()
	t.Cleanup(b.stop)
	return b
}

// stop shuts the pool down and waits for Run to return.
func (b *memBundle) stop() {
	if b.cancel == nil {
		return
	}
	b.cancel()
	b.cancel = nil
	select {
	case err := <-b.done:
		if err != nil {
			b.t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		b.t.Error("Run did not return after cancel")
	}
}

// publish stores job as queue.Publisher does (validated, with its
// Nats-Msg-Id) and returns its id.
func (b *memBundle) publish(job *contract.Job) string {
	b.t.Helper()
	if err := job.Validate(); err != nil {
		b.t.Fatal(err)
	}
	data := mustJSON(b.t, job)
	b.mem.publish(contract.JobSubject("demo"), map[string]string{contract.HeaderMsgID: queue.PublishMsgID(job.ID, data)}, data)
	return job.ID
}

// publishRaw stores data on subject with no headers.
func (b *memBundle) publishRaw(subject string, data []byte) {
	b.mem.publish(subject, nil, data)
}

func (b *memBundle) state(id string) (contract.JobState, error) {
	st, _, err := memStates{b.mem}.Get(context.Background(), "demo", id)
	return st, err
}

// waitState polls the job state until it is want and returns it.
func (b *memBundle) waitState(id string, want contract.State) contract.JobState {
	b.t.Helper()
	var st contract.JobState
	eventually(b.t, 15*time.Second, "job "+id+" to reach "+string(want), func() bool {
		st, _ = b.state(id)
		return st.State == want
	})
	return st
}

func (b *memBundle) history(id string) []contract.Event { return b.mem.history("demo", id) }

// waitEvent polls the job's status events until one of type want appears.
func (b *memBundle) waitEvent(id string, want contract.EventType) contract.Event {
	b.t.Helper()
	var found contract.Event
	eventually(b.t, 15*time.Second, "event "+string(want)+" of job "+id, func() bool {
		for _, ev := range b.history(id) {
			if ev.Event == want {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// deadLetter returns the latest dead letter of job id.
func (b *memBundle) deadLetter(id string) contract.DeadLetter {
	b.t.Helper()
	dls := b.mem.deadLetters()
	for i := len(dls) - 1; i >= 0; i-- {
		if dls[i].JobID == id {
			return dls[i]
		}
	}
	b.t.Fatalf("no dead letter of %s", id)
	return contract.DeadLetter{}
}

func (b *memBundle) pending() int { return b.mem.pending() }
