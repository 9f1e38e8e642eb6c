package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/mailworker/mailworker/queue"
)

// Ledger shares each sending mailbox's recipient budget between all replicas
// (queue.Pacing is the JetStream implementation).
type Ledger interface {
	// Lease takes up to l.Want recipients of l.Mailbox's budget, counted in
	// the hour l.Hour, after giving back l.GiveBack. It grants at least
	// l.Need or nothing; when nothing, freeAt is when l.Need will fit. An
	// error means the ledger could not be reached: nothing may be sent
	// blind.
	Lease(ctx context.Context, l queue.Lease) (granted int, freeAt time.Time, err error)
}

// Membership counts the live replicas that share the mailbox limits
// (queue.Workers is the JetStream implementation).
type Membership interface {
	// Beat records that replica id is alive for a while (a TTL).
	Beat(ctx context.Context, id string) error
	// Live returns how many replicas are alive.
	Live(ctx context.Context) (int, error)
	// Leave removes id at once.
	Leave(ctx context.Context, id string) error
}

// membershipEvery is how often a Pool beats and counts the live replicas by
// default: a third of the MAIL_WORKERS TTL (15 s), so two beats may be lost.
const membershipEvery = 5 * time.Second

// admitJob runs the pacer for a job of n recipients and a request of bytes
// bytes from addr, leasing
// recipients from the ledger when the local allowance is short. It returns
// an error only when the ledger cannot be reached.
func (p *Pool) admitJob(ctx context.Context, addr string, n int, bytes int64) (at time.Time, deferFor time.Duration, cause string, err error) {
	at, deferFor, cause, short := p.pacer.admit(addr, n, bytes)
	if short == 0 {
		return at, deferFor, cause, nil
	}
	// One lease at a time per mailbox in this replica: the jobs that waited
	// for it usually find the allowance refilled.
	b := p.pacer.lockLease(addr)
	defer b.lease.Unlock()
	for range 3 {
		if at, deferFor, cause, short = p.pacer.admit(addr, n, bytes); short == 0 {
			return at, deferFor, cause, nil
		}
		l := p.pacer.leaseRequest(addr, short)
		opCtx, cancel := context.WithTimeout(ctx, opTimeout)
		granted, freeAt, err := p.ledger.Lease(opCtx, l)
		cancel()
		if err != nil {
			return time.Time{}, 0, "", err
		}
		p.pacer.grant(l, granted, freeAt)
	}
	// Other jobs of this replica spent each grant first: try again shortly.
	return time.Time{}, infraRetry, CauseRecipients, nil
}

// lockLease locks and returns addr's mailbox for a lease.
func (p *pacer) lockLease(addr string) *mailbox {
	p.mu.Lock()
	b := p.box(addr)
	p.mu.Unlock()
	b.lease.Lock()
	return b
}

// runMembership beats this replica's key and counts the live replicas every
// interval until stop is closed, sharing the mailbox limits accordingly, then
// removes the key. The first beat and count are made by startMembership.
//
// When the bucket cannot be reached the last count is kept: other replicas
// stop counting this one after the TTL and take larger shares, but a replica
// that cannot reach NATS cannot fetch new jobs either.
func (p *Pool) runMembership(stop <-chan struct{}, id string) {
	t := time.NewTicker(p.membershipEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := p.members.Leave(ctx, id); err != nil {
				p.log.Warn().Err(err).Msg("could not remove this replica from the live count; it expires with the TTL")
			}
			cancel()
			return
		case <-t.C:
			p.beatAndCount(id)
		}
	}
}

// startMembership registers this replica and reads the live count before the
// pool consumes. If the count cannot be read the pool starts with the full
// limits (a live count of 1) and logs why: the per-minute pace and the
// concurrency are then those of a single replica until the bucket answers,
// and Graph's 429 + Retry-After, which the worker honours, is the backstop.
// The recipient budget does not depend on the count: it is leased.
func (p *Pool) startMembership() string {
	var raw [8]byte
	_, _ = rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	if !p.beatAndCount(id) {
		p.log.Error().Msg("could not read the live replica count at start: sharing the mailbox limits as if this replica were alone until it can")
	}
	return id
}

// beatAndCount beats, counts and applies the count; false if either failed.
func (p *Pool) beatAndCount(id string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), min(p.membershipEvery, opTimeout))
	defer cancel()
	if err := p.members.Beat(ctx, id); err != nil {
		p.log.Warn().Err(err).Msg("replica heartbeat failed; keeping the last live count")
		return false
	}
	n, err := p.members.Live(ctx)
	if err != nil {
		p.log.Warn().Err(err).Msg("counting live replicas failed; keeping the last count")
		return false
	}
	n = max(n, 1) // this replica has just beaten
	p.m.ReplicasLive.Set(float64(n))
	if p.pacer.setLive(n) {
		p.pacer.mu.Lock()
		perBox, perMinute := p.pacer.perBox, p.pacer.perMinute
		p.pacer.mu.Unlock()
		p.log.Info().Int("replicasLive", n).Int("perMailboxConcurrency", perBox).Int("perMailboxPerMinute", perMinute).
			Msg(fmt.Sprintf("sharing the mailbox limits among %d replicas", n))
	}
	return true
}

// giveBack returns the recipients leased and not spent to the ledger when the
// pool stops, so that a restart (a rolling deploy) wastes none. Best effort:
// what cannot be given back within a few seconds stays counted until it ages
// out.
func (p *Pool) giveBack() {
	ls := p.pacer.unspent()
	if len(ls) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for _, l := range ls {
		if _, _, err := p.ledger.Lease(ctx, l); err != nil {
			p.log.Warn().Err(err).Int("recipients", l.GiveBack).Msg("could not give unspent recipients back to the ledger; they age out")
			return
		}
	}
}
