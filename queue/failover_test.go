package queue

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// startCluster starts n embedded JetStream servers clustered together
// (random ports, temp stores); they are shut down at cleanup.
func startCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	ports := make([]int, n)
	var routes []*url.URL
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", ports[i])})
	}
	var srvs []*server.Server
	for i := range n {
		o := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			ServerName: fmt.Sprintf("n%d", i),
			Cluster:    server.ClusterOpts{Name: "mailworker-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes}
		s, err := server.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		srvs = append(srvs, s)
	}
	for _, s := range srvs {
		if !s.ReadyForConnections(30 * time.Second) {
			t.Fatal("nats server not ready")
		}
	}
	return srvs
}

// TestFetchResumesAfterConsumerLeaderLoss: the node that leads the jobs
// consumer (and holds the worker's pull request) goes away. Once a new
// leader is elected the worker must fetch again at once, not when its lost
// pull request would have expired.
//
// An embedded server that shuts down hands its leaderships over first, and
// its consumer answers the pending pull requests with "409 Leadership
// Change", so this test passes with nats.go's default heartbeat too: it
// bounds the recovery, it does not prove PullHeartbeat. A paused or killed
// node answers nothing, and only the heartbeat (2 × PullHeartbeat) tells
// the client; that is what the 3-process cluster suite's SIGSTOP run
// measures.
func TestFetchResumesAfterConsumerLeaderLoss(t *testing.T) {
	srvs := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The worker's connection: to the first node only, which is never the
	// one stopped.
	nc, err := nats.Connect(srvs[0].ClientURL(), nats.DontRandomize(), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 5*time.Second) }
	waitFor(t, time.Minute, "the JetStream meta leader", func() bool {
		c, cancel := short()
		defer cancel()
		_, err := js.AccountInfo(c)
		return err == nil
	})
	waitFor(t, time.Minute, "provisioning R3", func() bool {
		c, cancel := short()
		defer cancel()
		return Provision(c, js, Config{Replicas: 3, AckWait: 30 * time.Second, Profiles: []string{"billing"}}) == nil
	})
	cons, err := js.Consumer(ctx, contract.JobsStream("billing"), contract.ConsumerName)
	if err != nil {
		t.Fatal(err)
	}
	leader := func() string {
		c, cancel := short()
		defer cancel()
		info, err := cons.Info(c)
		if err != nil || info.Cluster == nil {
			return ""
		}
		return info.Cluster.Leader
	}
	// The consumer leader must not be the worker's own node.
	waitFor(t, time.Minute, "a consumer leader away from the worker's node", func() bool {
		l := leader()
		if l == srvs[0].Name() {
			_, _ = js.Conn().Request(fmt.Sprintf("$JS.API.CONSUMER.LEADER.STEPDOWN.%s.%s", contract.JobsStream("billing"), contract.ConsumerName), nil, 5*time.Second)
			return false
		}
		return l != ""
	})
	// Its pull requests expire only after ten minutes: a request lost with
	// the leader and never replaced would hold the job that long, so the
	// bound on "two" below tells a replaced request from an expired one by
	// a margin no load on this shared machine can eat.
	jobs := NewJobs(cons)
	jobs.wait = 10 * time.Minute
	msgs, err := jobs.Messages(10)
	if err != nil {
		t.Fatal(err)
	}
	defer msgs.Drain()
	got := make(chan string, 10)
	go func() {
		for {
			d, err := msgs.Next()
			if IsClosed(err) {
				return
			}
			if err != nil {
				continue
			}
			_ = d.Ack()
			got <- string(d.Data())
		}
	}()
	publish := func(body string) {
		t.Helper()
		waitFor(t, time.Minute, "publish "+body, func() bool {
			c, cancel := short()
			defer cancel()
			_, err := js.Publish(c, contract.JobSubject("billing"), []byte(body))
			return err == nil
		})
	}
	receive := func(body string, within time.Duration) {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case b := <-got:
				if b == body {
					return
				}
			case <-deadline:
				t.Fatalf("%s not fetched within %s", body, within)
			}
		}
	}
	publish("one")
	receive("one", 30*time.Second)

	old := leader()
	for _, s := range srvs {
		if s.Name() == old {
			s.Shutdown()
		}
	}
	waitFor(t, time.Minute, "a new consumer leader", func() bool {
		l := leader()
		return l != "" && l != old
	})
	publish("two")
	// A pull request lost with its leader is replaced at its "409
	// Leadership Change" or after two missed heartbeats (2 × PullHeartbeat),
	// not at its expiry (10 minutes): a minute is an upper bound.
	receive("two", time.Minute)
}

// waitFor polls cond until it holds or timeout passes (at least 30 s: a
// deadline is an upper bound, and CI's two cores are shared by eight test
// binaries under -race).
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	timeout = max(timeout, 30*time.Second)
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
