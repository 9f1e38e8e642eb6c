package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestReliabilityGraphFaults injects Graph and Entra faults into the fake
// while one replica of the binary works: 5xx storms, 429 with Retry-After,
// connection resets, the token endpoint down, and a mailbox that never
// recovers. Retries are paced (request counts bounded for the time), jobs
// finish when Graph recovers, and a job past its attempt limit is
// dead-lettered attempts_exhausted with the last error.
func TestReliabilityGraphFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	jobs := pick(40, 400)
	storm := pick(2500*time.Millisecond, 8*time.Second)
	// Attempts must span more than the storm: the smallest delays (backoff
	// 400ms..2s, -50% jitter) add up to 0.2+0.4+0.8+1+1+… seconds.
	maxAttempts := pick(5, 12)
	ns := startRelNATS(t)
	fake := newFake(t, graphtest.Options{Latency: 20 * time.Millisecond})
	h := newHarness(t, ns.url(), fake, relWorker{maxAttempts: maxAttempts, backoffInitial: 400 * time.Millisecond, backoffMax: 2 * time.Second,
		ackWait: 3 * time.Second, sendTimeout: 2 * time.Second},
		relProfile{name: "rel", senders: []string{"box1@rel.example", "box2@rel.example", "box3@rel.example", "broken@rel.example"}})
	replica := h.startReplica()
	var all []string

	// requestsDuring runs fault for d and returns the sendMail requests made meanwhile.
	requestsDuring := func(d time.Duration, set, clear func()) int {
		before := fake.SendRequests()
		set()
		time.Sleep(d) // fault duration
		clear()
		return fake.SendRequests() - before
	}
	// bound is the most requests n jobs may make in d with backoff starting at
	// 200ms (400ms - 50% jitter) and doubling: a hot loop makes thousands.
	bound := func(n int, d time.Duration) int { return n * (2 + int(d/(200*time.Millisecond))) / 2 }

	t.Run("5xx storm", func(t *testing.T) {
		ids := h.publish("rel", "storm", jobs)
		all = append(all, ids...)
		n := requestsDuring(storm, func() {
			fake.SetMailboxFault("box1@rel.example", &graphtest.Fault{Status: 500})
			fake.SetMailboxFault("box2@rel.example", &graphtest.Fault{Status: 503})
			fake.SetMailboxFault("box3@rel.example", &graphtest.Fault{Status: 503, Probability: 0.5})
		}, func() {
			for _, b := range []string{"box1@rel.example", "box2@rel.example", "box3@rel.example"} {
				fake.SetMailboxFault(b, nil)
			}
		})
		if max := bound(jobs, storm); n > max {
			t.Errorf("%d sendMail requests during a %s storm for %d jobs, want at most %d (retries not paced)", n, storm, jobs, max)
		}
		h.waitTerminal(ids, time.Minute)
		r := h.check(ids)
		if r.Sent != jobs {
			t.Errorf("sent %d of %d after the storm", r.Sent, jobs)
		}
		logFigures(t, "graph-5xx-storm", r, fmt.Sprintf("storm=%s requests_during_storm=%d", storm, n))
	})

	t.Run("429 with Retry-After", func(t *testing.T) {
		ids := h.publish("rel", "throttle", jobs)
		all = append(all, ids...)
		inRA := fake.InRetryAfter()
		n := requestsDuring(storm, func() {
			fake.SetFault(&graphtest.Fault{Status: 429, RetryAfter: "1"})
		}, func() { fake.SetFault(nil) })
		inRA = fake.InRetryAfter() - inRA
		// Each mailbox is paused for Retry-After: a few requests per mailbox per second.
		if max := 4 * 4 * (2 + int(storm/time.Second)); n > max {
			t.Errorf("%d sendMail requests during %s of 429 Retry-After: 1, want at most %d", n, storm, max)
		}
		h.waitTerminal(ids, time.Minute)
		r := h.check(ids)
		events, _ := h.statusEvents()
		for _, id := range ids {
			for _, ev := range events[id] {
				if ev.Event == contract.EventSent && ev.Attempt != 1 {
					t.Errorf("job %s sent at attempt %d: a 429 must not spend an attempt", id, ev.Attempt)
				}
			}
		}
		logFigures(t, "graph-429-retry-after", r, fmt.Sprintf("throttled_for=%s requests=%d in_retry_after=%d", storm, n, inRA))
	})

	t.Run("connection resets", func(t *testing.T) {
		ids := h.publish("rel", "reset", jobs)
		all = append(all, ids...)
		n := requestsDuring(storm, func() {
			fake.SetFault(&graphtest.Fault{Reset: true, Probability: 0.7})
		}, func() { fake.SetFault(nil) })
		if max := bound(jobs, storm); n > max {
			t.Errorf("%d requests during %s of resets, want at most %d", n, storm, max)
		}
		h.waitTerminal(ids, time.Minute)
		r := h.check(ids)
		if r.Sent != jobs {
			t.Errorf("sent %d of %d after the resets", r.Sent, jobs)
		}
		logFigures(t, "graph-connection-reset", r, fmt.Sprintf("resets_for=%s requests=%d", storm, n))
	})

	t.Run("token endpoint down", func(t *testing.T) {
		// A fresh process has no cached token.
		kill(replica)
		fake.SetTokenEndpointDown(true)
		replica = h.startReplica()
		ids := h.publish("rel", "token", jobs)
		all = append(all, ids...)
		fails := fake.TokenFailures()
		sends := fake.SendRequests()
		time.Sleep(storm) // outage length
		fails = fake.TokenFailures() - fails
		fake.SetTokenEndpointDown(false)
		if got := fake.SendRequests() - sends; got != 0 {
			t.Errorf("%d sendMail requests without a token", got)
		}
		if max := bound(jobs, storm); fails > max {
			t.Errorf("%d token requests during a %s outage for %d jobs, want at most %d", fails, storm, jobs, max)
		}
		h.waitTerminal(ids, time.Minute)
		r := h.check(ids)
		if r.Sent != jobs {
			t.Errorf("sent %d of %d after the token endpoint came back (%v)", r.Sent, jobs, r.Reasons)
		}
		logFigures(t, "entra-token-endpoint-down", r, fmt.Sprintf("down_for=%s token_failures=%d", storm, fails))
	})

	t.Run("attempts exhausted", func(t *testing.T) {
		fake.SetMailboxFault("broken@rel.example", &graphtest.Fault{Status: 500, Code: "InternalServerError"})
		defer fake.SetMailboxFault("broken@rel.example", nil)
		var ids []string
		for i := range 3 {
			job := &contract.Job{ID: fmt.Sprintf("exhaust-%d", i), From: "broken@rel.example", To: []string{"c@example.com"}, Subject: "x", Text: "x"}
			id, err := h.pub.Publish(context.Background(), "rel", job)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		all = append(all, ids...)
		h.waitTerminal(ids, time.Minute)
		r := h.check(ids)
		if r.Reasons[contract.ReasonAttemptsExhausted] != len(ids) {
			t.Errorf("reasons %v, want %d attempts_exhausted", r.Reasons, len(ids))
		}
		for _, id := range ids {
			dl, err := h.q.DLQ.Get(context.Background(), "", id)
			if err != nil {
				t.Fatal(err)
			}
			if dl.Attempts != maxAttempts || !strings.Contains(dl.Error, "500") || !strings.Contains(dl.Error, fmt.Sprintf("gave up after %d attempts", maxAttempts)) {
				t.Errorf("dead letter %s: attempts %d, error %q: want %d attempts and the last error (500)", id, dl.Attempts, dl.Error, maxAttempts)
			}
		}
		logFigures(t, "graph-attempts-exhausted", r, "")
	})

	h.stopAll([]*proc{replica})
	r := h.check(all)
	h.checkNoSecrets()
	if r.Lost != 0 {
		t.Errorf("lost %d", r.Lost)
	}
}

