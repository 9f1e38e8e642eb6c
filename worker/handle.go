package worker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// opTimeout bounds one JetStream operation (state, event, dead letter).
const opTimeout = 10 * time.Second

// finalAttemptTimeout bounds one attempt of retryFinal. Those writes are
// idempotent (a KV put of the same state, an event with a stable dedupe id),
// so an attempt whose reply is lost (the stream leader died with the write in
// flight) is cut short and tried again rather than waited out for opTimeout.
const finalAttemptTimeout = 3 * time.Second

// infraRetry is the delay before a job is tried again when the broker itself
// failed (state or dead-letter write); it spends no attempt.
const infraRetry = 2 * time.Second

// unknownProfile labels metrics of jobs published for a profile this worker
// does not serve, so that a stray subject cannot grow label cardinality.
const unknownProfile = "_unknown"

// job is one delivery being handled.
type job struct {
	msg       Delivery
	profile   string
	prof      *profileState
	id        string
	job       *contract.Job
	from      string // lower-cased sender address
	state     contract.JobState
	rev       uint64
	seq       uint64 // MAIL_JOBS stream sequence of this delivery
	published time.Time
	// releaseSlots gives back the mailbox and Graph concurrency slots once
	// the Graph call is over (nil when none are held; safe to call twice).
	releaseSlots func()
}

func (j *job) metricProfile() string {
	if j.prof == nil {
		return unknownProfile
	}
	return j.profile
}

