package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestClusterDeadLettersThroughNodeFaults: support and the console read the
// R3 MAIL_DLQ by batch direct gets, which any replica in the direct-get queue
// group may answer, a follower behind the leader included (docs/reliability.md,
// "Direct gets in a cluster"). On the shipped cluster, as the console user,
// reading through a follower (a connection to that node only: nats-server
// hands a request to its local replica first) and through the others: every
// dead letter the worker stored before a listing is listed — right after
// each write, while that follower is frozen (SIGSTOP), right after it comes
// back, right after it is killed and restarted — and a record found, shown
// and replayed is acted on once and is gone afterwards.
func TestClusterDeadLettersThroughNodeFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	c := startShippedCluster(t)
	fake := newFake(t, graphtest.Options{})
	profile := relProfile{name: "billing", senders: []string{"billing@contoso.com"}}
	h := newClusterHarness(t, c, fake, relWorker{ackWait: 2 * time.Second, sendTimeout: time.Second, concurrency: 2, maxInFlight: 4,
		maxAttempts: 3, backoffInitial: 200 * time.Millisecond, backoffMax: time.Second}, profile)
	quick := []nats.Option{nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2)}
	open := func(nc *nats.Conn) *queue.Queue {
		t.Helper()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		q, err := queue.Open(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	wq := open(dialUser(t, c, "worker", quick...))
	leader := streamLeader(t, h.js, contract.StreamDLQ)
	var follower *shippedNode
	for _, n := range c.nodes {
		if n.name != leader {
			follower = n
			break
		}
	}
	// The console, connected to the follower only (no failover to the
	// nodes it learns of), so that its direct gets go to the follower's
	// replica first.
	onlyHere := func(o *nats.Options) error { o.IgnoreDiscoveredServers = true; return nil }
	fnc, err := nats.Connect(follower.clientURL(), nats.UserInfo("console", shippedPassword("console")), nats.RootCAs(c.caFile),
		nats.CustomInboxPrefix("_INBOX_console"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), onlyHere,
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fnc.Close)
	viaFollower := open(fnc)

	stored := map[string]bool{}
	put := func(from, to int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for i := from; i < to; i++ {
			id := fmt.Sprintf("dl-%04d", i)
			body, _ := json.Marshal(contract.Job{ID: id, From: "billing@contoso.com", To: []string{"a@example.com"}, Subject: "s", Text: "t"})
			// As the worker does: a write whose ack did not come (its
			// connection was on the frozen node) is made again; the
			// record's Nats-Msg-Id stores it once.
			for {
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				err := wq.DLQ.Put(pctx, contract.DeadLetter{JobID: id, Profile: profile.name, Reason: contract.ReasonGraphRejected,
					Error: "test", Attempts: 1, Body: body})
				pcancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatal(err)
				}
			}
			stored[id] = true
		}
	}
	list := func(q *queue.Queue, when string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		dls, err := q.DLQ.List(ctx, queue.DLQQuery{})
		if err != nil {
			t.Fatalf("%s: list: %v", when, err)
		}
		seen := map[string]bool{}
		for _, dl := range dls {
			if !stored[dl.JobID] || seen[dl.JobID] {
				t.Errorf("%s: listed %s, which is not (or no longer, or twice) in the dead-letter queue", when, dl.JobID)
			}
			seen[dl.JobID] = true
		}
		if len(seen) != len(stored) {
			t.Errorf("%s: listed %d of the %d dead letters stored", when, len(seen), len(stored))
		}
	}

	put(0, 150)
	list(viaFollower, "right after the writes, through "+follower.name)
	list(h.q, "right after the writes, through any node")

	follower.pause()
	put(150, 300)
	list(h.q, "with "+follower.name+" frozen")
	follower.resume()
	list(viaFollower, "right after "+follower.name+" came back")

	// Find, show and replay a record written while the follower was frozen.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dl, err := viaFollower.DLQ.Get(ctx, profile.name, "dl-0250")
	if err != nil || dl.JobID != "dl-0250" || len(dl.Body) == 0 {
		t.Fatalf("get dl-0250: %+v %v", dl.JobID, err)
	}
	if _, err := viaFollower.DLQ.Replay(ctx, profile.name, "dl-0250", queue.ReplayOptions{}); err != nil {
		t.Fatalf("replay dl-0250: %v", err)
	}
	delete(stored, "dl-0250")
	if _, err := viaFollower.DLQ.Get(ctx, profile.name, "dl-0250"); !errors.Is(err, queue.ErrNotInDLQ) {
		t.Errorf("dl-0250 after its replay: %v, want ErrNotInDLQ", err)
	}
	list(viaFollower, "right after the replay, through "+follower.name)

	follower.kill()
	put(300, 400)
	follower.start(natsServerBinary(t))
	list(viaFollower, "right after "+follower.name+" was killed and restarted")
	list(h.q, "at the end, through any node")
}
