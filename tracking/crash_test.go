package tracking_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/tracking"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

var errCrash = errors.New("crash between the publish and the record")

// shortDuplicateWindow sets MAIL_STATUS's duplicate window to 100 ms (its least) (the
// shipped one is 2 minutes) and returns a function that waits until every
// id published before its call is out of the window, so that a test sees
// what a restart more than 2 minutes later would.
func (b bundle) shortDuplicateWindow(t *testing.T) (past func()) {
	t.Helper()
	s, err := b.js.Stream(b.ctx, contract.StreamStatus)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Duplicates = 100 * time.Millisecond
	if _, err := b.js.UpdateStream(b.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	n := 0
	return func() {
		t.Helper()
		n++
		probe := func() bool {
			m := nats.NewMsg("mail.status.billing.probe")
			m.Header.Set(contract.HeaderMsgID, "probe-"+strconv.Itoa(n))
			ack, err := b.js.PublishMsg(b.ctx, m)
			if err != nil {
				t.Fatal(err)
			}
			return ack.Duplicate
		}
		probe()
		// The server forgets ids on a timer: poll until this probe's id,
		// published after everything the test waits for, is forgotten.
		deadline := time.Now().Add(60 * time.Second)
		for probe() {
			if time.Now().After(deadline) {
				t.Fatal("the duplicate window never passed")
			}
			time.Sleep(10 * time.Millisecond) // polling for the window to pass
		}
	}
}

// TestDeliveryEventsOnceAcrossCrash: the tracker stops ("crashes") after
// each recipient's event is stored on the status stream and before its
// record says so, and restarts after the stream's duplicate window has
// passed; every recipient still gets exactly one event:
//   - delivered, quarantined, and the bounce (whose address stays
//     suppressed: the suppression is written before the event);
//   - a recipient whose `delivery_unknown` (past the horizon) was stored
//     before the crash keeps it, though after the restart the trace says
//     delivered: one event per recipient, not one per event type.
//
// It fails when a restarted tracker trusts its record alone (the duplicate
// window is the only guard).
func TestDeliveryEventsOnceAcrossCrash(t *testing.T) {
	c := newClocked(t)
	pastWindow := c.shortDuplicateWindow(t)
	t0 := c.sendAt(t, 0, "jc", "ann@example.com", "bob@example.com", "carl@example.com", "dave@example.com")
	c.rows.add(row("jc", "ann@example.com", t0.Add(time.Second), graphmail.TraceDelivered),
		row("jc", "bob@example.com", t0.Add(time.Second), graphmail.TraceFailed),
		row("jc", "carl@example.com", t0.Add(time.Second), graphmail.TraceQuarantined),
		row("jc", "dave@example.com", t0.Add(time.Second), graphmail.TracePending))

	crashed := map[string]bool{}
	// A new tracker each time (a restart) that crashes after the first
	// store of each recipient's event.
	restart := func() *tracking.Tracker {
		tr := tracking.New(tracking.Config{Skew: 2 * time.Minute, Now: func() time.Time { return c.now }},
			c.st, c.q.States, c.q.Events, c.rows, zerolog.Nop(), nil, []string{"billing"})
		tracking.SetAfterPublish(tr, func(e contract.Event) error {
			if crashed[e.Recipient] {
				return nil
			}
			crashed[e.Recipient] = true
			return errCrash
		})
		return tr
	}
	// run makes passes at `at`, restarting past the duplicate window after
	// each crash, until a pass ends without one.
	run := func(at time.Duration) {
		t.Helper()
		c.now = c.now.Truncate(time.Hour).Add(at)
		for restarts := 0; ; restarts++ {
			err := restart().Pass(c.ctx)
			if err == nil {
				return
			}
			if !errors.Is(err, errCrash) {
				t.Fatal(err)
			}
			if restarts > 10 {
				t.Fatal("the tracker keeps crashing: each recipient's event is stored more than once")
			}
			pastWindow()
		}
	}
	run(5 * time.Minute)
	for _, r := range []string{"ann@example.com", "bob@example.com", "carl@example.com"} {
		if !crashed[r] {
			t.Errorf("%s: no crash after its event", r)
		}
	}
	c.want(t, "jc", "ann@example.com", contract.EventDelivered, "jc")
	c.want(t, "jc", "bob@example.com", contract.EventBounced, "jc")
	c.want(t, "jc", "carl@example.com", contract.EventQuarantined, "jc")
	c.want(t, "jc", "dave@example.com", "", "")
	if sup, err := c.st.Suppressed(c.ctx, "billing", "bob@example.com", c.now); err != nil || sup == nil {
		t.Errorf("bob@ bounced but is not suppressed: %v %v", sup, err)
	}

	// Past the horizon dave@ gets delivery_unknown: stored, then a crash.
	c.now = c.now.Truncate(time.Hour).Add(25 * time.Hour)
	if err := restart().Pass(c.ctx); !errors.Is(err, errCrash) || !crashed["dave@example.com"] {
		t.Fatalf("pass past the horizon: %v, want a crash after dave@'s delivery_unknown", err)
	}
	pastWindow()
	// Exchange delivers it at last; the restarted tracker finds the
	// delivery_unknown it stored and publishes nothing more.
	c.rows.mu.Lock()
	for i := range c.rows.rows {
		if c.rows.rows[i].RecipientAddress == "dave@example.com" {
			c.rows.rows[i].Status = graphmail.TraceDelivered
		}
	}
	c.rows.mu.Unlock()
	run(25*time.Hour + time.Minute)
	run(25*time.Hour + 2*time.Minute)
	got := c.deliveryEvents(t, "jc")
	for rcpt, ev := range map[string]contract.EventType{"ann@example.com": contract.EventDelivered, "bob@example.com": contract.EventBounced,
		"carl@example.com": contract.EventQuarantined, "dave@example.com": contract.EventDeliveryUnknown} {
		if len(got[rcpt]) != 1 || got[rcpt][0].Event != ev {
			var evs []contract.EventType
			for _, e := range got[rcpt] {
				evs = append(evs, e.Event)
			}
			t.Errorf("%s: events %v, want exactly one %s", rcpt, evs, ev)
		}
	}
	if r, err := c.st.Record(c.ctx, "billing", "jc"); err != nil || r != nil {
		t.Errorf("the settled record is still there past the horizon: %+v %v", r, err)
	}
}

// TestBounceSuppressedAcrossCrash: a tracker that stops right after a hard
// bounce's event is recorded has already put the address on the
// suppression list (it is written before the event): the recipient's
// record is settled, so no later pass would come back to suppress it.
func TestBounceSuppressedAcrossCrash(t *testing.T) {
	c := newClocked(t)
	t0 := c.sendAt(t, 0, "jb", "bob@example.com")
	c.rows.add(row("jb", "bob@example.com", t0.Add(time.Second), graphmail.TraceFailed))
	tracking.SetAfterRecord(c.track, func(contract.Event) error { return errCrash })
	c.now = c.now.Truncate(time.Hour).Add(5 * time.Minute)
	if err := c.track.Pass(c.ctx); !errors.Is(err, errCrash) {
		t.Fatalf("pass: %v, want the crash after the bounce was recorded", err)
	}
	c.want(t, "jb", "bob@example.com", contract.EventBounced, "jb")
	if sup, err := c.st.Suppressed(c.ctx, "billing", "bob@example.com", c.now); err != nil || sup == nil {
		t.Errorf("bob@ bounced but is not suppressed: %v %v", sup, err)
	}
}
