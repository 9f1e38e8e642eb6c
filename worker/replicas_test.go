package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mailworker/mailworker/worker/ledger"
	"github.com/rs/zerolog"
)

// fakeLedger is a Ledger made of a function; it records the requests.
type fakeLedger struct {
	lease func(l ledger.Lease) (int, time.Time, error)
	reqs  []ledger.Lease
}

func (f *fakeLedger) Lease(_ context.Context, l ledger.Lease) (int, time.Time, error) {
	f.reqs = append(f.reqs, l)
	return f.lease(l)
}

// fakeMembership is a Membership made of functions.
type fakeMembership struct {
	beat  func(id string) error
	live  func() (int, error)
	leave func(id string) error
}

func (f *fakeMembership) Beat(_ context.Context, id string) error { return f.beat(id) }
func (f *fakeMembership) Live(context.Context) (int, error)       { return f.live() }
func (f *fakeMembership) Leave(_ context.Context, id string) error {
	if f.leave == nil {
		return nil
	}
	return f.leave(id)
}

// unitPool is a Pool with only what admit and beatAndCount use.
func unitPool(clk Clock, perBox, perMinute, perDay int, l Ledger, m Membership) *Pool {
	return &Pool{pacer: newPacer(clk, pacerConfig{PerBox: perBox, PerMinute: perMinute, PerDay: perDay, MaxHold: 5 * time.Second}), broker: Broker{Ledger: l, Membership: m},
		membershipEvery: time.Second, clock: clk, log: zerolog.Nop(), m: NewMetrics(nil, nil)}
}

func TestPacerShares(t *testing.T) {
	t.Run("the per-minute share follows the live count and keeps its window", func(t *testing.T) {
		clk := &fakeClock{now: time.Unix(1_000_000, 0)}
		p := newPacer(clk, pacerConfig{PerBox: 4, PerMinute: 30, MaxHold: 5 * time.Second})
		p.setLive(2) // 15 a minute each
		for i := range 15 {
			if _, d, _, _ := p.admitParts("a@x", 1, 0); d != 0 {
				t.Fatalf("send %d deferred %v with a share of 15", i, d)
			}
			p.box("a@x").waiting--
			clk.Add(time.Second)
		}
		_, d, cause, _ := p.admitParts("a@x", 1, 0)
		if want := paceWindow - 15*time.Second; cause != CausePace || d != want {
			t.Fatalf("16th send deferred %v (%q), want %v: the first start ages out", d, cause, want)
		}
		// Deferrals are spread by the share's interval (4 s), not the limit's.
		if _, d2, _, _ := p.admitParts("a@x", 1, 0); d2-d != 4*time.Second {
			t.Fatalf("second deferral %v after %v, want 4s apart", d2, d)
		}
		// Alone again: the full 30, with the 15 starts already in the window.
		p.setLive(1)
		for i := range 15 {
			if _, d, _, _ := p.admitParts("a@x", 1, 0); d != 0 {
				t.Fatalf("send %d of the second 15 deferred %v", i, d)
			}
			p.box("a@x").waiting--
		}
		if _, d, _, _ := p.admitParts("a@x", 1, 0); d == 0 {
			t.Fatal("31st send in a minute admitted")
		}
		// Shrinking to a third keeps the 30 starts: nothing until 20 age out.
		p.setLive(3)
		clk.Add(paceWindow - 15*time.Second) // the first 15 started 15..1 s before the 30s of the rest
		if _, d, _, _ := p.admitParts("a@x", 1, 0); d == 0 {
			t.Fatal("admitted with 15 starts in the window and a share of 10")
		}
	})

	t.Run("the concurrency share follows the live count, at least 1", func(t *testing.T) {
		p := newPacer(systemClock{}, pacerConfig{PerBox: 4, MaxHold: time.Second})
		p.setLive(2)
		if p.perBox != 2 {
			t.Fatalf("share %d of 4 with 2 live", p.perBox)
		}
		now := time.Now()
		for range 2 {
			p.admit("a@x", 1, 0)
			if err := p.acquire(context.Background(), "a@x", now); err != nil {
				t.Fatal(err)
			}
		}
		p.admit("a@x", 1, 0)
		got := make(chan error, 1)
		go func() { got <- p.acquire(context.Background(), "a@x", now) }()
		select {
		case <-got:
			t.Fatal("a third slot with a share of 2")
		case <-time.After(50 * time.Millisecond):
		}
		p.setLive(1) // a larger share lets the waiter in at once
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		for range 3 {
			p.release("a@x")
		}
		p.setLive(9)
		if p.perBox != 1 {
			t.Fatalf("share %d with 9 live, want at least 1", p.perBox)
		}
	})

	t.Run("beatAndCount applies the count, keeps the last one on failure, starts alone", func(t *testing.T) {
		live, fail := 3, false
		m := &fakeMembership{beat: func(string) error { return nil }, live: func() (int, error) {
			if fail {
				return 0, errors.New("bucket unreachable")
			}
			return live, nil
		}}
		pool := unitPool(systemClock{}, 4, 30, 0, nil, m)
		fail = true
		pool.startMembership()
		if pool.pacer.live != 1 || pool.pacer.perMinute != 30 {
			t.Fatalf("unreadable count at start: live %d, share %d; want alone", pool.pacer.live, pool.pacer.perMinute)
		}
		fail = false
		pool.beatAndCount("me")
		if pool.pacer.perMinute != 10 || pool.pacer.perBox != 1 {
			t.Fatalf("3 live: shares %d/min, %d slots", pool.pacer.perMinute, pool.pacer.perBox)
		}
		fail = true
		pool.beatAndCount("me")
		if pool.pacer.live != 3 {
			t.Fatalf("a failed count changed live to %d", pool.pacer.live)
		}
	})
}

