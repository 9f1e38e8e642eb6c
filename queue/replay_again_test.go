package queue

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestReplayAfterAFailedReplayEmitsReplayed: a plain replay that fails
// again as an invalid job (the worker dead-letters it without reading the
// job's state: the new record is at generation 0 again, stored after the
// duplicate window) followed by an edited replay records a second
// `replayed` event. Its dedupe id used to be the generation's only, so the
// events stream dropped the second as a duplicate of the first.
func TestReplayAfterAFailedReplayEmitsReplayed(t *testing.T) {
	b := setup(t)
	d := b.q.DLQ
	bad := []byte(`{"id":"j9","from":"billing@contoso.com","to":["not an address"],"subject":"s","text":"t"}`)
	if err := d.Put(b.ctx, contract.DeadLetter{JobID: "j9", Profile: "billing", Reason: contract.ReasonInvalidJob, Error: "to[0]: not an address", Body: bad}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Replay(b.ctx, "billing", "j9", ReplayOptions{}); err != nil {
		t.Fatal(err)
	}
	// The replayed job fails validation again: a second record at
	// generation 0, as the worker writes it (past the dedupe window of the
	// first, hence its own Nats-Msg-Id here).
	h := nats.Header{}
	h.Set(contract.HeaderMsgID, "dlq.billing.j9.g0.later")
	h.Set(contract.HeaderJobID, "j9")
	h.Set(contract.HeaderProfile, "billing")
	h.Set(contract.HeaderReason, string(contract.ReasonInvalidJob))
	h.Set(contract.HeaderFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
	h.Set(HeaderGeneration, "0")
	if _, err := b.js.PublishMsg(b.ctx, &nats.Msg{Subject: contract.DLQSubject("billing"), Header: h, Data: bad}); err != nil {
		t.Fatal(err)
	}
	fixed := []byte(`{"id":"j9","from":"billing@contoso.com","to":["a@example.com"],"subject":"s","text":"t"}`)
	if _, err := d.Replay(b.ctx, "billing", "j9", ReplayOptions{Body: fixed}); err != nil {
		t.Fatal(err)
	}
	evs, err := b.q.Events.History(b.ctx, "billing", "j9")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ev := range evs {
		if ev.Event == contract.EventReplayed {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d replayed events after two replays, want 2 (history %+v)", n, evs)
	}
}
