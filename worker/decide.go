package worker

import (
	"fmt"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// OutcomeKind names what happened to a delivery, the input of decide.
type OutcomeKind int

// The kinds of outcome.
const (
	// Arrived: a valid job of a served profile arrived and its state was
	// read; decide runs the checks that come before pacing.
	Arrived OutcomeKind = iota + 1
	// Invalid: the delivery is not a job this worker can send (its shape,
	// an unknown profile): Reason and Message say why.
	Invalid
	// Paced: the mailbox cannot take the job now: Delay and Cause.
	Paced
	// Sent: Graph accepted the request.
	Sent
	// Failed: the send failed: Err.
	Failed
	// Interrupted: shutdown cut the send short (Err), or ended the wait for
	// the mailbox's slots before any Graph call (Err nil).
	Interrupted
	// Unreachable: the broker failed us (a state, ledger or dead-letter
	// write); nothing is known about the job that was not known before.
	Unreachable
	// Pending: not known yet, look again later (river's JobSnoozeError):
	// a draft's send may have gone out and the look-up could not prove
	// it either way (Pending says what it saw). Not a failure.
	Pending
	// Contended: the job's state moved on under this delivery twice while
	// it was claiming the job (compare-and-set lost twice): look again
	// shortly.
	Contended
	// Moved: the job's state moved on under this delivery to a state that
	// another delivery holds (not an outcome): put it back, to be decided on
	// again.
	Moved
	// Panicked: the worker panicked while handling the delivery: Message.
	Panicked
)

// Outcome is what happened to one delivery.
type Outcome struct {
	Kind OutcomeKind
	// Arrived.
	Job           *contract.Job
	SenderAllowed bool
	// Redelivered: this very message's outcome is already recorded (the
	// state's Seq is its stream sequence); its ack was lost.
	Redelivered bool
	// Invalid.
	Reason contract.Reason
	// Invalid, Panicked.
	Message string
	// Paced.
	Delay time.Duration
	Cause Cause
	// Sent: a Retry-After on the 202 (Microsoft Q&A 5629476): the mail is
	// sent, and the mailbox waits that long.
	RetryAfter time.Duration
	// Failed, Interrupted.
	Err *contract.SendError
	// Pending.
	Pending *contract.PendingError
}

// ActionKind names what the worker does with a delivery.
type ActionKind int

// The kinds of action.
const (
	// Send: go on to pacing and the Graph call.
	Send ActionKind = iota + 1
	// AckSent: record `sent`, publish the event, ack.
	AckSent
	// DeadLetter: write the dead letter, record it, terminate the delivery.
	DeadLetter
	// Retry: put the job back after Delay, publish `retrying`.
	Retry
	// Defer: put the job back after Delay without spending an attempt,
	// publish `deferred` with its Cause.
	Defer
	// SuppressDuplicate: the job already reached its outcome: ack, publish
	// `duplicate_suppressed`.
	SuppressDuplicate
	// FinishAgain: this message's outcome is recorded but its ack was lost:
	// publish the final event again and ack or terminate.
	FinishAgain
	// PutBack: give the delivery back after Delay, with no event: shutdown,
	// or the broker failed.
	PutBack
)

func (k ActionKind) String() string {
	switch k {
	case Send:
		return "send"
	case AckSent:
		return "ack_sent"
	case DeadLetter:
		return "dead_letter"
	case Retry:
		return "retry"
	case Defer:
		return "defer"
	case SuppressDuplicate:
		return "suppress_duplicate"
	case FinishAgain:
		return "finish_again"
	case PutBack:
		return "put_back"
	}
	return fmt.Sprintf("action(%d)", int(k))
}

// Action is decide's answer, and only decide builds one. The attempt
// counter moves only through SpendsAttempt, in Pool.carry (complete.go).
type Action struct {
	Kind    ActionKind
	Reason  contract.Reason // DeadLetter; the failure's, for Retry
	Message string          // DeadLetter, Retry; why, for Defer and SuppressDuplicate
	Delay   time.Duration   // Retry, Defer, PutBack
	Cause   Cause           // Defer
	// SpendsAttempt: the send that just ended counts as an attempt.
	SpendsAttempt bool
	// Ambiguous: that send may have delivered the mail.
	Ambiguous bool
	// Pause stops every send from the job's mailbox this long (Retry-After).
	Pause time.Duration
	// Stopped: the job was found in hand of a worker that stopped; the
	// state's Stops counts it (Pool.carry).
	Stopped bool
	// Lookup (AckSent) says the mail was found sent, or taken as sent, by a
	// look-up rather than by a 202 (contract.LookupSent, LookupGone).
	Lookup string
	// ResendDraft (Retry): the job's draft is proven unsent; its next
	// attempt sends it again instead of looking it up (Draft.SendAt cleared).
	ResendDraft bool
}

// Policy is what decide needs besides the state and the outcome: the
// worker's limits and the job's profile's choices.
type Policy struct {
	MaxAttempts int
	// OnAmbiguous is the profile's OnAmbiguousRetry or OnAmbiguousDeadLetter.
	OnAmbiguous AmbiguousPolicy
	// Busy is how long another replica's `sending` is waited for before the
	// send is taken as lost (the send timeout plus a margin).
	Busy time.Duration
	// MaxStops is how many times a job may be found in hand of a worker
	// that stopped (state `sending` past Busy) before it is dead-lettered
	// worker_crashed: a job that kills every worker it reaches (out of
	// memory, a crash) is set aside after MaxStops deliveries.
	MaxStops int
	Retry    RetryPolicy
	// Profile and Mailbox name the job's profile and sender in messages.
	Profile, Mailbox string
	// TransitWait and LookupEvery are draft mode's waits after a send that
	// may have gone out (DefaultDraftTransitWait, DefaultDraftLookupEvery).
	TransitWait, LookupEvery time.Duration
}

// Draft mode's waits after a send that may have gone out, when the look-up
// cannot tell yet (contract.PendingError).
//
// No Microsoft page bounds how long a sent draft stays in Drafts: it moves
// to Sent Items only once transport has taken it ("Overview of the Microsoft
// Graph send mail process", step 4,
// https://learn.microsoft.com/graph/outlook-things-to-know-about-send-mail),
// "which may take time" (https://learn.microsoft.com/graph/outlook-immutable-id),
// and messages stay in Drafts for as long as the store cannot hand them to
// transport (Tony Redmond, "Exchange 2013 and the case of the stuck
// messages", thoughtsofanidlemind.com, 2013). So the window is a setting
// (worker.draftTransitWait), and its meaning is stated: a draft still a draft
// that long after the send is taken as never accepted and sent again; one
// that left Drafts without a copy in Sent Items is taken as sent. The
// default, 10 minutes, is a judgement, not a Microsoft figure: long past the
// seconds a healthy transport takes, short enough that a send that was never
// accepted goes out the same quarter hour. The look-ups count against the
// Outlook limits per app and mailbox (10,000 requests per 10 minutes,
// https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits):
// at one look-up (two GETs at most) every 30 s, a job costs at most 40
// requests over the window, so 250 unsettled jobs of one mailbox at once
// stay inside it; a 429 on a look-up is throttling like any other (its
// Retry-After, or the first backoff step without one).
const (
	DefaultDraftTransitWait = 10 * time.Minute
	DefaultDraftLookupEvery = 30 * time.Second
)

// decide maps a job's state and what just happened to the one action the
// worker takes. It is pure: no I/O, the time is given. Every rule about
// duplicates, expiry, deferral, ambiguity, attempts and failure classes is
// a case here; Pool.carry (complete.go) carries the action out.
func decide(st contract.JobState, o Outcome, pol Policy, now time.Time) Action {
	switch o.Kind {
	case Invalid:
		return Action{Kind: DeadLetter, Reason: o.Reason, Message: o.Message}
	case Paced:
		return Action{Kind: Defer, Delay: o.Delay, Cause: o.Cause, Message: "mailbox limit: " + string(o.Cause)}
	case Unreachable, Moved:
		return Action{Kind: PutBack, Delay: pol.Retry.Broker()}
	case Contended:
		return Action{Kind: Defer, Delay: time.Second, Cause: CauseBusy, Message: "job state changed concurrently"}
	case Panicked:
		return Action{Kind: DeadLetter, Reason: contract.ReasonInternal, Message: o.Message}
	case Sent:
		// Never sent again; a Retry-After on the 202 pauses the mailbox.
		return Action{Kind: AckSent, SpendsAttempt: true, Pause: o.RetryAfter}
	case Interrupted:
		// Nothing was spent unless the request may have reached Graph; a
		// draft's send is looked up on the next attempt: not ambiguous.
		spent := o.Err != nil && o.Err.Ambiguous
		return Action{Kind: PutBack, SpendsAttempt: spent, Ambiguous: spent && !resolvable(st)}
	case Failed:
		return decideFailure(st, o.Err, pol)
	case Pending:
		return decidePending(st, o.Pending, pol, now)
	case Arrived:
		return decideArrival(st, o, pol, now)
	}
	return Action{Kind: DeadLetter, Reason: contract.ReasonInternal, Message: fmt.Sprintf("worker: no rule for outcome %d", o.Kind)}
}

func decideArrival(st contract.JobState, o Outcome, pol Policy, now time.Time) Action {
	switch st.State {
	case contract.StateSent, contract.StateDeadLettered:
		if o.Redelivered {
			return Action{Kind: FinishAgain}
		}
		why := "already sent"
		if st.State == contract.StateDeadLettered {
			why = "already dead-lettered: use `mailworker dlq replay` to send it again"
		}
		return Action{Kind: SuppressDuplicate, Message: why}
	case contract.StateSending:
		// Another replica may be sending it right now (a duplicate publish),
		// or the replica that was sending it died mid-call: then that send's
		// outcome is unknown, and counts as an ambiguous failed attempt.
		if busyUntil := st.UpdatedAt.Add(pol.Busy); now.Before(busyUntil) {
			return Action{Kind: Defer, Delay: busyUntil.Sub(now), Cause: CauseBusy, Message: "another worker is sending this job"}
		}
		if stops := st.Stops + 1; pol.MaxStops > 0 && stops >= pol.MaxStops {
			// Killed, out of memory or crashed with this job in hand, again
			// and again: whatever the cause, one more delivery would
			// likely take one more worker down.
			return Action{Kind: DeadLetter, Reason: contract.ReasonWorkerCrashed, SpendsAttempt: true, Ambiguous: !resolvable(st), Stopped: true,
				Message: stoppedMessage(stops, st.UpdatedAt)}
		}
		a := decideStopped(st, pol)
		a.Stopped = true
		return a
	}
	return decideFresh(st, o, pol, now)
}

// decideStopped decides on a job whose worker stopped during its send.
func decideStopped(st contract.JobState, pol Policy) Action {
	if resolvable(st) {
		// Draft mode: the next attempt resumes the draft and, if its
		// send was attempted, looks it up before sending: not ambiguous.
		a := decideFailure(st, &contract.SendError{Class: contract.ClassRetryable,
			Message: "the worker sending this job stopped; its draft is resumed, and looked up before any send"}, pol)
		if a.Kind == Retry {
			a.Delay = 0
		}
		return a
	}
	a := decideFailure(st, &contract.SendError{Class: contract.ClassRetryable, Ambiguous: true,
		Message: "the worker sending this job stopped during the Graph call: the outcome is unknown"}, pol)
	if a.Kind == Retry {
		a.Delay = 0 // nothing to wait for: the attempt is already over
	}
	return a
}

// decideFresh runs the checks of a job no worker holds.
func decideFresh(st contract.JobState, o Outcome, pol Policy, now time.Time) Action {
	job := o.Job
	if exp := job.ExpiresAt; exp != nil && !now.Before(*exp) {
		return Action{Kind: DeadLetter, Reason: contract.ReasonExpired,
			Message: fmt.Sprintf("job expired at %s before it could be sent (attempts made: %d)", exp.UTC().Format(time.RFC3339), st.Attempts)}
	}
	if nb := job.NotBefore; nb != nil && now.Before(*nb) {
		return Action{Kind: Defer, Delay: nb.Sub(now), Cause: CauseNotBefore, Message: "notBefore"}
	}
	if !o.SenderAllowed {
		return Action{Kind: DeadLetter, Reason: contract.ReasonSenderNotAllowed,
			Message: fmt.Sprintf("sender %s is not an approved mailbox of profile %s (profiles.%s.allowedSenders); nothing was sent", pol.Mailbox, pol.Profile, pol.Profile)}
	}
	if st.Ambiguous && pol.OnAmbiguous == OnAmbiguousDeadLetter {
		return Action{Kind: DeadLetter, Reason: contract.ReasonInternal, Message: ambiguousMessage(pol)}
	}
	if st.Attempts >= pol.MaxAttempts {
		return Action{Kind: DeadLetter, Reason: contract.ReasonAttemptsExhausted, Message: exhaustedMessage(st.Attempts, st.LastError, nil, pol)}
	}
	return Action{Kind: Send}
}

// resolvable reports whether an unknown send outcome of this job can be
// settled rather than guessed: it goes through a draft (draft delivery
// mode), which the next attempt looks up by its immutable id before it
// sends (still a draft: send; sent: record `sent`, send nothing). A draft
// still being created cannot have sent anything.
func resolvable(st contract.JobState) bool { return st.Draft != nil }

// decideFailure decides on a failed send by its class.
func decideFailure(st contract.JobState, se *contract.SendError, pol Policy) Action {
	if se.Ambiguous && resolvable(st) {
		// Draft mode: the look-up on the next attempt settles it.
		cp := *se
		cp.Ambiguous = false
		se = &cp
	}
	switch se.Class {
	case contract.ClassPermanent:
		reason := se.Reason
		if reason == "" || !reason.Valid() {
			reason = contract.ReasonGraphRejected
		}
		return Action{Kind: DeadLetter, Reason: reason, Message: se.Error(), SpendsAttempt: true, Ambiguous: se.Ambiguous}
	case contract.ClassUnavailable:
		// Nothing reached Graph (Entra is down or failing): the job waits,
		// spending no attempt, for as long as the outage lasts; the
		// token-failure alert tells people. expiresAt still bounds it.
		return Action{Kind: Defer, Delay: pol.Retry.Unavailable(se.RetryAfter), Cause: CauseUnavailable,
			Message: "unavailable: " + se.Error()}
	case contract.ClassThrottled:
		// A throttled request spends no attempt; the mailbox waits too.
		wait, pause := pol.Retry.Throttled(se.RetryAfter)
		return Action{Kind: Defer, Delay: wait, Cause: CauseRetryAfter, Pause: pause, Ambiguous: se.Ambiguous,
			Message: "throttled by Graph (429)"}
	}
	// Retryable: spends an attempt.
	attempts := st.Attempts + 1
	var pause time.Duration
	if se.RetryAfter > 0 {
		pause = se.RetryAfter // the mailbox was told to wait
	}
	switch {
	case se.Ambiguous && pol.OnAmbiguous == OnAmbiguousDeadLetter:
		return Action{Kind: DeadLetter, Reason: contract.ReasonInternal, Message: ambiguousMessage(pol),
			SpendsAttempt: true, Ambiguous: true, Pause: pause}
	case attempts >= pol.MaxAttempts:
		reason := contract.ReasonAttemptsExhausted
		if se.Reason == contract.ReasonAccessDenied || se.Reason == contract.ReasonAuthFailed {
			reason = se.Reason
		}
		return Action{Kind: DeadLetter, Reason: reason, Message: exhaustedMessage(attempts, nil, se, pol),
			SpendsAttempt: true, Ambiguous: se.Ambiguous, Pause: pause}
	}
	return Action{Kind: Retry, Delay: pol.Retry.Backoff(attempts, se.RetryAfter), SpendsAttempt: true,
		Ambiguous: se.Ambiguous, Pause: pause, Reason: se.Reason, Message: se.Error()}
}

func stoppedMessage(stops int, last time.Time) string {
	return fmt.Sprintf("the worker handling this job stopped %d times while the job was in hand (killed, out of memory or crashed; "+
		"the last time at about %s: see the workers' restarts and OOM kills): set aside so that it cannot take more workers down; "+
		"a stop during the Graph call may have sent the mail: check message trace for its X-Mailworker-Job-Id before replaying",
		stops, last.UTC().Format(time.RFC3339))
}

// decidePending decides on a draft send the look-up could not settle. Until
// the transit window has passed since the send, look again every
// LookupEvery, spending nothing and pausing nobody. Past it: a message that
// left Drafts is taken as sent (only transport, or a person, moves it, and
// sending again could duplicate it); a message still a draft is taken as
// never accepted and sent again, flagged possibleDuplicate, or, for a profile with
// onAmbiguous=deadletter, dead-lettered for a person to check first (a
// replay of that dead letter is that person's decision: it sends).
func decidePending(st contract.JobState, pe *contract.PendingError, pol Policy, now time.Time) Action {
	wait, every := pol.TransitWait, pol.LookupEvery
	if wait <= 0 {
		wait = DefaultDraftTransitWait
	}
	if every <= 0 {
		every = DefaultDraftLookupEvery
	}
	if until := pe.SentAt.Add(wait); now.Before(until) {
		return Action{Kind: Defer, Delay: min(every, max(until.Sub(now), time.Second)), Cause: CauseAwaitingSentCopy,
			Message: "draft sent or being sent: not known yet, looking again for it"}
	}
	if !pe.InDrafts {
		return Action{Kind: AckSent, SpendsAttempt: true, Lookup: contract.LookupGone}
	}
	if pol.OnAmbiguous == OnAmbiguousDeadLetter && !st.AmbiguousBefore {
		return Action{Kind: DeadLetter, Reason: contract.ReasonInternal, Ambiguous: true, Message: fmt.Sprintf(
			"the draft %s is still a draft %s after a send Graph may have accepted, and profile %s has onAmbiguous=deadletter: "+
				"look for its internetMessageId in Exchange message trace; if it is not there, `mailworker dlq replay` sends the draft",
			pe.InternetMessageID, wait, pol.Profile)}
	}
	// No Microsoft page bounds transit, so "still a draft past the window"
	// is a judgement, not a proof: the resend is flagged (its `sent` carries
	// possibleDuplicate) unless a replay already made it support's decision.
	return Action{Kind: Retry, ResendDraft: true, Ambiguous: !st.AmbiguousBefore, Message: fmt.Sprintf(
		"the draft is still a draft %s after its send: taken as never accepted by transport and sent again, flagged as a possible duplicate (no Microsoft page bounds how long a sent draft can stay in Drafts)", wait)}
}

func ambiguousMessage(pol Policy) string {
	return fmt.Sprintf("an earlier attempt's outcome is unknown (timeout, 5xx or a worker stopped during the Graph call) and profile %s has onAmbiguous=deadletter: "+
		"look for its X-Mailworker-Job-Id in Exchange message trace before replaying", pol.Profile)
}

func exhaustedMessage(attempts int, last *contract.ErrorInfo, se *contract.SendError, pol Policy) string {
	msg := fmt.Sprintf("gave up after %d attempts", attempts)
	switch {
	case se != nil:
		msg += "; last error: " + se.Error()
		if se.Reason == contract.ReasonAccessDenied {
			msg += fmt.Sprintf(" — mailbox %s is outside this app's Exchange RBAC scope; RBAC changes take 30 minutes to 2 hours to apply: fix the scope, then replay", pol.Mailbox)
		}
	case last != nil:
		msg += "; last error: " + last.Message
	}
	return msg
}
