package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestReliabilityBrokerRestart stops the nats-server mid-run and starts it
// again on the same port with the same store, more than once. The replicas
// reconnect by themselves (MaxReconnects -1) and finish the backlog.
func TestReliabilityBrokerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	jobs := pick(300, 3000)
	restarts := pick(2, 6)
	ns := startRelNATS(t)
	fake := newFake(t, graphtest.Options{Latency: 50 * time.Millisecond, LatencyJitter: 100 * time.Millisecond})
	h := newHarness(t, ns.url(), fake, relWorker{ackWait: 2 * time.Second, sendTimeout: time.Second, concurrency: 12, maxInFlight: 24})
	ids := h.publish("rel", "broker", jobs)
	live := []*proc{h.startReplica(), h.startReplica()}

	for i := range restarts {
		// Let some work happen, then take the broker away for a while.
		eventually(t, 60*time.Second, "progress before restart", func() bool {
			return len(fake.Messages()) >= (i+1)*jobs/(restarts+2)
		})
		ns.stop()
		time.Sleep(1500 * time.Millisecond) // outage length: fault timing
		ns.start()
	}
	h.waitTerminal(ids, pick(90*time.Second, 5*time.Minute))
	for _, p := range live {
		select {
		case <-p.done:
			t.Fatalf("a replica exited during the broker outage:\n%s", tail(p.stderr.String(), 3000))
		default:
		}
	}
	h.stopAll(live)
	r := h.check(ids)
	h.checkNoSecrets()
	if r.Lost != 0 || r.Sent != jobs {
		t.Errorf("lost %d, sent %d of %d", r.Lost, r.Sent, jobs)
	}
	logFigures(t, "broker-restart", r, fmt.Sprintf("restarts=%d outage=1.5s", restarts))
}

// TestReliabilityClusterNodeLoss runs a 3-node JetStream cluster with every
// stream at 3 replicas and shuts down the leader of the profile's job stream
// (MAIL_JOBS_cluster) mid-run.
// A new leader is elected; the replicas carry on; nothing is lost.
func TestReliabilityClusterNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	jobs := pick(200, 2000)
	cl := startRelCluster(t)
	fake := newFake(t, graphtest.Options{Latency: 50 * time.Millisecond, LatencyJitter: 100 * time.Millisecond})
	h := newHarness(t, cl.url(), fake, relWorker{replicas: 3, ackWait: 2 * time.Second, sendTimeout: time.Second, concurrency: 12, maxInFlight: 24})
	ids := h.publish("rel", "cluster", jobs)
	live := []*proc{h.startReplica(), h.startReplica()}

	eventually(t, 60*time.Second, "progress before the node loss", func() bool { return len(fake.Messages()) >= jobs/4 })
	jobsStream := contract.JobsStream("rel")
	leader := streamLeader(t, h.js, jobsStream)
	cl.node(leader).stop()
	t.Logf("stopped %s, leader of %s", leader, jobsStream)
	eventually(t, 30*time.Second, "a new "+jobsStream+" leader", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := h.js.Stream(ctx, jobsStream)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		return err == nil && info.Cluster != nil && info.Cluster.Leader != "" && info.Cluster.Leader != leader
	})
	h.waitTerminal(ids, pick(90*time.Second, 5*time.Minute))
	h.stopAll(live)
	r := h.check(ids)
	h.checkNoSecrets()
	if r.Lost != 0 || r.Sent != jobs {
		t.Errorf("lost %d, sent %d of %d", r.Lost, r.Sent, jobs)
	}
	logFigures(t, "cluster-leader-loss", r, "stopped="+leader)
}

// streamLeader waits until the stream has a leader and returns its name.
// A stream may be between leaders for a while after a node was frozen or
// killed (an election), so no leader yet is not a failure; none within 30 s
// is.
func streamLeader(t *testing.T, js jetstream.JetStream, name string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := js.Stream(ctx, name)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = s.Info(ctx)
		}
		cancel()
		switch {
		case err == nil && info.Cluster != nil && info.Cluster.Leader != "":
			return info.Cluster.Leader
		case err == nil:
			err = fmt.Errorf("no leader: %+v", info.Cluster)
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %s has no leader after 30 s: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
