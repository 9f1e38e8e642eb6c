package contract

import (
	"errors"
	"fmt"
	"time"
)

// State is where a job is in its life.
type State string

// Job states kept in the MAIL_JOB_STATE bucket.
const (
	StateSending      State = "sending"       // a Graph call was started and its outcome not yet recorded
	StateRetrying     State = "retrying"      // waiting for the next attempt
	StateDeferred     State = "deferred"      // waiting without spending an attempt (notBefore, pacing)
	StateSent         State = "sent"          // Graph answered 202
	StateDeadLettered State = "dead_lettered" // in MAIL_DLQ
	StateReplayed     State = "replayed"      // put back on MAIL_JOBS_<profile> from the DLQ
)

// JobState is the current state of one job, keyed by job id. Workers use it to
// suppress duplicates across redeliveries and replicas, to count attempts (so
// that deferrals do not spend them) and to recognise ambiguous sends.
type JobState struct {
	JobID    string `json:"jobId"`
	Profile  string `json:"profile"`
	State    State  `json:"state"`
	Attempts int    `json:"attempts"`
	// Generation counts replays; dead-letter dedupe ids include it.
	Generation int       `json:"generation,omitempty"`
	UpdatedAt  time.Time `json:"updatedAt"`
	// Ambiguous: an earlier attempt of this generation may have delivered
	// the mail (a timeout, a 5xx, a worker that stopped mid-call).
	Ambiguous bool `json:"ambiguous,omitempty"`
	// AmbiguousBefore: an attempt of an earlier generation (before a replay)
	// may have delivered the mail. It survives replays, so the job's `sent`
	// event still says possibleDuplicate; unlike Ambiguous it does not stop
	// a profile with onAmbiguous=deadletter from sending the replay support
	// chose to make.
	AmbiguousBefore bool       `json:"ambiguousBefore,omitempty"`
	LastError       *ErrorInfo `json:"lastError,omitempty"`
	Graph           *GraphInfo `json:"graph,omitempty"`
	// Seq is the stream sequence (MAIL_JOBS_<profile>, or MAIL_DEFER when due) of the delivery that reached a
	// final state, so a redelivery of that same message (its ack was lost)
	// can be told from a later re-publish of the job id.
	Seq uint64 `json:"seq,omitempty"`
	// Origin is the MAIL_JOBS_<profile> stream sequence of the producer's publish
	// this state is the outcome of: the publish's own sequence, also when
	// the job came back through a message schedule (HeaderOriginSeq), so a
	// producer that knows its publish ack can tell its job's outcome from
	// another publish of the same id. 0 when unknown.
	Origin uint64 `json:"origin,omitempty"`
	// Stops counts the deliveries of this generation whose worker stopped
	// (killed, out of memory, crashed) while it held the job in state
	// `sending`; at the worker's maxStops the job is dead-lettered
	// worker_crashed instead of taking another worker down.
	Stops int `json:"stops,omitempty"`
	// Draft is the progress of a job sent through a draft (draft delivery
	// mode): nil until the draft exists.
	Draft *Draft `json:"draft,omitempty"`
	// Write names the write that stored this value (unique per write, kept
	// across its retries), so that a writer whose reply was lost can tell
	// its own landed write from another's when its retry conflicts.
	Write string `json:"write,omitempty"`
}

// Terminal reports whether the state is an outcome: sent or dead-lettered.
// Only a replay (a new generation) moves a job on from one.
func (s JobState) Terminal() bool {
	return s.State == StateSent || s.State == StateDeadLettered
}

// ErrNotMonotonic is returned by CheckTransition for a write that would
// move a job's state backwards.
var ErrNotMonotonic = errors.New("job state would go backwards")

// CheckTransition reports whether a writer that read from (at the revision
// it compares and sets against) may store to: state is monotonic. A
// generation never goes back; within a generation a terminal state is
// final, and attempts never decrease. A new generation (a replay) may
// follow anything. The error wraps ErrNotMonotonic.
func CheckTransition(from, to JobState) error {
	switch {
	case to.Generation < from.Generation:
		return fmt.Errorf("%w: generation %d after %d", ErrNotMonotonic, to.Generation, from.Generation)
	case to.Generation > from.Generation:
		return nil
	case from.Terminal():
		return fmt.Errorf("%w: %s after %s (generation %d)", ErrNotMonotonic, to.State, from.State, from.Generation)
	case to.Attempts < from.Attempts:
		return fmt.Errorf("%w: attempts %d after %d", ErrNotMonotonic, to.Attempts, from.Attempts)
	}
	return nil
}

// PossibleDuplicate reports whether a `sent` of this job may be a second
// delivery: an attempt of this or an earlier generation may have delivered.
func (s JobState) PossibleDuplicate() bool { return s.Ambiguous || s.AmbiguousBefore }

// Errors of the job-state store (queue.States).
var (
	ErrNoState       = errors.New("no state for job")
	ErrStateExists   = errors.New("job state already exists")
	ErrStateConflict = errors.New("job state changed concurrently")
)
