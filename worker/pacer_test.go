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
		p := newPacer(clk, pacerConfig{PerBox: 4, PerMinute: 30, MaxHold: 5 * time.Second})
		for i := range 30 {
			at, d, _, _ := p.admitParts("a@x", 1, 0)
			if d != 0 || !at.Equal(clk.Now()) {
				t.Fatalf("send %d: at=%v defer=%v, want now", i, at, d)
			}
			p.box("a@x").waiting--
		}
		_, d, cause, _ := p.admitParts("a@x", 1, 0)
		if cause != CausePace || d != paceWindow {
			t.Fatalf("31st send deferred %v (cause %q), want %v for the pace", d, cause, paceWindow)
		}
		// Deferred jobs are spread one interval (2s) apart, not returned at once.
		_, d2, _, _ := p.admitParts("a@x", 1, 0)
		if d2-d != 2*time.Second {
			t.Fatalf("second deferral %v after first %v, want 2s apart", d2, d)
		}
		// Another mailbox is unaffected.
		if _, d, _, _ := p.admitParts("b@x", 1, 0); d != 0 {
			t.Fatalf("other mailbox deferred %v", d)
		}
	})

	t.Run("a Retry-After pause defers the mailbox until it ends", func(t *testing.T) {
		clk := &fakeClock{now: time.Unix(1_000_000, 0)}
		p := newPacer(clk, pacerConfig{PerBox: 4, MaxHold: 5 * time.Second})
		p.pause("a@x", 30*time.Second)
		_, d, cause, _ := p.admitParts("a@x", 1, 0)
		if cause != CauseRetryAfter || d != 30*time.Second {
			t.Fatalf("defer %v cause %q, want 30s for Retry-After", d, cause)
		}
		p.pause("a@x", time.Second) // shorter pause never cuts a longer one
		clk.Add(29 * time.Second)
		if _, d, _, _ := p.admitParts("a@x", 1, 0); d <= 0 {
			t.Fatal("pause was cut short")
		}
		clk.Add(2 * time.Second)
		if _, d, _, _ := p.admitParts("a@x", 1, 0); d != 0 {
			t.Fatalf("still deferred %v after the pause", d)
		}
	})

	t.Run("a short wait is held, not deferred", func(t *testing.T) {
		clk := &fakeClock{now: time.Unix(1_000_000, 0)}
		p := newPacer(clk, pacerConfig{PerBox: 4, PerMinute: 60, MaxHold: 5 * time.Second}) // 1 per second
		for range 60 {
			p.admit("a@x", 1, 0)
			p.box("a@x").waiting--
		}
		clk.Add(57 * time.Second)
		at, d, _, _ := p.admitParts("a@x", 1, 0)
		if want := paceWindow - 57*time.Second; d != 0 || at.Sub(clk.Now()) != want {
			t.Fatalf("at %v defer %v, want held %v", at.Sub(clk.Now()), d, want)
		}
	})

	t.Run("acquire bounds concurrency and gives up with the context", func(t *testing.T) {
		p := newPacer(systemClock{}, pacerConfig{PerBox: 1, MaxHold: time.Second})
		now := time.Now()
		p.admit("a@x", 1, 0)
		if err := p.acquire(context.Background(), "a@x", now); err != nil {
			t.Fatal(err)
		}
		p.admit("a@x", 1, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := p.acquire(ctx, "a@x", now); err == nil {
			t.Fatal("second acquire succeeded with one slot")
		}
		p.release("a@x")
		p.admit("a@x", 1, 0)
		if err := p.acquire(context.Background(), "a@x", now); err != nil {
			t.Fatal(err)
		}
		p.release("a@x")
	})

	t.Run("upload volume: a request that would pass the 5-minute volume waits for old ones to leave", func(t *testing.T) {
		clk := &fakeClock{now: time.Unix(1_000_000, 0)}
		const mb = 1_000_000
		p := newPacer(clk, pacerConfig{PerBox: 4, MaxHold: 5 * time.Second, Upload: 10 * mb})
		admitted := func(addr string, n int64) (time.Duration, Cause) {
			t.Helper()
			at, d, cause, _ := p.admitParts(addr, 1, n)
			if d == 0 {
				p.box(addr).waiting--
				if !at.Equal(clk.Now()) {
					t.Fatalf("held until %v, want now or a deferral", at)
				}
			}
			return d, cause
		}
		for i := range 3 {
			if d, _ := admitted("a@x", 3*mb); d != 0 {
				t.Fatalf("upload %d of 3 MB deferred %v under a 10 MB volume", i, d)
			}
			clk.Add(10 * time.Second)
		}
		// 9 MB in the window: 3 MB more must wait until the first leaves.
		d, cause := admitted("a@x", 3*mb)
		if want := uploadWindow - 30*time.Second; cause != CauseUpload || d != want {
			t.Fatalf("4th upload deferred %v (cause %q), want %v for the upload volume", d, cause, want)
		}
		if d, _ := admitted("a@x", mb); d != 0 { // a small one still fits
			t.Fatalf("1 MB deferred %v with 9 of 10 MB used", d)
		}
		if d, _ := admitted("b@x", 3*mb); d != 0 { // another mailbox has its own volume
			t.Fatalf("other mailbox deferred %v", d)
		}
		clk.Add(uploadWindow - 30*time.Second)
		if d, _ := admitted("a@x", 3*mb); d != 0 {
			t.Fatalf("deferred %v after the first upload left the window", d)
		}

		// Two live replicas take half each; a request larger than the share
		// alone is sent once the window is empty, not deferred for ever.
		p = newPacer(clk, pacerConfig{PerBox: 4, MaxHold: 5 * time.Second, Upload: 10 * mb})
		p.setLive(2)
		if d, _ := admitted("c@x", 4*mb); d != 0 {
			t.Fatalf("4 MB deferred %v under a 5 MB share", d)
		}
		if d, cause := admitted("c@x", 2*mb); cause != CauseUpload || d == 0 {
			t.Fatalf("2 MB more admitted (defer %v) past a 5 MB share", d)
		}
		clk.Add(uploadWindow)
		if d, _ := admitted("c@x", 6*mb); d != 0 {
			t.Fatalf("6 MB deferred %v in an empty window", d)
		}
		if d, _ := admitted("c@x", 1); d == 0 {
			t.Fatal("admitted past the share right after an oversized request")
		}
	})

	t.Run("upload volume: a draft's bytes count from the end of its upload", func(t *testing.T) {
		clk := &fakeClock{now: time.Unix(1_000_000, 0)}
		const mb = 1_000_000
		p := newPacer(clk, pacerConfig{PerBox: 4, MaxHold: 5 * time.Second, Upload: 10 * mb})
		start := clk.Now()
		if _, d, _, _ := p.admitParts("a@x", 1, 8*mb); d != 0 {
			t.Fatalf("8 MB deferred %v in an empty window", d)
		}
		p.box("a@x").waiting--
		clk.Add(20 * time.Second) // the upload takes 20 s
		p.uploadEnded("a@x", start, 8*mb, clk.Now())
		// A window after the start, but not after the end: still counted.
		clk.Add(uploadWindow - 10*time.Second)
		_, d, cause, _ := p.admitParts("a@x", 1, 8*mb)
		if cause != CauseUpload || d != 10*time.Second {
			t.Fatalf("deferred %v (cause %q), want 10s: the bytes left the window counted from the upload's start", d, cause)
		}
	})
}

// admitParts is admit's answer as the values tests compare.
func (p *pacer) admitParts(addr string, recipients int, bytes int64) (time.Time, time.Duration, Cause, int) {
	a := p.admit(addr, recipients, bytes)
	return a.At, a.Defer, a.Cause, a.Short
}
