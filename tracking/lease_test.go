package tracking

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestLeaseOneReplica: of two replicas one holds the tracking lease and
// keeps it by renewing; the other takes over only when it lapses.
func TestLeaseOneReplica(t *testing.T) {
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
	ctx := context.Background()
	st, err := Open(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return clock }
	a, b := newLease(st.budget, time.Minute, now), newLease(st.budget, time.Minute, now)
	hold := func(l *lease) bool {
		ok, err := l.hold(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !hold(a) || hold(b) {
		t.Fatal("first replica should hold the lease, the second not")
	}
	clock = clock.Add(50 * time.Second)
	if !hold(a) || hold(b) {
		t.Fatal("renewed lease should stay with the first replica")
	}
	clock = clock.Add(61 * time.Second) // a stopped renewing
	if !hold(b) || hold(a) {
		t.Fatal("the second replica should take over a lapsed lease")
	}
}

// A tenant-wide block (TERRL, 5.7.233 / 5.7.232) is a bounce that says
// nothing about the recipient: it never suppresses the address; a 5.x.x about
// the recipient does, and a 4.x.x does not.
func TestHardBounce(t *testing.T) {
	for _, tc := range []struct {
		detail string
		hard   bool
	}{
		{"550 5.1.1 RESOLVER.ADR.RecipNotFound; not found", true},
		{"550 5.7.233 Your message can't be sent because your tenant exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)", false},
		{"550 5.7.232 Your message can't be sent because your trial tenant has exceeded its daily limit", false},
		{"451 4.4.7 Message expired", false},
		{"delivery failed", true},
	} {
		if got := hardBounce(tc.detail); got != tc.hard {
			t.Errorf("hardBounce(%q) = %v, want %v", tc.detail, got, tc.hard)
		}
	}
}
