package tracking_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/tracking"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	secret = "tracking-secret"
	sender = "billing@contoso.com"
)

type bundle struct {
	ctx    context.Context
	js     jetstream.JetStream
	q      *queue.Queue
	st     *tracking.Store
	fake   *graphtest.Server
	client *graphmail.Client
	send   tracking.Sender
	sends  *atomic.Int64
}

func setup(t *testing.T, trace graphtest.TraceOptions) bundle {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if err := queue.Provision(ctx, js, queue.Config{Profiles: []string{"billing"}}); err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	st, err := tracking.Open(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	fake, err := graphtest.New(graphtest.Options{ClientSecret: secret, Roles: []string{graphtest.TraceRole}, Trace: trace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	c, err := graphmail.New(graphmail.Config{Name: "billing", TenantID: fake.TenantID(), ClientID: fake.ClientID(),
		AuthorityHost: fake.URL(), GraphURL: fake.GraphURL(), Credential: graphmail.Credential{ClientSecret: secret},
		HTTPClient: fake.Client(), Timeout: 2 * time.Minute}) // an upper bound (CI shares two cores under -race)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var sends atomic.Int64
	// The worker's part, reduced to what tracking sees: the wrapped sender
	// calls Graph (real MSAL, TLS fake), then the job state says `sent`.
	inner := tracking.Sender(senderFunc(func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
		sends.Add(1)
		m := &graphmail.Message{From: job.From, Subject: job.Subject, Text: job.Text}
		for _, a := range job.To {
			m.To = append(m.To, graphmail.Address{Address: a})
		}
		if _, err := c.Send(ctx, m); err != nil {
			return contract.SendResult{}, err
		}
		_, err := q.States.Create(ctx, contract.JobState{JobID: jobID, Profile: profile, State: contract.StateSent, UpdatedAt: time.Now()})
		return contract.SendResult{Status: 202}, err
	}))
	return bundle{ctx: ctx, js: js, q: q, st: st, fake: fake, client: c, send: tracking.Wrap(inner, st, nil), sends: &sends}
}

type senderFunc func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error)

func (f senderFunc) Send(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
	return f(ctx, profile, jobID, job)
}

func (b bundle) tracker(cfg tracking.Config) *tracking.Tracker {
	return tracking.New(cfg, b.st, b.q.States, b.q.Events, b.client, zerolog.Nop(), nil, []string{"billing"})
}

// deliveryEvents returns the job's delivery events by recipient.
func (b bundle) deliveryEvents(t *testing.T, jobID string) map[string][]contract.Event {
	t.Helper()
	evs, err := b.q.Events.History(b.ctx, "billing", jobID)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]contract.Event{}
	for _, e := range evs {
		if e.Recipient != "" {
			out[e.Recipient] = append(out[e.Recipient], e)
		}
	}
	return out
}

