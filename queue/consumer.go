package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// Jobs is what the worker consumes, seen without NATS types (cmd/mailworker
// adapts it to worker.Consumer): per profile, the durable consumer
// "mailworker" of its ingress stream MAIL_JOBS_<profile> and the durable
// consumer "mailworker_<profile>" of its due deferrals on MAIL_DEFER. Each
// has its own MaxAckPending, so one profile's backlog or deferral flood
// cannot hold another's capacity.
type Jobs struct {
	sources   []source
	schedules *Schedules // loads bodies deferred by reference; nil: none
}

type source struct {
	name string // stream/consumer
	c    jetstream.Consumer
}

// Jobs binds to the consumers of profiles; a missing one is an error that
// says to run `mailworker provision`.
func (q *Queue) Jobs(ctx context.Context, profiles []string) (*Jobs, error) {
	if len(profiles) == 0 {
		return nil, errors.New("queue: no profile to consume")
	}
	j := &Jobs{schedules: q.Schedules}
	for _, p := range profiles {
		for _, sc := range [][2]string{{contract.JobsStream(p), contract.ConsumerName}, {contract.StreamDefer, contract.DueConsumer(p)}} {
			c, err := q.js.Consumer(ctx, sc[0], sc[1])
			if err != nil {
				return nil, fmt.Errorf("queue: consumer %s/%s: %w (run `mailworker provision` with profile %s configured)", sc[0], sc[1], err, p)
			}
			j.sources = append(j.sources, source{name: sc[0] + "/" + sc[1], c: c})
		}
	}
	return j, nil
}

// NewJobs wraps consumers (tests; Queue.Jobs binds the worker's).
func NewJobs(cs ...jetstream.Consumer) *Jobs {
	j := &Jobs{}
	for _, c := range cs {
		info := c.CachedInfo()
		j.sources = append(j.sources, source{name: info.Stream + "/" + info.Name, c: c})
	}
	return j
}

// fetchWait is how long one pull request waits on an idle consumer: an idle
// profile costs one request per consumer per fetchWait.
const fetchWait = 10 * time.Second

// Messages starts fetching from every consumer. At most prefetch messages
// plus one per consumer are fetched and not yet handed out, whatever the
// number of profiles (each is a job in memory): a consumer takes a token per
// message it asks for, holds one while it waits on an idle stream, and Next
// gives a token back per message it hands out. One loop per consumer pulls
// batches (Fetch of as many messages as it holds tokens for, up to prefetch:
// smaller batches halved the max throughput in loadtest,
// docs/benchmarks.md), which the server serves cheaper than a standing
// Messages() subscription per consumer once there are many; Next hands out
// the consumers' messages in turn, so a profile with a backlog cannot push
// another's job behind it.
func (j *Jobs) Messages(prefetch int) (*Messages, error) {
	if len(j.sources) == 0 {
		return nil, errors.New("queue: no consumer to fetch from")
	}
	per := max(1, prefetch)
	ctx, cancel := context.WithCancel(context.Background())
	m := &Messages{cancel: cancel, ready: make(chan struct{}, 1), errs: make(chan error, 16), done: make(chan struct{}),
		chans: make([]chan *Delivery, len(j.sources)), tokens: make(chan struct{}, per+len(j.sources))}
	for range cap(m.tokens) {
		m.tokens <- struct{}{}
	}
	var wg sync.WaitGroup
	for i, src := range j.sources {
		m.chans[i] = make(chan *Delivery, per)
		wg.Add(1)
		go func() { defer wg.Done(); j.pull(ctx, m, src, m.chans[i], per) }()
	}
	go func() { wg.Wait(); close(m.done) }()
	return m, nil
}

// take waits for one token, then takes up to want-1 more while more than
// one per consumer are left (so that every other consumer can still ask for
// its next message at once); it returns how many it holds (0 when ctx
// ended).
func (m *Messages) take(ctx context.Context, want int) int {
	select {
	case <-m.tokens:
	case <-ctx.Done():
		return 0
	}
	n := 1
	for n < want && len(m.tokens) > len(m.chans) {
		select {
		case <-m.tokens:
			n++
		default:
			return n
		}
	}
	return n
}

