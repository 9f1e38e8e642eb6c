package worker

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailworker/mailworker/queue/contract"
)

// stallingStates holds the first `sent` write of the job until released and
// then makes it: a write stuck in the socket of a paused broker node that
// lands after the job has moved on (issue 19, defect 1).
type stallingStates struct {
	States
	once    sync.Once
	held    chan struct{} // closed when the write is held
	release chan struct{}
	landed  chan error // the late write's answer
}

func newStallingStates(s States) *stallingStates {
	return &stallingStates{States: s, held: make(chan struct{}), release: make(chan struct{}), landed: make(chan error, 1)}
}

func (s *stallingStates) Update(ctx context.Context, st contract.JobState, rev uint64) (uint64, error) {
	hold := false
	if st.State == contract.StateSent {
		s.once.Do(func() { hold = true })
	}
	if !hold {
		return s.States.Update(ctx, st, rev)
	}
	close(s.held)
	<-s.release
	// The server processes the write when it resumes, whatever the
	// client's deadline was.
	r, err := s.States.Update(context.Background(), st, rev)
	s.landed <- err
	return r, err
}

// mutedConsumer drops the in-progress beats and acks of every first
// delivery: the worker that holds it sits behind a paused server, and the
// job is redelivered after the ack wait.
type mutedConsumer struct{ Consumer }

func (c mutedConsumer) Messages(prefetch int) (Messages, error) {
	m, err := c.Consumer.Messages(prefetch)
	return mutedMessages{m}, err
}

type mutedMessages struct{ Messages }

func (m mutedMessages) Next() (Delivery, error) {
	d, err := m.Messages.Next()
	if err != nil {
		return d, err
	}
	if _, n, _, ok := d.Meta(); ok && n == 1 {
		return mutedDelivery{d}, nil
	}
	return d, nil
}

type mutedDelivery struct{ Delivery }

func (mutedDelivery) InProgress() error { return nil }
func (mutedDelivery) Ack() error        { return nil }

// TestStalledTerminalWriteCannotWin: a worker gets 202, but its `sent`
// write is stuck behind a paused server for longer than the ack wait.
// Another delivery takes the job over (ambiguous), sends it again and
// records `sent` possibleDuplicate. When the stuck write lands it must lose
// its compare-and-set: the job keeps one terminal event (flagged), its
// attempts do not go back, and the late writer settles on the recorded
// outcome instead of publishing its own.
func TestStalledTerminalWriteCannotWin(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	sender := SenderFunc(func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
		n := calls.Add(1)
		return contract.SendResult{Status: 202, RequestID: "r" + string(rune('0'+n))}, nil
	})
	var stall *stallingStates
	js := startServer(t)
	b := startPool(t, js, Config{SendTimeout: 200 * time.Millisecond}, sender, testOptions{
		states:   func(s States) States { stall = newStallingStates(s); return stall },
		consumer: func(c Consumer) Consumer { return mutedConsumer{c} },
	})
	id := b.publish(demoJob("stalled-write"))
	select {
	case <-stall.held:
	case <-time.After(60 * time.Second): // an upper bound (CI shares two cores under -race)
		t.Fatal("the first sent write was never made")
	}
	// The redelivery takes over once the first delivery's `sending` is
	// older than the send timeout plus its margin.
	st := b.waitState(id, contract.StateSent)
	if !st.Ambiguous || st.Attempts != 2 {
		t.Fatalf("state after the takeover = %+v, want sent, ambiguous, 2 attempts", st)
	}
	close(stall.release)
	if err := <-stall.landed; err == nil {
		t.Fatal("the late write won its compare-and-set")
	}
	eventually(t, 10*time.Second, "the late writer to settle on the recorded outcome", func() bool {
		return testutil.ToFloat64(b.pool.m.StateConflicts.WithLabelValues("demo")) >= 1
	})
	b.stop() // every handler has returned: nothing more will be written
	after := b.waitState(id, contract.StateSent)
	if after.Attempts != 2 || !after.Ambiguous || after.Write != st.Write {
		t.Errorf("state after the late write = %+v, want the takeover's %+v", after, st)
	}
	var sent []contract.Event
	for _, ev := range b.history(id) {
		if ev.Event == contract.EventSent || ev.Event == contract.EventDeadLettered {
			sent = append(sent, ev)
		}
	}
	if len(sent) != 1 || !sent[0].PossibleDuplicate || sent[0].Attempt != 2 {
		t.Fatalf("terminal events = %+v, want one sent, possibleDuplicate, attempt 2", sent)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("sender called %d times, want 2 (the first send and the takeover's)", n)
	}
}

// laggingStates answers Get, once armed, with the job's first stored
// state (`sending`, as a replica that missed every later write has it),
// made an hour old: a paused node that resumes and serves direct gets
// before it has caught up.
type laggingStates struct {
	States
	mu    sync.Mutex
	first *contract.JobState
	rev   uint64
	armed bool
}

func (s *laggingStates) Create(ctx context.Context, st contract.JobState) (uint64, error) {
	rev, err := s.States.Create(ctx, st)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && s.first == nil {
		s.first, s.rev = &st, rev
	}
	return rev, err
}

func (s *laggingStates) Get(ctx context.Context, profile, jobID string) (contract.JobState, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.armed && s.first != nil {
		s.armed = false
		st := *s.first
		st.UpdatedAt = st.UpdatedAt.Add(-time.Hour)
		return st, s.rev, nil
	}
	return s.States.Get(ctx, profile, jobID)
}

