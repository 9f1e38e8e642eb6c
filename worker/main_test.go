package worker

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// bundle is a pool running against an embedded JetStream server.
type bundle struct {
	t      *testing.T
	js     jetstream.JetStream
	q      *queue.Queue
	pub    *queue.Publisher
	pool   *Pool
	cancel context.CancelFunc
	done   chan error
}

// setup starts an embedded nats-server, provisions the streams and runs a
// pool with sender. cfg's zero fields take test-friendly values.
func setup(t *testing.T, cfg Config, sender Sender) *bundle {
	t.Helper()
	js := startServer(t)
	return startPool(t, js, cfg, sender, testOptions{})
}

// startServer starts an embedded nats-server with the streams provisioned
// and returns a JetStream context on it; both end at cleanup.
func startServer(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		nc.Close()
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := queue.Provision(context.Background(), js, queue.Config{AckWait: 5 * time.Second, WorkersTTL: 3 * time.Second, Profiles: []string{"demo"}}); err != nil {
		t.Fatal(err)
	}
	return js
}

// startPool runs a pool on js (one more replica when called again).
func startPool(t *testing.T, js jetstream.JetStream, cfg Config, sender Sender, opts testOptions) *bundle {
	t.Helper()
	ctx := context.Background()
	q, err := queue.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := q.Jobs(ctx, []string{"demo"})
	if err != nil {
		t.Fatal(err)
	}
	cfg = testConfig(cfg)
	opts.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	if opts.MembershipEvery == 0 {
		opts.MembershipEvery = time.Second
	}
	br := Broker{Consumer: jobsConsumer{jobs}, States: q.States, DeadLetters: q.DLQ, Events: q.Events,
		Attachments: q.Attachments, Scheduler: q.Schedules, Ledger: q.Pacing, Membership: q.Workers}
	if opts.ledger != nil {
		br.Ledger = opts.ledger
	}
	if opts.states != nil {
		br.States = opts.states(br.States)
	}
	if opts.consumer != nil {
		br.Consumer = opts.consumer(br.Consumer)
	}
	if opts.membership != nil {
		br.Membership = opts.membership
	}
	pool, err := New(cfg, br, sender, opts.Options)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	b := &bundle{t: t, js: js, q: q, pub: queue.NewPublisher(js), pool: pool, cancel: cancel, done: make(chan error, 1)}
	go func() { b.done <- pool.Run(runCtx) }()
	t.Cleanup(b.stop)
	return b
}

// testConfig gives cfg's zero fields test-friendly values: profile demo with
// two allowed senders, quick backoff, no mailbox limits.
func testConfig(cfg Config) Config {
	if cfg.Profiles == nil {
		cfg.Profiles = map[string]Profile{"demo": {AllowedSenders: []string{"noreply@demo.example", "other@demo.example"}}}
	}
	if cfg.BackoffInitial == 0 {
		cfg.BackoffInitial, cfg.BackoffMax = 20*time.Millisecond, 100*time.Millisecond
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 5 * time.Second
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.PerMailboxPerMinute == 0 {
		cfg.PerMailboxPerMinute = Unlimited
	}
	if cfg.PerMailboxRecipientsPerDay == 0 {
		cfg.PerMailboxRecipientsPerDay = Unlimited
	}
	if cfg.PerMailboxUploadBytes == 0 {
		cfg.PerMailboxUploadBytes = Unlimited
	}
	return cfg
}

// jobsConsumer adapts queue.Jobs to Consumer, as cmd/mailworker does.
type jobsConsumer struct{ *queue.Jobs }

func (c jobsConsumer) Messages(prefetch int) (Messages, error) {
	m, err := c.Jobs.Messages(prefetch)
	if err != nil {
		return nil, err
	}
	return jobsMessages{m}, nil
}

type jobsMessages struct{ *queue.Messages }

func (m jobsMessages) Next() (Delivery, error) {
	d, err := m.Messages.Next()
	if queue.IsClosed(err) {
		return nil, ErrClosed
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}

// testOptions are Options plus the broker parts a test replaces.
type testOptions struct {
	Options
	ledger     Ledger
	membership Membership
	// states and consumer wrap the real ones (fault injection).
	states   func(States) States
	consumer func(Consumer) Consumer
}

// stop shuts the pool down and waits for Run to return.
func (b *bundle) stop() {
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

func (b *bundle) publish(job *contract.Job) string {
	b.t.Helper()
	id, err := b.pub.Publish(context.Background(), "demo", job)
	if err != nil {
		b.t.Fatal(err)
	}
	return id
}

func (b *bundle) publishRaw(subject string, data []byte) {
	b.t.Helper()
	if _, err := b.js.Publish(context.Background(), subject, data); err != nil {
		b.t.Fatal(err)
	}
}

// minWait is the least time eventually gives a condition: the tests run
// under -race on CI's two cores beside seven other test binaries, and a
// deadline is an upper bound that costs nothing when the condition comes
// true early. No test may use eventually's timeout to tell fast from slow.
const minWait = 30 * time.Second

// eventually polls cond until it holds or the deadline passes (timeout, at
// least minWait).
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	timeout = max(timeout, minWait)
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitState polls the job state until it is terminal and returns it.
func (b *bundle) waitState(id string, want contract.State) contract.JobState {
	b.t.Helper()
	var st contract.JobState
	eventually(b.t, 15*time.Second, "job "+id+" to reach "+string(want), func() bool {
		s, _, err := b.q.States.Get(context.Background(), "demo", id)
		if err != nil && !errors.Is(err, contract.ErrNoState) {
			b.t.Fatal(err)
		}
		st = s
		return s.State == want
	})
	return st
}

func (b *bundle) history(id string) []contract.Event {
	b.t.Helper()
	evs, err := b.q.Events.History(context.Background(), "demo", id)
	if err != nil {
		b.t.Fatal(err)
	}
	return evs
}

// waitEvent polls the job's status events until one of type want appears.
func (b *bundle) waitEvent(id string, want contract.EventType) contract.Event {
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

func (b *bundle) pending() uint64 {
	b.t.Helper()
	s, err := b.js.Stream(context.Background(), contract.JobsStream("demo"))
	if err != nil {
		b.t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		b.t.Fatal(err)
	}
	return info.State.Msgs
}

func demoJob(id string) *contract.Job {
	return &contract.Job{ID: id, From: "noreply@demo.example", To: []string{"someone@example.com"}, Subject: "hi", Text: "hello"}
}

// recorder is a Sender that records calls and answers from a script.
type recorder struct {
	mu     sync.Mutex
	calls  []string // job ids, in call order
	answer func(n int, jobID string, job *contract.Job) (contract.SendResult, error)
	active atomic.Int32
	peak   atomic.Int32
}

func (r *recorder) Send(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
	n := r.active.Add(1)
	defer r.active.Add(-1)
	for {
		p := r.peak.Load()
		if n <= p || r.peak.CompareAndSwap(p, n) {
			break
		}
	}
	r.mu.Lock()
	r.calls = append(r.calls, jobID)
	count := 0
	for _, c := range r.calls {
		if c == jobID {
			count++
		}
	}
	r.mu.Unlock()
	if r.answer != nil {
		return r.answer(count, jobID, job)
	}
	return contract.SendResult{Status: 202, RequestID: "req-" + jobID, ClientRequestID: jobID, Date: graphDate}, nil
}

// graphDate is the Date header of the recorder's answers.
var graphDate = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

func (r *recorder) callsFor(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		if c == id {
			n++
		}
	}
	return n
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
