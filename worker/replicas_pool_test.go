package worker

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/worker/ledger"
)

// startLog is a Sender that records when each send started.
type startLog struct {
	mu     sync.Mutex
	starts []time.Time
}

func (s *startLog) Send(_ context.Context, _, jobID string, _ *contract.Job) (contract.SendResult, error) {
	s.mu.Lock()
	s.starts = append(s.starts, time.Now())
	s.mu.Unlock()
	return contract.SendResult{Status: 202, RequestID: "req-" + jobID}, nil
}

func (s *startLog) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.starts) }

// busiestWindow is the most sends that started within any window.
func (s *startLog) busiestWindow(window time.Duration) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := append([]time.Time(nil), s.starts...)
	sort.Slice(st, func(i, j int) bool { return st[i].Before(st[j]) })
	most := 0
	for i := range st {
		n := sort.Search(len(st), func(k int) bool { return !st[k].Before(st[i].Add(window)) }) - i
		most = max(most, n)
	}
	return most
}

func deferrals(bs []*bundle, cause Cause) int {
	n := 0
	for _, b := range bs {
		n += int(testutil.ToFloat64(b.pool.m.ThrottleDeferrals.WithLabelValues("demo", string(cause))))
	}
	return n
}

func waitLive(t *testing.T, n int, bs ...*bundle) {
	t.Helper()
	eventually(t, 15*time.Second, fmt.Sprintf("every pool to count %d live replicas", n), func() bool {
		for _, b := range bs {
			if int(testutil.ToFloat64(b.pool.m.ReplicasLive)) != n {
				return false
			}
		}
		return true
	})
}