// redeliveredConsumer makes every delivery look like a redelivery (one
// queued while the server was paused), so that the worker reads the state.
type redeliveredConsumer struct{ Consumer }

func (c redeliveredConsumer) Messages(prefetch int) (Messages, error) {
	m, err := c.Consumer.Messages(prefetch)
	return redeliveredMessages{m}, err
}

type redeliveredMessages struct{ Messages }

func (m redeliveredMessages) Next() (Delivery, error) {
	d, err := m.Messages.Next()
	if err != nil {
		return d, err
	}
	return redelivered{d}, nil
}

type redelivered struct{ Delivery }

func (d redelivered) Meta() (uint64, uint64, time.Time, bool) {
	seq, n, at, ok := d.Delivery.Meta()
	return seq, max(n, 2), at, ok
}

// TestStaleReadCannotWin: after a job is sent, a delivery of it is decided
// on a lagging replica's `sending` (old enough to look abandoned). Its
// `retrying` write must lose (it compares against that stale revision), the
// state be read again from the leader, and the delivery settle on `sent`:
// no `retrying` over `sent`, no attempt going back, nothing sent again, no
// second terminal event.
func TestStaleReadCannotWin(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	sender := SenderFunc(func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
		calls.Add(1)
		return contract.SendResult{Status: 202, RequestID: "r1"}, nil
	})
	var lag *laggingStates
	js := startServer(t)
	b := startPool(t, js, Config{}, sender, testOptions{
		states:   func(s States) States { lag = &laggingStates{States: s}; return lag },
		consumer: func(c Consumer) Consumer { return redeliveredConsumer{c} },
	})
	job := demoJob("stale-read")
	id := b.publish(job)
	sent := b.waitState(id, contract.StateSent)
	b.waitEvent(id, contract.EventSent)
	lag.mu.Lock()
	lag.armed = true
	lag.mu.Unlock()
	data, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	b.publishRaw(contract.JobSubject("demo"), data) // the same job again, not deduplicated
	eventually(t, 10*time.Second, "the stale delivery to settle", func() bool {
		return testutil.ToFloat64(b.pool.m.StateConflicts.WithLabelValues("demo")) >= 1 && b.pending() == 0
	})
	b.stop()
	st := b.waitState(id, contract.StateSent)
	if st.Attempts != sent.Attempts || st.Ambiguous || st.Write != sent.Write {
		t.Errorf("state = %+v, want the recorded %+v", st, sent)
	}
	for _, ev := range b.history(id) {
		if ev.Event == contract.EventRetrying || ev.Event == contract.EventSent && ev.Attempt != 1 {
			t.Errorf("event %s attempt %d after the stale read", ev.Event, ev.Attempt)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("sender called %d times, want 1", n)
	}
}

// TestRebaseTerminal: the rows for a terminal write that lost its
// compare-and-set to another delivery of the job.
func TestRebaseTerminal(t *testing.T) {
	mine := contract.JobState{JobID: "j", Profile: "demo", State: contract.StateSent, Attempts: 1, Seq: 7, Write: "w1"}
	for _, c := range []struct {
		name    string
		fresh   contract.JobState
		exists  bool
		follows bool
		want    contract.JobState // Attempts, Ambiguous, AmbiguousBefore
	}{
		{"another delivery is sending it now: its send may duplicate this one",
			contract.JobState{State: contract.StateSending, Attempts: 1}, true, true,
			contract.JobState{Attempts: 1, Ambiguous: true}},
		{"taken over as ambiguous and waiting to retry: attempts kept",
			contract.JobState{State: contract.StateRetrying, Attempts: 3, Ambiguous: true}, true, true,
			contract.JobState{Attempts: 3, Ambiguous: true}},
		{"a definite failure of the other delivery is no doubt",
			contract.JobState{State: contract.StateRetrying, Attempts: 2}, true, true,
			contract.JobState{Attempts: 2}},
		{"an earlier generation's doubt is kept",
			contract.JobState{State: contract.StateDeferred, AmbiguousBefore: true}, true, true,
			contract.JobState{Attempts: 1, AmbiguousBefore: true}},
		{"the state is gone (bucket recreated, expired): recorded as is",
			contract.JobState{}, false, true,
			contract.JobState{Attempts: 1}},
		{"sent by the other delivery: its outcome stands",
			contract.JobState{State: contract.StateSent, Attempts: 2, Ambiguous: true}, true, false, contract.JobState{}},
		{"dead-lettered by the other delivery: its outcome stands",
			contract.JobState{State: contract.StateDeadLettered, Attempts: 2}, true, false, contract.JobState{}},
		{"replayed meanwhile: another generation is not followed",
			contract.JobState{State: contract.StateReplayed, Generation: 1}, true, false, contract.JobState{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := rebaseTerminal(mine)(c.fresh, c.exists)
			if ok != c.follows {
				t.Fatalf("follows = %v, want %v", ok, c.follows)
			}
			if !ok {
				return
			}
			if got.State != mine.State || got.Seq != mine.Seq || got.Write != "" ||
				got.Attempts != c.want.Attempts || got.Ambiguous != c.want.Ambiguous || got.AmbiguousBefore != c.want.AmbiguousBefore {
				t.Errorf("= %+v, want attempts %d ambiguous %v ambiguousBefore %v", got, c.want.Attempts, c.want.Ambiguous, c.want.AmbiguousBefore)
			}
			if err := contract.CheckTransition(c.fresh, got); c.exists && err != nil {
				t.Errorf("the rebased write breaks monotonicity: %v", err)
			}
		})
	}
}
