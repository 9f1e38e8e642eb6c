package worker

import (
	"context"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestPacer(t *testing.T) {
	t.Run("rolling minute: the 31st send waits for the first to age out", func(t *testing.T) {
		clk := &fakeClock{now: time.Unix(1_000_000, 0)}
		p := newPacer(clk, 4, 30, 0, 5*time.Second)
		for i := range 30 {
			at, d, _, _ := p.admit("a@x", 1)
			if d != 0 || !at.Equal(clk.Now()) {
				t.Fatalf("send %d: at=%v defer=%v, want now", i, at, d)
			}
			p.box("a@x").waiting--
		}
		_, d, cause, _ := p.admit("a@x", 1)
		if cause != CausePace || d != paceWindow {
			t.Fatalf("31st send deferred %v (cause %q), want %v for the pace", d, cause, paceWindow)
		}
		// Deferred jobs are spread one interval (2s) apart, not returned at once.
		_, d2, _, _ := p.admit("a@x", 1)
		if d2-d != 2*time.Second {
			t.Fatalf("second deferral %v after first %v, want 2s apart", d2, d)
		}
		// Another mailbox is unaffected.
		if _, d, _, _ := p.admit("b@x", 1); d != 0 {
			t.Fatalf("other mailbox deferred %v", d)
		}
	})

	t.Run("a Retry-After pause defers the mailbox until it ends", func(t *testing.T) {
		clk := &fakeClock{now: time.Unix(1_000_000, 0)}
		p := newPacer(clk, 4, 0, 0, 5*time.Second)
		p.pause("a@x", 30*time.Second)
		_, d, cause, _ := p.admit("a@x", 1)
		if cause != CauseRetryAfter || d != 30*time.Second {
			t.Fatalf("defer %v cause %q, want 30s for Retry-After", d, cause)
		}
		p.pause("a@x", time.Second) // shorter pause never cuts a longer one
		clk.Add(29 * time.Second)
		if _, d, _, _ := p.admit("a@x", 1); d <= 0 {
			t.Fatal("pause was cut short")
		}
		clk.Add(2 * time.Second)
		if _, d, _, _ := p.admit("a@x", 1); d != 0 {
			t.Fatalf("still deferred %v after the pause", d)
		}
	})

	t.Run("a short wait is held, not deferred", func(t *testing.T) {
		clk := &fakeClock{now: time.Unix(1_000_000, 0)}
		p := newPacer(clk, 4, 60, 0, 5*time.Second) // 1 per second
		for range 60 {
			p.admit("a@x", 1)
			p.box("a@x").waiting--
		}
		clk.Add(57 * time.Second)
		at, d, _, _ := p.admit("a@x", 1)
		if want := paceWindow - 57*time.Second; d != 0 || at.Sub(clk.Now()) != want {
			t.Fatalf("at %v defer %v, want held %v", at.Sub(clk.Now()), d, want)
		}
	})

	t.Run("acquire bounds concurrency and gives up with the context", func(t *testing.T) {
		p := newPacer(systemClock{}, 1, 0, 0, time.Second)
		now := time.Now()
		p.admit("a@x", 1)
		if err := p.acquire(context.Background(), "a@x", now); err != nil {
			t.Fatal(err)
		}
		p.admit("a@x", 1)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := p.acquire(ctx, "a@x", now); err == nil {
			t.Fatal("second acquire succeeded with one slot")
		}
		p.release("a@x")
		p.admit("a@x", 1)
		if err := p.acquire(context.Background(), "a@x", now); err != nil {
			t.Fatal(err)
		}
		p.release("a@x")
	})
}

func TestRetryDelay(t *testing.T) {
	for attempt := 1; attempt <= 10; attempt++ {
		d := retryDelay(attempt, 0, time.Second, time.Minute)
		base := time.Second << (attempt - 1)
		lo, hi := base/2, base*3/2
		if base > time.Minute {
			lo, hi = time.Minute/2, time.Minute
		}
		if d < lo || d > min(hi, time.Minute) {
			t.Errorf("attempt %d: delay %v outside [%v, %v]", attempt, d, lo, hi)
		}
	}
	for range 100 {
		if d := retryDelay(3, 30*time.Second, time.Second, time.Minute); d < 30*time.Second || d > 33*time.Second {
			t.Fatalf("Retry-After 30s gave delay %v: never shorter, at most 10%% longer", d)
		}
	}
}