// settle waits until every job of ids is sent or deferred to a time still
// ahead (its last status event), no pool holds a job, and the jobs stream's consumer has nothing
// pending or unacknowledged: from then on nothing can be sent before the
// earliest of the deferred jobs' times, which it returns (zero when none is
// deferred). This is the state that proves "nothing more goes out", where a
// sleep would only hope for it.
func settle(t *testing.T, bs []*bundle, ids []string) time.Time {
	t.Helper()
	var earliest time.Time
	eventually(t, 30*time.Second, "every job sent or deferred, nothing in flight", func() bool {
		earliest = time.Time{}
		for _, b := range bs {
			if testutil.ToFloat64(b.pool.m.InflightJobs) != 0 {
				return false
			}
		}
		a := bs[0]
		for _, id := range ids {
			// A job's last event says where it is: sent, or deferred to
			// RetryAt (a deferral writes no job state).
			evs := a.history(id)
			if len(evs) == 0 {
				return false
			}
			last := evs[len(evs)-1]
			switch {
			case last.Event == contract.EventSent:
				continue
			case last.Event != contract.EventDeferred || last.RetryAt == nil || !last.RetryAt.After(time.Now()):
				return false // on its way, or due now: it may still go out
			}
			if earliest.IsZero() || last.RetryAt.Before(earliest) {
				earliest = *last.RetryAt
			}
		}
		c, err := a.js.Consumer(context.Background(), contract.JobsStream("demo"), contract.ConsumerName)
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	return earliest
}

// Two replicas on one server share one mailbox's limits.
func TestPoolsShareMailboxLimits(t *testing.T) {
	t.Parallel()
	t.Run("recipients per 24 h: two pools with a budget of 100 send 3 jobs of 30, defer the rest", func(t *testing.T) {
		t.Parallel()
		js := startServer(t)
		sent := &startLog{}
		cfg := Config{PerMailboxRecipientsPerDay: 100}
		a := startPool(t, js, cfg, sent, testOptions{})
		b := startPool(t, js, cfg, sent, testOptions{})
		rcpts := make([]string, 30)
		for i := range rcpts {
			rcpts[i] = fmt.Sprintf("r%d@example.com", i)
		}
		var ids []string
		for i := range 8 {
			job := demoJob(fmt.Sprintf("job-r%d", i))
			job.To = rcpts
			ids = append(ids, a.publish(job))
		}
		eventually(t, 15*time.Second, "3 sent and 5 deferred for recipients", func() bool {
			return sent.count() == 3 && deferrals([]*bundle{a, b}, CauseRecipients) >= 5
		})
		// Nothing more may go out: the five wait for the budget's hours to
		// age out, with no delivery held meanwhile.
		if next := settle(t, []*bundle{a, b}, ids); time.Until(next) < 30*time.Minute {
			t.Fatalf("a job deferred for recipients is due again at %s, before the budget's hours age out", next.Format(time.RFC3339))
		}
		if n := sent.count(); n != 3 {
			t.Fatalf("%d jobs of 30 recipients sent with a shared budget of 100, want 3", n)
		}
		used, err := a.q.Pacing.Used(context.Background(), "noreply@demo.example", time.Now())
		if err != nil || used != 90 {
			t.Fatalf("ledger counts %d (%v), want 90", used, err)
		}
		if n := deferrals([]*bundle{a, b}, CauseRetryAfter) + deferrals([]*bundle{a, b}, CausePace); n != 0 {
			t.Fatalf("%d deferrals for other causes", n)
		}
	})

	t.Run("per minute: two pools with a pace of 10 start at most 10 in any rolling minute", func(t *testing.T) {
		t.Parallel()
		js := startServer(t)
		sent := &startLog{}
		cfg := Config{PerMailboxPerMinute: 10}
		a := startPool(t, js, cfg, sent, testOptions{})
		b := startPool(t, js, cfg, sent, testOptions{})
		waitLive(t, 2, a, b)
		var ids []string
		for i := range 25 {
			ids = append(ids, a.publish(demoJob(fmt.Sprintf("job-m%d", i))))
		}
		eventually(t, 15*time.Second, "every job sent or deferred", func() bool {
			return sent.count()+deferrals([]*bundle{a, b}, CausePace) >= 25
		})
		settle(t, []*bundle{a, b}, ids)
		t.Logf("busiest rolling minute: %d sends", sent.busiestWindow(paceWindow))
		if n := sent.busiestWindow(paceWindow); n > 10 || n < 5 {
			t.Fatalf("%d sends in one rolling minute, want 5 to 10 (5 per replica)", n)
		}
	})

	t.Run("a replica joining mid-minute adds at most its own share to that minute", func(t *testing.T) {
		t.Parallel()
		js := startServer(t)
		sent := &startLog{}
		cfg := Config{PerMailboxPerMinute: 10}
		a := startPool(t, js, cfg, sent, testOptions{})
		waitLive(t, 1, a)
		var ids []string
		for i := range 12 {
			ids = append(ids, a.publish(demoJob(fmt.Sprintf("job-j%d", i))))
		}
		eventually(t, 15*time.Second, "10 sent alone", func() bool { return sent.count() == 10 })
		b := startPool(t, js, cfg, sent, testOptions{})
		waitLive(t, 2, a, b)
		for i := range 12 {
			ids = append(ids, a.publish(demoJob(fmt.Sprintf("job-k%d", i))))
		}
		eventually(t, 15*time.Second, "every job sent or deferred", func() bool {
			return sent.count()+deferrals([]*bundle{a, b}, CausePace) >= 24
		})
		settle(t, []*bundle{a, b}, ids)
		// The first replica's 10 starts stay in its window and hold it at 0
		// (share 5); the newcomer cannot know them and takes its share, 5.
		t.Logf("busiest rolling minute: %d sends (%d in all)", sent.busiestWindow(paceWindow), sent.count())
		if n := sent.busiestWindow(paceWindow); n > 15 {
			t.Fatalf("%d sends in one rolling minute, want at most 10 + 5", n)
		}
	})
}

// With the ledger out of reach nothing is sent blind: the job waits (no
// attempt spent) and goes out once the ledger is back.
func TestLedgerOutageSendsNothingBlind(t *testing.T) {
	t.Parallel()
	js := startServer(t)
	ctx := context.Background()
	sent := &startLog{}
	q, err := queue.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	led := &failCountingLedger{Ledger: q.Pacing}
	b := startPool(t, js, Config{PerMailboxRecipientsPerDay: 100}, sent, testOptions{ledger: led})
	if err := js.DeleteKeyValue(ctx, contract.BucketPacing); err != nil {
		t.Fatal(err)
	}
	id := b.publish(demoJob("job-blind"))
	// Two refused leases: the job was taken, put back and taken again, and
	// a send could only follow a granted lease.
	eventually(t, 30*time.Second, "two failed leases", func() bool { return led.failed.Load() >= 2 })
	if sent.count() != 0 {
		t.Fatal("sent while the recipient ledger was unreachable")
	}
	if err := queue.Provision(ctx, js, queue.Config{AckWait: 5 * time.Second, WorkersTTL: 3 * time.Second, Profiles: []string{"demo"}}); err != nil {
		t.Fatal(err)
	}
	st := b.waitState(id, contract.StateSent)
	if st.Attempts != 1 {
		t.Fatalf("attempts %d, want 1: an unreachable ledger spends none", st.Attempts)
	}
}

// failCountingLedger counts the leases that failed.
type failCountingLedger struct {
	Ledger
	failed atomic.Int32
}

func (l *failCountingLedger) Lease(ctx context.Context, le ledger.Lease) (int, time.Time, error) {
	n, at, err := l.Ledger.Lease(ctx, le)
	if err != nil {
		l.failed.Add(1)
	}
	return n, at, err
}

// A pool that stops gives its unspent recipients back to the ledger.
func TestStopGivesUnspentRecipientsBack(t *testing.T) {
	t.Parallel()
	js := startServer(t)
	b := startPool(t, js, Config{PerMailboxRecipientsPerDay: 1000}, &startLog{}, testOptions{})
	b.waitState(b.publish(demoJob("job-one")), contract.StateSent)
	used := func() int {
		n, err := b.q.Pacing.Used(context.Background(), "noreply@demo.example", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := used(); n != leaseChunk {
		t.Fatalf("ledger counts %d after one job, want a chunk of %d", n, leaseChunk)
	}
	b.stop()
	if n := used(); n != 1 {
		t.Fatalf("ledger counts %d after the pool stopped, want the 1 recipient sent", n)
	}
}
