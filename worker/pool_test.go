package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestPool runs the pool's rules against the in-memory broker (memBroker):
// what the worker does with each outcome, not how JetStream stores it.
func TestPool(t *testing.T) {
	t.Run("sends a job, records sent, acks it", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := memSetup(t, Config{}, rec)
		id := b.publish(demoJob("job-1"))
		st := b.waitState(id, contract.StateSent)
		if st.Attempts != 1 || st.Graph == nil || st.Graph.RequestID != "req-job-1" {
			t.Fatalf("state = %+v", st)
		}
		ev := b.waitEvent(id, contract.EventSent)
		if ev.Attempt != 1 || ev.Graph.RequestID != "req-job-1" || ev.Graph.Date != "2026-11-30T06:00:00Z" || ev.PossibleDuplicate {
			t.Fatalf("sent event = %+v (graph %+v)", ev, ev.Graph)
		}
		eventually(t, 5*time.Second, "job acked (stream empty)", func() bool { return b.pending() == 0 })
		if n := rec.callsFor(id); n != 1 {
			t.Fatalf("sender called %d times", n)
		}
	})

	t.Run("malformed JSON is dead-lettered invalid_job without a send", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := memSetup(t, Config{}, rec)
		b.publishRaw("mail.send.demo", []byte(`{"from": "noreply@demo.example", "to": [`))
		dls := memWaitDLQ(t, b, 1)
		if dls[0].Reason != contract.ReasonInvalidJob || !strings.Contains(dls[0].Error, "invalid job") {
			t.Fatalf("dead letter = %+v", dls[0])
		}
		if string(dls[0].Body) != `{"from": "noreply@demo.example", "to": [` {
			t.Fatalf("dead letter body changed: %q", dls[0].Body)
		}
		if len(rec.calls) != 0 {
			t.Fatal("sender called for an invalid job")
		}
		eventually(t, 5*time.Second, "job terminated", func() bool { return b.pending() == 0 })
	})

	t.Run("an invalid job keeps the id its producer gave it", func(t *testing.T) {
		t.Parallel()
		b := memSetup(t, Config{}, &recorder{})
		b.publishRaw("mail.send.demo", []byte(`{"id":"job-wrong-type","from":"noreply@demo.example","to":"x@example.com"}`))
		st := b.waitState("job-wrong-type", contract.StateDeadLettered)
		if st.LastError.Reason != contract.ReasonInvalidJob || !strings.Contains(st.LastError.Message, "to") {
			t.Fatalf("state = %+v", st.LastError)
		}
	})

	t.Run("unapproved sender is dead-lettered sender_not_allowed without a send", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := memSetup(t, Config{}, rec)
		job := demoJob("job-evil")
		job.From = "ceo@demo.example"
		id := b.publish(job)
		st := b.waitState(id, contract.StateDeadLettered)
		if st.LastError.Reason != contract.ReasonSenderNotAllowed || !strings.Contains(st.LastError.Message, "ceo@demo.example") {
			t.Fatalf("state = %+v", st.LastError)
		}
		if rec.callsFor(id) != 0 {
			t.Fatal("sender called for an unapproved mailbox")
		}
		ev := b.waitEvent(id, contract.EventDeadLettered)
		if ev.Error == nil || ev.Error.Reason != contract.ReasonSenderNotAllowed {
			t.Fatalf("event = %+v", ev)
		}
	})

	t.Run("a job id sent twice is sent once", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := memSetup(t, Config{}, rec)
		id := b.publish(demoJob("job-dup"))
		b.waitState(id, contract.StateSent)
		// Without a Nats-Msg-Id (or past the duplicate window): the worker
		// recognises the job id from its state.
		b.publishRaw("mail.send.demo", mustJSON(t, demoJob("job-dup")))
		b.waitEvent(id, contract.EventDuplicateSuppressed)
		if n := rec.callsFor(id); n != 1 {
			t.Fatalf("sender called %d times for one job id", n)
		}
	})

	t.Run("a re-published sent job is suppressed at once, not deferred behind the mailbox's pace", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		// One send a minute: the re-publish would wait for the pace if the
		// state were checked after pacing.
		b := memSetup(t, Config{PerMailboxPerMinute: 1}, rec)
		id := b.publish(demoJob("job-dup-paced"))
		b.waitState(id, contract.StateSent)
		b.publishRaw("mail.send.demo", mustJSON(t, demoJob("job-dup-paced")))
		b.waitEvent(id, contract.EventDuplicateSuppressed)
		for _, ev := range b.history(id) {
			if ev.Event == contract.EventDeferred {
				t.Fatalf("the duplicate was deferred (%+v) before it was suppressed", ev)
			}
		}
		if n := rec.callsFor(id); n != 1 {
			t.Fatalf("sender called %d times for one job id", n)
		}
	})

	t.Run("a redelivery after the outcome was recorded re-publishes the final event, sends nothing", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := memSetup(t, Config{}, rec)
		// The state a worker leaves when it dies after recording "sent" and
		// before its event and ack: the job's message is stream sequence 1.
		at := time.Now().Add(-time.Minute).UTC()
		if _, err := (memStates{b.mem}).Create(context.Background(), contract.JobState{JobID: "job-acklost", Profile: "demo",
			State: contract.StateSent, Attempts: 1, UpdatedAt: at, Seq: 1,
			Graph: &contract.GraphInfo{Status: 202, RequestID: "req-first"}}); err != nil {
			t.Fatal(err)
		}
		b.publishRaw("mail.send.demo", mustJSON(t, demoJob("job-acklost")))
		ev := b.waitEvent("job-acklost", contract.EventSent)
		if !ev.At.Equal(at) || ev.Graph == nil || ev.Graph.RequestID != "req-first" || ev.Attempt != 1 {
			t.Fatalf("re-published sent event = %+v", ev)
		}
		eventually(t, 5*time.Second, "the message acked", func() bool { return b.pending() == 0 })
		if rec.callsFor("job-acklost") != 0 {
			t.Fatal("a job whose outcome was recorded was sent again")
		}
		for _, e := range b.history("job-acklost") {
			if e.Event == contract.EventDuplicateSuppressed {
				t.Fatal("a redelivery of the same message is not a duplicate")
			}
		}
		// A later re-publish of the id (another message) is a duplicate.
		b.publishRaw("mail.send.demo", mustJSON(t, demoJob("job-acklost")))
		b.waitEvent("job-acklost", contract.EventDuplicateSuppressed)
	})

	t.Run("permanent failure is dead-lettered with its reason", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{answer: func(int, string, *contract.Job) (contract.SendResult, error) {
			return contract.SendResult{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonRecipientInvalid, Status: 400,
				Code: "ErrorInvalidRecipients", Message: "bad recipient", RequestID: "r-400"}
		}}
		b := memSetup(t, Config{}, rec)
		id := b.publish(demoJob("job-perm"))
		st := b.waitState(id, contract.StateDeadLettered)
		if st.LastError.Reason != contract.ReasonRecipientInvalid || st.Attempts != 1 {
			t.Fatalf("state = %+v", st)
		}
		dl := b.deadLetter(id)
		if dl.GraphRequestID != "r-400" || dl.Attempts != 1 {
			t.Fatalf("dead letter = %+v", dl)
		}
		if rec.callsFor(id) != 1 {
			t.Fatal("permanent failure was retried")
		}
	})

	t.Run("retryable failure is retried and then sent", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{answer: func(n int, id string, _ *contract.Job) (contract.SendResult, error) {
			if n < 3 {
				return contract.SendResult{}, &contract.SendError{Class: contract.ClassRetryable, Status: 503, Code: "ServiceUnavailable", Ambiguous: true}
			}
			return contract.SendResult{Status: 202}, nil
		}}
		b := memSetup(t, Config{}, rec)
		id := b.publish(demoJob("job-retry"))
		st := b.waitState(id, contract.StateSent)
		if st.Attempts != 3 {
			t.Fatalf("attempts = %d, want 3", st.Attempts)
		}
		sent := b.waitEvent(id, contract.EventSent)
		if !sent.PossibleDuplicate {
			t.Fatal("a send after an ambiguous 503 must be marked possibleDuplicate")
		}
		retries := 0
		for _, ev := range b.history(id) {
			if ev.Event == contract.EventRetrying {
				retries++
				if !ev.Ambiguous || ev.RetryAt == nil {
					t.Fatalf("retrying event = %+v", ev)
				}
			}
		}
		if retries != 2 {
			t.Fatalf("retrying events = %d, want 2", retries)
		}
	})

	t.Run("an unavailable dependency spends no attempt, however long it lasts", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{answer: func(n int, _ string, _ *contract.Job) (contract.SendResult, error) {
			if n <= 4 { // Entra down for four tries: more than maxAttempts
				return contract.SendResult{}, &contract.SendError{Class: contract.ClassUnavailable, Reason: contract.ReasonAuthFailed, RetryAfter: 50 * time.Millisecond,
					Message: "token endpoint unavailable"}
			}
			return contract.SendResult{Status: 202}, nil
		}}
		b := memSetup(t, Config{MaxAttempts: 2}, rec)
		id := b.publish(demoJob("job-entra-down"))
		st := b.waitState(id, contract.StateSent)
		if st.Attempts != 1 || rec.callsFor(id) != 5 {
			t.Fatalf("attempts %d after %d calls: the outage must not spend attempts", st.Attempts, rec.callsFor(id))
		}
		b.waitEvent(id, contract.EventDeferred)
	})

	t.Run("attempts run out: attempts_exhausted with the last error", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{answer: func(int, string, *contract.Job) (contract.SendResult, error) {
			return contract.SendResult{}, &contract.SendError{Class: contract.ClassRetryable, Status: 500, Code: "InternalServerError", Message: "boom"}
		}}
		b := memSetup(t, Config{MaxAttempts: 3}, rec)
		id := b.publish(demoJob("job-exhaust"))
		st := b.waitState(id, contract.StateDeadLettered)
		if st.LastError.Reason != contract.ReasonAttemptsExhausted || !strings.Contains(st.LastError.Message, "boom") ||
			!strings.Contains(st.LastError.Message, "3 attempts") {
			t.Fatalf("last error = %+v", st.LastError)
		}
		if n := rec.callsFor(id); n != 3 {
			t.Fatalf("sender called %d times, want 3", n)
		}
	})

	t.Run("access denied keeps its reason and says RBAC may still be applying", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{answer: func(int, string, *contract.Job) (contract.SendResult, error) {
			return contract.SendResult{}, &contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonAccessDenied, Status: 403, Code: "ErrorAccessDenied"}
		}}
		b := memSetup(t, Config{MaxAttempts: 2}, rec)
		id := b.publish(demoJob("job-403"))
		st := b.waitState(id, contract.StateDeadLettered)
		if st.LastError.Reason != contract.ReasonAccessDenied || !strings.Contains(st.LastError.Message, "30 minutes to 2 hours") {
			t.Fatalf("last error = %+v", st.LastError)
		}
	})

	t.Run("throttling spends no attempt and pauses only its mailbox", func(t *testing.T) {
		t.Parallel()
		const wait = 1500 * time.Millisecond
		var throttledAt atomic.Int64
		var early atomic.Int32
		rec := &recorder{}
		rec.answer = func(n int, id string, job *contract.Job) (contract.SendResult, error) {
			if job.From == "noreply@demo.example" {
				if t0 := throttledAt.Load(); t0 != 0 && time.Since(time.Unix(0, t0)) < wait {
					early.Add(1)
				}
				if n == 1 && id == "job-429" {
					throttledAt.Store(time.Now().UnixNano())
					return contract.SendResult{}, &contract.SendError{Class: contract.ClassThrottled, Status: 429, Code: "ApplicationThrottled", RetryAfter: wait}
				}
			}
			return contract.SendResult{Status: 202}, nil
		}
		b := memSetup(t, Config{}, rec)
		b.publish(demoJob("job-429"))
		eventually(t, 5*time.Second, "the throttled answer", func() bool { return throttledAt.Load() != 0 })
		// Mail from the same mailbox waits; another mailbox is not slowed.
		b.publish(demoJob("job-same-box"))
		other := demoJob("job-other-box")
		other.From = "other@demo.example"
		b.publish(other)
		b.waitState("job-other-box", contract.StateSent)
		if since := time.Since(time.Unix(0, throttledAt.Load())); since >= wait {
			t.Logf("other mailbox sent only after %s (machine slow?)", since)
		}
		st := b.waitState("job-429", contract.StateSent)
		if st.Attempts != 1 {
			t.Fatalf("attempts = %d: a 429 must not spend an attempt", st.Attempts)
		}
		b.waitState("job-same-box", contract.StateSent)
		if early.Load() != 0 {
			t.Fatalf("%d requests reached the mailbox inside its Retry-After window", early.Load())
		}
		if rec.callsFor("job-same-box") != 1 {
			t.Fatal("job-same-box sent more than once")
		}
		b.waitEvent("job-429", contract.EventDeferred)
	})

	t.Run("a panic dead-letters the job and the worker keeps going", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{answer: func(_ int, id string, _ *contract.Job) (contract.SendResult, error) {
			if id == "job-panic" {
				panic("sender exploded")
			}
			return contract.SendResult{Status: 202}, nil
		}}
		b := memSetup(t, Config{}, rec)
		b.publish(demoJob("job-panic"))
		st := b.waitState("job-panic", contract.StateDeadLettered)
		if st.LastError.Reason != contract.ReasonInternal || !strings.Contains(st.LastError.Message, "sender exploded") {
			t.Fatalf("last error = %+v", st.LastError)
		}
		b.publish(demoJob("job-after-panic"))
		b.waitState("job-after-panic", contract.StateSent)
	})

	t.Run("expired job is dead-lettered expired", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := memSetup(t, Config{}, rec)
		job := demoJob("job-old")
		past := time.Now().Add(-time.Minute)
		job.ExpiresAt = &past
		b.publishRaw("mail.send.demo", mustJSON(t, job)) // the publisher may refuse an expired job; the worker must still handle it
		st := b.waitState("job-old", contract.StateDeadLettered)
		if st.LastError.Reason != contract.ReasonExpired || rec.callsFor("job-old") != 0 {
			t.Fatalf("state = %+v", st)
		}
	})

	t.Run("notBefore defers without spending an attempt", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := memSetup(t, Config{}, rec)
		job := demoJob("job-later")
		at := time.Now().Add(700 * time.Millisecond)
		job.NotBefore = &at
		b.publish(job)
		st := b.waitState("job-later", contract.StateSent)
		if time.Now().Before(at) || st.Attempts != 1 {
			t.Fatalf("sent before notBefore or attempts=%d", st.Attempts)
		}
		b.waitEvent("job-later", contract.EventDeferred)
	})

	t.Run("a wait of seconds becomes a message schedule: the delivery is acked, the job comes back on time", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := memSetup(t, Config{}, rec)
		job := demoJob("job-scheduled")
		at := time.Now().Add(2 * time.Second)
		job.NotBefore = &at
		b.publish(job)
		b.waitEvent("job-scheduled", contract.EventDeferred)
		// Waiting, it holds no delivery: the consumer has nothing pending.
		st := b.waitState("job-scheduled", contract.StateSent)
		if time.Now().Before(at) || st.Attempts != 1 {
			t.Fatalf("sent before notBefore or attempts=%d", st.Attempts)
		}
		// Waiting, it held no delivery: its delivery was acked once the
		// schedule was stored, and it came back as the schedule's due
		// message, which the send acked.
		if got, want := b.mem.answerLog(), []string{"schedule demo/job-scheduled", "jobs/1 ack", "due/1 ack"}; !slices.Equal(got, want) {
			t.Fatalf("answers %q, want %q", got, want)
		}
	})

	t.Run("at most perMailboxConcurrency sends per mailbox", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		release := make(chan struct{})
		rec.answer = func(int, string, *contract.Job) (contract.SendResult, error) {
			<-release
			return contract.SendResult{Status: 202}, nil
		}
		b := memSetup(t, Config{PerMailboxConcurrency: 2, Concurrency: 16}, rec)
		for i := range 6 {
			b.publish(demoJob(fmt.Sprintf("job-c%d", i)))
		}
		eventually(t, 5*time.Second, "two sends in flight", func() bool { return rec.active.Load() == 2 })
		close(release)
		for i := range 6 {
			b.waitState(fmt.Sprintf("job-c%d", i), contract.StateSent)
		}
		if p := rec.peak.Load(); p != 2 {
			t.Fatalf("peak concurrent sends for one mailbox = %d, want 2", p)
		}
	})

	t.Run("the 5-minute upload volume counts objectRef attachments and MIME messages and defers what does not fit", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := memSetup(t, Config{PerMailboxUploadBytes: 2_000_000}, rec)
		// 600 KB stored by reference: 800 KB once base64-encoded in the request.
		ref := b.mem.putAttachment("demo", "report.pdf", 600_000)
		withRef := func(id, from string) *contract.Job {
			j := demoJob(id)
			j.From = from
			j.Attachments = []contract.Attachment{{Name: "report.pdf", ContentType: "application/pdf", ObjectRef: ref}}
			return j
		}
		// The same by a MIME message stored by reference (the SMTP ingress's large mail).
		mimeRef := func(id string) *contract.Job {
			j := demoJob(id)
			j.Subject, j.Text, j.MIME = "", "", &contract.MIME{ObjectRef: ref}
			return j
		}
		for i := range 4 {
			if i%2 == 0 {
				b.publish(withRef(fmt.Sprintf("job-u%d", i), "noreply@demo.example"))
			} else {
				b.publish(mimeRef(fmt.Sprintf("job-u%d", i)))
			}
		}
		// Two fit in 2 MB (1.6 MB); the other two wait for the window, no attempt spent.
		eventually(t, 10*time.Second, "two upload deferrals", func() bool {
			return testutil.ToFloat64(b.pool.m.ThrottleDeferrals.WithLabelValues("demo", string(CauseUpload))) >= 2
		})
		b.publish(withRef("job-u-other", "other@demo.example")) // another mailbox has its own volume
		b.waitState("job-u-other", contract.StateSent)
		sent := 0
		for i := range 4 {
			id := fmt.Sprintf("job-u%d", i)
			switch n := rec.callsFor(id); n {
			case 0:
				if st, err := b.state(id); err == nil && st.Attempts != 0 {
					t.Errorf("deferred job %s spent %d attempts", id, st.Attempts)
				}
			case 1:
				sent++
			default:
				t.Errorf("job %s sent %d times", id, n)
			}
		}
		if sent != 2 {
			t.Fatalf("%d of 4 jobs of 800 KB sent under a 2 MB volume, want 2", sent)
		}
	})

	t.Run("ambiguous outcome with onAmbiguous=deadletter is dead-lettered, not resent", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{answer: func(int, string, *contract.Job) (contract.SendResult, error) {
			return contract.SendResult{}, &contract.SendError{Class: contract.ClassRetryable, Status: 504, Ambiguous: true, Err: errors.New("gateway timeout")}
		}}
		cfg := Config{Profiles: map[string]Profile{"demo": {AllowedSenders: []string{"noreply@demo.example"}, OnAmbiguous: OnAmbiguousDeadLetter}}}
		b := memSetup(t, cfg, rec)
		id := b.publish(demoJob("job-amb"))
		st := b.waitState(id, contract.StateDeadLettered)
		if !st.Ambiguous || !strings.Contains(st.LastError.Message, "X-Mailworker-Job-Id") || rec.callsFor(id) != 1 {
			t.Fatalf("state = %+v, calls = %d", st, rec.callsFor(id))
		}
	})

	t.Run("shutdown lets the send in flight finish and leaves the rest queued", func(t *testing.T) {
		t.Parallel()
		started := make(chan struct{})
		finish := make(chan struct{})
		rec := &recorder{answer: func(n int, id string, _ *contract.Job) (contract.SendResult, error) {
			if id == "job-slow" {
				close(started)
				<-finish
			}
			return contract.SendResult{Status: 202}, nil
		}}
		b := memSetup(t, Config{PerMailboxConcurrency: 1}, rec)
		b.publish(demoJob("job-slow"))
		<-started
		for i := range 3 {
			b.publish(demoJob(fmt.Sprintf("job-queued-%d", i)))
		}
		stopped := make(chan struct{})
		go func() { b.stop(); close(stopped) }()
		eventually(t, 5*time.Second, "pool to stop consuming", func() bool { return !b.pool.Ready() })
		close(finish)
		<-stopped
		b.waitState("job-slow", contract.StateSent)
		for i := range 3 {
			if n := rec.callsFor(fmt.Sprintf("job-queued-%d", i)); n != 0 {
				t.Fatalf("job-queued-%d was sent after shutdown began", i)
			}
		}
		eventually(t, 5*time.Second, "the queued jobs still on the stream", func() bool { return b.pending() == 3 })
	})
}

