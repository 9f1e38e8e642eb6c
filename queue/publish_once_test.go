package queue

import (
	"sync"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go"
)

// TestPublishOnce: an event published with PublishOnce is stored once per
// key, whatever the duplicate window: a caller that lost the sequence of
// its own earlier publish (a crash before it recorded it) finds it, learns
// of every other event after what it knew, and two publishers racing on one
// key store it once.
func TestPublishOnce(t *testing.T) {
	b := setup(t)
	e := b.q.Events
	at := time.Now().UTC()
	ev := func(typ contract.EventType, rcpt string) contract.Event {
		return contract.Event{JobID: "o1", Profile: "billing", Event: typ, At: at, Recipient: rcpt}
	}
	// A short duplicate window from the start: the server arms its purge
	// timer with the window in force at the first stored id, so a window
	// shortened later is only honoured once the old timer (2 minutes) fired
	// (CI: "the duplicate window never passed" within 60 s).
	s, err := b.js.Stream(b.ctx, contract.StreamStatus)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Duplicates = 100 * time.Millisecond
	if _, err := b.js.UpdateStream(b.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := e.Publish(b.ctx, contract.Event{JobID: "o1", Profile: "billing", Event: contract.EventSent, At: at}); err != nil {
		t.Fatal(err)
	}
	count := func(key string) int {
		t.Helper()
		n := 0
		_, _, err := e.readAfter(b.ctx, contract.StatusSubject("billing", "o1"), 0, key, func(id string, _ contract.Event) {
			if id == key {
				n++
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The first publish reads the subject (known 0) and stores.
	seqA, stored, err := e.PublishOnce(b.ctx, ev(contract.EventDelivered, "a@x.com"), "k-a", 0, nil)
	if err != nil || !stored {
		t.Fatalf("first publish: stored %v, %v", stored, err)
	}
	// The next, from what the first returned: the happy path.
	seqB, stored, err := e.PublishOnce(b.ctx, ev(contract.EventBounced, "b@x.com"), "k-b", seqA, nil)
	if err != nil || !stored || seqB <= seqA {
		t.Fatalf("second publish: seq %d after %d, stored %v, %v", seqB, seqA, stored, err)
	}
	// Past the duplicate window, a caller that knows only seqA publishes
	// b@'s event again (another event type this time): found, not stored;
	// and a third recipient's publish from seqA reports b@'s event to seen.
	waitDuplicateWindow(t, b)
	var seen []string
	last, stored, err := e.PublishOnce(b.ctx, ev(contract.EventDeliveryUnknown, "b@x.com"), "k-b", seqA,
		func(key string, x contract.Event) { seen = append(seen, key+"="+string(x.Event)) })
	if err != nil || stored || last != seqB {
		t.Fatalf("b@ again: last %d (want %d), stored %v, %v", last, seqB, stored, err)
	}
	if len(seen) != 1 || seen[0] != "k-b=bounced" {
		t.Errorf("seen %v, want [k-b=bounced]", seen)
	}
	seen = nil
	seqC, stored, err := e.PublishOnce(b.ctx, ev(contract.EventDelivered, "c@x.com"), "k-c", seqA,
		func(key string, x contract.Event) { seen = append(seen, key+"="+string(x.Event)) })
	if err != nil || !stored || seqC <= seqB {
		t.Fatalf("c@: seq %d, stored %v, %v", seqC, stored, err)
	}
	if len(seen) != 1 || seen[0] != "k-b=bounced" {
		t.Errorf("seen %v, want [k-b=bounced]", seen)
	}
	// Two publishers of one key, neither knowing the other.
	var wg sync.WaitGroup
	var mu sync.Mutex
	storedBy := 0
	for range 4 {
		wg.Go(func() {
			_, stored, err := e.PublishOnce(b.ctx, ev(contract.EventQuarantined, "d@x.com"), "k-d", seqA, nil)
			if err != nil {
				t.Error(err)
			}
			if stored {
				mu.Lock()
				storedBy++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, k := range []string{"k-a", "k-b", "k-c", "k-d"} {
		if n := count(k); n != 1 {
			t.Errorf("%s stored %d times, want 1", k, n)
		}
	}
	if storedBy != 1 {
		t.Errorf("%d publishers say they stored k-d, want 1", storedBy)
	}
}

// waitDuplicateWindow waits until an id published now is out of
// MAIL_STATUS's duplicate window (and with it every earlier one).
func waitDuplicateWindow(t *testing.T, b bundle) {
	t.Helper()
	probe := func() bool {
		m := nats.NewMsg("mail.status.billing.probe")
		m.Header.Set(contract.HeaderMsgID, "probe")
		ack, err := b.js.PublishMsg(b.ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Duplicate
	}
	probe()
	deadline := time.Now().Add(3 * time.Minute) // the server forgets ids on a timer (armed with the window of its day)
	for probe() {
		if time.Now().After(deadline) {
			t.Fatal("the duplicate window never passed")
		}
		time.Sleep(10 * time.Millisecond) // polling for the window to pass
	}
}
