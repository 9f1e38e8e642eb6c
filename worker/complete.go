package worker

// The completer: how an action is carried out (river's internal/jobcompleter).
// The executor (handle.go) runs the attempt and returns the one Action that
// decide made of it; carry records it: it spends the attempt, writes the
// state (record.go: compare-and-set, with its retries), publishes the event
// and takes the queue action. The queue actions themselves (ack, nak, term)
// are made here and nowhere else in the worker (TestOneCompleter).

import (
	"context"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/queue/contract"
)

// finalAttemptTimeout bounds one try of a final write. Those writes are
// idempotent (a KV put of the same state, an event with a stable dedupe id),
// so a try whose reply is lost (the stream leader died with the write in
// flight) is cut short and made again rather than waited out for opTimeout.
const finalAttemptTimeout = 3 * time.Second

// terminalStateTimeout bounds how long a final write (terminal state, final
// event) is retried before the worker gives up on it.
const terminalStateTimeout = 2 * time.Minute

// refundRecipients gives back the recipients j's admission took when its
// send cannot have reached Graph (refused before the call, deferred or put
// back after the admission, a definite 4xx): only a send that may have been
// delivered counts against the mailbox's 24-hour budget.
func (p *Pool) refundRecipients(ctx context.Context, j *job) {
	if j.rcpt == 0 || j.mayHaveSent {
		return
	}
	l, toLedger := p.pacer.refund(j.from, j.rcpt, j.rcptHour)
	j.rcpt = 0
	if !toLedger {
		return
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	if _, _, err := p.broker.Ledger.Lease(opCtx, l); err != nil {
		p.log.Warn().Str("jobId", j.id).Err(err).Int("recipients", l.GiveBack).Msg("could not give unsent recipients back to the ledger; they age out")
	}
}

// deleteDraft deletes the job's draft when it was never sent, before the
// job is dead-lettered, and forgets it (a replay then starts a new one). A
// draft that cannot be deleted is kept in the state and logged; `mailworker
// check` reports drafts left behind.
func (p *Pool) deleteDraft(ctx context.Context, j *job) {
	d := j.state.Draft
	dd, ok := p.sender.(DraftDeleter)
	if d == nil || d.SendAt != nil || !ok {
		return
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.SendTimeout)
	defer cancel()
	if err := dd.DeleteDraft(opCtx, j.profile, j.id, d); err != nil {
		p.m.DraftsLeft.WithLabelValues(j.metricProfile()).Inc()
		p.log.Warn().Str("jobId", j.id).Str("profile", j.profile).Err(err).Msg("could not delete the job's draft; it is left in the mailbox's Drafts")
		return
	}
	j.state.Draft = nil
}

// carry carries out one action: the only place that spends an attempt, and
// the only place that acks, naks or terminates after a decision.
func (p *Pool) carry(ctx context.Context, j *job, a Action) {
	// Recipients of a send that cannot have reached Graph go back before the
	// outcome is recorded: whoever sees the outcome sees the budget as it is
	// (a no-op when nothing was admitted; handle's release is the fallback).
	p.refundRecipients(ctx, j)
	p.account(j, a)
	switch a.Kind {
	case AckSent:
		p.sent(ctx, j)
	case DeadLetter:
		p.deleteDraft(ctx, j)
		p.deadLetter(ctx, j, a.Reason, a.Message)
	case Retry:
		p.retrying(ctx, j, a)
	case Defer:
		p.deferred(ctx, j, a)
	case SuppressDuplicate:
		p.ack(j)
		p.m.Jobs.WithLabelValues(j.profile, string(contract.EventDuplicateSuppressed), "").Inc()
		p.emit(ctx, j, contract.Event{Event: contract.EventDuplicateSuppressed})
		p.outcomeLog(zerolog.InfoLevel, j, "duplicate_suppressed").Str("why", a.Message).Send()
	case FinishAgain:
		p.finishAgain(ctx, j)
	case PutBack:
		if j.marked {
			j.state.State = contract.StateRetrying
			if !p.putState(context.WithoutCancel(ctx), j) {
				return
			}
		}
		p.putBack(j, a)
		if a.Delay == 0 {
			p.log.Info().Str("jobId", j.id).Bool("ambiguous", a.Ambiguous).Msg("send cancelled by shutdown; job put back")
		}
	default:
		p.log.Error().Str("jobId", j.id).Str("action", a.Kind.String()).Msg("no way to carry out this action; job put back")
		p.nak(j, p.retry.Broker())
	}
}

// account applies what a says beside its kind to j and the mailbox: the
// attempt spent, the stop counted, the ambiguous flag, the Retry-After
// pause, the look-up's result and a draft proven unsent.
func (p *Pool) account(j *job, a Action) {
	if a.SpendsAttempt {
		j.state.Attempts++
	}
	if a.Stopped {
		j.state.Stops++
	}
	if a.Ambiguous {
		j.state.Ambiguous = true
		p.m.Ambiguous.WithLabelValues(j.metricProfile()).Inc()
	}
	if a.Pause > 0 && j.from != "" {
		p.pacer.pause(j.from, a.Pause) // the mailbox was told to wait
	}
	if a.Lookup != "" {
		j.lookup = a.Lookup
	}
	if a.ResendDraft && j.state.Draft != nil {
		// Proven unsent (decide): the next attempt sends the draft again.
		d := *j.state.Draft
		d.SendAt = nil
		j.state.Draft = &d
	}
}

// retrying records `retrying`, gives the job back for a.Delay and publishes
// the event.
func (p *Pool) retrying(ctx context.Context, j *job, a Action) {
	j.state.State = contract.StateRetrying
	j.state.LastError = &contract.ErrorInfo{Reason: a.Reason, Message: a.Message}
	// A failed write is logged; the retry is scheduled all the same (the
	// next delivery then sees `sending` and treats the attempt as lost).
	if !p.putState(ctx, j) {
		return
	}
	retryAt := p.clock.Now().Add(a.Delay)
	p.m.Retries.WithLabelValues(j.profile, string(a.Reason)).Inc()
	p.later(ctx, j, a.Delay)
	p.emit(ctx, j, contract.Event{Event: contract.EventRetrying, Graph: j.graph, RetryAt: &retryAt,
		Error: &contract.ErrorInfo{Reason: a.Reason, Message: a.Message}, Ambiguous: a.Ambiguous,
		LatencyMs: j.elapsed.Milliseconds()})
	p.outcomeLog(zerolog.WarnLevel, j, "retrying").Str("error", a.Message).Dur("delay", a.Delay).Bool("ambiguous", a.Ambiguous).Send()
}

// deferred gives the job back for a.Delay without spending an attempt
// (recording `deferred` when this delivery had marked it `sending`) and
// publishes the event with its cause.
func (p *Pool) deferred(ctx context.Context, j *job, a Action) {
	if j.marked {
		// The state says `sending`: say what it is now.
		j.state.State = contract.StateDeferred
		if !p.putState(ctx, j) {
			return
		}
	}
	if a.Cause.throttle() {
		p.m.ThrottleDeferrals.WithLabelValues(j.metricProfile(), string(a.Cause)).Inc()
	}
	at := p.clock.Now().Add(a.Delay)
	if p.later(ctx, j, a.Delay) && a.Cause == CausePace {
		p.plans.add(j.from, j.profile, j.id, at)
	}
	var graph *contract.GraphInfo
	if a.Cause == CauseRetryAfter && j.marked {
		graph = j.graph
	}
	p.emit(ctx, j, contract.Event{Event: contract.EventDeferred, Graph: graph, RetryAt: &at, Cause: string(a.Cause)})
	p.outcomeLog(zerolog.DebugLevel, j, "deferred").Str("why", a.Message).Str("cause", string(a.Cause)).Dur("delay", a.Delay).Send()
}

// scheduleMin is the shortest wait that becomes a message schedule: the
// schedule's resolution is a second.
const scheduleMin = time.Second

// later gives j back to the queue for d. A wait of a second or more becomes a
// message schedule and the delivery is acked, so that a deferral or a retry,
// however long and however many, holds no ack-pending slot of the consumer
// that every profile shares. Shorter waits, and any wait when the schedule
// cannot be stored, are naks with a delay. It reports whether the job was
// scheduled.
func (p *Pool) later(ctx context.Context, j *job, d time.Duration) bool {
	if d < scheduleMin || p.broker.Scheduler == nil {
		p.nak(j, d)
		return false
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	err := p.broker.Scheduler.Schedule(opCtx, j.profile, j.id, j.msg.Data(), j.msg.Header(contract.HeaderReplay), j.origin, p.clock.Now().Add(d))
	cancel()
	if err != nil {
		p.log.Warn().Str("jobId", j.id).Err(err).Msg("could not schedule the job; it waits holding its delivery instead")
		p.nak(j, d)
		return false
	}
	p.ack(j)
	return true
}

func (p *Pool) sent(ctx context.Context, j *job) {
	j.state.State = contract.StateSent
	j.state.LastError = nil
	j.state.Graph = j.graph
	j.state.UpdatedAt = p.clock.Now()
	j.state.Seq = j.seq
	if !p.finish(ctx, j) {
		return
	}
	j.prof.hot.sent.Inc()
	p.observeLatency(j)
	ev := p.outcomeLog(zerolog.InfoLevel, j, "sent").
		Bool("possibleDuplicate", j.state.PossibleDuplicate()).Dur("latency", j.elapsed)
	if j.lookup != "" {
		ev = ev.Str("lookup", j.lookup) // found sent by a look-up: nothing sent again
		p.m.DraftLookups.WithLabelValues(j.profile, j.lookup).Inc()
	}
	ev.Send()
}

// internetMessageID is the Message-ID of a job sent through a draft, "" otherwise.
func internetMessageID(st contract.JobState) string {
	if st.Draft == nil {
		return ""
	}
	return st.Draft.InternetMessageID
}

// deadLetter records the job in MAIL_DLQ with its original bytes, then
// terminates the delivery. If the record cannot be written the job is put back
// instead: nothing is dropped.
func (p *Pool) deadLetter(ctx context.Context, j *job, reason contract.Reason, message string) {
	now := p.clock.Now()
	// The generation names the record (its Nats-Msg-Id): a replay's job that
	// is dead-lettered before its state was read (invalid again) takes it
	// from the replay's Mail-Replay header, or its record would carry the
	// original's id and be dropped inside the duplicate window.
	gen := j.state.Generation
	if g, err := strconv.Atoi(j.msg.Header(contract.HeaderReplay)); err == nil && g > gen {
		gen = g
	}
	rec := contract.DeadLetter{JobID: j.id, Profile: j.profile, Reason: reason, Error: message,
		Attempts: j.state.Attempts, FailedAt: now, Generation: gen, Body: j.msg.Data(),
		Ambiguous: j.state.PossibleDuplicate()}
	if j.graph != nil {
		rec.GraphRequestID = j.graph.RequestID
		rec.GraphCalls = append(append([]contract.GraphCall(nil), j.graph.EarlierCalls...), contract.GraphCall{
			Status: j.graph.Status, RequestID: j.graph.RequestID, ClientRequestID: j.graph.ClientRequestID, Date: j.graph.Date})
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	err := p.broker.DeadLetters.Put(opCtx, rec)
	cancel()
	if err != nil {
		p.carry(ctx, j, p.unreachable(j, "write dead letter", err))
		return
	}
	j.state.State = contract.StateDeadLettered
	j.state.LastError = &contract.ErrorInfo{Reason: reason, Message: message}
	j.state.Graph = j.graph
	j.state.UpdatedAt = now
	j.state.Seq = j.seq
	if !p.finish(ctx, j) {
		return
	}
	p.m.Jobs.WithLabelValues(j.metricProfile(), string(contract.EventDeadLettered), string(reason)).Inc()
	p.observeLatency(j)
	p.outcomeLog(zerolog.WarnLevel, j, "dead_lettered").Str("reason", string(reason)).Str("error", message).Send()
}

func (p *Pool) emit(ctx context.Context, j *job, ev contract.Event) {
	ev.JobID, ev.Profile, ev.Attempt = j.id, j.profile, j.state.Attempts
	ev.At = p.clock.Now()
	if j.job != nil {
		ev.Metadata = j.job.Metadata
	}
	// Asynchronous: the job's queue action is already taken, and the ack is
	// checked by watchEvents, so the handler does not wait a round trip.
	wait, err := p.broker.Events.PublishAsync(ev)
	if err == nil {
		p.events <- pendingEvent{wait: wait, jobID: j.id, event: ev.Event, deadline: time.Now().Add(opTimeout)}
		return
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	if err := p.broker.Events.Publish(opCtx, ev); err != nil {
		p.log.Error().Str("jobId", j.id).Str("event", string(ev.Event)).Err(err).Msg("publish status event failed")
	}
}

// pendingEvent is a status event published without waiting for its ack.
type pendingEvent struct {
	wait     func(time.Duration) error
	jobID    string
	event    contract.EventType
	deadline time.Time // opTimeout after the publish
}

// watchEvents logs status events the server did not store, until events is
// closed and every pending ack has been seen (or timed out). Each ack is
// waited for until opTimeout after its own publish, not opTimeout from when
// its turn comes: with the broker stalled, the acks of a full channel
// (MaxInFlight events) time out together in opTimeout, not one after the
// other in MaxInFlight × opTimeout — which held a stopping worker for
// minutes after a node freeze, and the handlers behind a full channel.
func (p *Pool) watchEvents() {
	for pe := range p.events {
		if err := pe.wait(max(0, time.Until(pe.deadline))); err != nil {
			p.log.Error().Str("jobId", pe.jobID).Str("event", string(pe.event)).Err(err).Msg("publish status event failed")
		}
	}
}

func (p *Pool) observeLatency(j *job) {
	if j.published.IsZero() {
		return
	}
	d := p.clock.Now().Sub(j.published).Seconds()
	if j.prof != nil {
		j.prof.hot.jobLatency.Observe(d)
		return
	}
	p.m.JobLatency.WithLabelValues(unknownProfile).Observe(d)
}

func (p *Pool) outcomeLog(level zerolog.Level, j *job, outcome string) *zerolog.Event {
	e := p.log.WithLevel(level).Str("jobId", j.id).Str("profile", j.profile).Str("outcome", outcome).
		Int("attempt", j.state.Attempts)
	if j.from != "" {
		e = e.Str("from", j.from)
	}
	if g := j.graph; g != nil {
		e = e.Int("graphStatus", g.Status).Str("requestId", g.RequestID).Str("clientRequestId", g.ClientRequestID).Str("graphDate", g.Date)
		if len(g.EarlierCalls) > 0 {
			e = e.Interface("earlierCalls", g.EarlierCalls)
		}
	}
	if p.cfg.LogRecipients && j.job != nil {
		e = e.Strs("to", j.job.To).Strs("cc", j.job.Cc).Strs("bcc", j.job.Bcc)
	}
	return e
}

// The queue actions: the only calls of Delivery's Ack, Nak and Term in the
// worker (TestOneCompleter).

// ack settles the delivery: the job is sent, a duplicate, or handed over to
// a message schedule.
func (p *Pool) ack(j *job) { _ = j.msg.Ack() }

// settle acks or terminates the delivery of a job whose outcome is recorded
// (j.state): ack for sent, terminate for a dead letter.
func (p *Pool) settle(j *job) {
	if j.state.State == contract.StateSent {
		_ = j.msg.Ack()
		return
	}
	_ = j.msg.Term()
}

// nak gives the delivery back to be redelivered after d (at once when 0).
func (p *Pool) nak(j *job, d time.Duration) {
	if d > 0 {
		_ = j.msg.NakWithDelay(d)
		return
	}
	_ = j.msg.Nak()
}

// putBack gives the delivery back as a (decide's PutBack) without writing
// the state: what the completer does when it could not record an outcome
// (Unreachable), or when another delivery holds the job (Moved).
func (p *Pool) putBack(j *job, a Action) { p.nak(j, a.Delay) }

// putBackUnstarted gives back a delivery fetched as shutdown began, before
// any work on it: at once, nothing spent (decide's Interrupted, no send).
func (p *Pool) putBackUnstarted(msg Delivery) {
	j := &job{msg: msg}
	p.putBack(j, p.decide(j, Outcome{Kind: Interrupted}))
}
