package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/queue/contract"
)

// Recording a job's state: state is monotonic (DESIGN.md).
//
//   - Every write compares and sets against the revision the decision read
//     (store): there is no unconditional write. A decision made on a stale
//     read (a replica that lags, a write of this worker that is still stuck
//     in a paused server's socket) loses its compare-and-set; the state is
//     read again from the leader and decided on again.
//   - A write follows the state it replaces (contract.CheckTransition): a
//     terminal state is final within its generation, attempts never go back.
//   - Each write carries an id (JobState.Write) kept across its retries, so a
//     retry whose first try landed (its reply was lost) recognises its own
//     write instead of taking it for another's.
//   - Only the delivery whose terminal write won publishes the terminal event,
//     and a redelivery that finds the outcome recorded publishes it again;
//     both through Events.PublishFinal, which stores it once whoever
//     publishes it and however late (its key is the terminal state's
//     revision).

// errMoved: the job's state moved on under this delivery (another delivery,
// a replay); j.state and j.rev now hold it as the store's leader has it.
var errMoved = errors.New("worker: the job's state moved on under this delivery")

// store writes next as j's state: a create when j.rev is 0, else an update
// compared and set against j.rev, once contract.CheckTransition allows it
// after j.base. A broker failure is tried again, with the same write id,
// until patience has passed (one try when 0) or shutdown cancels ctx. On a
// conflict the state is read from the leader: the write's own earlier try
// is success; another's is errMoved, unless rebase (may be nil) makes a
// write that follows it (rebase's exists is false when there is no state
// any more), which is then stored the same way. It returns nil (j.state,
// j.base and j.rev are the stored value), errMoved, or the broker's error.
func (p *Pool) store(ctx context.Context, j *job, next contract.JobState, patience time.Duration,
	rebase func(fresh contract.JobState, exists bool) (contract.JobState, bool)) error {
	deadline := time.Now().Add(patience)
	for rebases := 0; ; rebases++ {
		if err := contract.CheckTransition(j.base, next); err != nil {
			// A decision that breaks the rule is a bug: refuse the write
			// rather than move the job backwards.
			p.log.Error().Str("jobId", j.id).Str("profile", j.profile).Err(err).Msg("job state write refused")
			return fmt.Errorf("worker: state of %s: %w", j.id, err)
		}
		next.Write = p.writer + "." + strconv.FormatUint(p.writes.Add(1), 36)
		if next.UpdatedAt.IsZero() {
			next.UpdatedAt = p.clock.Now()
		}
		err := p.tryStore(ctx, j, next, deadline)
		if err == nil || !errors.Is(err, errMoved) || rebase == nil || rebases == 5 {
			return err
		}
		n, ok := rebase(j.state, j.rev != 0)
		if !ok {
			return errMoved
		}
		next = n
	}
}

