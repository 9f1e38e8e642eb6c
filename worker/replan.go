package worker

import (
	"context"
	"slices"
	"sync"
	"time"
)

// plans are the deferrals this replica spaced out for a mailbox's pace
// (cause pace): the job, and when it was told to come back. Their times
// follow the replica's share of the mailbox's pace; when the share grows (a
// replica left), they are planned again at the new interval, so the
// survivors do not send at the old, slower rate until the old plan runs out.
type plans struct {
	mu    sync.Mutex
	byBox map[string][]plan
}

type plan struct {
	profile, jobID string
	at             time.Time
}

// add records that jobID of profile, from addr, comes back at at.
func (ps *plans) add(addr, profile, jobID string, at time.Time) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.byBox == nil {
		ps.byBox = map[string][]plan{}
	}
	ps.byBox[addr] = append(ps.byBox[addr], plan{profile: profile, jobID: jobID, at: at})
}

// take returns the plans still ahead of now, by mailbox, earliest first, and
// forgets the rest.
func (ps *plans) take(now time.Time) map[string][]plan {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := map[string][]plan{}
	for addr, list := range ps.byBox {
		list = slices.DeleteFunc(list, func(p plan) bool { return !p.at.After(now) })
		if len(list) == 0 {
			delete(ps.byBox, addr)
			continue
		}
		slices.SortFunc(list, func(a, b plan) int { return a.at.Compare(b.at) })
		ps.byBox[addr] = list
		out[addr] = list
	}
	return out
}

// replan moves this replica's pace deferrals earlier after its share of the
// mailboxes' pace grew: the earliest comes back one new interval from now,
// the next one interval later, and so on, never later than planned. New
// deferrals of the mailbox line up after the last.
func (p *Pool) replan(ctx context.Context) {
	if p.broker.Scheduler == nil {
		return
	}
	now := p.clock.Now()
	moved := 0
	for addr, list := range p.plans.take(now) {
		gap := p.pacer.spacingNow()
		next := now.Add(gap)
		for i := range list {
			if next.Before(list[i].at) {
				opCtx, cancel := context.WithTimeout(ctx, opTimeout)
				err := p.broker.Scheduler.Reschedule(opCtx, list[i].profile, list[i].jobID, next)
				cancel()
				if err != nil {
					p.log.Warn().Str("jobId", list[i].jobID).Err(err).Msg("could not plan a deferred job again; it comes back as first planned")
					continue
				}
				list[i].at = next
				moved++
			}
			next = list[i].at.Add(gap)
		}
		p.pacer.deferAfter(addr, next)
	}
	if moved > 0 {
		p.log.Info().Int("jobs", moved).Msg("planned deferred jobs again for the new share of the mailbox pace")
	}
}
