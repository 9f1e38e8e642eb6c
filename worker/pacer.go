package worker

import (
	"context"
	"sync"
	"time"

	"github.com/mailworker/mailworker/worker/ledger"
)

// pacer keeps each sending mailbox inside Outlook's and Exchange's limits:
// at most perBox requests in flight, at most perMinute sends in any rolling
// minute, at most limUpload bytes of requests in any rolling 5 minutes (150
// MB: Outlook answers 429 past it), at most perDay recipients in any rolling
// 24 hours (past it Exchange accepts the request and bounces the mail later),
// and nothing at all while a Retry-After the mailbox was given runs.
//
// The limits are the mailbox's, shared by every replica. The concurrency, the
// per-minute pace and the upload volume are split: this replica takes its share,
// max(1, floor(limit / live replicas)), and setLive changes it at run time
// without forgetting the rolling windows (a smaller share admits less until
// the old starts age out). The recipients are not split but leased from a
// ledger all replicas share (Ledger): the pacer spends a local allowance and
// says when it needs more (admit's short), and the Pool leases it.
//
// A job that would wait longer than maxHold is not held: the pacer hands back
// a delay, and the worker puts the job back on the queue so that it holds no
// slot and slows no other mailbox. Deferred jobs are spread one pace interval
// apart so that a backlog returns at the rate the mailbox can take, not all at
// once.
type pacer struct {
	clock     Clock
	limBox    int   // the mailbox's concurrency limit, all replicas together
	limMinute int   // the mailbox's sends per minute, all replicas together; 0 = unpaced
	perDay    int   // recipients per rolling 24 h; 0 = unlimited
	limUpload int64 // request bytes per uploadWindow, all replicas together; 0 = unchecked
	maxHold   time.Duration

	mu        sync.Mutex
	live      int           // live replicas the limits are shared by (≥ 1)
	perBox    int           // this replica's share of limBox
	perMinute int           // this replica's share of limMinute; 0 when unpaced
	interval  time.Duration // 1 min / perMinute; 0 when unpaced
	perUpload int64         // this replica's share of limUpload; 0 when unchecked
	maxWait   int           // jobs allowed to queue for one mailbox's slots
	// epoch counts share changes: a start planned in an older epoch is
	// planned again.
	epoch int
	boxes map[string]*mailbox
}

type mailbox struct {
	inUse int           // slots taken
	wake  chan struct{} // closed when a slot may have come free; nil when nobody waits
	// waiting counts admitted jobs that have not yet taken a slot.
	waiting     int
	pausedUntil time.Time
	// starts is a ring of the last limMinute send starts (reserved times),
	// next the index of the oldest.
	starts []time.Time
	next   int
	// uploads are the request bodies admitted in the last uploadWindow
	// (reserved start times), uploaded their sum.
	uploads  []upload
	uploaded int64
	// deferredUntil is the latest time handed to a deferred job.
	deferredUntil time.Time
	// rcpt is the recipient allowance leased from the ledger.
	rcpt allowance
	// lease serialises this replica's ledger leases for the mailbox.
	lease sync.Mutex
}

// upload is one admitted request body: its start and size.
type upload struct {
	at time.Time
	n  int64
}

// allowance is recipients leased from the ledger and not yet spent. They are
// counted in the ledger's hour starting at hour and may be spent until until,
// a margin before that hour ends. Once the ledger was refused, blockedUntil
// says when blockedNeed more recipients will fit: requests for at least that
// many wait without asking the ledger again.
type allowance struct {
	n            int
	hour         time.Time
	until        time.Time
	blockedUntil time.Time
	blockedNeed  int
}

// Cause says why a job was deferred; the closed set is the label cause of
// mailworker_throttle_deferrals_total (the mailbox causes) and the cause of a
// `deferred` status event.
type Cause string

// Deferral causes.
const (
	CauseRetryAfter       Cause = "retry_after" // Graph said to wait (429, or 503 with Retry-After)
	CausePace             Cause = "pace"        // the per-minute pace
	CauseRecipients       Cause = "recipients"  // the 24-hour recipient budget
	CauseUpload           Cause = "upload"      // the 5-minute upload volume
	CauseConcurrency      Cause = "concurrency" // too many jobs already waiting for the mailbox's slots
	CauseUnavailable      Cause = "unavailable" // a service the send needs (Entra) could not be reached
	CauseNotBefore        Cause = "not_before"  // the job's notBefore
	CauseBusy             Cause = "busy"        // another replica is sending the job
	CauseAwaitingSentCopy Cause = "sent_items"  // draft mode: the sent draft's Sent Items copy is awaited
)

