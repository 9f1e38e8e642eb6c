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

// TestDeferralsHoldNoCapacity: one application publishes more jobs with a
// far-future notBefore than the consumer has ack-pending slots (1,000), then
// another application publishes one job. It is sent at once: a deferral, of
// any length and by any number of jobs, waits as a message schedule, not as
// a delivery holding a slot every profile shares. The deferred jobs are all
// still there, waiting.
func TestDeferralsHoldNoCapacity(t *testing.T) {
	t.Parallel()
	ns := startRelNATS(t)
	fake := newFake(t, graphtest.Options{})
	h := newHarness(t, ns.url(), fake, relWorker{},
		relProfile{name: "flood", senders: []string{"box@flood.example"}},
		relProfile{name: "ops", senders: []string{"box@ops.example"}})
	const floods = 1100 // more than MaxAckPending (1,000)
	future := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	var futures []jetstream.PubAckFuture
	for i := range floods {
		job := &contract.Job{ID: fmt.Sprintf("flood-%05d", i), From: "box@flood.example", To: []string{"x@example.com"},
			Subject: "later", Text: "t", NotBefore: &future}
		f, _, err := h.pub.PublishAsync("flood", job)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		case <-time.After(30 * time.Second):
			t.Fatal("no PubAck")
		}
	}
	h.startReplica()
	// Every flood job has been looked at and put aside: none holds a slot.
	eventually(t, 60*time.Second, "the flood to be deferred", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := h.js.Consumer(ctx, contract.JobsStream("flood"), contract.ConsumerName)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	ids := h.publish("ops", "ops", 1)
	h.waitTerminal(ids, 30*time.Second)
	if st, _, err := h.stateOf(context.Background(), ids[0]); err != nil || st.State != contract.StateSent {
		t.Fatalf("ops job: %+v %v", st, err)
	}
	// The flood waits in MAIL_DEFER as schedules, not lost.
	s, err := h.js.Stream(context.Background(), contract.StreamDefer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(contract.ScheduleSubjectPrefix+"flood.>"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(info.State.Subjects); n != floods {
		t.Fatalf("%d flood jobs wait as schedules, want %d", n, floods)
	}
}
