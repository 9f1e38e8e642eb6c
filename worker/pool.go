package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Options are a Pool's collaborators other than its configuration.
type Options struct {
	Logger  zerolog.Logger
	Metrics *Metrics // nil: unregistered metrics
	Clock   Clock    // nil: the system clock
	// Rand returns a number in [0, n) for the retry jitter; nil: math/rand/v2.
	Rand func(n int64) int64
	// MembershipEvery is how often the pool beats and counts replicas
	// (0: 5s, a third of the MAIL_WORKERS TTL).
	MembershipEvery time.Duration
}

// Pool consumes jobs from the shared durable consumer and sends them. Any
// number of pools, in any number of processes, may share one consumer.
type Pool struct {
	cfg      Config
	broker   Broker
	sender   Sender
	log      zerolog.Logger
	m        *Metrics
	clock    Clock
	retry    RetryPolicy
	profiles map[string]*profileState
	pacer    *pacer
	plans    plans // pace deferrals, planned again when the share grows
	// membershipEvery is the heartbeat and count interval.
	membershipEvery time.Duration
	sends           chan struct{}     // global Graph concurrency
	events          chan pendingEvent // status events awaiting their ack; made by Run
	running         atomic.Bool
	// writer and writes name each job-state write (contract.JobState.Write).
	writer string
	writes atomic.Uint64
}

// New returns a Pool. It returns an error naming the field when cfg is
// invalid, or the collaborator that is missing.
func New(cfg Config, broker Broker, sender Sender, opts Options) (*Pool, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if m := broker.missing(); m != "" {
		return nil, fmt.Errorf("worker: broker.%s is required", m)
	}
	if sender == nil {
		return nil, errors.New("worker: a sender is required")
	}
	p := &Pool{cfg: cfg, broker: broker, sender: sender, log: opts.Logger, m: opts.Metrics, clock: opts.Clock,
		retry:           RetryPolicy{Initial: cfg.BackoffInitial, Max: cfg.BackoffMax, Rand: opts.Rand},
		membershipEvery: opts.MembershipEvery,
		profiles:        make(map[string]*profileState, len(cfg.Profiles)), sends: make(chan struct{}, cfg.Concurrency)}
	if p.membershipEvery <= 0 {
		p.membershipEvery = membershipEvery
	}
	var w [6]byte
	_, _ = rand.Read(w[:])
	p.writer = hex.EncodeToString(w[:])
	names := make([]string, 0, len(cfg.Profiles))
	for name, pr := range cfg.Profiles {
		pr.Name = name
		p.profiles[name] = newProfileState(pr)
		names = append(names, name)
	}
	if p.m == nil {
		p.m = NewMetrics(nil, names)
	}
	for name, ps := range p.profiles {
		ps.hot = newHotMetrics(p.m, name)
	}
	if p.clock == nil {
		p.clock = systemClock{}
	}
	p.pacer = newPacer(p.clock, pacerConfig{PerBox: cfg.PerMailboxConcurrency, PerMinute: limit(cfg.PerMailboxPerMinute),
		PerDay: limit(cfg.PerMailboxRecipientsPerDay), Upload: int64(limit(int(cfg.PerMailboxUploadBytes))), MaxHold: cfg.MaxHold})
	p.m.ReplicasLive.Set(1)
	return p, nil
}

// Ready reports whether the pool is consuming.
func (p *Pool) Ready() bool { return p.running.Load() }

// Run consumes until ctx ends, then shuts down in two phases: it stops
// fetching and puts back jobs that have not started sending, lets sends in
// flight finish for up to DrainTimeout, then cancels what is left (those jobs
// are put back too; a cancelled send is recorded as ambiguous). While it runs
// the pool counts as a live replica (Membership) and shares each mailbox's
// concurrency and pace with the others; on the way out it leaves and gives
// unspent recipients back to the ledger. Run returns nil after a clean
// shutdown, or an error when consuming cannot start.
func (p *Pool) Run(ctx context.Context) error {
	prefetch := min(max(p.cfg.MaxInFlight/4, 1), 256)
	it, err := p.broker.Consumer.Messages(prefetch)
	if err != nil {
		return fmt.Errorf("worker: consume the job streams: %w", err)
	}
	// This replica counts in the live replicas that share the mailbox limits
	// from before it takes a job until it has finished the last one.
	id := p.startMembership()
	stopMembers := make(chan struct{})
	membersDone := make(chan struct{})
	go func() { p.runMembership(stopMembers, id); close(membersDone) }()
	defer func() { close(stopMembers); <-membersDone }()

	// stop ends fetching and waiting; sendCtx ends sends after the grace period.
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			it.Drain()
		case <-stopped:
		}
	}()
	p.running.Store(true)
	p.log.Info().Int("concurrency", p.cfg.Concurrency).Int("maxInFlight", p.cfg.MaxInFlight).Msg("worker consuming")

	p.events = make(chan pendingEvent, p.cfg.MaxInFlight)
	eventsDone := make(chan struct{})
	go func() { p.watchEvents(); close(eventsDone) }()
	defer func() { close(p.events); <-eventsDone }()

	var wg sync.WaitGroup
	slots := make(chan struct{}, p.cfg.MaxInFlight)
	// Handlers are goroutines that stay for the next job rather than one
	// goroutine per job: a fresh goroutine grows its stack through the HTTP/2,
	// TLS and JSON calls of every job (8% of CPU in the max profile). A new
	// one starts only when none is idle, so there are about MaxInFlight.
	work := make(chan Delivery)
	handler := func(msg Delivery) {
		for ok := true; ok; msg, ok = <-work {
			p.handle(ctx, sendCtx, msg)
			p.m.InflightJobs.Dec()
			<-slots
			wg.Done()
		}
	}
	for {
		took := false
		select {
		case slots <- struct{}{}:
			took = true
		case <-ctx.Done():
		}
		msg, err := it.Next()
		if err != nil || ctx.Err() != nil {
			if took {
				<-slots
			}
			if errors.Is(err, ErrClosed) {
				break
			}
			if err != nil {
				// Missed heartbeats and reconnects are reported here; the
				// iterator carries on by itself.
				p.log.Warn().Err(err).Msg("consumer")
				continue
			}
			// Fetched but not started: back to the queue at once, no attempt spent.
			p.putBackUnstarted(msg)
			continue
		}
		wg.Add(1)
		p.m.InflightJobs.Inc()
		select {
		case work <- msg: // an idle handler takes it
		default:
			go handler(msg)
		}
	}
	close(work)
	close(stopped)
	p.running.Store(false)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timer := time.NewTimer(p.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
		p.log.Info().Msg("worker drained")
	case <-timer.C:
		p.log.Warn().Dur("drainTimeout", p.cfg.DrainTimeout).Msg("drain timeout: cancelling sends still in flight")
		cancelSends()
		<-done
	}
	p.giveBack()
	return nil
}