// The wire values are the deferred event's `cause` and a metric label: they
// stay. "sent_items" there means "waiting to find the sent draft"; the same
// word as a look-up's result (contract.LookupSent, the `lookup` log field
// and mailworker_draft_lookups_total label) means "found sent". The Go
// names keep the two apart: CauseAwaitingSentCopy, LookupSent.

// ThrottleCauses are the causes that count as throttling (a mailbox or
// service limit), in a stable order: the metric's label values.
var ThrottleCauses = []Cause{CauseRetryAfter, CausePace, CauseUpload, CauseRecipients, CauseConcurrency, CauseUnavailable}

// throttle reports whether c is one of ThrottleCauses.
func (c Cause) throttle() bool {
	switch c {
	case CauseNotBefore, CauseBusy, CauseAwaitingSentCopy, "":
		return false
	}
	return true
}

// paceWindow is the per-minute pace's window: a minute plus a margin, because
// Exchange counts a minute from when requests arrive and the pacer from when
// it starts them (a request started first can arrive after later ones on a
// fresh connection). Without it the 31st send of a busy mailbox drew a 429
// in about 2 % of requests; the margin costs under 1 % of the pace.
const paceWindow = time.Minute + 500*time.Millisecond

// uploadWindow is the upload volume's window: Outlook's 5 minutes plus the
// margin the pace has, for the same reason (start vs arrival).
const uploadWindow = 5*time.Minute + 500*time.Millisecond

// leaseChunk is how many recipients a replica leases at once when a job
// needs fewer: about one ledger update per leaseChunk recipients per mailbox.
const leaseChunk = 100

// spendMargin ends an allowance this long before the hour it is counted in
// ends. The ledger counts that hour for 24 h after the hour's end, so a
// recipient admitted before it stays counted for 24 h after Exchange saw it,
// as long as admission → arrival at Exchange plus the clock skew between
// replicas stays below the margin. Within the margin, leases are counted in
// the next hour.
const spendMargin = 5 * time.Minute

// pacerConfig is a mailbox's limits, all replicas together; 0 leaves a
// limit unchecked (PerBox must be positive).
type pacerConfig struct {
	PerBox    int   // requests in flight
	PerMinute int   // sends per rolling minute
	PerDay    int   // recipients per rolling 24 hours
	Upload    int64 // request bytes per rolling 5 minutes
	// MaxHold is the longest a job is held in memory for its start.
	MaxHold time.Duration
}

func newPacer(clock Clock, cfg pacerConfig) *pacer {
	p := &pacer{clock: clock, limBox: cfg.PerBox, limMinute: cfg.PerMinute, perDay: cfg.PerDay,
		limUpload: cfg.Upload, maxHold: cfg.MaxHold, boxes: make(map[string]*mailbox)}
	p.setLiveLocked(1)
	return p
}

// share is this replica's part of a mailbox's limits.
type share struct {
	Live, PerBox, PerMinute int
}

// setLive shares the limits among n live replicas (n < 1 counts as 1) and
// reports the new share and whether it changed. Windows and slots already
// taken are kept: a smaller share admits less until they age out or are
// released. When the share changes, what was planned under the old one is
// planned again: jobs held for their start wake and ask again, and the
// spreading of deferred jobs starts afresh at the new interval.
func (p *pacer) setLive(n int) (share, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if max(n, 1) == p.live {
		return p.shareLocked(), false
	}
	p.setLiveLocked(n)
	p.epoch++
	now := p.clock.Now()
	for _, b := range p.boxes {
		if b.deferredUntil.After(now) {
			b.deferredUntil = now
		}
		b.wakeAll() // a larger share may let waiters in, and held starts are re-planned
	}
	return p.shareLocked(), true
}

// currentShare returns this replica's share of the limits.
func (p *pacer) currentShare() share {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.shareLocked()
}

func (p *pacer) shareLocked() share {
	return share{Live: p.live, PerBox: p.perBox, PerMinute: p.perMinute}
}

func (p *pacer) setLiveLocked(n int) {
	p.live = max(n, 1)
	p.perBox = max(1, p.limBox/p.live)
	p.perMinute, p.interval = 0, 0
	if p.limMinute > 0 {
		p.perMinute = max(1, p.limMinute/p.live)
		p.interval = time.Minute / time.Duration(p.perMinute)
	}
	p.perUpload = p.limUpload / int64(p.live)
	p.maxWait = 8 * p.perBox
}

func (p *pacer) box(addr string) *mailbox {
	b := p.boxes[addr]
	if b == nil {
		b = &mailbox{}
		if p.limMinute > 0 {
			b.starts = make([]time.Time, p.limMinute)
		}
		p.boxes[addr] = b
	}
	return b
}

