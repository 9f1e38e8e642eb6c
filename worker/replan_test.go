package worker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeScheduler records schedules and reschedules.
type fakeScheduler struct {
	mu    sync.Mutex
	moved map[string]time.Time
}

func (f *fakeScheduler) Schedule(context.Context, string, string, []byte, string, uint64, time.Time) error {
	return nil
}

func (f *fakeScheduler) Reschedule(_ context.Context, _, jobID string, at time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.moved == nil {
		f.moved = map[string]time.Time{}
	}
	f.moved[jobID] = at
	return nil
}

// TestReplanAfterAReplicaLeaves: two replicas share a mailbox's 30/min, so
// this one spaced its deferred jobs 4 s apart. The other replica dies: the
// share becomes the whole 30/min, and the jobs planned under the old share
// are planned again 2 s apart from now, instead of trickling in at the old
// rate until the old plan runs out. A job already planned earlier than its
// new slot keeps its time; new deferrals line up after the last.
func TestReplanAfterAReplicaLeaves(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	clk := &fakeClock{now: t0}
	live := 2
	m := &fakeMembership{beat: func(string) error { return nil }, live: func() (int, error) { return live, nil }}
	pool := unitPool(clk, 4, 30, 0, nil, m)
	sch := &fakeScheduler{}
	pool.broker.Scheduler = sch
	pool.beatAndCount("me")
	if pool.pacer.spacingNow() != 4*time.Second {
		t.Fatalf("2 replicas: spacing %v, want 4s", pool.pacer.spacingNow())
	}
	pool.plans.add("a@x", "demo", "early", t0.Add(time.Second)) // sooner than any new slot
	for i := range 5 {
		pool.plans.add("a@x", "demo", fmt.Sprintf("j%d", i), t0.Add(time.Duration(i+1)*4*time.Second))
	}
	pool.plans.add("b@x", "demo", "past", t0.Add(-time.Second)) // already back: forgotten

	live = 1
	pool.beatAndCount("me")

	want := map[string]time.Time{}
	for i, at := range []time.Duration{3, 5, 7, 9, 11} {
		want[fmt.Sprintf("j%d", i)] = t0.Add(at * time.Second)
	}
	if len(sch.moved) != len(want) {
		t.Fatalf("moved %v, want %v", sch.moved, want)
	}
	for id, at := range want {
		if !sch.moved[id].Equal(at) {
			t.Errorf("%s moved to %v, want %v", id, sch.moved[id].Sub(t0), at.Sub(t0))
		}
	}
	// New deferrals of a@x line up after the replanned ones.
	pool.pacer.mu.Lock()
	after := pool.pacer.boxes["a@x"].deferredUntil
	pool.pacer.mu.Unlock()
	if !after.Equal(t0.Add(13 * time.Second)) {
		t.Errorf("new deferrals start at %v, want after the last replanned job (13s)", after.Sub(t0))
	}

	// A share that shrinks plans nothing again: those jobs are re-paced on arrival.
	sch.moved = nil
	pool.plans.add("a@x", "demo", "k", t0.Add(30*time.Second))
	live = 3
	pool.beatAndCount("me")
	if len(sch.moved) != 0 {
		t.Fatalf("a smaller share moved %v", sch.moved)
	}
}
