package worker

import (
	"context"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/worker/ledger"
)

// The interfaces the worker consumes. Package queue implements them over
// JetStream (cmd/mailworker wires it); tests may use hand-written fakes. None
// of them names a NATS type, so the engine's rules can be exercised without a
// broker.

// Delivery is one delivery of a job message.
type Delivery interface {
	Data() []byte
	Subject() string
	// Header returns the value of a message header ("" when absent).
	Header(name string) string
	// Meta returns the message's stream sequence, how many times it has been
	// delivered (1 the first time) and when it was published; ok is false
	// when the delivery carries no such metadata.
	Meta() (seq, delivered uint64, published time.Time, ok bool)
	Ack() error
	Nak() error
	NakWithDelay(delay time.Duration) error
	InProgress() error
	Term() error
}

// Consumer hands out job deliveries; every pool of every replica may share
// one.
type Consumer interface {
	// Messages starts fetching, up to prefetch deliveries ahead.
	Messages(prefetch int) (Messages, error)
}

// Messages is a running fetch.
type Messages interface {
	// Next blocks for the next delivery. It returns ErrClosed after Drain
	// (or Stop) once the deliveries already fetched are handed out; any
	// other error is transient (a missed heartbeat, a reconnect).
	Next() (Delivery, error)
	// Drain stops fetching.
	Drain()
}

// ErrClosed is returned by Messages.Next when the fetch has ended.
var ErrClosed = errClosed{}

type errClosed struct{}

func (errClosed) Error() string { return "worker: messages closed" }

// States stores each job's state (queue.States).
type States interface {
	// Get returns the state of profile's job jobID and its revision;
	// contract.ErrNoState when none. A job is identified by its profile and
	// id: another profile's job of the same id is another job.
	Get(ctx context.Context, profile, jobID string) (contract.JobState, uint64, error)
	// There is no unconditional write: state is monotonic (DESIGN.md), and
	// every write compares and sets against the revision its decision read.
	// Create stores a state where none is; contract.ErrStateExists otherwise.
	Create(ctx context.Context, st contract.JobState) (uint64, error)
	// Update stores st if the revision is still lastRev;
	// contract.ErrStateConflict otherwise.
	Update(ctx context.Context, st contract.JobState, lastRev uint64) (uint64, error)
	// Latest is Get answered by the store's leader: never older than the
	// last acked write (Get may be served by a replica that lags). A
	// decision made on Get is safe only because every write compares and
	// sets; after a conflict the state is read again with Latest.
	Latest(ctx context.Context, profile, jobID string) (contract.JobState, uint64, error)
}

// DeadLetters records jobs that cannot be sent (queue.DLQ).
type DeadLetters interface {
	Put(ctx context.Context, dl contract.DeadLetter) error
}

// Events publishes status events (queue.Events).
type Events interface {
	// Publish stores ev and waits for the broker's ack.
	Publish(ctx context.Context, ev contract.Event) error
	// PublishFinal stores a terminal event once (key:
	// contract.FinalEventKey of the terminal state), however many
	// publishers and however late one of them lands; nil also when it was
	// already stored.
	PublishFinal(ctx context.Context, ev contract.Event, key string) error
	// PublishAsync stores ev without waiting; wait returns the broker's
	// answer within timeout.
	PublishAsync(ev contract.Event) (wait func(timeout time.Duration) error, err error)
}

// AttachmentSizes tells the size of an objectRef attachment of profile
// (queue.Attachments: objects belong to a profile); contract.ErrNoAttachment
// when it is not there.
type AttachmentSizes interface {
	Size(ctx context.Context, profile, ref string) (int, error)
}

// Scheduler puts a job back on the queue at a later time without holding a
// delivery (queue.Schedules: a JetStream message schedule).
type Scheduler interface {
	// Schedule stores data, the job's original bytes, for a new delivery of
	// jobID on profile's subject at at; replay is the Mail-Replay header's
	// value ("" for none), origin the stream sequence of the producer's
	// publish (contract.HeaderOriginSeq). After nil the delivery that asked
	// can be acked.
	Schedule(ctx context.Context, profile, jobID string, data []byte, replay string, origin uint64, at time.Time) error
	// Reschedule moves jobID's waiting schedule to at; nil also when there is
	// none any more (it fired).
	Reschedule(ctx context.Context, profile, jobID string, at time.Time) error
}

// Ledger shares each sending mailbox's recipient budget between all replicas
// (queue.Pacing).
type Ledger interface {
	// Lease takes up to l.Want recipients of l.Mailbox's budget, counted in
	// the hour l.Hour, after giving back l.GiveBack. It grants at least
	// l.Need or nothing; when nothing, freeAt is when l.Need will fit. An
	// error means the ledger could not be reached: nothing may be sent
	// blind.
	Lease(ctx context.Context, l ledger.Lease) (granted int, freeAt time.Time, err error)
}

// Membership counts the live replicas that share the mailbox limits
// (queue.Workers).
type Membership interface {
	// Beat records that replica id is alive for a while (a TTL).
	Beat(ctx context.Context, id string) error
	// Live returns how many replicas are alive.
	Live(ctx context.Context) (int, error)
	// Leave removes id at once.
	Leave(ctx context.Context, id string) error
}

// Broker is everything the worker needs of the queue.
type Broker struct {
	Consumer    Consumer
	States      States
	DeadLetters DeadLetters
	Events      Events
	Attachments AttachmentSizes // nil: objectRef sizes count as the inline maximum
	// Scheduler holds deferred and retried jobs outside the consumer; nil:
	// they are naked with a delay, holding their ack-pending slot meanwhile.
	Scheduler  Scheduler
	Ledger     Ledger
	Membership Membership
}

func (b Broker) missing() string {
	switch {
	case b.Consumer == nil:
		return "Consumer"
	case b.States == nil:
		return "States"
	case b.DeadLetters == nil:
		return "DeadLetters"
	case b.Events == nil:
		return "Events"
	case b.Ledger == nil:
		return "Ledger"
	case b.Membership == nil:
		return "Membership"
	}
	return ""
}