// handle takes one delivery to exactly one outcome. stop ends waiting (the
// job is put back unspent); sendCtx ends a send in flight.
func (p *Pool) handle(stop, sendCtx context.Context, msg Delivery) {
	j := &job{msg: msg}
	defer func() {
		if r := recover(); r != nil {
			p.log.Error().Str("jobId", j.id).Str("panic", fmt.Sprint(r)).Bytes("stack", debug.Stack()).Msg("panic while handling job")
			p.deadLetter(sendCtx, j, contract.ReasonInternal, fmt.Sprintf("worker panic while handling the job: %v", r), nil)
		}
	}()
	var seq uint64
	firstDelivery := false
	if meta, err := msg.Metadata(); err == nil {
		seq, j.published = meta.Sequence.Stream, meta.Timestamp
		j.seq = seq
		firstDelivery = meta.NumDelivered == 1
	}
	profile, okSubject := contract.ProfileFromSubject(msg.Subject())
	if !okSubject {
		profile = strings.ReplaceAll(strings.TrimPrefix(msg.Subject(), "mail.send."), ".", "_")
	}
	j.profile = profile
	j.prof = p.profiles[profile]
	parsed, decodeErr := contract.DecodeJob(msg.Data())
	j.job = parsed
	idSource := parsed
	if parsed == nil {
		// Keep the producer's id for an invalid job when it can be read, so
		// that support finds the job under the id its producer knows.
		idSource = &contract.Job{ID: sniffID(msg.Data())}
	}
	j.id = contract.ResolveJobID(idSource, msg.Headers().Get, seq)
	if !contract.ValidJobID(j.id) {
		j.id = fmt.Sprintf("s%d", seq)
	}

	if j.prof == nil {
		p.deadLetter(sendCtx, j, contract.ReasonInvalidJob,
			fmt.Sprintf("no profile %q is configured on this worker (subject %s): publish on mail.send.<profile> for a configured profile", profile, msg.Subject()), nil)
		return
	}
	if decodeErr != nil {
		reason := contract.ReasonInvalidJob
		var inv *contract.InvalidError
		if errors.As(decodeErr, &inv) && inv.Reason != "" {
			reason = inv.Reason
		}
		p.deadLetter(sendCtx, j, reason, "invalid job: "+decodeErr.Error(), nil)
		return
	}
	j.from = senderAddress(parsed.From)

	// A job's first delivery that will go straight to sending skips the state
	// read: the compare-and-set create in send claims it, and fails if a
	// state exists after all (a re-publish after the dedupe window); the job
	// then comes back in a second and takes the read path. Replays, later
	// deliveries and every job a state could change the decision for read.
	var st contract.JobState
	var rev uint64
	var err error
	if firstDelivery && msg.Headers().Get(contract.HeaderReplay) == "" && p.plainlySendable(parsed, j.from, j.prof) {
		err = queue.ErrNoState
	} else {
		ctx, cancel := context.WithTimeout(sendCtx, opTimeout)
		st, rev, err = p.q.States.Get(ctx, j.id)
		cancel()
	}
	switch {
	case errors.Is(err, queue.ErrNoState):
		st = contract.JobState{JobID: j.id, Profile: profile}
	case err != nil:
		p.infraFailure(j, "read job state", err)
		return
	}
	j.state, j.rev = st, rev
	now := p.clock.Now()

	switch st.State {
	case contract.StateSent, contract.StateDeadLettered:
		if st.Seq != 0 && st.Seq == j.seq {
			// This very message reached its outcome but its ack was lost
			// (a worker died, or the broker moved): finish it again.
			p.finishAgain(sendCtx, j)
			return
		}
		why := "already sent"
		if st.State == contract.StateDeadLettered {
			why = "already dead-lettered: use `mailworker dlq replay` to send it again"
		}
		p.suppressDuplicate(sendCtx, j, why)
		return
	case contract.StateSending:
		// Another replica may be sending it right now (a duplicate publish),
		// or the replica that was sending it died mid-call.
		if busyUntil := st.UpdatedAt.Add(p.cfg.SendTimeout + 5*time.Second); now.Before(busyUntil) {
			p.deferJob(sendCtx, j, busyUntil.Sub(now), "another worker is sending this job", nil)
			return
		}
		j.state.Ambiguous = true
	}

	if exp := parsed.ExpiresAt; exp != nil && !now.Before(*exp) {
		p.deadLetter(sendCtx, j, contract.ReasonExpired,
			fmt.Sprintf("job expired at %s before it could be sent (attempts made: %d)", exp.UTC().Format(time.RFC3339), j.state.Attempts), nil)
		return
	}
	if nb := parsed.NotBefore; nb != nil && now.Before(*nb) {
		p.deferJob(sendCtx, j, nb.Sub(now), "notBefore", nil)
		return
	}
	if !j.prof.allows(j.from) {
		p.deadLetter(sendCtx, j, contract.ReasonSenderNotAllowed,
			fmt.Sprintf("sender %s is not an approved mailbox of profile %s (profiles.%s.allowedSenders); nothing was sent", j.from, profile, profile), nil)
		return
	}
	if j.state.Ambiguous && j.prof.OnAmbiguous == OnAmbiguousDeadLetter {
		p.deadLetter(sendCtx, j, contract.ReasonInternal, ambiguousMessage(j), nil)
		return
	}
	if j.state.Attempts >= p.cfg.MaxAttempts {
		p.deadLetter(sendCtx, j, contract.ReasonAttemptsExhausted, exhaustedMessage(j, nil), nil)
		return
	}

	at, deferFor, cause, err := p.admitJob(sendCtx, j.from, len(parsed.To)+len(parsed.Cc)+len(parsed.Bcc), p.uploadBytes(sendCtx, msg.Data(), parsed))
	if err != nil {
		// The recipient ledger is out of reach: never send blind.
		p.infraFailure(j, "lease recipients from the shared ledger", err)
		return
	}
	if deferFor > 0 {
		p.m.ThrottleDeferrals.WithLabelValues(profile, cause).Inc()
		p.deferJob(sendCtx, j, deferFor, "mailbox limit: "+cause, nil)
		return
	}
	hb := p.keepAlive(msg)
	defer hb.Stop()
	if err := p.pacer.acquire(stop, j.from, at); err != nil {
		_ = msg.Nak()
		return
	}
	select {
	case p.sends <- struct{}{}:
	case <-stop.Done():
		p.pacer.release(j.from)
		_ = msg.Nak()
		return
	}
	// The slots bound Graph requests: they are given back as soon as the
	// call returns, not after the state write, ack and event that follow.
	j.releaseSlots = sync.OnceFunc(func() {
		<-p.sends
		p.pacer.release(j.from)
	})
	defer j.releaseSlots()
	if stop.Err() != nil {
		_ = msg.Nak()
		return
	}
	// Graph may have answered another job of this mailbox with Retry-After
	// while this one waited for its slots: sending now would land inside
	// that window.
	if d := p.pacer.pausedFor(j.from); d > 0 {
		p.m.ThrottleDeferrals.WithLabelValues(profile, CauseRetryAfter).Inc()
		p.deferJob(sendCtx, j, d, "mailbox limit: "+CauseRetryAfter, nil)
		return
	}
	p.send(sendCtx, j)
}