// gatherWait bounds how long a consumer that still has messages waiting to
// be handed out waits for more tokens before it fetches (gather).
const gatherWait = 20 * time.Millisecond

// gather lets a consumer that holds n tokens, and still has at least a
// quarter of want fetched and waiting in out, wait up to gatherWait for
// tokens until it holds that quarter. A busy worker gives tokens back one
// per job it takes; fetching each as it comes settles into one pull request
// per job (and in nats.go a subscription, a heartbeat timer and a goroutine
// per request), which doubled the CPU per job of both the worker and
// nats-server in loadtest max (docs/benchmarks.md, "Worker CPU per job").
// A consumer whose out runs lower fetches at once, so no job waits for the
// gathering. It returns how many tokens it holds.
func (m *Messages) gather(ctx context.Context, n, want int, out chan<- *Delivery) int {
	target := max(1, want/4)
	if n >= target || len(out) < target {
		return n
	}
	t := time.NewTimer(gatherWait)
	defer t.Stop()
	for n < target {
		select {
		case <-m.tokens:
			n++
		case <-t.C:
			return n
		case <-ctx.Done():
			return n
		}
	}
	return n
}

// give returns n tokens.
func (m *Messages) give(n int) {
	for range n {
		m.tokens <- struct{}{}
	}
}

// pull fetches src's messages into out until ctx ends. It asks for one
// message until a fetch comes back full: a fetch holds its tokens until it
// is served in full or expires (fetchWait), so a consumer whose stream is
// empty or ran dry (an idle profile, a deferral consumer with nothing due)
// holds one token while it waits, not up to prefetch of them, which left a
// busy profile one token and one pull request per job.
func (j *Jobs) pull(ctx context.Context, m *Messages, src source, out chan<- *Delivery, per int) {
	want := 1
	for ctx.Err() == nil {
		n := m.take(ctx, want)
		if n == 0 {
			return
		}
		if n = m.gather(ctx, n, want, out); ctx.Err() != nil {
			m.give(n)
			return
		}
		fctx, cancel := context.WithTimeout(ctx, fetchWait)
		batch, err := src.c.Fetch(n, jetstream.FetchContext(fctx), jetstream.FetchHeartbeat(PullHeartbeat))
		if err != nil {
			cancel()
			m.give(n)
			m.report(fmt.Errorf("fetch %s: %w", src.name, err))
			pause(ctx, time.Second)
			continue
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			d := j.delivery(ctx, msg)
			if d == nil {
				m.give(1)
				continue
			}
			select {
			case out <- d: // its token comes back when Next hands it out
				select {
				case m.ready <- struct{}{}:
				default:
				}
			case <-ctx.Done():
				m.give(1)
				_ = msg.Nak() // fetched, never handed out: back at once
			}
		}
		cancel()
		m.give(n - got)
		if want = 1; got == n {
			want = per
		}
		if err := batch.Error(); err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) &&
			!errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
			m.report(fmt.Errorf("fetch %s: %w", src.name, err))
			pause(ctx, time.Second)
		}
	}
}

