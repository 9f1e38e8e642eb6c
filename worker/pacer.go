package worker

import (
	"context"
	"sync"
	"time"
)

// pacer keeps each sending mailbox inside Outlook's and Exchange's limits:
// at most perBox requests in flight, at most perMinute sends in any rolling
// minute, at most perDay recipients in any rolling 24 hours (past it Exchange
// accepts the request and bounces the mail later), and nothing at all while a
// Retry-After the mailbox was given runs.
//
// A job that would wait longer than maxHold is not held: the pacer hands back
// a delay, and the worker puts the job back on the queue so that it holds no
// slot and slows no other mailbox. Deferred jobs are spread one pace interval
// apart so that a backlog returns at the rate the mailbox can take, not all at
// once.
type pacer struct {
	clock     Clock
	perBox    int
	perMinute int
	perDay    int           // recipients per rolling 24 h; 0 = unlimited
	interval  time.Duration // 1 min / perMinute; 0 when unpaced
	maxHold   time.Duration
	maxWait   int // jobs allowed to queue for one mailbox's slots

	mu    sync.Mutex
	boxes map[string]*mailbox
}

type mailbox struct {
	slots       chan struct{}
	waiting     int
	pausedUntil time.Time
	// starts is a ring of the last perMinute send starts (reserved times).
	starts []time.Time
	next   int
	// deferredUntil is the latest time handed to a deferred job.
	deferredUntil time.Time
	// rcpt are the recipient counts sent in the last 24 hours, oldest first;
	// rcptSum is their total.
	rcpt    []rcptCount
	rcptSum int
}

type rcptCount struct {
	at time.Time
	n  int
}

// Deferral causes: the label cause of mailworker_throttle_deferrals_total.
const (
	CauseRetryAfter  = "retry_after" // Graph said to wait (429, or 503 with Retry-After)
	CausePace        = "pace"        // the per-minute pace
	CauseRecipients  = "recipients"  // the 24-hour recipient budget
	CauseConcurrency = "concurrency" // too many jobs already waiting for the mailbox's slots
)

// paceWindow is the per-minute pace's window: a minute plus a margin, because
// Exchange counts a minute from when requests arrive and the pacer from when
// it starts them (a request started first can arrive after later ones on a
// fresh connection). Without it the 31st send of a busy mailbox drew a 429
// in about 2 % of requests; the margin costs under 1 % of the pace.
const paceWindow = time.Minute + 500*time.Millisecond

// recipientWindow is Exchange's rolling window for recipients per mailbox.
const recipientWindow = 24 * time.Hour

// recipientsFree returns when n more recipients fit in b's rolling 24 hours
// (now, or when enough old sends have aged out), after dropping aged entries.
func (b *mailbox) recipientsFree(now time.Time, n, perDay int) time.Time {
	drop := 0
	for drop < len(b.rcpt) && !b.rcpt[drop].at.Add(recipientWindow).After(now) {
		b.rcptSum -= b.rcpt[drop].n
		drop++
	}
	b.rcpt = b.rcpt[drop:]
	if b.rcptSum+n <= perDay || len(b.rcpt) == 0 {
		return now
	}
	sum := b.rcptSum
	for _, e := range b.rcpt {
		sum -= e.n
		if sum+n <= perDay {
			return e.at.Add(recipientWindow)
		}
	}
	return now // unreachable: an empty window always fits
}

func newPacer(clock Clock, perBox, perMinute, perDay int, maxHold time.Duration) *pacer {
	p := &pacer{clock: clock, perBox: perBox, perMinute: perMinute, perDay: perDay, maxHold: maxHold,
		maxWait: 8 * perBox, boxes: make(map[string]*mailbox)}
	if perMinute > 0 {
		p.interval = time.Minute / time.Duration(perMinute)
	}
	return p
}

func (p *pacer) box(addr string) *mailbox {
	b := p.boxes[addr]
	if b == nil {
		b = &mailbox{slots: make(chan struct{}, p.perBox)}
		if p.perMinute > 0 {
			b.starts = make([]time.Time, p.perMinute)
		}
		p.boxes[addr] = b
	}
	return b
}

// admit decides when a send of recipients recipients from addr may start. It
// returns (at, 0) with at the time to start (now, or within maxHold); the
// start and the recipients are reserved in the rolling windows. Or it returns
// a positive defer: the job should be put back for that long, and cause says
// which limit is the binding one.
func (p *pacer) admit(addr string, recipients int) (at time.Time, deferFor time.Duration, cause string) {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.box(addr)
	earliest := now
	paused := false
	if b.pausedUntil.After(earliest) {
		earliest, paused, cause = b.pausedUntil, true, CauseRetryAfter
	}
	if b.starts != nil {
		// The oldest start in the ring bounds the next one: a minute after it.
		if free := b.starts[b.next].Add(paceWindow); free.After(earliest) {
			earliest, cause = free, CausePace
		}
	}
	if p.perDay > 0 {
		if free := b.recipientsFree(now, recipients, p.perDay); free.After(earliest) {
			earliest, cause = free, CauseRecipients
		}
	}
	if b.waiting >= p.maxWait && cause == "" {
		cause = CauseConcurrency
	}
	if !paused && earliest.Sub(now) <= p.maxHold && b.waiting < p.maxWait {
		if b.starts != nil {
			b.starts[b.next] = earliest
			b.next = (b.next + 1) % len(b.starts)
		}
		if p.perDay > 0 {
			b.rcpt = append(b.rcpt, rcptCount{at: earliest, n: recipients})
			b.rcptSum += recipients
		}
		b.waiting++
		return earliest, 0, ""
	}
	// Defer: spread deferred jobs one interval apart after the earliest time.
	if b.deferredUntil.After(earliest) {
		earliest = b.deferredUntil
	}
	spacing := p.interval
	if spacing == 0 {
		spacing = 20 * time.Millisecond
	}
	b.deferredUntil = earliest.Add(spacing)
	d := earliest.Sub(now)
	if d < spacing {
		d = spacing
	}
	return time.Time{}, d, cause
}

// pausedFor returns how long a job of addr that holds its slots must still be
// put back because a Retry-After arrived while it waited (0: send now). The
// returned delays are spread one interval apart, as admit's are.
func (p *pacer) pausedFor(addr string) time.Duration {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.boxes[addr]
	if b == nil || !b.pausedUntil.After(now) {
		return 0
	}
	earliest := b.pausedUntil
	if b.deferredUntil.After(earliest) {
		earliest = b.deferredUntil
	}
	spacing := p.interval
	if spacing == 0 {
		spacing = 20 * time.Millisecond
	}
	b.deferredUntil = earliest.Add(spacing)
	return earliest.Sub(now)
}

// acquire waits for a send slot of addr after admit; release must follow.
// It returns ctx's error when ctx ends first (the admission is given back).
func (p *pacer) acquire(ctx context.Context, addr string, at time.Time) error {
	p.mu.Lock()
	b := p.box(addr)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		b.waiting--
		p.mu.Unlock()
	}()
	if d := at.Sub(p.clock.Now()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	select {
	case b.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *pacer) release(addr string) {
	p.mu.Lock()
	b := p.boxes[addr]
	p.mu.Unlock()
	<-b.slots
}

// pause stops sends from addr until now+d (a Retry-After). A shorter pause
// never cuts a longer one.
func (p *pacer) pause(addr string, d time.Duration) time.Time {
	until := p.clock.Now().Add(d)
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.box(addr)
	if until.After(b.pausedUntil) {
		b.pausedUntil = until
	}
	return b.pausedUntil
}