func TestRecipientLedger(t *testing.T) {
	ctx := context.Background()
	// 10:20 UTC: leases are counted in the 10:00 hour and may be spent until 10:55.
	t0 := time.Date(2026, 11, 25, 10, 20, 0, 0, time.UTC)
	hour := t0.Truncate(time.Hour)

	t.Run("leases a chunk, spends it locally, leases again when it runs out", func(t *testing.T) {
		clk := &fakeClock{now: t0}
		l := &fakeLedger{lease: func(l ledger.Lease) (int, time.Time, error) { return l.Want, time.Time{}, nil }}
		p := unitPool(clk, 4, 0, 10000, l, nil)
		for i := range 4 { // 4 × 30 recipients: 100 leased, then 100 more
			if a, err := p.admit(ctx, "a@x", 30, 0); err != nil || a.Defer != 0 {
				t.Fatalf("job %d: defer %v err %v", i, a.Defer, err)
			}
		}
		if len(l.reqs) != 2 {
			t.Fatalf("%d ledger requests for 120 recipients, want 2", len(l.reqs))
		}
		r := l.reqs[1]
		if r.Mailbox != "a@x" || r.Limit != 10000 || r.Need != 20 || r.Want != leaseChunk || !r.Hour.Equal(hour) || r.GiveBack != 0 {
			t.Fatalf("second request %+v: want need 20 (10 left of the first 100), want 100, hour 10:00", r)
		}
	})

	t.Run("a job that does not fit waits until the ledger says, without asking again", func(t *testing.T) {
		clk := &fakeClock{now: t0}
		freeAt := t0.Add(20 * time.Hour)
		l := &fakeLedger{lease: func(ledger.Lease) (int, time.Time, error) { return 0, freeAt, nil }}
		p := unitPool(clk, 4, 0, 10000, l, nil)
		a, err := p.admit(ctx, "a@x", 30, 0)
		d, cause := a.Defer, a.Cause
		if err != nil || cause != CauseRecipients || d != 20*time.Hour {
			t.Fatalf("defer %v cause %q err %v, want 20h for recipients", d, cause, err)
		}
		if a, _ := p.admit(ctx, "a@x", 40, 0); a.Defer < 20*time.Hour {
			t.Fatalf("a larger job deferred only %v", a.Defer)
		}
		if len(l.reqs) != 1 {
			t.Fatalf("%d ledger requests, want 1: the refusal is remembered", len(l.reqs))
		}
		// Another mailbox has its own budget.
		l.lease = func(l ledger.Lease) (int, time.Time, error) { return l.Want, time.Time{}, nil }
		if a, _ := p.admit(ctx, "b@x", 30, 0); a.Defer != 0 {
			t.Fatalf("other mailbox deferred %v", a.Defer)
		}
		clk.Add(20 * time.Hour)
		if a, _ := p.admit(ctx, "a@x", 30, 0); a.Defer != 0 {
			t.Fatalf("deferred %v once the budget is free", a.Defer)
		}
	})

	t.Run("an allowance ends before its hour does; its rest is given back once", func(t *testing.T) {
		clk := &fakeClock{now: t0}
		fail := false
		l := &fakeLedger{lease: func(l ledger.Lease) (int, time.Time, error) {
			if fail {
				return 0, time.Time{}, errors.New("no responders")
			}
			return l.Want, time.Time{}, nil
		}}
		p := unitPool(clk, 4, 0, 10000, l, nil)
		_, _ = p.admit(ctx, "a@x", 10, 0) // 100 leased in hour 10:00, 90 left
		clk.Add(35 * time.Minute)         // 10:55: the allowance has ended
		fail = true
		if _, err := p.admit(ctx, "a@x", 10, 0); err == nil {
			t.Fatal("ledger error not returned: a job would be sent blind")
		}
		r := l.reqs[1]
		if r.GiveBack != 90 || !r.GiveBackHour.Equal(hour) || !r.Hour.Equal(hour.Add(time.Hour)) {
			t.Fatalf("request %+v: want the 90 given back to 10:00 and the lease counted at 11:00", r)
		}
		fail = false
		if a, err := p.admit(ctx, "a@x", 10, 0); err != nil || a.Defer != 0 {
			t.Fatalf("defer %v err %v", a.Defer, err)
		}
		if r := l.reqs[2]; r.GiveBack != 0 {
			t.Fatalf("the remainder was given back twice: %+v", r)
		}
	})

	t.Run("perMailboxRecipientsPerDay 0: no ledger at all", func(t *testing.T) {
		p := unitPool(&fakeClock{now: t0}, 4, 0, 0, nil, nil) // a nil ledger would panic if used
		if a, err := p.admit(ctx, "a@x", 500, 0); err != nil || a.Defer != 0 {
			t.Fatalf("defer %v err %v", a.Defer, err)
		}
	})
}
