package worker

import (
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestDecide is the engine's rule book, one row per (state, outcome) pair,
// without a broker: what the worker does with every job it can meet. A new
// outcome rule is a new row here.
func TestDecide(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	past, future := now.Add(-time.Minute), now.Add(time.Hour)
	job := &contract.Job{From: "billing@contoso.com", To: []string{"a@example.com"}}
	expired := &contract.Job{From: "billing@contoso.com", ExpiresAt: &past}
	later := &contract.Job{From: "billing@contoso.com", NotBefore: &future}
	// A fixed random source: jitter is 0, backoff sits at the bottom of its range.
	pol := Policy{MaxAttempts: 3, MaxStops: 3, Busy: 65 * time.Second, Profile: "billing", Mailbox: "billing@contoso.com",
		Retry: RetryPolicy{Initial: 4 * time.Second, Max: time.Minute, Rand: func(int64) int64 { return 0 }}}
	polDL := pol
	polDL.OnAmbiguous = OnAmbiguousDeadLetter

	none := contract.JobState{}
	st := func(s contract.State, attempts int, mod ...func(*contract.JobState)) contract.JobState {
		x := contract.JobState{State: s, Attempts: attempts, UpdatedAt: now.Add(-time.Hour)}
		for _, m := range mod {
			m(&x)
		}
		return x
	}
	ambiguous := func(x *contract.JobState) { x.Ambiguous = true }
	sendingNow := func(x *contract.JobState) { x.UpdatedAt = now.Add(-5 * time.Second) }
	sendAt := now.Add(-time.Minute)
	drafted := func(x *contract.JobState) { x.Draft = &contract.Draft{ID: "AAkALg1", InternetMessageID: "<m@x>"} }
	draftSent := func(x *contract.JobState) { x.Draft = &contract.Draft{ID: "AAkALg1", SendAt: &sendAt} }
	stopped := func(n int) func(*contract.JobState) { return func(x *contract.JobState) { x.Stops = n } }
	arrived := Outcome{Kind: Arrived, Job: job, SenderAllowed: true}
	failed := func(se contract.SendError) Outcome { return Outcome{Kind: Failed, Err: &se} }
	pending := func(inDrafts bool, sentAt time.Time) Outcome {
		return Outcome{Kind: Pending, Pending: &contract.PendingError{Profile: "billing", SentAt: sentAt, InDrafts: inDrafts, InternetMessageID: "<m@x>"}}
	}
	polShort := pol
	polShort.TransitWait, polShort.LookupEvery = 20*time.Second, 5*time.Second

	tests := []struct {
		name  string
		state contract.JobState
		out   Outcome
		pol   Policy
		want  Action
	}{
		// Arrival: before pacing.
		{"new job: send", none, arrived, pol, Action{Kind: Send}},
		{"retrying job with attempts left: send", st(contract.StateRetrying, 2), arrived, pol, Action{Kind: Send}},
		{"already sent: suppress", st(contract.StateSent, 1), arrived, pol,
			Action{Kind: SuppressDuplicate, Message: "already sent"}},
		{"already dead-lettered: suppress, say replay", st(contract.StateDeadLettered, 3), arrived, pol,
			Action{Kind: SuppressDuplicate, Message: "already dead-lettered: use `mailworker dlq replay` to send it again"}},
		{"this message's outcome recorded, ack lost: finish again", st(contract.StateSent, 1),
			Outcome{Kind: Arrived, Job: job, SenderAllowed: true, Redelivered: true}, pol, Action{Kind: FinishAgain}},
		{"another replica sending it now: defer until its send times out", st(contract.StateSending, 0, sendingNow), arrived, pol,
			Action{Kind: Defer, Delay: 60 * time.Second, Cause: CauseBusy, Message: "another worker is sending this job"}},
		{"stale sending (a replica died mid-call): an ambiguous attempt, retried at once", st(contract.StateSending, 0), arrived, pol,
			Action{Kind: Retry, SpendsAttempt: true, Ambiguous: true, Stopped: true,
				Message: "graphmail: the worker sending this job stopped during the Graph call: the outcome is unknown (retryable, ambiguous)"}},
		{"stale sending, onAmbiguous=deadletter", st(contract.StateSending, 0), arrived, polDL,
			Action{Kind: DeadLetter, Reason: contract.ReasonInternal, Message: ambiguousMessage(polDL), SpendsAttempt: true, Ambiguous: true, Stopped: true}},
		{"stale sending on the last attempt: exhausted", st(contract.StateSending, 2), arrived, pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonAttemptsExhausted, SpendsAttempt: true, Ambiguous: true, Stopped: true,
				Message: "gave up after 3 attempts; last error: graphmail: the worker sending this job stopped during the Graph call: the outcome is unknown (retryable, ambiguous)"}},
		{"expired", none, Outcome{Kind: Arrived, Job: expired, SenderAllowed: true}, pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonExpired, Message: "job expired at 2026-11-30T09:59:00Z before it could be sent (attempts made: 0)"}},
		{"notBefore ahead: defer until then", none, Outcome{Kind: Arrived, Job: later, SenderAllowed: true}, pol,
			Action{Kind: Defer, Delay: time.Hour, Cause: CauseNotBefore, Message: "notBefore"}},
		{"sender not approved", none, Outcome{Kind: Arrived, Job: job}, pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonSenderNotAllowed,
				Message: "sender billing@contoso.com is not an approved mailbox of profile billing (profiles.billing.allowedSenders); nothing was sent"}},
		{"ambiguous before, onAmbiguous=retry: send", st(contract.StateRetrying, 1, ambiguous), arrived, pol, Action{Kind: Send}},
		{"ambiguous before, onAmbiguous=deadletter", st(contract.StateRetrying, 1, ambiguous), arrived, polDL,
			Action{Kind: DeadLetter, Reason: contract.ReasonInternal, Message: ambiguousMessage(polDL)}},
		{"no attempts left", st(contract.StateRetrying, 3), arrived, pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonAttemptsExhausted, Message: "gave up after 3 attempts"}},

		// Not a job.
		{"invalid", none, Outcome{Kind: Invalid, Reason: contract.ReasonInvalidJob, Message: "invalid job: to: required"}, pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonInvalidJob, Message: "invalid job: to: required"}},
		{"broker unreachable: put back, nothing spent", none, Outcome{Kind: Unreachable}, pol,
			Action{Kind: PutBack, Delay: brokerRetry}},
		{"state moved on twice while claiming the job: look again in a second", st(contract.StateRetrying, 1), Outcome{Kind: Contended}, pol,
			Action{Kind: Defer, Delay: time.Second, Cause: CauseBusy, Message: "job state changed concurrently"}},
		{"another delivery holds the job now: put back, nothing spent", st(contract.StateSending, 1), Outcome{Kind: Moved}, pol,
			Action{Kind: PutBack, Delay: brokerRetry}},
		{"worker panic: dead-letter internal", none, Outcome{Kind: Panicked, Message: "worker panic while handling the job: boom"}, pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonInternal, Message: "worker panic while handling the job: boom"}},
		{"paced", none, Outcome{Kind: Paced, Delay: 4 * time.Second, Cause: CausePace}, pol,
			Action{Kind: Defer, Delay: 4 * time.Second, Cause: CausePace, Message: "mailbox limit: pace"}},

		// After the Graph call.
		{"202", st(contract.StateSending, 0), Outcome{Kind: Sent}, pol, Action{Kind: AckSent, SpendsAttempt: true}},
		{"202 with Retry-After: sent, the mailbox pauses", st(contract.StateSending, 0), Outcome{Kind: Sent, RetryAfter: 12 * time.Second}, pol,
			Action{Kind: AckSent, SpendsAttempt: true, Pause: 12 * time.Second}},
		{"400 ErrorInvalidRecipients: dead-letter now", st(contract.StateSending, 0),
			failed(contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonRecipientInvalid, Status: 400, Code: "ErrorInvalidRecipients"}), pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonRecipientInvalid, SpendsAttempt: true,
				Message: "graphmail: sendMail 400 ErrorInvalidRecipients (permanent, reason=recipient_invalid)"}},
		{"permanent without a reason: graph_rejected", st(contract.StateSending, 0),
			failed(contract.SendError{Class: contract.ClassPermanent, Status: 400}), pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonGraphRejected, SpendsAttempt: true, Message: "graphmail: sendMail 400 (permanent)"}},
		{"429 with Retry-After: defer that long, pause the mailbox, no attempt", st(contract.StateSending, 1),
			failed(contract.SendError{Class: contract.ClassThrottled, Status: 429, RetryAfter: 30 * time.Second}), pol,
			Action{Kind: Defer, Delay: 30 * time.Second, Cause: CauseRetryAfter, Pause: 30 * time.Second, Message: "throttled by Graph (429)"}},
		{"429 without Retry-After: the first backoff step", st(contract.StateSending, 1),
			failed(contract.SendError{Class: contract.ClassThrottled, Status: 429}), pol,
			Action{Kind: Defer, Delay: 2 * time.Second, Cause: CauseRetryAfter, Pause: 2 * time.Second, Message: "throttled by Graph (429)"}},
		{"Entra unreachable: wait its backoff, no attempt", st(contract.StateSending, 1),
			failed(contract.SendError{Class: contract.ClassUnavailable, Reason: contract.ReasonAuthFailed, RetryAfter: 8 * time.Second, Message: "token endpoint 503"}), pol,
			Action{Kind: Defer, Delay: 8 * time.Second, Cause: CauseUnavailable,
				Message: "unavailable: graphmail: token endpoint 503 (unavailable, reason=auth_failed, retry-after=8s)"}},
		{"503: retry with backoff, spend", st(contract.StateSending, 0),
			failed(contract.SendError{Class: contract.ClassRetryable, Status: 503}), pol,
			Action{Kind: Retry, Delay: 2 * time.Second, SpendsAttempt: true, Message: "graphmail: sendMail 503 (retryable)"}},
		{"503 with Retry-After: that long, pause the mailbox", st(contract.StateSending, 0),
			failed(contract.SendError{Class: contract.ClassRetryable, Status: 503, RetryAfter: 20 * time.Second}), pol,
			Action{Kind: Retry, Delay: 20 * time.Second, SpendsAttempt: true, Pause: 20 * time.Second,
				Message: "graphmail: sendMail 503 (retryable, retry-after=20s)"}},
		{"504 ambiguous: retry, marked ambiguous", st(contract.StateSending, 0),
			failed(contract.SendError{Class: contract.ClassRetryable, Status: 504, Ambiguous: true}), pol,
			Action{Kind: Retry, Delay: 2 * time.Second, SpendsAttempt: true, Ambiguous: true, Message: "graphmail: sendMail 504 (retryable, ambiguous)"}},
		{"504 ambiguous, onAmbiguous=deadletter", st(contract.StateSending, 0),
			failed(contract.SendError{Class: contract.ClassRetryable, Status: 504, Ambiguous: true}), polDL,
			Action{Kind: DeadLetter, Reason: contract.ReasonInternal, SpendsAttempt: true, Ambiguous: true, Message: ambiguousMessage(polDL)}},
		{"retryable on the last attempt: attempts_exhausted", st(contract.StateSending, 2),
			failed(contract.SendError{Class: contract.ClassRetryable, Status: 500}), pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonAttemptsExhausted, SpendsAttempt: true,
				Message: "gave up after 3 attempts; last error: graphmail: sendMail 500 (retryable)"}},
		{"403 ErrorAccessDenied on the last attempt: access_denied, RBAC hint", st(contract.StateSending, 2),
			failed(contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonAccessDenied, Status: 403, Code: "ErrorAccessDenied"}), pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonAccessDenied, SpendsAttempt: true,
				Message: "gave up after 3 attempts; last error: graphmail: sendMail 403 ErrorAccessDenied (retryable, reason=access_denied) — mailbox billing@contoso.com is outside this app's Exchange RBAC scope; RBAC changes take 30 minutes to 2 hours to apply: fix the scope, then replay"}},
		{"shutdown ended the wait for the mailbox's slots: put back at once, nothing spent", none,
			Outcome{Kind: Interrupted}, pol, Action{Kind: PutBack}},
		{"shutdown cut a send that never left: put back, nothing spent", st(contract.StateSending, 0),
			Outcome{Kind: Interrupted, Err: &contract.SendError{Class: contract.ClassRetryable}}, pol, Action{Kind: PutBack}},
		{"shutdown cut a send that was written: spent, ambiguous", st(contract.StateSending, 0),
			Outcome{Kind: Interrupted, Err: &contract.SendError{Class: contract.ClassRetryable, Ambiguous: true}}, pol,
			Action{Kind: PutBack, SpendsAttempt: true, Ambiguous: true}},

		// Draft delivery mode: an unknown outcome is looked up, not guessed.
		{"draft: stale sending (a replica died mid-upload or mid-send): retried at once, not ambiguous", st(contract.StateSending, 0, draftSent), arrived, polDL,
			Action{Kind: Retry, SpendsAttempt: true, Stopped: true,
				Message: "graphmail: the worker sending this job stopped; its draft is resumed, and looked up before any send (retryable)"}},
		{"stale sending after two stops: the third is the last (a job that kills workers is set aside)", st(contract.StateSending, 0, stopped(2)), arrived, pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonWorkerCrashed, SpendsAttempt: true, Ambiguous: true, Stopped: true,
				Message: stoppedMessage(3, now.Add(-time.Hour))}},
		{"draft: stale sending after two stops: set aside, not ambiguous", st(contract.StateSending, 0, draftSent, stopped(2)), arrived, pol,
			Action{Kind: DeadLetter, Reason: contract.ReasonWorkerCrashed, SpendsAttempt: true, Stopped: true,
				Message: stoppedMessage(3, now.Add(-time.Hour))}},
		{"stale sending after one stop: retried, counted", st(contract.StateSending, 0, stopped(1)), arrived, pol,
			Action{Kind: Retry, SpendsAttempt: true, Ambiguous: true, Stopped: true,
				Message: "graphmail: the worker sending this job stopped during the Graph call: the outcome is unknown (retryable, ambiguous)"}},
		{"stops of a job no worker holds do not count again", st(contract.StateRetrying, 1, stopped(2)), arrived, pol, Action{Kind: Send}},
		{"draft: 504 on send: retry, not ambiguous, even with onAmbiguous=deadletter", st(contract.StateSending, 0, draftSent),
			failed(contract.SendError{Class: contract.ClassRetryable, Status: 504, Ambiguous: true, Op: "send"}), polDL,
			Action{Kind: Retry, Delay: 2 * time.Second, SpendsAttempt: true, Message: "graphmail: send 504 (retryable)"}},
		// Draft mode: a send the look-up cannot settle yet (contract.PendingError), by what it saw
		// and how long ago the send was (sendAt is a minute before now).
		{"draft: still a draft inside the transit window: look again in 30 s, nothing spent, no pause", st(contract.StateSending, 1, draftSent),
			pending(true, sendAt), pol,
			Action{Kind: Defer, Delay: 30 * time.Second, Cause: CauseAwaitingSentCopy, Message: "draft sent or being sent: not known yet, looking again for it"}},
		{"draft: gone from Drafts, no copy yet, inside the window: look again in 30 s", st(contract.StateSending, 1, draftSent),
			pending(false, sendAt), pol,
			Action{Kind: Defer, Delay: 30 * time.Second, Cause: CauseAwaitingSentCopy, Message: "draft sent or being sent: not known yet, looking again for it"}},
		{"draft: the window ends in 10 s: look again then, not later", st(contract.StateSending, 1, draftSent),
			pending(true, now.Add(-10*time.Minute+10*time.Second)), pol,
			Action{Kind: Defer, Delay: 10 * time.Second, Cause: CauseAwaitingSentCopy, Message: "draft sent or being sent: not known yet, looking again for it"}},
		{"draft: gone from Drafts 10 min after the send, never in Sent Items: taken as sent, nothing sent again", st(contract.StateSending, 1, draftSent),
			pending(false, now.Add(-10*time.Minute)), pol,
			Action{Kind: AckSent, SpendsAttempt: true, Lookup: contract.LookupGone}},
		{"draft: still a draft 10 min after the send: taken as never accepted, sent again and flagged (a judgement, not a proof)", st(contract.StateSending, 1, draftSent),
			pending(true, now.Add(-10*time.Minute)), pol,
			Action{Kind: Retry, ResendDraft: true, Ambiguous: true,
				Message: "the draft is still a draft 10m0s after its send: taken as never accepted by transport and sent again, flagged as a possible duplicate (no Microsoft page bounds how long a sent draft can stay in Drafts)"}},
		{"draft: still a draft past the window, onAmbiguous=deadletter: a person checks first", st(contract.StateSending, 1, draftSent),
			pending(true, now.Add(-11*time.Minute)), polDL,
			Action{Kind: DeadLetter, Reason: contract.ReasonInternal, Ambiguous: true,
				Message: "the draft <m@x> is still a draft 10m0s after a send Graph may have accepted, and profile billing has onAmbiguous=deadletter: look for its internetMessageId in Exchange message trace; if it is not there, `mailworker dlq replay` sends the draft"}},
		{"draft: that dead letter replayed: support's decision, send it again", st(contract.StateRetrying, 1, draftSent, func(x *contract.JobState) { x.AmbiguousBefore = true }),
			pending(true, now.Add(-time.Hour)), polDL,
			Action{Kind: Retry, ResendDraft: true,
				Message: "the draft is still a draft 10m0s after its send: taken as never accepted by transport and sent again, flagged as a possible duplicate (no Microsoft page bounds how long a sent draft can stay in Drafts)"}},
		{"draft: a shorter configured window", st(contract.StateSending, 1, draftSent),
			pending(true, now.Add(-20*time.Second)), polShort,
			Action{Kind: Retry, ResendDraft: true, Ambiguous: true,
				Message: "the draft is still a draft 20s after its send: taken as never accepted by transport and sent again, flagged as a possible duplicate (no Microsoft page bounds how long a sent draft can stay in Drafts)"}},
		{"draft: a 429 on the look-up without Retry-After: the first backoff step, never 0", st(contract.StateSending, 1, draftSent),
			failed(contract.SendError{Class: contract.ClassThrottled, Status: 429, Op: "get", SendsNothing: true}), pol,
			Action{Kind: Defer, Delay: 2 * time.Second, Cause: CauseRetryAfter, Pause: 2 * time.Second, Message: "throttled by Graph (429)"}},
		{"draft: 202 with Retry-After on the draft's send: sent, the mailbox pauses", st(contract.StateSending, 0, draftSent),
			Outcome{Kind: Sent, RetryAfter: 12 * time.Second}, pol,
			Action{Kind: AckSent, SpendsAttempt: true, Pause: 12 * time.Second}},
		{"draft: upload failure: retry like any retryable failure", st(contract.StateSending, 0, drafted),
			failed(contract.SendError{Class: contract.ClassRetryable, Status: 500, Op: "upload", SendsNothing: true}), pol,
			Action{Kind: Retry, Delay: 2 * time.Second, SpendsAttempt: true, Message: "graphmail: upload 500 (retryable)"}},
		{"draft: shutdown cut the send: spent, not ambiguous", st(contract.StateSending, 0, draftSent),
			Outcome{Kind: Interrupted, Err: &contract.SendError{Class: contract.ClassRetryable, Ambiguous: true}}, pol,
			Action{Kind: PutBack, SpendsAttempt: true}},
		{"draft: found sent by the look-up: ack sent", st(contract.StateSending, 1, draftSent), Outcome{Kind: Sent}, pol,
			Action{Kind: AckSent, SpendsAttempt: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decide(tt.state, tt.out, tt.pol, now)
			if got != tt.want {
				t.Errorf("decide =\n  %+v\nwant\n  %+v", got, tt.want)
			}
		})
	}
}