// Admission is the pacer's answer for one job.
type Admission struct {
	// At is when the send may start (now, or within maxHold): the start is
	// reserved in the rolling minute and the upload window, and the
	// recipients are taken from the allowance.
	At time.Time
	// Defer > 0: put the job back for that long; nothing is reserved.
	Defer time.Duration
	// Cause is the binding limit of a deferral.
	Cause Cause
	// Short > 0: only the recipient allowance stands in the way: lease that
	// many more (grant) and ask again; nothing is reserved.
	Short int
	// Hour is the ledger hour of the allowance the recipients were taken
	// from (refund gives them back there).
	Hour time.Time
}

// admit decides when a send of recipients recipients and a request of bytes
// bytes from addr may start.
func (p *pacer) admit(addr string, recipients int, bytes int64) Admission {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.box(addr)
	earliest := now
	hold := true // false: defer even a short wait
	var cause Cause
	short := 0
	if b.pausedUntil.After(earliest) {
		earliest, hold, cause = b.pausedUntil, false, CauseRetryAfter
	}
	if b.starts != nil {
		// The perMinute-th latest start bounds the next one: a window after it.
		k := (b.next - p.perMinute + len(b.starts)) % len(b.starts)
		if free := b.starts[k].Add(paceWindow); free.After(earliest) {
			earliest, cause = free, CausePace
		}
	}
	if p.perUpload > 0 && bytes > 0 {
		if free := b.uploadFree(now, p.perUpload, bytes); free.After(earliest) {
			earliest, cause = free, CauseUpload
		}
	}
	if p.perDay > 0 && recipients > 0 {
		have := b.rcpt.available(now)
		if have < recipients {
			short = recipients - have
			if b.rcpt.blockedUntil.After(now) && short >= b.rcpt.blockedNeed {
				short, hold = 0, false
				if b.rcpt.blockedUntil.After(earliest) {
					earliest, cause = b.rcpt.blockedUntil, CauseRecipients
				}
			}
		}
	}
	if b.waiting >= p.maxWait && cause == "" {
		cause = CauseConcurrency
	}
	if hold && earliest.Sub(now) <= p.maxHold && b.waiting < p.maxWait {
		if short > 0 {
			return Admission{Short: short}
		}
		if b.starts != nil {
			b.starts[b.next] = earliest
			b.next = (b.next + 1) % len(b.starts)
		}
		if p.perDay > 0 {
			b.rcpt.n -= recipients
		}
		if p.perUpload > 0 {
			b.uploads = append(b.uploads, upload{at: earliest, n: bytes})
			b.uploaded += bytes
		}
		b.waiting++
		return Admission{At: earliest, Hour: b.rcpt.hour}
	}
	d := max(p.spreadLocked(b, earliest).Sub(now), p.spacing())
	return Admission{Defer: d, Cause: cause}
}

// admitLookup admits a draft-mode look-up (graphmail resumeSend: GETs, no
// send) for addr: it waits out a Retry-After pause of the mailbox and queues
// for its concurrency slots like a send, but takes no start from the
// per-minute pace, no recipients and no upload volume — those count sends,
// and the send it settles was counted when it was made.
func (p *pacer) admitLookup(addr string) Admission {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.box(addr)
	if b.pausedUntil.After(now) {
		return Admission{Defer: b.pausedUntil.Sub(now), Cause: CauseRetryAfter}
	}
	if b.waiting >= p.maxWait {
		return Admission{Defer: p.spacing(), Cause: CauseConcurrency}
	}
	b.waiting++
	return Admission{At: now}
}

// uploadEnded moves the reservation of n upload bytes made for a send of
// addr admitted at start to end, when its last byte went out (a draft's
// upload lasts seconds): the rolling window then counts the bytes from
// their end. Keeping it later only counts more, never less.
func (p *pacer) uploadEnded(addr string, start time.Time, n int64, end time.Time) {
	if n <= 0 || !end.After(start) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.boxes[addr]
	if b == nil {
		return
	}
	for i := range b.uploads {
		if u := &b.uploads[i]; u.n == n && u.at.Equal(start) {
			u.at = end
			return
		}
	}
}

// uploadFree forgets the uploads that left the window at now and returns
// when a request of n bytes fits in limit: now, or when enough of the older
// ones leave. A request larger than limit on its own fits in an empty window.
// Uploads are kept in admission order, which is start order but for starts
// held up to maxHold: an old one behind a held one is forgotten a little
// late, which only counts more, never less.
func (b *mailbox) uploadFree(now time.Time, limit, n int64) time.Time {
	drop := 0
	for drop < len(b.uploads) && !now.Before(b.uploads[drop].at.Add(uploadWindow)) {
		b.uploaded -= b.uploads[drop].n
		drop++
	}
	// Reslicing from the front is amortised O(1): append moves the live
	// part to a new array when it reaches the end of the old one.
	b.uploads = b.uploads[drop:]
	if b.uploaded+n <= limit || len(b.uploads) == 0 {
		return now
	}
	left := b.uploaded
	free := now
	for _, u := range b.uploads {
		left -= u.n
		if end := u.at.Add(uploadWindow); end.After(free) {
			free = end
		}
		if left+n <= limit {
			break
		}
	}
	return free
}

