package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestAmbiguitySurvivesReplay: Graph accepts a message and then answers 504,
// twice, so the job is dead-lettered attempts_exhausted after two copies may
// have gone out. The dead letter and `dlq show` say the sends were
// ambiguous, and after support replays it the `sent` event says
// possibleDuplicate: nothing hides that Graph accepted three copies.
func TestAmbiguitySurvivesReplay(t *testing.T) {
	t.Parallel()
	ns := startRelNATS(t)
	fake := newFake(t, graphtest.Options{})
	h := newHarness(t, ns.url(), fake, relWorker{maxAttempts: 2, backoffInitial: 50 * time.Millisecond, backoffMax: 100 * time.Millisecond},
		relProfile{name: "rel", senders: []string{"box1@rel.example"}})
	fake.SetMailboxFault("box1@rel.example", &graphtest.Fault{Status: 504, AcceptThenFail: true})
	h.startReplica()
	id := h.publish("rel", "amb", 1)[0]
	h.waitTerminal([]string{id}, time.Minute)

	cli := func(args ...string) (string, string, int) {
		return runCmdEnv(t, append([]string{"MAILWORKER_CONFIG=" + h.cfgPath}, h.env...), "", args...)
	}
	out, errOut, code := cli("dlq", "show", id)
	if code != 0 || !strings.Contains(out, "reason:     attempts_exhausted") || !strings.Contains(out, "ambiguous:  yes") ||
		!strings.Contains(out, "message trace") {
		t.Fatalf("dlq show (exit %d) does not say the sends were ambiguous:\n%s%s", code, out, errOut)
	}
	dl, err := h.q.DLQ.Get(context.Background(), "", id)
	if err != nil || !dl.Ambiguous {
		t.Fatalf("dead letter %+v (%v): want Ambiguous", dl, err)
	}

	fake.SetMailboxFault("box1@rel.example", nil)
	if out, errOut, code := cli("dlq", "replay", id); code != 0 {
		t.Fatalf("replay exit %d: %s%s", code, out, errOut)
	}
	// The worker stores the state before it publishes the sent event: wait
	// for the event too (read as soon as the state is sent, it may not be
	// there yet).
	var evs []contract.Event
	eventually(t, 30*time.Second, "the replay sent, and its sent event", func() bool {
		st, _, err := h.stateOf(context.Background(), id)
		if err != nil || st.State != contract.StateSent {
			return false
		}
		if evs, err = h.q.Events.History(context.Background(), "", id); err != nil {
			return false
		}
		return slices.ContainsFunc(evs, func(e contract.Event) bool { return e.Event == contract.EventSent })
	})
	var sent *contract.Event
	for i := range evs {
		if evs[i].Event == contract.EventSent {
			sent = &evs[i]
		}
	}
	if sent == nil || !sent.PossibleDuplicate {
		t.Fatalf("sent event %+v: Graph accepted %d copies, the event must say possibleDuplicate", sent, len(fake.Messages()))
	}
	if n := len(fake.Messages()); n != 3 {
		t.Fatalf("the fake accepted %d copies, want 3 (two ambiguous, one sent)", n)
	}
}