// TestTrackerDeliveryEvents: one job to five recipients gets one event per
// recipient, each exactly once over many passes; the bounce carries the
// NDR from the details and suppresses the address, so a later job to it is
// refused without a Graph call, and a job with another recipient too drops
// only the suppressed one (event `suppressed`).
func TestTrackerDeliveryEvents(t *testing.T) {
	b := setup(t, graphtest.TraceOptions{Lag: 10 * time.Millisecond, Settle: 50 * time.Millisecond, PendingFor: time.Hour})
	to := []string{"ann@example.com", "bounce@example.com", "quarantine@example.com", "spam@example.com", "pending@example.com"}
	if _, err := b.send.Send(b.ctx, "billing", "job1", &contract.Job{From: sender, To: to, Subject: "s", Text: "t"}); err != nil {
		t.Fatal(err)
	}
	tr := b.tracker(tracking.Config{Skew: time.Minute})
	want := map[string]contract.EventType{"ann@example.com": contract.EventDelivered, "bounce@example.com": contract.EventBounced,
		"quarantine@example.com": contract.EventQuarantined, "spam@example.com": contract.EventFilteredAsSpam}
	deadline := time.Now().Add(time.Minute) // an upper bound (CI shares two cores under -race)
	for {
		if err := tr.Pass(b.ctx); err != nil {
			t.Fatal(err)
		}
		if len(b.deliveryEvents(t, "job1")) == len(want) || time.Now().After(deadline) {
			break
		}
	}
	for range 3 { // more passes publish nothing twice
		if err := tr.Pass(b.ctx); err != nil {
			t.Fatal(err)
		}
	}
	got := b.deliveryEvents(t, "job1")
	for rcpt, ev := range want {
		if len(got[rcpt]) != 1 || got[rcpt][0].Event != ev {
			t.Errorf("%s: events %+v, want one %s", rcpt, got[rcpt], ev)
		}
	}
	if len(got["pending@example.com"]) != 0 {
		t.Errorf("pending recipient got %+v before the horizon", got["pending@example.com"])
	}
	if e := got["bounce@example.com"]; len(e) == 1 && (e[0].Trace == nil || e[0].Trace.Detail == "" || e[0].Error == nil) {
		t.Errorf("bounce event without the reason: %+v", e[0])
	}
	sup, err := b.st.Suppressed(b.ctx, "billing", "Bounce@Example.com", time.Now())
	if err != nil || sup == nil {
		t.Fatalf("bounce@ not suppressed: %v %v", sup, err)
	}

	// A later job to the suppressed address only: refused, no Graph call.
	before := b.sends.Load()
	_, err = b.send.Send(b.ctx, "billing", "job2", &contract.Job{From: sender, To: []string{"bounce@example.com"}, Subject: "s", Text: "t"})
	se := contract.AsSendError(err)
	if err == nil || se.Class != contract.ClassPermanent || se.Reason != contract.ReasonRecipientInvalid {
		t.Fatalf("job to a suppressed address: %v, want permanent recipient_invalid", err)
	}
	if b.sends.Load() != before {
		t.Errorf("the refused job reached the sender")
	}
	// A job to it and another: sent to the other only; `suppressed` event.
	if _, err := b.send.Send(b.ctx, "billing", "job3", &contract.Job{From: sender, To: []string{"bounce@example.com", "bob@example.com"}, Subject: "s", Text: "t"}); err != nil {
		t.Fatal(err)
	}
	msgs := b.fake.Messages()
	if last := msgs[len(msgs)-1]; len(last.To) != 1 || last.To[0] != "bob@example.com" {
		t.Errorf("job3 went to %v, want only bob", last.To)
	}
	deadline = time.Now().Add(time.Minute)
	for {
		if err := tr.Pass(b.ctx); err != nil {
			t.Fatal(err)
		}
		got = b.deliveryEvents(t, "job3")
		if len(got) == 2 || time.Now().After(deadline) {
			break
		}
	}
	if e := got["bounce@example.com"]; len(e) != 1 || e[0].Event != contract.EventSuppressed {
		t.Errorf("job3 bounce@: %+v, want one suppressed", e)
	}
	if e := got["bob@example.com"]; len(e) != 1 || e[0].Event != contract.EventDelivered {
		t.Errorf("job3 bob@: %+v, want one delivered", e)
	}
}