// tryStore makes one write of store, with its retries.
func (p *Pool) tryStore(ctx context.Context, j *job, next contract.JobState, deadline time.Time) error {
	var wait time.Duration
	for {
		opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalAttemptTimeout)
		var rev uint64
		var err error
		if j.rev == 0 {
			rev, err = p.broker.States.Create(opCtx, next)
		} else {
			rev, err = p.broker.States.Update(opCtx, next, j.rev)
		}
		cancel()
		if err == nil {
			j.base, j.state, j.rev = next, next, rev
			return nil
		}
		if errors.Is(err, contract.ErrStateConflict) || errors.Is(err, contract.ErrStateExists) {
			opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalAttemptTimeout)
			fresh, frev, ferr := p.broker.States.Latest(opCtx, j.profile, j.id)
			cancel()
			switch {
			case ferr == nil && fresh.Write == next.Write:
				// This write's earlier try landed; its reply was lost.
				j.base, j.state, j.rev = fresh, fresh, frev
				return nil
			case ferr == nil || errors.Is(ferr, contract.ErrNoState):
				p.adopt(j, fresh, frev, ferr == nil)
				return errMoved
			}
			err = ferr
		}
		if !time.Now().Before(deadline) || ctx.Err() != nil {
			return err
		}
		wait = p.retry.FinalNext(wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

// putState stores j's non-terminal state (retrying, deferred). When the job
// moved on under this delivery the delivery is settled by what it moved to
// (moved) and putState reports false: the caller's queue action is not
// taken. A broker failure is logged and reported true: the queue action
// that follows is still right (the next delivery then sees `sending` and
// treats the attempt as lost).
func (p *Pool) putState(ctx context.Context, j *job) bool {
	j.state.UpdatedAt = p.clock.Now()
	err := p.store(ctx, j, j.state, 0, nil)
	switch {
	case err == nil:
		return true
	case errors.Is(err, errMoved):
		p.moved(ctx, j)
		return false
	}
	p.log.Error().Str("jobId", j.id).Err(err).Msg("write job state failed")
	return true
}

// moved settles a delivery whose job moved on under it (j holds the state
// read from the leader): an outcome recorded by another delivery stands
// (its terminal event is made sure of, and this delivery acked or
// terminated); a job another delivery is working on is put back, to be
// decided on again.
func (p *Pool) moved(ctx context.Context, j *job) {
	e := p.log.Warn().Str("jobId", j.id).Str("profile", j.profile).Str("state", string(j.state.State))
	if j.marked && j.graph != nil {
		// This delivery's own Graph call, which the recorded outcome
		// (flagged as possibly duplicated when it took the job over) does
		// not name.
		e = e.Int("ownGraphStatus", j.graph.Status).Str("ownRequestId", j.graph.RequestID)
	}
	e.Msg("the job's state moved on under this delivery: decided again on the state as it is")
	p.m.StateConflicts.WithLabelValues(j.metricProfile()).Inc()
	if j.state.Terminal() {
		p.finishAgain(ctx, j)
		return
	}
	p.putBack(j, p.decide(j, Outcome{Kind: Moved}))
}

// finish records a job's terminal state (j.state), publishes its terminal
// event and takes the queue action (ack for sent, terminate for dead
// letters); it reports whether the outcome is this delivery's.
//
// The state is written with a compare-and-set, retried while the broker is
// unavailable (a reconnect, a leader election) for up to
// terminalStateTimeout: a job acked with its state left at `sending` would
// show as sending for ever. When another delivery moved the job on
// meanwhile, a terminal state of theirs stands (moved); a non-terminal one
// is followed by this outcome (rebaseTerminal). When the state is stored
// but the event is not (shutdown or a long outage cut the retries short),
// or the state cannot be stored at all, the job is put back instead: its
// next delivery finds the outcome recorded and publishes the event
// (finishAgain), or finds `sending` and treats the send as ambiguous. No
// delivery publishes a terminal event without having won the write.
func (p *Pool) finish(ctx context.Context, j *job) bool {
	err := p.store(ctx, j, j.state, terminalStateTimeout, rebaseTerminal(j.state))
	switch {
	case errors.Is(err, errMoved):
		p.moved(ctx, j)
		return false
	case err != nil:
		p.log.Error().Str("jobId", j.id).Str("state", string(j.state.State)).Err(err).
			Msg("giving up: could not record the final job state; the job is put back")
		p.putBack(j, p.decide(j, Outcome{Kind: Unreachable}))
		return false
	}
	if !p.publishFinal(ctx, j) {
		p.putBack(j, p.decide(j, Outcome{Kind: Unreachable}))
		return false
	}
	p.settle(j)
	return true
}

// rebaseTerminal makes mine, a terminal state whose compare-and-set lost,
// follow fresh: a send that went through (or a dead letter already
// written) is recorded over a job that another delivery took over and has
// not finished, keeping every attempt and every doubt; when the other
// delivery may be sending it right now, its send may duplicate this one,
// and the outcome says so. A terminal state, or another generation, is
// not followed.
func rebaseTerminal(mine contract.JobState) func(contract.JobState, bool) (contract.JobState, bool) {
	return func(fresh contract.JobState, exists bool) (contract.JobState, bool) {
		if exists && (fresh.Terminal() || fresh.Generation != mine.Generation) {
			return contract.JobState{}, false
		}
		next := mine
		next.Write = ""
		if exists {
			next.Attempts = max(mine.Attempts, fresh.Attempts)
			next.Ambiguous = mine.Ambiguous || fresh.Ambiguous || fresh.State == contract.StateSending
			next.AmbiguousBefore = mine.AmbiguousBefore || fresh.AmbiguousBefore
			if next.Draft == nil {
				next.Draft = fresh.Draft
			}
		}
		return next, true
	}
}

// finishAgain completes a delivery of a job whose outcome is already
// recorded (a redelivery after a lost ack, or a delivery that lost its
// write to the delivery that recorded it): it makes sure of the terminal
// event (stored once: PublishFinal) and acks or terminates.
func (p *Pool) finishAgain(ctx context.Context, j *job) {
	if !p.publishFinal(ctx, j) {
		p.putBack(j, p.decide(j, Outcome{Kind: Unreachable})) // try again on the next delivery
		return
	}
	p.settle(j)
	p.outcomeLog(zerolog.InfoLevel, j, string(finalEventType(j.state))).Str("why", "its outcome was already recorded").Send()
}

func finalEventType(st contract.JobState) contract.EventType {
	if st.State == contract.StateDeadLettered {
		return contract.EventDeadLettered
	}
	return contract.EventSent
}

// publishFinal publishes the terminal event of j's terminal state (stored
// at j.rev) before the queue action, waiting for the stream's ack and
// retrying for as long as the final state is retried. Every publisher of
// the same outcome publishes the same event key and time, so the stream
// keeps one.
func (p *Pool) publishFinal(ctx context.Context, j *job) bool {
	st := j.state
	ev := contract.Event{Event: finalEventType(st), JobID: j.id, Profile: j.profile, Attempt: st.Attempts, At: st.UpdatedAt,
		Graph: st.Graph}
	if ev.Event == contract.EventSent {
		ev.PossibleDuplicate, ev.InternetMessageID = st.PossibleDuplicate(), internetMessageID(st)
		if j.marked && j.elapsed > 0 {
			ev.LatencyMs = j.elapsed.Milliseconds()
		}
	} else {
		ev.Error, ev.Ambiguous = st.LastError, st.Ambiguous
	}
	if j.job != nil {
		ev.Metadata = j.job.Metadata
	}
	key := contract.FinalEventKey(j.profile, j.id, ev.Event, st.Generation, j.rev)
	return p.retryFinal(ctx, j, "publish the final status event", func(opCtx context.Context) error {
		return p.broker.Events.PublishFinal(opCtx, ev, key)
	})
}

// retryFinal runs op, which records a job's outcome, until it succeeds, for
// up to terminalStateTimeout (a broker restart or a leader move), waiting as
// the RetryPolicy says. Past that, or when shutdown cancels ctx, it logs and
// reports false.
func (p *Pool) retryFinal(ctx context.Context, j *job, what string, op func(context.Context) error) bool {
	deadline := time.Now().Add(terminalStateTimeout)
	var wait time.Duration
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
		wait = p.retry.FinalNext(wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}
