package queue

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestPublishFinalOnce: a job's terminal event is stored once whoever
// publishes it, however late: a retry whose first try landed, a second
// publisher (a redelivery that found the outcome recorded), a publish that a
// paused server lets through late, and any of them after the stream's
// duplicate window.
func TestPublishFinalOnce(t *testing.T) {
	b := setup(t)
	e := b.q.Events
	at := time.Now().UTC().Truncate(time.Millisecond)
	ev := contract.Event{JobID: "f1", Profile: "billing", Event: contract.EventSent, Attempt: 1, At: at}
	key := contract.FinalEventKey("billing", "f1", contract.EventSent, 0, 42)
	terminal := func() int {
		t.Helper()
		h, err := e.History(b.ctx, "billing", "f1")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range h {
			if ev.Event == contract.EventSent || ev.Event == contract.EventDeadLettered {
				n++
			}
		}
		return n
	}
	// An earlier event of the job is on the subject already.
	if err := e.Publish(b.ctx, contract.Event{JobID: "f1", Profile: "billing", Event: contract.EventDeferred, At: at}); err != nil {
		t.Fatal(err)
	}
	if err := e.PublishFinal(b.ctx, ev, key); err != nil {
		t.Fatal(err)
	}
	// The same outcome again: its own retry, or another publisher.
	if err := e.PublishFinal(b.ctx, ev, key); err != nil {
		t.Fatal(err)
	}
	// Events after the outcome (a duplicate publish of the job, delivery
	// events) do not make it publish the outcome twice.
	if err := e.Publish(b.ctx, contract.Event{JobID: "f1", Profile: "billing", Event: contract.EventDuplicateSuppressed, At: at.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if err := e.PublishFinal(b.ctx, ev, key); err != nil {
		t.Fatal(err)
	}
	if n := terminal(); n != 1 {
		t.Fatalf("%d terminal events, want 1", n)
	}

	// A publish that a paused server processes late carries the last
	// sequence its publisher saw before the outcome was stored: refused,
	// with any dedupe id.
	late := nats.NewMsg(contract.StatusSubject("billing", "f1"))
	late.Data = []byte(`{"jobId":"f1","profile":"billing","event":"sent","attempt":1}`)
	late.Header.Set(contract.HeaderMsgID, "billing.f1-sent-g0-r41")
	late.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "1")
	var apiErr *jetstream.APIError
	if _, err := b.js.PublishMsg(b.ctx, late); !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		t.Fatalf("late publish = %v, want wrong last sequence", err)
	}

	// After the duplicate window: shrink it, wait for it to pass (a probe
	// id is accepted again), and publish the same outcome once more.
	s, err := b.js.Stream(b.ctx, contract.StreamStatus)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Duplicates = 100 * time.Millisecond
	if _, err := b.js.UpdateStream(b.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute) // the server purges ids on a timer armed with the window in force then (2 minutes): an upper bound
	for i := 0; ; i++ {
		probe := nats.NewMsg("mail.status.billing.probe")
		probe.Header.Set(contract.HeaderMsgID, "probe")
		ack, err := b.js.PublishMsg(b.ctx, probe)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && !ack.Duplicate {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the duplicate window never passed")
		}
		time.Sleep(10 * time.Millisecond) // polling for the window to pass
	}
	if err := e.PublishFinal(b.ctx, ev, key); err != nil {
		t.Fatal(err)
	}
	if n := terminal(); n != 1 {
		t.Fatalf("%d terminal events after the duplicate window, want 1", n)
	}
	// Another outcome (a replay's generation) is stored.
	if err := e.PublishFinal(b.ctx, ev, contract.FinalEventKey("billing", "f1", contract.EventSent, 1, 77)); err != nil {
		t.Fatal(err)
	}
	if n := terminal(); n != 2 {
		t.Fatalf("%d terminal events after a second generation's, want 2", n)
	}
}
