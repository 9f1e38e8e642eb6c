package worker

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestEventAcksTimeOutFromTheirPublish: with the broker stalled (no ack
// comes), watchEvents waits for each status event's ack until opTimeout after
// that event's publish, not a fresh opTimeout per event in turn. Events
// published long ago are looked at without waiting, so a full channel drains
// in one opTimeout: a worker stopping after a node freeze was held for
// MaxInFlight × opTimeout ("replica did not exit within 30 s of SIGINT" in
// the cluster fault suite), and handlers blocked on the full channel.
func TestEventAcksTimeOutFromTheirPublish(t *testing.T) {
	t.Parallel()
	p := &Pool{log: zerolog.Nop(), events: make(chan pendingEvent, 64)}
	var mu sync.Mutex
	var asked []time.Duration
	wait := func(d time.Duration) error {
		mu.Lock()
		asked = append(asked, d)
		mu.Unlock()
		return fmt.Errorf("no ack from the server") // the stalled broker: never acked
	}
	stale := time.Now().Add(-2 * opTimeout)
	for i := range 50 {
		p.events <- pendingEvent{wait: wait, jobID: fmt.Sprint("j", i), deadline: stale.Add(opTimeout)}
	}
	fresh := time.Now().Add(opTimeout)
	p.events <- pendingEvent{wait: wait, jobID: "fresh", deadline: fresh}
	close(p.events)
	p.watchEvents()

	if len(asked) != 51 {
		t.Fatalf("%d acks waited for, want 51", len(asked))
	}
	for i, d := range asked[:50] {
		if d > 0 {
			t.Fatalf("event %d, published %v ago, waited up to %v for its ack (want no wait: its opTimeout has passed)", i, 2*opTimeout, d)
		}
	}
	if d := asked[50]; d <= 0 || d > opTimeout {
		t.Fatalf("the fresh event waited up to %v for its ack, want up to the rest of its %v", d, opTimeout)
	}
}