// uploadBytes estimates the size of the job's sendMail request for the
// mailbox's upload volume: the job itself (inline attachments are base64 in
// both), plus its objectRef attachments as they will be sent, base64-encoded.
// An attachment whose size cannot be read counts as the most one request can
// carry; a missing one counts nothing (the send will fail without uploading).
func (p *Pool) uploadBytes(ctx context.Context, data []byte, job *contract.Job) int64 {
	if p.cfg.PerMailboxUploadBytes == 0 {
		return 0
	}
	n := int64(len(data))
	for _, a := range job.Attachments {
		if a.ObjectRef == "" {
			continue
		}
		opCtx, cancel := context.WithTimeout(ctx, opTimeout)
		size, err := p.q.Attachments.Size(opCtx, a.ObjectRef)
		cancel()
		switch {
		case errors.Is(err, queue.ErrNoAttachment):
			size = 0
		case err != nil:
			size = contract.MaxInlineAttachmentBytes
		}
		n += int64(base64.StdEncoding.EncodedLen(size))
	}
	return n
}

// plainlySendable reports whether a job without state would go straight to
// pacing and sending: not expired, not held by notBefore, sender allowed.
func (p *Pool) plainlySendable(job *contract.Job, from string, prof *profileState) bool {
	now := p.clock.Now()
	return (job.ExpiresAt == nil || now.Before(*job.ExpiresAt)) &&
		(job.NotBefore == nil || !now.Before(*job.NotBefore)) && prof.allows(from)
}

