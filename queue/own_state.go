package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// OwnStates reads the state of one profile's jobs by key, with one direct get
// per look-up and nothing else: what a producer waiting for its own job's
// outcome may do (`mailworker send --wait`). Unlike a KV binding it needs no
// stream info of KV_MAIL_JOB_STATE, which (with a subjects filter) would list
// every profile's job ids; deploy/nats/accounts.conf gives a producer only
// the direct get of its own profile's keys.
type OwnStates struct {
	js jetstream.JetStream
	nc *nats.Conn
}

// OpenStates returns an OwnStates on js's connection; it makes no request.
func OpenStates(_ context.Context, js jetstream.JetStream) (*OwnStates, error) {
	return &OwnStates{js: js, nc: js.Conn()}, nil
}

// JetStream returns the JetStream context the states are read through.
func (s *OwnStates) JetStream() jetstream.JetStream { return s.js }

// Get returns the state of profile's job jobID and its revision;
// contract.ErrNoState when there is none (or it was deleted).
func (s *OwnStates) Get(ctx context.Context, profile, jobID string) (contract.JobState, uint64, error) {
	key, err := stateKey(profile, jobID)
	if err != nil {
		return contract.JobState{}, 0, err
	}
	subj := "$JS.API.DIRECT.GET.KV_" + contract.BucketState + ".$KV." + contract.BucketState + "." + key
	m, err := s.nc.RequestWithContext(ctx, subj, nil)
	if err != nil {
		return contract.JobState{}, 0, fmt.Errorf("queue: get state of %s: %w", jobID, err)
	}
	switch m.Header.Get("Status") {
	case "":
	case "404":
		return contract.JobState{}, 0, contract.ErrNoState
	default:
		return contract.JobState{}, 0, fmt.Errorf("queue: get state of %s: %s %s", jobID, m.Header.Get("Status"), m.Header.Get("Description"))
	}
	if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return contract.JobState{}, 0, contract.ErrNoState
	}
	rev, _ := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	var st contract.JobState
	if err := json.Unmarshal(m.Data, &st); err != nil {
		return contract.JobState{}, 0, fmt.Errorf("queue: state of %s is not valid JSON: %w", jobID, err)
	}
	return st, rev, nil
}
