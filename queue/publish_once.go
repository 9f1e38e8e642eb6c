package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishOnce stores ev on its job's status subject with Nats-Msg-Id key,
// unless an event with that key is stored there already, whatever the
// stream's duplicate window says (the delivery tracker's events: one per job
// generation and recipient, published again after a crash that came between
// the publish and the caller's record of it).
//
// known is the subject's sequence up to which the caller has accounted for
// every event (0: none, it has read nothing). The publish carries
// Nats-Expected-Last-Subject-Sequence, so the stream stores it only when
// nothing arrived on the subject after what the caller has seen; otherwise
// PublishOnce reads the events after known through the stream leader (a job
// has a handful), calls seen with each one's Nats-Msg-Id and event (in
// stream order, also the ones after a match: the caller learns of all
// of them), and returns without publishing when one carries key, or
// publishes again against the subject's new last sequence. With known 0 it
// reads first (a job's subject always holds its `sent` event).
//
// It returns the sequence the caller has now accounted for (the stored
// event's, or the last one read) and whether this call stored ev. It fails
// on an invalid event, when the stream cannot be reached, or when the
// subject keeps moving.
func (e *Events) PublishOnce(ctx context.Context, ev contract.Event, key string, known uint64,
	seen func(key string, ev contract.Event)) (last uint64, stored bool, err error) {
	m, err := eventMsg(&ev, key)
	if err != nil {
		return known, false, err
	}
	fail := func(err error) (uint64, bool, error) {
		return known, false, fmt.Errorf("queue: publish %s event of %s: %w", ev.Event, ev.JobID, err)
	}
	last = known
	read := known == 0
	for try := 0; try < 6; try++ {
		if read {
			found, seq, err := e.readAfter(ctx, m.Subject, last, key, seen)
			if err != nil {
				return fail(err)
			}
			last = seq
			if found {
				return last, false, nil
			}
		}
		read = true
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
		ack, err := e.js.PublishMsg(ctx, m)
		var apiErr *jetstream.APIError
		switch {
		case err == nil && !ack.Duplicate:
			return ack.Sequence, true, nil
		case err == nil:
			// Stored already, inside the window: read it like any other.
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
			// The subject moved past last: read what came.
		default:
			return fail(err)
		}
	}
	return fail(errors.New("the job's status subject keeps changing"))
}

// readAfter reads the messages of MAIL_STATUS on subject after sequence
// after, through the stream leader, calls seen with each that is an event,
// and reports whether one carries key and the last sequence it read (after
// when there is none).
func (e *Events) readAfter(ctx context.Context, subject string, after uint64, key string,
	seen func(string, contract.Event)) (found bool, last uint64, err error) {
	last = after
	for {
		m, err := leaderNext(ctx, e.js, contract.StreamStatus, subject, last+1)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return found, last, nil
		}
		if err != nil {
			return false, after, err
		}
		if m.Sequence <= last { // cannot happen; never loop
			return false, after, fmt.Errorf("stream %s answered sequence %d after %d", contract.StreamStatus, m.Sequence, last)
		}
		last = m.Sequence
		id := m.Header.Get(contract.HeaderMsgID)
		if id == key {
			found = true
		}
		var ev contract.Event
		if seen != nil && json.Unmarshal(m.Data, &ev) == nil {
			seen(id, ev)
		}
	}
}