// available is the allowance that may still be spent at now.
func (a *allowance) available(now time.Time) int {
	if now.Before(a.until) {
		return max(a.n, 0)
	}
	return 0
}

// leaseRequest builds the ledger request for short more recipients of addr
// at now: counted in the hour they will be spent in, asking for a chunk, and
// giving back an expired allowance's remainder (once: it is forgotten here,
// whatever the ledger answers, so that it cannot be given back twice).
func (p *pacer) leaseRequest(addr string, short int) ledger.Lease {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.box(addr)
	l := ledger.Lease{Mailbox: addr, Limit: p.perDay, Need: short, Want: max(short, leaseChunk),
		Hour: now.Add(spendMargin).Truncate(time.Hour), Now: now}
	if !now.Before(b.rcpt.until) && b.rcpt.n > 0 {
		l.GiveBack, l.GiveBackHour = b.rcpt.n, b.rcpt.hour
		b.rcpt.n = 0
	}
	return l
}

// unspent returns give-back requests for every allowance not yet spent, and
// forgets them (a shutdown: nothing more will be sent).
func (p *pacer) unspent() []ledger.Lease {
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	var ls []ledger.Lease
	for addr, b := range p.boxes {
		if b.rcpt.n > 0 {
			ls = append(ls, ledger.Lease{Mailbox: addr, Limit: p.perDay, Now: now, GiveBack: b.rcpt.n, GiveBackHour: b.rcpt.hour})
			b.rcpt.n = 0
		}
	}
	return ls
}

// grant records the ledger's answer to l: granted recipients join the
// allowance; none means that l.Need more will not fit before freeAt.
func (p *pacer) grant(l ledger.Lease, granted int, freeAt time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := &p.box(l.Mailbox).rcpt
	if granted <= 0 {
		a.blockedUntil, a.blockedNeed = freeAt, l.Need
		return
	}
	a.blockedUntil, a.blockedNeed = time.Time{}, 0
	if !a.hour.Equal(l.Hour) || !l.Now.Before(a.until) {
		a.n, a.hour, a.until = 0, l.Hour, l.Hour.Add(time.Hour-spendMargin)
	}
	a.n += granted
}

// refund gives back n recipients of addr taken by an admission from the
// allowance of hour, for a send that cannot have reached Graph: to the local
// allowance while it is still spendable, else it returns the give-back to
// make to the ledger (ok true).
func (p *pacer) refund(addr string, n int, hour time.Time) (l ledger.Lease, ok bool) {
	if n <= 0 || p.perDay <= 0 {
		return ledger.Lease{}, false
	}
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.box(addr)
	if b.rcpt.hour.Equal(hour) && now.Before(b.rcpt.until) {
		b.rcpt.n += n
		return ledger.Lease{}, false
	}
	return ledger.Lease{Mailbox: addr, Limit: p.perDay, Now: now, GiveBack: n, GiveBackHour: hour}, true
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
	return p.spreadLocked(b, b.pausedUntil).Sub(now)
}

// spreadLocked returns when a job deferred until earliest should come back:
// deferred jobs of a mailbox are spread one pace interval apart, so that a
// backlog returns at the rate the mailbox can take. p.mu must be held.
func (p *pacer) spreadLocked(b *mailbox, earliest time.Time) time.Time {
	if b.deferredUntil.After(earliest) {
		earliest = b.deferredUntil
	}
	b.deferredUntil = earliest.Add(p.spacing())
	return earliest
}

// spacingNow is spacing, taking the lock.
func (p *pacer) spacingNow() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spacing()
}

// deferAfter makes the next deferral of addr come back no earlier than t.
func (p *pacer) deferAfter(addr string, t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.box(addr); t.After(b.deferredUntil) {
		b.deferredUntil = t
	}
}

// spacing is the gap between deferred jobs of one mailbox.
func (p *pacer) spacing() time.Duration {
	if p.interval == 0 {
		return 20 * time.Millisecond
	}
	return p.interval
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
	for {
		p.mu.Lock()
		if b.inUse < p.perBox {
			b.inUse++
			p.mu.Unlock()
			return nil
		}
		if b.wake == nil {
			b.wake = make(chan struct{})
		}
		wake := b.wake
		p.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *pacer) release(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.boxes[addr]
	b.inUse--
	b.wakeAll()
}

// wakeAll wakes the jobs waiting for b's slots; p.mu is held.
func (b *mailbox) wakeAll() {
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
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
