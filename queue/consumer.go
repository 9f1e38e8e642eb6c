package queue

import (
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Jobs is the shared durable consumer of MAIL_JOBS, seen without NATS types:
// what the worker consumes (cmd/mailworker adapts it to worker.Consumer).
type Jobs struct{ c jetstream.Consumer }

// NewJobs wraps a consumer (Queue.Consumer).
func NewJobs(c jetstream.Consumer) *Jobs { return &Jobs{c: c} }

// Messages starts fetching, up to prefetch messages ahead.
func (j *Jobs) Messages(prefetch int) (*Messages, error) {
	it, err := j.c.Messages(jetstream.PullMaxMessages(prefetch), jetstream.PullHeartbeat(PullHeartbeat))
	if err != nil {
		return nil, err
	}
	return &Messages{it: it}, nil
}

// ErrMessagesClosed is returned by Messages.Next once the fetch has ended.
var ErrMessagesClosed = jetstream.ErrMsgIteratorClosed

// Messages is a running fetch.
type Messages struct{ it jetstream.MessagesContext }

// Next blocks for the next message. It returns ErrMessagesClosed after Drain
// once the messages already fetched are handed out; other errors are
// transient (missed heartbeats, reconnects) and the fetch carries on.
func (m *Messages) Next() (*Delivery, error) {
	msg, err := m.it.Next()
	if err != nil {
		return nil, err
	}
	return &Delivery{msg: msg}, nil
}

// Drain stops fetching.
func (m *Messages) Drain() { m.it.Drain() }

// Delivery is one delivery of a job message.
type Delivery struct{ msg jetstream.Msg }

// Data is the message body.
func (d *Delivery) Data() []byte { return d.msg.Data() }

// Subject is the message subject.
func (d *Delivery) Subject() string { return d.msg.Subject() }

// Header returns a header's value, "" when absent.
func (d *Delivery) Header(name string) string { return d.msg.Headers().Get(name) }

// Meta returns the stream sequence, the delivery count and the publish time.
func (d *Delivery) Meta() (seq, delivered uint64, published time.Time, ok bool) {
	meta, err := d.msg.Metadata()
	if err != nil {
		return 0, 0, time.Time{}, false
	}
	return meta.Sequence.Stream, meta.NumDelivered, meta.Timestamp, true
}

// Ack acknowledges the message: it is done.
func (d *Delivery) Ack() error { return d.msg.Ack() }

// Nak gives the message back for redelivery at once.
func (d *Delivery) Nak() error { return d.msg.Nak() }

// NakWithDelay gives the message back for redelivery after delay.
func (d *Delivery) NakWithDelay(delay time.Duration) error { return d.msg.NakWithDelay(delay) }

// InProgress resets the ack wait.
func (d *Delivery) InProgress() error { return d.msg.InProgress() }

// Term ends the message: it is never redelivered.
func (d *Delivery) Term() error { return d.msg.Term() }

// IsClosed reports whether err says the fetch has ended.
func IsClosed(err error) bool { return errors.Is(err, ErrMessagesClosed) }