// send marks the job as sending, calls the Sender and maps the outcome to one
// queue action.
func (p *Pool) send(sendCtx context.Context, j *job) {
	j.state.State = contract.StateSending
	j.state.Attempts++
	j.state.Profile = j.profile
	j.state.UpdatedAt = p.clock.Now()
	if !p.writeState(sendCtx, j, true) {
		return
	}

	ctx, cancel := context.WithTimeout(sendCtx, p.cfg.SendTimeout)
	p.m.InflightSends.Inc()
	start := time.Now()
	res, err := p.sender.Send(ctx, j.profile, j.id, j.job)
	elapsed := time.Since(start)
	if err == nil && j.releaseSlots != nil {
		// On failure the slots are held until handle returns, so that a
		// Retry-After pause is recorded before another job takes them.
		j.releaseSlots()
	}
	p.m.InflightSends.Dec()
	cancel()
	p.m.SendDuration.WithLabelValues(j.profile).Observe(elapsed.Seconds())

	if err == nil {
		p.m.GraphRequests.WithLabelValues(j.profile, statusLabel(res.Status)).Inc()
		p.sent(sendCtx, j, res, elapsed)
		return
	}
	var se *SendError
	if !errors.As(err, &se) {
		se = &SendError{Kind: Retryable, Reason: contract.ReasonInternal, Message: err.Error(), Err: err}
	}
	p.m.GraphRequests.WithLabelValues(j.profile, statusLabel(se.Status)).Inc()
	graph := &contract.GraphInfo{Status: se.Status, Code: se.Code, RequestID: se.RequestID, ClientRequestID: se.ClientRequestID}
	if se.Ambiguous {
		j.state.Ambiguous = true
		p.m.Ambiguous.WithLabelValues(j.profile).Inc()
	}
	if se.RetryAfter > 0 && (se.Kind == Retryable || se.Kind == Throttled) {
		p.pacer.pause(j.from, se.RetryAfter) // the mailbox was told to wait
	}
	j.state.LastError = &contract.ErrorInfo{Reason: se.Reason, Message: se.Error()}
	j.state.Graph = graph

	switch {
	case sendCtx.Err() != nil:
		// Shutdown cut the send short. Nothing was spent unless the request
		// may have reached Graph.
		if !se.Ambiguous {
			j.state.Attempts--
		}
		j.state.State = contract.StateRetrying
		p.writeState(context.WithoutCancel(sendCtx), j, false)
		_ = j.msg.Nak()
		p.log.Info().Str("jobId", j.id).Bool("ambiguous", se.Ambiguous).Msg("send cancelled by shutdown; job put back")

	case se.Kind == Permanent:
		reason := se.Reason
		if !reason.Valid() || reason == "" {
			reason = contract.ReasonGraphRejected
		}
		p.deadLetter(sendCtx, j, reason, se.Error(), graph)

	case se.Kind == Unavailable:
		// Nothing reached Graph (Entra is down or failing): the job waits,
		// without spending an attempt, for as long as the outage lasts; the
		// token-failure alert tells people. expiresAt still bounds it.
		j.state.Attempts--
		j.state.State = contract.StateDeferred
		p.writeState(sendCtx, j, false)
		wait := max(se.RetryAfter, time.Second)
		p.m.ThrottleDeferrals.WithLabelValues(j.profile, CauseUnavailable).Inc()
		p.deferJob(sendCtx, j, wait+jitter(wait), "unavailable: "+se.Error(), nil)

	case se.Kind == Throttled:
		p.m.GraphThrottled.WithLabelValues(j.profile).Inc()
		p.m.ThrottleDeferrals.WithLabelValues(j.profile, CauseRetryAfter).Inc()
		wait := se.RetryAfter
		if wait <= 0 {
			wait = retryDelay(1, 0, p.cfg.BackoffInitial, p.cfg.BackoffMax)
			p.pacer.pause(j.from, wait)
		}
		j.state.Attempts-- // a throttled request spends no attempt
		j.state.State = contract.StateDeferred
		p.writeState(sendCtx, j, false)
		p.deferJob(sendCtx, j, wait+jitter(wait), "throttled by Graph (429)", graph)

	case se.Ambiguous && j.prof.OnAmbiguous == OnAmbiguousDeadLetter:
		p.deadLetter(sendCtx, j, contract.ReasonInternal, ambiguousMessage(j), graph)

	case j.state.Attempts >= p.cfg.MaxAttempts:
		reason := contract.ReasonAttemptsExhausted
		if se.Reason == contract.ReasonAccessDenied || se.Reason == contract.ReasonAuthFailed {
			reason = se.Reason
		}
		p.deadLetter(sendCtx, j, reason, exhaustedMessage(j, se), graph)

	default:
		delay := retryDelay(j.state.Attempts, se.RetryAfter, p.cfg.BackoffInitial, p.cfg.BackoffMax)
		j.state.State = contract.StateRetrying
		// A failed write is logged; the retry is scheduled all the same (the
		// next delivery then sees `sending` and treats the attempt as ambiguous).
		p.writeState(sendCtx, j, false)
		retryAt := p.clock.Now().Add(delay)
		p.m.Retries.WithLabelValues(j.profile, string(se.Reason)).Inc()
		_ = j.msg.NakWithDelay(delay)
		p.emit(sendCtx, j, contract.Event{Event: contract.EventRetrying, Graph: graph, RetryAt: &retryAt,
			Error: &contract.ErrorInfo{Reason: se.Reason, Message: se.Error()}, Ambiguous: se.Ambiguous,
			LatencyMs: elapsed.Milliseconds()})
		p.outcomeLog(zerolog.WarnLevel, j, "retrying").Err(se).Dur("delay", delay).Bool("ambiguous", se.Ambiguous).Send()
	}
}

func (p *Pool) sent(ctx context.Context, j *job, res SendResult, elapsed time.Duration) {
	j.state.State = contract.StateSent
	j.state.LastError = nil
	graph := &contract.GraphInfo{Status: res.Status, RequestID: res.RequestID, ClientRequestID: res.ClientRequestID}
	j.state.Graph = graph
	j.state.UpdatedAt = p.clock.Now()
	j.state.Seq = j.seq
	p.finish(ctx, j, contract.Event{Event: contract.EventSent, Graph: graph, LatencyMs: elapsed.Milliseconds(),
		PossibleDuplicate: j.state.Ambiguous}, j.msg.Ack)
	p.m.Jobs.WithLabelValues(j.profile, OutcomeSent, "").Inc()
	p.observeLatency(j)
	p.outcomeLog(zerolog.InfoLevel, j, "sent").Str("requestId", res.RequestID).
		Bool("possibleDuplicate", j.state.Ambiguous).Dur("latency", elapsed).Send()
}

