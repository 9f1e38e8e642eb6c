package queue

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Events publishes and reads status events (stream MAIL_STATUS).
type Events struct {
	js jetstream.JetStream
}

func eventMsg(ev *contract.Event, msgID string) (*nats.Msg, error) {
	if !contract.ValidJobID(ev.JobID) {
		return nil, fmt.Errorf("queue: event: invalid job id %s", contract.Quote(ev.JobID))
	}
	if !validProfile(ev.Profile) {
		return nil, fmt.Errorf("queue: event: invalid profile %s", contract.Quote(ev.Profile))
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("queue: encode event: %w", err)
	}
	if msgID == "" {
		msgID = EventMsgID(ev)
	}
	m := &nats.Msg{Subject: contract.StatusSubject(ev.Profile, ev.JobID), Data: b,
		Header: nats.Header{contract.HeaderMsgID: []string{msgID}}}
	return m, nil
}

// EventMsgID is the publish dedupe id of an event: the same event value
// published twice (a retry after a lost ack, or a worker re-publishing a
// final event from the job state) is stored once inside the stream's
// duplicate window.
func EventMsgID(ev *contract.Event) string {
	if ev.Recipient != "" {
		// One delivery event per job, recipient and event, whenever it is published.
		return ev.Profile + "." + ev.JobID + "-" + string(ev.Event) + "-r" + RecipientKey(ev.Recipient)
	}
	return ev.Profile + "." + ev.JobID + "-" + string(ev.Event) + "-" + strconv.Itoa(ev.Attempt) + "-" + strconv.FormatInt(ev.At.UnixNano(), 36)
}

// RecipientKey is a recipient's stable, key-safe token: the base32 of its
// SHA-256 over the lower-cased address (first 20 bytes), so that dedupe ids
// and KV keys name no address.
func RecipientKey(addr string) string {
	h := sha256.Sum256([]byte(strings.ToLower(strings.TrimSpace(addr))))
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h[:20]))
}

// NewEvents returns the status stream on js, for a client that reads a
// job's events without binding the whole queue.
func NewEvents(js jetstream.JetStream) *Events { return &Events{js: js} }

// Publish stores ev on StatusSubject(ev.Profile, ev.JobID) and waits for the
// stream's ack. It fails on an invalid job id or profile.
func (e *Events) Publish(ctx context.Context, ev contract.Event) error {
	return e.publish(ctx, ev, "")
}

func (e *Events) publish(ctx context.Context, ev contract.Event, msgID string) error {
	m, err := eventMsg(&ev, msgID)
	if err != nil {
		return err
	}
	if _, err := e.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("queue: publish %s event of %s: %w", ev.Event, ev.JobID, err)
	}
	return nil
}

// PublishFinal stores a job's terminal event (sent, dead_lettered) once,
// whoever publishes it and however late. key names the outcome (the
// terminal state's revision, contract.FinalEventKey): it is the event's
// Nats-Msg-Id, and every publish carries Nats-Expected-Last-Subject-Sequence:
// first 0 (the job's status subject is empty: the happy path, which then
// costs no read), then the last sequence on the subject as read through the
// stream leader, with the key not among its events. So a publish that lands
// late (a stalled node, a retry whose first try landed), after the same
// outcome — or anything else — was stored on the subject, is refused by the
// stream whatever the duplicate window: the subject moved on. A refused
// publisher reads the subject (a handful of events per job) and returns nil
// when the key is there, or tries again against the new last sequence. It
// returns an error when the stream cannot be reached or the subject keeps
// moving.
func (e *Events) PublishFinal(ctx context.Context, ev contract.Event, key string) error {
	m, err := eventMsg(&ev, key)
	if err != nil {
		return err
	}
	var last uint64
	for try := 0; ; try++ {
		if try == 6 {
			return fmt.Errorf("queue: publish %s event of %s: the job's status subject keeps changing", ev.Event, ev.JobID)
		}
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
		_, err := e.js.PublishMsg(ctx, m)
		if err == nil {
			return nil // stored, or a duplicate of its own earlier try inside the window
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			return fmt.Errorf("queue: publish %s event of %s: %w", ev.Event, ev.JobID, err)
		}
		found, seq, err := e.lookFor(ctx, m.Subject, key)
		if err != nil {
			return fmt.Errorf("queue: publish %s event of %s: %w", ev.Event, ev.JobID, err)
		}
		if found {
			return nil
		}
		last = seq
	}
}

// lookFor reports whether an event with Nats-Msg-Id key is stored on
// subject, and the subject's last sequence (0: none), reading through the
// stream leader.
func (e *Events) lookFor(ctx context.Context, subject, key string) (found bool, last uint64, err error) {
	m, err := leaderLast(ctx, e.js, contract.StreamStatus, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	last = m.Sequence
	if m.Header.Get(contract.HeaderMsgID) == key {
		return true, last, nil
	}
	for seq := uint64(1); seq < last; {
		m, err := leaderNext(ctx, e.js, contract.StreamStatus, subject, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return false, 0, err
		}
		if m.Header.Get(contract.HeaderMsgID) == key {
			return true, last, nil
		}
		seq = m.Sequence + 1
	}
	return false, last, nil
}

// PublishAsync stores ev without waiting for the ack (the worker's hot path).
// wait blocks until the server answers, or timeout passes, and returns nil
// when the event was stored.
func (e *Events) PublishAsync(ev contract.Event) (wait func(timeout time.Duration) error, err error) {
	m, err := eventMsg(&ev, "")
	if err != nil {
		return nil, err
	}
	f, err := e.js.PublishMsgAsync(m)
	if err != nil {
		return nil, fmt.Errorf("queue: publish %s event of %s: %w", ev.Event, ev.JobID, err)
	}
	return func(timeout time.Duration) error {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return err
		case <-t.C:
			select { // an ack already here wins over a timer that fired with it
			case <-f.Ok():
				return nil
			case err := <-f.Err():
				return err
			default:
				return errors.New("no ack from the server")
			}
		}
	}, nil
}

// History returns every stored event of profile's job jobID, oldest first;
// none is an empty slice and no error. An empty profile means any profile
// (support looking a job id up). Events older than MAIL_STATUS's max age are
// gone.
func (e *Events) History(ctx context.Context, profile, jobID string) ([]contract.Event, error) {
	if !contract.ValidJobID(jobID) {
		return nil, fmt.Errorf("queue: history: invalid job id %s", contract.Quote(jobID))
	}
	tok := "*"
	if profile != "" {
		if !validProfile(profile) {
			return nil, fmt.Errorf("queue: history: invalid profile %s", contract.Quote(profile))
		}
		tok = profile
	}
	s, err := e.js.Stream(ctx, contract.StreamStatus)
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", contract.StreamStatus, err)
	}
	var out []contract.Event
	err = scan(ctx, s, contract.StatusSubjectPrefix+tok+"."+jobID, func(m *jetstream.RawStreamMsg) error {
		var ev contract.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return nil // not ours to judge: skip what is not an event
		}
		out = append(out, ev)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue: history of %s: %w", jobID, err)
	}
	return out, nil
}

// scan calls fn with every message of s on subject filter, in stream order.
// It uses "next message by subject" gets: no consumer to create or clean up.
func scan(ctx context.Context, s jetstream.Stream, filter string, fn func(*jetstream.RawStreamMsg) error) error {
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(m); err != nil {
			return err
		}
		seq = m.Sequence + 1
	}
}
