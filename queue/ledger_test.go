package queue

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mailworker/mailworker/worker/ledger"
)

func TestLedgerArithmetic(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	lease := func(rec pacingRecord, now time.Time, need, want int) (pacingRecord, int, time.Time) {
		return rec.lease(ledger.Lease{Limit: 1000, Need: need, Want: want, Hour: now.Truncate(time.Hour), Now: now})
	}

	t.Run("grants want while it fits, a quarter of what is left near the limit", func(t *testing.T) {
		rec, g, _ := lease(pacingRecord{}, t0, 10, 100)
		if g != 100 {
			t.Fatalf("granted %d, want 100", g)
		}
		rec, g, _ = lease(rec, t0.Add(time.Minute), 500, 500)
		if g != 500 {
			t.Fatalf("granted %d, want 500", g)
		}
		// 400 left: a quarter is 100.
		rec, g, _ = lease(rec, t0.Add(2*time.Minute), 1, 200)
		if g != 100 {
			t.Fatalf("granted %d, want 100 (a quarter of 400)", g)
		}
		// 300 left: need 290 is granted whole.
		_, g, _ = lease(rec, t0.Add(3*time.Minute), 290, 290)
		if g != 290 {
			t.Fatalf("granted %d, want 290", g)
		}
	})

	t.Run("the lease that would pass the cap waits for old hours to age out", func(t *testing.T) {
		rec, g, _ := lease(pacingRecord{}, t0.Add(30*time.Minute), 500, 500) // hour 10:00
		if g != 500 {
			t.Fatal(g)
		}
		rec, g, _ = lease(rec, t0.Add(90*time.Minute), 500, 500) // hour 11:00
		if g != 500 {
			t.Fatal(g)
		}
		now := t0.Add(3 * time.Hour)
		_, g, freeAt := lease(rec, now, 1, 100)
		// Hour 10:00 is counted until 11:00 the next day: 24 h after the
		// last moment a recipient of that hour may have been sent.
		if want := t0.Add(LedgerSpan); g != 0 || !freeAt.Equal(want) {
			t.Fatalf("granted %d free at %v, want 0 until %v", g, freeAt, want)
		}
		_, g, freeAt = lease(rec, now, 600, 600)
		if want := t0.Add(time.Hour + LedgerSpan); g != 0 || !freeAt.Equal(want) {
			t.Fatalf("600 more: granted %d free at %v, want 0 until %v", g, freeAt, want)
		}
		if _, g, _ := lease(rec, t0.Add(LedgerSpan-time.Second), 1, 1); g != 0 {
			t.Fatal("granted before the oldest hour aged out")
		}
		next, g, _ := lease(rec, t0.Add(LedgerSpan), 400, 400)
		if g != 400 || len(next.Hours) != 2 {
			t.Fatalf("after the first hour aged out: granted %d, hours %+v", g, next.Hours)
		}
	})

	t.Run("an empty window grants a job larger than the whole budget", func(t *testing.T) {
		if _, g, _ := lease(pacingRecord{}, t0, 1500, 1500); g != 1500 {
			t.Fatalf("granted %d, want 1500", g)
		}
	})

	t.Run("a remainder given back is taken off its hour first", func(t *testing.T) {
		rec, _, _ := lease(pacingRecord{}, t0, 1000, 1000)
		if _, g, _ := lease(rec, t0.Add(time.Hour), 1, 1); g != 0 {
			t.Fatal("budget spent, but granted")
		}
		next, g, _ := rec.lease(ledger.Lease{Limit: 1000, Need: 1, Want: 1, Hour: t0.Add(time.Hour), Now: t0.Add(time.Hour),
			GiveBack: 300, GiveBackHour: t0})
		if g != 1 || len(next.Hours) != 2 || next.Hours[0].N != 700 {
			t.Fatalf("granted %d, hours %+v; want 1 and 700 left in the first hour", g, next.Hours)
		}
		// Never below zero, and an aged-out hour is simply gone.
		next, _, _ = next.lease(ledger.Lease{Limit: 1000, Now: t0.Add(time.Hour), GiveBack: 5000, GiveBackHour: t0})
		if len(next.Hours) != 1 || next.Hours[0].N != 1 {
			t.Fatalf("hours %+v", next.Hours)
		}
	})
}

func TestPacingKey(t *testing.T) {
	k := PacingKey(" Billing@Contoso.COM ")
	if k != PacingKey("billing@contoso.com") || k != "MJUWY3DJNZTUAY3PNZ2G643PFZRW63I" {
		t.Fatalf("key %q", k)
	}
}

func TestPacingLedger(t *testing.T) {
	b := setup(t)
	now := time.Now()
	l := ledger.Lease{Mailbox: "a@x.example", Limit: 1000, Need: 1, Want: 100, Hour: now.Truncate(time.Hour), Now: now}

	// Eight replicas lease at once: every grant is counted exactly once.
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				g, _, err := b.q.Pacing.Lease(b.ctx, l)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				total += g
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	used, err := b.q.Pacing.Used(b.ctx, l.Mailbox, now)
	if err != nil {
		t.Fatal(err)
	}
	if used != total || total > 1000 || total == 0 {
		t.Fatalf("granted %d in total, ledger counts %d (limit 1000)", total, used)
	}
	// Spend the rest, then a lease is refused until the hour ages out.
	for used < 1000 {
		g, _, err := b.q.Pacing.Lease(b.ctx, ledger.Lease{Mailbox: l.Mailbox, Limit: 1000, Need: 1, Want: 1000, Hour: l.Hour, Now: now})
		if err != nil || g == 0 {
			t.Fatalf("lease with %d used: %d, %v", used, g, err)
		}
		used += g
	}
	g, freeAt, err := b.q.Pacing.Lease(b.ctx, l)
	if err != nil || g != 0 || !freeAt.Equal(l.Hour.Add(LedgerSpan)) {
		t.Fatalf("lease past the limit: granted %d, free at %v, err %v", g, freeAt, err)
	}
	if u, _ := b.q.Pacing.Used(b.ctx, "A@X.example", now); u != 1000 {
		t.Fatalf("used %d, want 1000 (the key ignores case)", u)
	}
}

func TestWorkersRegistry(t *testing.T) {
	js, _ := startJS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Provision(ctx, js, Config{WorkersTTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	q, err := Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	live := func() int {
		n, err := q.Workers.Live(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := live(); n != 0 {
		t.Fatalf("live %d before any beat", n)
	}
	for _, id := range []string{"r1", "r2", "r3"} {
		if err := q.Workers.Beat(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Workers.Beat(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if n := live(); n != 3 {
		t.Fatalf("live %d, want 3", n)
	}
	if err := q.Workers.Leave(ctx, "r2"); err != nil {
		t.Fatal(err)
	}
	if n := live(); n != 2 {
		t.Fatalf("live %d after one left, want 2", n)
	}
	// Keys not renewed expire with the TTL; a replica that keeps beating stays.
	deadline := time.Now().Add(60 * time.Second) // an upper bound: the TTL expiry is a server timer, slow under load
	for live() != 1 {
		if err := q.Workers.Beat(ctx, "r3"); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("live %d, want 1 once r1 expired", live())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
