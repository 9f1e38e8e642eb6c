package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

// States is the job-state store (KV MAIL_JOB_STATE, key = job id, value =
// JSON JobState). Revisions are KV revisions, for compare-and-set.
type States struct {
	kv jetstream.KeyValue
}

// Get returns the state of jobID and its revision. It returns ErrNoState when
// there is none (never written, deleted, or expired by the bucket TTL).
func (s *States) Get(ctx context.Context, jobID string) (contract.JobState, uint64, error) {
	if !contract.ValidJobID(jobID) {
		return contract.JobState{}, 0, fmt.Errorf("queue: get state: invalid job id %s", contract.Quote(jobID))
	}
	e, err := s.kv.Get(ctx, jobID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return contract.JobState{}, 0, contract.ErrNoState
	}
	if err != nil {
		return contract.JobState{}, 0, fmt.Errorf("queue: get state of %s: %w", jobID, err)
	}
	var st contract.JobState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return contract.JobState{}, 0, fmt.Errorf("queue: state of %s is not valid JSON: %w", jobID, err)
	}
	return st, e.Revision(), nil
}

func encodeState(st *contract.JobState) ([]byte, error) {
	if !contract.ValidJobID(st.JobID) {
		return nil, fmt.Errorf("queue: state: invalid job id %s", contract.Quote(st.JobID))
	}
	if st.UpdatedAt.IsZero() {
		st.UpdatedAt = time.Now().UTC()
	}
	return json.Marshal(st)
}

// Create stores st if no state exists for st.JobID, else returns
// ErrStateExists. A zero UpdatedAt is set to now.
func (s *States) Create(ctx context.Context, st contract.JobState) (uint64, error) {
	b, err := encodeState(&st)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Create(ctx, st.JobID, b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, contract.ErrStateExists
	}
	if err != nil {
		return 0, fmt.Errorf("queue: create state of %s: %w", st.JobID, err)
	}
	return rev, nil
}

// Update stores st if the current revision is lastRev, else returns
// ErrStateConflict. A zero UpdatedAt is set to now.
func (s *States) Update(ctx context.Context, st contract.JobState, lastRev uint64) (uint64, error) {
	b, err := encodeState(&st)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Update(ctx, st.JobID, b, lastRev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, contract.ErrStateConflict
	}
	if err != nil {
		return 0, fmt.Errorf("queue: update state of %s: %w", st.JobID, err)
	}
	return rev, nil
}

// Put stores st unconditionally. A zero UpdatedAt is set to now.
func (s *States) Put(ctx context.Context, st contract.JobState) (uint64, error) {
	b, err := encodeState(&st)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Put(ctx, st.JobID, b)
	if err != nil {
		return 0, fmt.Errorf("queue: put state of %s: %w", st.JobID, err)
	}
	return rev, nil
}
