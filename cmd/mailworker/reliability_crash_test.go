package main

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// TestReliabilityWorkerCrashes runs replicas of the built binary through a
// backlog while one replica at a time is SIGKILLed and restarted. Jobs whose
// send was in flight at a kill are redelivered after the consumer's ack wait,
// wait out the lease of the `sending` mark (sendTimeout + 5s), and are sent
// again marked possibleDuplicate; nothing else may be sent twice, and nothing
// may be lost.
func TestReliabilityWorkerCrashes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	jobs := pick(300, 3000)
	replicas := pick(2, 3)
	kills := pick(5, 25)
	ns := startRelNATS(t)
	// Latency keeps sends in flight so that kills land mid-call.
	fake := newFake(t, graphtest.Options{Latency: 100 * time.Millisecond, LatencyJitter: 150 * time.Millisecond})
	h := newHarness(t, ns.url(), fake, relWorker{ackWait: 2 * time.Second, sendTimeout: time.Second, concurrency: 12, maxInFlight: 24})
	ids := h.publish("rel", "crash", jobs)

	// The kill schedule comes from a logged seed (MAILWORKER_FAULT_SEED
	// replays it).
	seed := faultSeed(t)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	live := make([]*proc, replicas)
	for i := range live {
		live[i] = h.startReplica()
	}
	killed := 0
	for killed < kills {
		time.Sleep(time.Duration(300+rng.IntN(500)) * time.Millisecond) // fault timing, not a wait for a condition
		i := rng.IntN(len(live))
		kill(live[i])
		killed++
		live[i] = h.startReplica()
		if done := len(fake.Messages()); done >= jobs && killed >= 2 {
			break // the backlog is through: later kills would only hit idle replicas
		}
	}
	h.waitTerminal(ids, pick(90*time.Second, 5*time.Minute))
	h.stopAll(live)
	r := h.check(ids)
	h.checkNoSecrets()
	if r.Lost != 0 {
		t.Errorf("lost %d jobs", r.Lost)
	}
	if r.Sent != jobs {
		t.Errorf("sent %d of %d jobs (dead-lettered %d: %v)", r.Sent, jobs, r.DeadLettered, r.Reasons)
	}
	logFigures(t, "worker-crash", r, fmt.Sprintf("replicas=%d kills=%d", replicas, killed))
}
