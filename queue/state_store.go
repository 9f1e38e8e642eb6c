package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

// States is the job-state store (KV MAIL_JOB_STATE, key = StateKey(profile,
// job id), value = JSON JobState). Revisions are KV revisions, for
// compare-and-set.
//
// A job's identity is its profile and its id: two profiles may use the same
// job id without seeing each other's state (issue 9).
type States struct {
	kv     jetstream.KeyValue
	stream jetstream.Stream // KV_MAIL_JOB_STATE, to find a job id's profiles
	js     jetstream.JetStream
}

// JetStream returns the JetStream context the store uses.
func (s *States) JetStream() jetstream.JetStream { return s.js }

// StateKey is the MAIL_JOB_STATE key of a job: "<profile>.<job id>". Profiles
// and job ids cannot contain dots, so the key is unambiguous, and the profile
// is a subject token of its own (NATS permissions can grant one profile's
// keys: $KV.MAIL_JOB_STATE.<profile>.>).
func StateKey(profile, jobID string) string { return profile + "." + jobID }

func stateKey(profile, jobID string) (string, error) {
	if !validProfile(profile) {
		return "", fmt.Errorf("queue: state: invalid profile %s", contract.Quote(profile))
	}
	if !contract.ValidJobID(jobID) {
		return "", fmt.Errorf("queue: state: invalid job id %s", contract.Quote(jobID))
	}
	return StateKey(profile, jobID), nil
}

// Get returns the state of profile's job jobID and its revision. It returns
// ErrNoState when there is none (never written, deleted, or expired by the
// bucket TTL).
func (s *States) Get(ctx context.Context, profile, jobID string) (contract.JobState, uint64, error) {
	key, err := stateKey(profile, jobID)
	if err != nil {
		return contract.JobState{}, 0, err
	}
	e, err := s.kv.Get(ctx, key)
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

func encodeState(st *contract.JobState) (string, []byte, error) {
	key, err := stateKey(st.Profile, st.JobID)
	if err != nil {
		return "", nil, err
	}
	if st.UpdatedAt.IsZero() {
		st.UpdatedAt = time.Now().UTC()
	}
	b, err := json.Marshal(st)
	return key, b, err
}

// Create stores st if no state exists for st.JobID, else returns
// ErrStateExists. A zero UpdatedAt is set to now.
func (s *States) Create(ctx context.Context, st contract.JobState) (uint64, error) {
	key, b, err := encodeState(&st)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Create(ctx, key, b)
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
	key, b, err := encodeState(&st)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Update(ctx, key, b, lastRev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, contract.ErrStateConflict
	}
	if err != nil {
		return 0, fmt.Errorf("queue: update state of %s: %w", st.JobID, err)
	}
	return rev, nil
}

// Latest is Get answered by the bucket's stream leader, never by a
// replica (the KV's direct gets may be served by a follower that lags
// behind): after a compare-and-set conflict, the value and revision that
// the next decision needs. It returns ErrNoState when there is none.
func (s *States) Latest(ctx context.Context, profile, jobID string) (contract.JobState, uint64, error) {
	key, err := stateKey(profile, jobID)
	if err != nil {
		return contract.JobState{}, 0, err
	}
	m, err := leaderLast(ctx, s.js, "KV_"+contract.BucketState, "$KV."+contract.BucketState+"."+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return contract.JobState{}, 0, contract.ErrNoState
	}
	if err != nil {
		return contract.JobState{}, 0, fmt.Errorf("queue: get state of %s from the leader: %w", jobID, err)
	}
	if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return contract.JobState{}, 0, contract.ErrNoState
	}
	var st contract.JobState
	if err := json.Unmarshal(m.Data, &st); err != nil {
		return contract.JobState{}, 0, fmt.Errorf("queue: state of %s is not valid JSON: %w", jobID, err)
	}
	return st, m.Sequence, nil
}

// Delete removes the state of profile's job jobID (a purged dead letter: the
// id may be published again at once) if its revision is still rev, the one
// the caller read and decided on; ErrStateConflict when it moved on.
// Deleting a missing state is not an error.
func (s *States) Delete(ctx context.Context, profile, jobID string, rev uint64) error {
	key, err := stateKey(profile, jobID)
	if err != nil {
		return err
	}
	// A delete marker, not a purge: the bucket honours no rollup
	// (EnsureNoRollup), and with History 1 the marker is the key's only
	// message, as a purge's would be.
	err = s.kv.Delete(ctx, key, jetstream.LastRevision(rev))
	var apiErr *jetstream.APIError
	switch {
	case err == nil, errors.Is(err, jetstream.ErrKeyNotFound):
		return nil
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
		return contract.ErrStateConflict
	}
	return fmt.Errorf("queue: delete state of %s: %w", key, err)
}

// Profiles returns the profiles that hold a state (or a deletion marker) for
// jobID, sorted. It reads the bucket stream's subject counts (one stream info
// request), so it needs no consumer.
func (s *States) Profiles(ctx context.Context, jobID string) ([]string, error) {
	if !contract.ValidJobID(jobID) {
		return nil, fmt.Errorf("queue: state: invalid job id %s", contract.Quote(jobID))
	}
	prefix := "$KV." + contract.BucketState + "."
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(prefix+"*."+jobID))
	if err != nil {
		return nil, fmt.Errorf("queue: find the profiles of job %s: %w", jobID, err)
	}
	var out []string
	for subj := range info.State.Subjects {
		p, _, _ := strings.Cut(strings.TrimPrefix(subj, prefix), ".")
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// Drafts returns the states of jobs whose draft (draft delivery mode) was
// never sent and that have not moved for olderThan: drafts left behind in
// the shared mailboxes (a dead-lettered or expired job whose draft could not
// be deleted, or a job stuck mid-flow). It reads the whole bucket.
func (s *States) Drafts(ctx context.Context, olderThan time.Duration, now time.Time) ([]contract.JobState, error) {
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("queue: read job states: %w", err)
	}
	defer func() { _ = w.Stop() }()
	var out []contract.JobState
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("queue: read job states: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return out, nil
			}
			if e == nil { // the current values are all delivered
				return out, nil
			}
			var st contract.JobState
			if json.Unmarshal(e.Value(), &st) != nil {
				continue
			}
			if d := st.Draft; d != nil && d.ID != "" && d.SendAt == nil && st.State != contract.StateSent &&
				now.Sub(st.UpdatedAt) >= olderThan {
				out = append(out, st)
			}
		}
	}
}
