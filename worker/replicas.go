package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"
)

// membershipEvery is how often a Pool beats and counts the live replicas by
// default: a third of the MAIL_WORKERS TTL (15 s), so two beats may be lost.
const membershipEvery = 5 * time.Second

// admit runs the pacer for a job of n recipients and a request of bytes
// bytes from addr, leasing recipients from the ledger when the local
// allowance is short. It returns an error only when the ledger cannot be
// reached.
func (p *Pool) admit(ctx context.Context, addr string, n int, bytes int64) (Admission, error) {
	a := p.pacer.admit(addr, n, bytes)
	if a.Short == 0 {
		return a, nil
	}
	// One lease at a time per mailbox in this replica: the jobs that waited
	// for it usually find the allowance refilled.
	b := p.pacer.lockLease(addr)
	defer b.lease.Unlock()
	for range 3 {
		if a = p.pacer.admit(addr, n, bytes); a.Short == 0 {
			return a, nil
		}
		l := p.pacer.leaseRequest(addr, a.Short)
		opCtx, cancel := context.WithTimeout(ctx, opTimeout)
		granted, freeAt, err := p.broker.Ledger.Lease(opCtx, l)
		cancel()
		if err != nil {
			return Admission{}, err
		}
		p.pacer.grant(l, granted, freeAt)
	}
	// Other jobs of this replica spent each grant first: try again shortly.
	return Admission{Defer: p.retry.Broker(), Cause: CauseRecipients}, nil
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
			if err := p.broker.Membership.Leave(ctx, id); err != nil {
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
	if err := p.broker.Membership.Beat(ctx, id); err != nil {
		p.log.Warn().Err(err).Msg("replica heartbeat failed; keeping the last live count")
		return false
	}
	n, err := p.broker.Membership.Live(ctx)
	if err != nil {
		p.log.Warn().Err(err).Msg("counting live replicas failed; keeping the last count")
		return false
	}
	n = max(n, 1) // this replica has just beaten
	p.m.ReplicasLive.Set(float64(n))
	before := p.pacer.currentShare()
	if sh, changed := p.pacer.setLive(n); changed {
		p.log.Info().Int("replicasLive", sh.Live).Int("perMailboxConcurrency", sh.PerBox).Int("perMailboxPerMinute", sh.PerMinute).
			Msg(fmt.Sprintf("sharing the mailbox limits among %d replicas", n))
		if sh.PerMinute > before.PerMinute {
			p.replan(context.Background())
		}
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
		if _, _, err := p.broker.Ledger.Lease(ctx, l); err != nil {
			p.log.Warn().Err(err).Int("recipients", l.GiveBack).Msg("could not give unspent recipients back to the ledger; they age out")
			return
		}
	}
}