// delivery wraps msg, loading a body deferred by reference; nil when it
// could not be loaded for now (the message comes back later).
func (j *Jobs) delivery(ctx context.Context, msg jetstream.Msg) *Delivery {
	d := &Delivery{msg: msg, data: msg.Data(), due: strings.HasPrefix(msg.Subject(), contract.DueSubjectPrefix)}
	ref := d.Header(contract.HeaderDeferredRef)
	if ref == "" || j.schedules == nil {
		return d
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	b, err := j.schedules.loadBody(lctx, ref)
	cancel()
	switch {
	case errors.Is(err, errDeferredGone):
		// Handed out without its bytes: the worker records an invalid job
		// (dead letter), nothing vanishes silently.
		d.data = nil
	case err != nil:
		_ = msg.NakWithDelay(5 * time.Second)
		return nil
	default:
		d.data = b
	}
	d.done = func() { j.schedules.deleteBody(ref) }
	return d
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// ErrMessagesClosed is returned by Messages.Next once the fetch has ended.
var ErrMessagesClosed = jetstream.ErrMsgIteratorClosed

// Messages is a running fetch.
type Messages struct {
	cancel context.CancelFunc
	tokens chan struct{} // fetched-and-not-handed-out budget (Messages)
	chans  []chan *Delivery
	next   int
	ready  chan struct{}
	errs   chan error
	done   chan struct{}
}

func (m *Messages) report(err error) {
	select {
	case m.errs <- err:
	default:
	}
}

// Next blocks for the next message, taking the consumers in turn. It returns
// ErrMessagesClosed after Drain once the messages already fetched are handed
// out; other errors are transient (a missing consumer, a reconnect) and the
// fetch carries on. Next is called from one goroutine.
func (m *Messages) Next() (*Delivery, error) {
	for {
		n := len(m.chans)
		for i := range n {
			k := (m.next + i) % n
			select {
			case d := <-m.chans[k]:
				m.next = k + 1
				m.give(1)
				return d, nil
			default:
			}
		}
		select {
		case <-m.ready:
		case err := <-m.errs:
			return nil, err
		case <-m.done:
			for _, ch := range m.chans {
				select {
				case d := <-ch:
					m.give(1)
					return d, nil
				default:
				}
			}
			return nil, ErrMessagesClosed
		}
	}
}

// Drain stops fetching.
func (m *Messages) Drain() { m.cancel() }

// Delivery is one delivery of a job message.
type Delivery struct {
	msg  jetstream.Msg
	data []byte
	// due: the message came from MAIL_DEFER (mail.due.<profile>), which
	// only the worker writes; otherwise from a producer's stream, where
	// the worker's own headers (workerOnlyHeaders) are not honoured.
	due  bool
	done func() // after Ack or Term: delete a body deferred by reference
}

// Data is the job's bytes (of a deferral by reference: loaded back).
func (d *Delivery) Data() []byte { return d.data }

// Subject is the message subject.
func (d *Delivery) Subject() string { return d.msg.Subject() }

// workerOnlyHeaders are written only by the worker on its schedules in
// MAIL_DEFER. A producer may send them on its own publish, and no NATS
// permission can stop a header: on a delivery from a producer's stream they
// read as absent (a producer's Mail-Deferred-Ref would have the worker hand
// it, and then delete, another profile's deferred job).
var workerOnlyHeaders = map[string]bool{
	contract.HeaderDeferredRef: true, contract.HeaderOriginSeq: true, headerDeferredSize: true,
}

// Header returns a header's value, "" when absent (and for the worker's own
// headers on a delivery from a producer's stream).
func (d *Delivery) Header(name string) string {
	if !d.due && workerOnlyHeaders[name] {
		return ""
	}
	return d.msg.Headers().Get(name)
}

// Meta returns the stream sequence, the delivery count and the publish time.
func (d *Delivery) Meta() (seq, delivered uint64, published time.Time, ok bool) {
	meta, err := d.msg.Metadata()
	if err != nil {
		return 0, 0, time.Time{}, false
	}
	return meta.Sequence.Stream, meta.NumDelivered, meta.Timestamp, true
}

// Ack acknowledges the message: it is done.
func (d *Delivery) Ack() error { return d.finally(d.msg.Ack()) }

// Nak gives the message back for redelivery at once.
func (d *Delivery) Nak() error { return d.msg.Nak() }

// NakWithDelay gives the message back for redelivery after delay.
func (d *Delivery) NakWithDelay(delay time.Duration) error { return d.msg.NakWithDelay(delay) }

// InProgress resets the ack wait.
func (d *Delivery) InProgress() error { return d.msg.InProgress() }

// Term ends the message: it is never redelivered.
func (d *Delivery) Term() error { return d.finally(d.msg.Term()) }

func (d *Delivery) finally(err error) error {
	if err == nil && d.done != nil {
		d.done()
	}
	return err
}

// IsClosed reports whether err says the fetch has ended.
func IsClosed(err error) bool { return errors.Is(err, ErrMessagesClosed) }
