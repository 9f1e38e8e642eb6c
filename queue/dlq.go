package queue

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotInDLQ is returned when a job has no dead-letter record.
var ErrNotInDLQ = errors.New("queue: job is not in the dead-letter queue")

// DeadLetter is one record of MAIL_DLQ.
type DeadLetter struct {
	JobID, Profile string
	Reason         Reason
	Error          string
	Attempts       int
	FailedAt       time.Time
	GraphRequestID string
	Generation     int
	Body           []byte
	Seq            uint64 // stream sequence (when read)
	From, Subject  string // best-effort parse of Body when read
}

// DLQFilter selects dead letters; empty fields match everything.
type DLQFilter struct {
	Profile string
	Reason  Reason
	JobID   string
}

// ReplayOptions tune a replay.
type ReplayOptions struct {
	// Body replaces the job body when set (a fixed job); it must DecodeJob cleanly.
	Body []byte
}

// DLQ is the dead-letter store.
type DLQ struct {
	js     jetstream.JetStream
	states *States
	events *Events
}

// Put stores dl once per (job id, generation).
func (d *DLQ) Put(ctx context.Context, dl DeadLetter) error { return nil }

// List returns the dead letters matching f, oldest first.
func (d *DLQ) List(ctx context.Context, f DLQFilter) ([]DeadLetter, error) { return nil, nil }

// Get returns the dead letter of jobID, or ErrNotInDLQ.
func (d *DLQ) Get(ctx context.Context, jobID string) (DeadLetter, error) {
	return DeadLetter{}, ErrNotInDLQ
}

// Replay puts jobID back on MAIL_JOBS.
func (d *DLQ) Replay(ctx context.Context, jobID string, opts ReplayOptions) error { return nil }

// ReplayAll replays every dead letter matching f and returns how many.
func (d *DLQ) ReplayAll(ctx context.Context, f DLQFilter) (int, error) { return 0, nil }

// Purge deletes every dead letter matching f and returns how many.
func (d *DLQ) Purge(ctx context.Context, f DLQFilter) (int, error) { return 0, nil }