// TestReliabilityAmbiguousPolicies makes Graph slower than the client's
// timeout for part of the sends: the fake accepts the mail after the worker
// gave up, so the outcome is ambiguous. Profile "rel" (onAmbiguous: retry)
// sends again and marks the sent event possibleDuplicate; profile "strict"
// (onAmbiguous: deadletter) dead-letters the job for a person to check
// message trace, and never sends it twice.
func TestReliabilityAmbiguousPolicies(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	jobs := pick(40, 400)
	ns := startRelNATS(t)
	// Latency 500ms..1.2s against a 1s send timeout: about 30% time out.
	fake := newFake(t, graphtest.Options{Latency: 500 * time.Millisecond, LatencyJitter: 700 * time.Millisecond})
	h := newHarness(t, ns.url(), fake, relWorker{ackWait: 3 * time.Second, sendTimeout: time.Second,
		backoffInitial: 200 * time.Millisecond, backoffMax: 500 * time.Millisecond},
		relProfile{name: "rel", onAmbiguous: "retry", senders: []string{"box1@rel.example", "box2@rel.example"}},
		relProfile{name: "strict", onAmbiguous: "deadletter", senders: []string{"box3@rel.example", "box4@rel.example"}})
	retryIDs := h.publish("rel", "ambretry", jobs)
	strictIDs := h.publish("strict", "ambstrict", jobs)
	replica := h.startReplica()
	h.waitTerminal(append(append([]string(nil), retryIDs...), strictIDs...), 2*time.Minute)
	h.stopAll([]*proc{replica})

	r := h.check(retryIDs)
	if r.Sent != jobs {
		t.Errorf("retry policy: sent %d of %d (%v)", r.Sent, jobs, r.Reasons)
	}
	if r.Ambiguous == 0 {
		t.Errorf("retry policy: no ambiguous send: the fault did not bite")
	}
	logFigures(t, "graph-slow-ambiguous-retry", r, "latency=500ms+0..700ms sendTimeout=1s")

	s := h.check(strictIDs)
	if s.Duplicated != 0 {
		t.Errorf("deadletter policy: %d jobs sent twice", s.Duplicated)
	}
	if s.DeadLettered == 0 || s.Reasons[contract.ReasonInternal] != s.DeadLettered {
		t.Errorf("deadletter policy: dead-lettered %d, reasons %v: want the ambiguous ones as internal", s.DeadLettered, s.Reasons)
	}
	logFigures(t, "graph-slow-ambiguous-deadletter", s, "latency=500ms+0..700ms sendTimeout=1s")
	h.checkNoSecrets()
}