// TestPoolJetStream runs the pool on an embedded nats-server where the
// behaviour depends on JetStream itself: the duplicate window of dead letters
// across a replay, a subject no stream takes, a replay of a dead letter by
// queue.DLQ, a message schedule that fires into the due stream, and one plain
// send end to end.
func TestPoolJetStream(t *testing.T) {
	t.Run("sends a job, records sent, acks it", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := setup(t, Config{}, rec)
		id := b.publish(demoJob("job-1"))
		st := b.waitState(id, contract.StateSent)
		if st.Attempts != 1 || st.Graph == nil || st.Graph.RequestID != "req-job-1" {
			t.Fatalf("state = %+v", st)
		}
		b.waitEvent(id, contract.EventSent)
		eventually(t, 5*time.Second, "job acked (stream empty)", func() bool { return b.pending() == 0 })
	})

	t.Run("a replayed job that is still invalid gets a dead letter of its own generation, not dropped as a duplicate", func(t *testing.T) {
		t.Parallel()
		// The invalid path reads no job state; the dead letter's Nats-Msg-Id
		// (dlq.<profile>.<id>.g<generation>) must still tell the replay's
		// record from the original, or JetStream drops it inside its
		// duplicate window and the job ends nowhere.
		b := setup(t, Config{}, &recorder{})
		b.publishRaw("mail.send.demo", []byte(`{"id":"job-bad-replayed","from":"noreply@demo.example","to":"x@example.com"}`))
		b.waitState("job-bad-replayed", contract.StateDeadLettered)
		if _, err := b.q.DLQ.Replay(context.Background(), "demo", "job-bad-replayed", queue.ReplayOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 15*time.Second, "the replay's own dead letter", func() bool {
			dl, err := b.q.DLQ.Get(context.Background(), "demo", "job-bad-replayed")
			return err == nil && dl.Generation == 1 && dl.Reason == contract.ReasonInvalidJob
		})
	})

	t.Run("a job for a profile without a stream is refused at publish", func(t *testing.T) {
		t.Parallel()
		b := setup(t, Config{}, &recorder{})
		// Each profile has its own ingress stream (MAIL_JOBS_<profile>): no
		// stream takes a profile that was not provisioned, so the producer
		// hears it at once instead of the job dying in a shared queue.
		_, err := b.js.Publish(context.Background(), "mail.send.nosuch", mustJSON(t, demoJob("job-np")))
		if !errors.Is(err, jetstream.ErrNoStreamResponse) {
			t.Fatalf("publish for an unprovisioned profile = %v, want no stream response", err)
		}
	})

	t.Run("ambiguity survives the dead letter and the replay: the replay's sent says possibleDuplicate", func(t *testing.T) {
		t.Parallel()
		var fail atomic.Bool
		fail.Store(true)
		rec := &recorder{answer: func(int, string, *contract.Job) (contract.SendResult, error) {
			if fail.Load() {
				return contract.SendResult{}, &contract.SendError{Class: contract.ClassRetryable, Status: 504, Ambiguous: true}
			}
			return contract.SendResult{Status: 202}, nil
		}}
		b := setup(t, Config{MaxAttempts: 2}, rec)
		id := b.publish(demoJob("job-amb-replay"))
		b.waitState(id, contract.StateDeadLettered)
		dl, err := b.q.DLQ.Get(context.Background(), "demo", id)
		if err != nil {
			t.Fatal(err)
		}
		if dl.Reason != contract.ReasonAttemptsExhausted || !dl.Ambiguous {
			t.Fatalf("dead letter = %+v: want attempts_exhausted, ambiguous", dl)
		}
		fail.Store(false)
		if _, err := b.q.DLQ.Replay(context.Background(), "demo", id, queue.ReplayOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 15*time.Second, "the replay sent", func() bool {
			for _, ev := range b.history(id) {
				if ev.Event == contract.EventSent {
					if !ev.PossibleDuplicate {
						t.Fatalf("replay's sent event = %+v: Graph may already have delivered two copies", ev)
					}
					return true
				}
			}
			return false
		})
	})

	t.Run("a wait of seconds becomes a JetStream message schedule: the delivery is acked, the job comes back on time", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		b := setup(t, Config{}, rec)
		job := demoJob("job-scheduled")
		at := time.Now().Add(2 * time.Second)
		job.NotBefore = &at
		b.publish(job)
		b.waitEvent("job-scheduled", contract.EventDeferred)
		st := b.waitState("job-scheduled", contract.StateSent)
		if time.Now().Before(at) || st.Attempts != 1 {
			t.Fatalf("sent before notBefore or attempts=%d", st.Attempts)
		}
		// Waiting, it held no delivery: the jobs consumer delivered it once
		// and has it acked, never redelivered; it came back through the
		// profile's due consumer (the message schedule fired).
		info := func(stream, consumer string) *jetstream.ConsumerInfo {
			c, err := b.js.Consumer(context.Background(), stream, consumer)
			if err != nil {
				t.Fatal(err)
			}
			in, err := c.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			return in
		}
		if in := info(contract.JobsStream("demo"), contract.ConsumerName); in.Delivered.Consumer != 1 || in.NumRedelivered != 0 || in.NumAckPending != 0 {
			t.Fatalf("jobs consumer: delivered %d, redelivered %d, ack pending %d: want the one delivery acked while the job waited",
				in.Delivered.Consumer, in.NumRedelivered, in.NumAckPending)
		}
		if in := info(contract.StreamDefer, contract.DueConsumer("demo")); in.Delivered.Consumer != 1 {
			t.Fatalf("due consumer delivered %d, want the schedule's 1", in.Delivered.Consumer)
		}
	})
}

// memWaitDLQ polls the dead letters until there are n.
func memWaitDLQ(t *testing.T, b *memBundle, n int) []contract.DeadLetter {
	t.Helper()
	var dls []contract.DeadLetter
	eventually(t, 15*time.Second, fmt.Sprintf("%d dead letters", n), func() bool {
		dls = b.mem.deadLetters()
		return len(dls) >= n
	})
	return dls
}