// deadLetter records the job in MAIL_DLQ with its original bytes, then
// terminates the delivery. If the record cannot be written the job is put back
// instead: nothing is dropped.
func (p *Pool) deadLetter(ctx context.Context, j *job, reason contract.Reason, message string, graph *contract.GraphInfo) {
	now := p.clock.Now()
	rec := queue.DeadLetter{JobID: j.id, Profile: j.profile, Reason: reason, Error: message,
		Attempts: j.state.Attempts, FailedAt: now, Generation: j.state.Generation, Body: j.msg.Data()}
	if graph != nil {
		rec.GraphRequestID = graph.RequestID
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	err := p.q.DLQ.Put(opCtx, rec)
	cancel()
	if err != nil {
		p.infraFailure(j, "write dead letter", err)
		return
	}
	if j.state.JobID == "" {
		j.state = contract.JobState{JobID: j.id, Profile: j.profile}
	}
	j.state.State = contract.StateDeadLettered
	j.state.LastError = &contract.ErrorInfo{Reason: reason, Message: message}
	j.state.Graph = graph
	j.state.UpdatedAt = now
	j.state.Seq = j.seq
	p.finish(ctx, j, contract.Event{Event: contract.EventDeadLettered, Graph: graph,
		Error: &contract.ErrorInfo{Reason: reason, Message: message}}, j.msg.Term)
	p.m.Jobs.WithLabelValues(j.metricProfile(), OutcomeDeadLettered, string(reason)).Inc()
	p.observeLatency(j)
	p.outcomeLog(zerolog.WarnLevel, j, "dead_lettered").Str("reason", string(reason)).Str("error", message).Send()
}

// finish records a job's outcome (final state, then final event) and takes
// the queue action. When the state is stored but the event is not (shutdown
// or a long outage cut the retries short), the job is put back instead: its
// next delivery finds the final state and publishes the event (finishAgain),
// so no outcome goes unreported. When the state itself cannot be stored the
// action is taken anyway: redelivering would send the mail again.
func (p *Pool) finish(ctx context.Context, j *job, ev contract.Event, action func() error) {
	if p.writeTerminalState(ctx, j) {
		if !p.emitFinal(ctx, j, ev) {
			_ = j.msg.NakWithDelay(infraRetry)
			return
		}
	} else {
		p.emitFinal(ctx, j, ev)
	}
	_ = action()
}

// finishAgain completes a redelivery of a message whose outcome is already
// recorded: it publishes the final event again from the job state (stored
// once: the event's dedupe id is the same) and acks or terminates.
func (p *Pool) finishAgain(ctx context.Context, j *job) {
	st := j.state
	ev := contract.Event{Event: contract.EventSent, Graph: st.Graph, PossibleDuplicate: st.Ambiguous}
	if st.State == contract.StateDeadLettered {
		ev = contract.Event{Event: contract.EventDeadLettered, Graph: st.Graph, Error: st.LastError}
	}
	if !p.emitFinal(ctx, j, ev) {
		_ = j.msg.NakWithDelay(infraRetry) // try again on the next delivery
		return
	}
	if st.State == contract.StateSent {
		_ = j.msg.Ack()
	} else {
		_ = j.msg.Term()
	}
	p.outcomeLog(zerolog.InfoLevel, j, string(ev.Event)).Str("why", "redelivered after its outcome was recorded").Send()
}

func (p *Pool) suppressDuplicate(ctx context.Context, j *job, why string) {
	_ = j.msg.Ack()
	p.m.Jobs.WithLabelValues(j.profile, OutcomeDuplicateSuppressed, "").Inc()
	p.emit(ctx, j, contract.Event{Event: contract.EventDuplicateSuppressed})
	p.outcomeLog(zerolog.InfoLevel, j, "duplicate_suppressed").Str("why", why).Send()
}

// deferJob puts the job back for d without spending an attempt.
func (p *Pool) deferJob(ctx context.Context, j *job, d time.Duration, why string, graph *contract.GraphInfo) {
	_ = j.msg.NakWithDelay(d)
	at := p.clock.Now().Add(d)
	p.emit(ctx, j, contract.Event{Event: contract.EventDeferred, Graph: graph, RetryAt: &at})
	p.outcomeLog(zerolog.DebugLevel, j, "deferred").Str("why", why).Dur("delay", d).Send()
}

// infraFailure puts a job back when the broker failed us; no attempt is spent.
func (p *Pool) infraFailure(j *job, op string, err error) {
	_ = j.msg.NakWithDelay(infraRetry)
	p.log.Error().Str("jobId", j.id).Str("profile", j.profile).Err(err).Msgf("%s failed; job put back", op)
}

// writeState stores j.state. With mark it is the compare-and-set that claims
// the attempt: on a conflict or error the job is put back and false returned.
// Otherwise it overwrites, and a failure is only logged: the queue action that
// follows is still right, and the state is repaired by the next write.
func (p *Pool) writeState(ctx context.Context, j *job, mark bool) bool {
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	var rev uint64
	var err error
	switch {
	case mark && j.rev == 0:
		rev, err = p.q.States.Create(opCtx, j.state)
	case mark:
		rev, err = p.q.States.Update(opCtx, j.state, j.rev)
	default:
		rev, err = p.q.States.Put(opCtx, j.state)
	}
	if err != nil {
		if mark {
			if errors.Is(err, queue.ErrStateExists) || errors.Is(err, queue.ErrStateConflict) {
				// Someone else moved this job on: look again shortly.
				p.deferJob(ctx, j, time.Second, "job state changed concurrently", nil)
				return false
			}
			p.infraFailure(j, "write job state", err)
			return false
		}
		p.log.Error().Str("jobId", j.id).Err(err).Msg("write job state failed")
		return false
	}
	j.rev = rev
	return true
}

// terminalStateTimeout bounds how long a terminal state (sent, dead_lettered)
// is retried before the job is acked anyway.
const terminalStateTimeout = 2 * time.Minute

// writeTerminalState stores a terminal state, retrying while the broker is
// unavailable (a reconnect, a JetStream leader election), before the caller
// acks: a job acked with its state left at `sending` would show as sending
// for ever and be sent again, as ambiguous, if it were published again. The
// delivery is kept alive meanwhile by the caller's keepAlive. After
// terminalStateTimeout, or when shutdown cancels ctx, it gives up and logs:
// the mail's fate is already decided, and redelivering it would send it twice.
func (p *Pool) writeTerminalState(ctx context.Context, j *job) bool {
	return p.retryFinal(ctx, j, "record the final job state", func(opCtx context.Context) error {
		rev, err := p.q.States.Put(opCtx, j.state)
		if err == nil {
			j.rev = rev
		}
		return err
	})
}

// retryFinal runs op, which records a job's outcome, until it succeeds, for
// up to terminalStateTimeout (a broker restart or a leader move), backing off.
// Past that, or when shutdown cancels ctx, it logs and reports false.
func (p *Pool) retryFinal(ctx context.Context, j *job, what string, op func(context.Context) error) bool {
	deadline := time.Now().Add(terminalStateTimeout)
	wait := 100 * time.Millisecond
	for {
		opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalAttemptTimeout)
		err := op(opCtx)
		cancel()
		if err == nil {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.log.Error().Str("jobId", j.id).Str("state", string(j.state.State)).Err(err).
				Msgf("giving up: could not %s", what)
			return false
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// emitFinal publishes a job's final event before its queue action, waiting
// for the stream's ack and retrying for as long as the final state is
// retried: a worker that dies after acking leaves no outcome unreported, and
// one that dies before re-publishes it on redelivery (finishAgain). The
// event's time is the final state's, so its dedupe id is stable.
func (p *Pool) emitFinal(ctx context.Context, j *job, ev contract.Event) bool {
	ev.JobID, ev.Profile, ev.Attempt, ev.At = j.id, j.profile, j.state.Attempts, j.state.UpdatedAt
	if j.job != nil {
		ev.Metadata = j.job.Metadata
	}
	return p.retryFinal(ctx, j, "publish the final status event", func(opCtx context.Context) error {
		return p.q.Events.Publish(opCtx, ev)
	})
}

func (p *Pool) emit(ctx context.Context, j *job, ev contract.Event) {
	ev.JobID, ev.Profile, ev.Attempt = j.id, j.profile, j.state.Attempts
	ev.At = p.clock.Now()
	if j.job != nil {
		ev.Metadata = j.job.Metadata
	}
	// Asynchronous: the job's queue action is already taken, and the ack is
	// checked by watchEvents, so the handler does not wait a round trip.
	f, err := p.q.Events.PublishAsync(ev)
	if err == nil {
		p.events <- pendingEvent{f: f, jobID: j.id, event: ev.Event}
		return
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	if err := p.q.Events.Publish(opCtx, ev); err != nil {
		p.log.Error().Str("jobId", j.id).Str("event", string(ev.Event)).Err(err).Msg("publish status event failed")
	}
}

// pendingEvent is a status event published without waiting for its ack.
type pendingEvent struct {
	f     jetstream.PubAckFuture
	jobID string
	event contract.EventType
}

// watchEvents logs status events the server did not store, until events is
// closed and every pending ack has been seen (or timed out).
func (p *Pool) watchEvents() {
	timer := time.NewTimer(opTimeout)
	defer timer.Stop()
	for pe := range p.events {
		timer.Reset(opTimeout)
		var err error
		select {
		case <-pe.f.Ok():
		case err = <-pe.f.Err():
		case <-timer.C:
			err = errors.New("no ack from the server")
		}
		if err != nil {
			p.log.Error().Str("jobId", pe.jobID).Str("event", string(pe.event)).Err(err).Msg("publish status event failed")
		}
	}
}

func (p *Pool) observeLatency(j *job) {
	if !j.published.IsZero() {
		p.m.JobLatency.WithLabelValues(j.metricProfile()).Observe(p.clock.Now().Sub(j.published).Seconds())
	}
}

func (p *Pool) outcomeLog(level zerolog.Level, j *job, outcome string) *zerolog.Event {
	e := p.log.WithLevel(level).Str("jobId", j.id).Str("profile", j.profile).Str("outcome", outcome).
		Int("attempt", j.state.Attempts)
	if j.from != "" {
		e = e.Str("from", j.from)
	}
	if p.cfg.LogRecipients && j.job != nil {
		e = e.Strs("to", j.job.To).Strs("cc", j.job.Cc).Strs("bcc", j.job.Bcc)
	}
	return e
}

// keepAlive tells the server the job is being worked on every third of the
// ack wait until stopped, so that slow waits and sends are not redelivered.
func (p *Pool) keepAlive(msg Delivery) *heartbeat {
	every := p.cfg.AckWait / 3
	hb := &heartbeat{}
	hb.mu.Lock()
	defer hb.mu.Unlock()
	hb.t = time.AfterFunc(every, func() {
		_ = msg.InProgress()
		hb.mu.Lock()
		defer hb.mu.Unlock()
		if !hb.stopped {
			hb.t.Reset(every)
		}
	})
	return hb
}

// heartbeat is a running keepAlive. The mutex orders the timer's creation
// before its first firing, and a Stop during a firing before the re-arm, which
// would otherwise keep a finished job's heartbeat going for ever.
type heartbeat struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

// Stop ends the heartbeat; no InProgress is sent after it returns but one
// already under way.
func (hb *heartbeat) Stop() {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	hb.stopped = true
	hb.t.Stop()
}

func ambiguousMessage(j *job) string {
	return fmt.Sprintf("an earlier attempt's outcome is unknown (timeout, 5xx or a worker stopped during the Graph call) and profile %s has onAmbiguous=deadletter: "+
		"look for X-Mailworker-Job-Id %s in Exchange message trace before replaying", j.profile, j.id)
}

func exhaustedMessage(j *job, se *SendError) string {
	msg := fmt.Sprintf("gave up after %d attempts", j.state.Attempts)
	last := se
	if last == nil && j.state.LastError != nil {
		msg += "; last error: " + j.state.LastError.Message
	}
	if last != nil {
		msg += "; last error: " + last.Error()
		if last.Reason == contract.ReasonAccessDenied {
			msg += fmt.Sprintf(" — mailbox %s is outside this app's Exchange RBAC scope; RBAC changes take 30 minutes to 2 hours to apply: fix the scope, then replay", j.from)
		}
	}
	return msg
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(rand.Int64N(int64(d)/10 + 1))
}

// sniffID reads the id field of a job that failed validation, if it has one.
func sniffID(data []byte) string {
	var probe struct {
		ID json.RawMessage `json:"id"`
	}
	var id string
	if json.Unmarshal(data, &probe) != nil || json.Unmarshal(probe.ID, &id) != nil || !contract.ValidJobID(id) {
		return ""
	}
	return id
}

func senderAddress(from string) string {
	if _, addr, err := contract.ParseAddress(from); err == nil {
		return strings.ToLower(addr)
	}
	return strings.ToLower(strings.TrimSpace(from))
}