// TestTrackerHorizon: a recipient still pending past the horizon gets one
// delivery_unknown, and its record is closed.
func TestTrackerHorizon(t *testing.T) {
	b := setup(t, graphtest.TraceOptions{Lag: time.Millisecond, PendingFor: time.Hour})
	if _, err := b.send.Send(b.ctx, "billing", "jobp", &contract.Job{From: sender, To: []string{"pending@example.com"}, Subject: "s", Text: "t"}); err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	tr := b.tracker(tracking.Config{Now: func() time.Time { return clock }})
	if err := tr.Pass(b.ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(b.deliveryEvents(t, "jobp")); n != 0 {
		t.Fatalf("%d events before the horizon", n)
	}
	clock = clock.Add(25 * time.Hour)
	if err := tr.Pass(b.ctx); err != nil {
		t.Fatal(err)
	}
	got := b.deliveryEvents(t, "jobp")["pending@example.com"]
	if len(got) != 1 || got[0].Event != contract.EventDeliveryUnknown {
		t.Fatalf("past the horizon: %+v, want one delivery_unknown", got)
	}
	if r, err := b.st.Record(b.ctx, "billing", "jobp"); err != nil || r != nil {
		t.Errorf("record still open: %+v %v", r, err)
	}
}

// TestTrackerBudget: many senders, a small budget and two trackers
// (replicas) sharing it: the fake never sees more requests in its window
// than the budget, and nothing is lost (every recipient gets its event).
func TestTrackerBudget(t *testing.T) {
	const budget = 5
	window := 2 * time.Second
	b := setup(t, graphtest.TraceOptions{Lag: time.Millisecond, Settle: time.Millisecond, Budget: budget, Window: window})
	const jobs = 12
	for i := range jobs {
		from := string(rune('a'+i)) + "@contoso.com"
		if _, err := b.send.Send(b.ctx, "billing", "jb"+string(rune('a'+i)), &contract.Job{From: from, To: []string{"x@example.com"}, Subject: "s", Text: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := tracking.Config{BudgetLimit: budget, BudgetWindow: window}
	t1, t2 := b.tracker(cfg), b.tracker(cfg)
	deadline := time.Now().Add(30 * time.Second)
	for {
		errc := make(chan error, 2)
		go func() { errc <- t1.Pass(b.ctx) }()
		go func() { errc <- t2.Pass(b.ctx) }()
		for range 2 {
			if err := <-errc; err != nil && !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				t.Logf("pass: %v", err)
			}
		}
		n := 0
		for i := range jobs {
			n += len(b.deliveryEvents(t, "jb"+string(rune('a'+i))))
		}
		if n == jobs || time.Now().After(deadline) {
			if n != jobs {
				t.Fatalf("%d of %d delivery events", n, jobs)
			}
			break
		}
	}
	if got := b.fake.MaxTraceRequestsInWindow(); got > budget {
		t.Errorf("fake saw %d trace requests in one window, budget %d", got, budget)
	}
	if b.fake.TraceThrottled() != 0 {
		t.Errorf("%d requests throttled", b.fake.TraceThrottled())
	}
	t.Logf("trace requests: %d for %d jobs from %d senders", len(b.fake.TraceRequests()), jobs, jobs)
}

// TestRecordFollowsTheLastAttempt: a job whose first attempt failed and that
// is sent again with other recipients (a replay edited in the console) is
// tracked with the recipients of the attempt that was sent.
func TestRecordFollowsTheLastAttempt(t *testing.T) {
	b := setup(t, graphtest.TraceOptions{})
	fail := true
	w := tracking.Wrap(senderFunc(func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
		if fail {
			return contract.SendResult{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonRecipientInvalid}
		}
		return b.send.Send(ctx, profile, jobID, job)
	}), b.st, nil)
	if _, err := w.Send(b.ctx, "billing", "jr", &contract.Job{From: sender, To: []string{"typo@exampel.com"}}); err == nil {
		t.Fatal("first attempt should fail")
	}
	fail = false
	if _, err := w.Send(b.ctx, "billing", "jr", &contract.Job{From: sender, To: []string{"fixed@example.com"}, Subject: "s", Text: "t"}); err != nil {
		t.Fatal(err)
	}
	r, err := b.st.Record(b.ctx, "billing", "jr")
	if err != nil || r == nil || len(r.Recipients) != 1 || r.Recipients[0].Address != "fixed@example.com" {
		t.Fatalf("record %+v (%v), want the edited recipient only", r, err)
	}
}
