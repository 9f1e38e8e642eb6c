package worker

import (
	"context"
	"testing"
	"time"
)

// A job admitted before a Retry-After arrived must not be sent inside it.
func TestPausedAfterAdmit(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1_000_000, 0)}
	p := newPacer(clk, pacerConfig{PerBox: 4, MaxHold: 5 * time.Second})
	at, d, _, _ := p.admitParts("a@x", 1, 0)
	if d != 0 {
		t.Fatalf("admit deferred %v", d)
	}
	if err := p.acquire(context.Background(), "a@x", at); err != nil {
		t.Fatal(err)
	}
	defer p.release("a@x")
	if d := p.pausedFor("a@x"); d != 0 {
		t.Fatalf("pausedFor before any Retry-After = %v", d)
	}
	p.pause("a@x", 30*time.Second)
	first := p.pausedFor("a@x")
	second := p.pausedFor("a@x")
	if first != 30*time.Second || second != first+20*time.Millisecond {
		t.Fatalf("pausedFor = %v then %v, want 30s then 30.02s (spread)", first, second)
	}
	clk.Add(31 * time.Second)
	if d := p.pausedFor("a@x"); d != 0 {
		t.Fatalf("pausedFor after the window = %v", d)
	}
	if d := p.pausedFor("nobody@x"); d != 0 {
		t.Fatalf("pausedFor of an unknown mailbox = %v", d)
	}
}
