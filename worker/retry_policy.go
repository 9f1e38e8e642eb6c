package worker

import (
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Clock tells the time. Tests inject one to move expiry and pacing decisions.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// RetryPolicy owns every wait the worker chooses: after a retryable failure,
// a 429, an outage of Entra, a broker failure, and between the tries of a
// final write. Retry-After comes first; without it, exponential backoff with
// jitter. Its random source is injected so that tests are deterministic.
//
// graphmail's token backoff (Client.Token) is the one deliberate exception:
// it is per client, not per job — a circuit breaker that keeps a crowd of
// jobs from hammering a failing Entra — and hands its remaining wait to the
// worker as the failure's RetryAfter, which this policy then honours.
type RetryPolicy struct {
	// Initial and Max bound the exponential backoff used when the server
	// gives no Retry-After.
	Initial, Max time.Duration
	// Rand returns a number in [0, n); nil: math/rand/v2.Int64N.
	Rand func(n int64) int64
}

const (
	// brokerRetry is the wait before a job is tried again after the broker
	// itself failed (a state, ledger or dead-letter write); no attempt is spent.
	brokerRetry = 2 * time.Second
	// unavailableMin is the shortest wait while Entra cannot be reached.
	unavailableMin = time.Second
	// finalFirst and finalMax bound the waits between tries of a final write
	// (terminal state or final event).
	finalFirst, finalMax = 100 * time.Millisecond, 2 * time.Second
)

// jitter returns up to a tenth of d, so that a crowd told to wait d does not
// come back in step.
func (r RetryPolicy) jitter(d time.Duration) time.Duration {
	n := int64(d)/10 + 1
	if r.Rand != nil {
		return time.Duration(r.Rand(n))
	}
	return time.Duration(rand.Int64N(n))
}

// Backoff is the wait before attempt+1 after a retryable failure of attempt
// (1-based): the server's Retry-After when it gave one (never shortened, with
// up to 10% added), otherwise Initial doubled per attempt up to Max, with ±50%
// jitter, never above Max.
func (r RetryPolicy) Backoff(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return retryAfter + r.jitter(retryAfter)
	}
	b := &backoff.ExponentialBackOff{InitialInterval: r.Initial, RandomizationFactor: 0, Multiplier: 2,
		MaxInterval: r.Max, MaxElapsedTime: 0, Stop: backoff.Stop, Clock: backoff.SystemClock}
	b.Reset()
	d := r.Initial
	for range max(attempt, 1) {
		d = b.NextBackOff()
	}
	// ±50% around the interval, drawn from the injected source.
	half := int64(d) / 2
	var draw int64
	if half > 0 {
		if r.Rand != nil {
			draw = r.Rand(2*half + 1)
		} else {
			draw = rand.Int64N(2*half + 1)
		}
	}
	return min(d-time.Duration(half)+time.Duration(draw), r.Max)
}

// Throttled is the wait after a 429: its Retry-After with jitter, or the
// first backoff step when Graph gave none. The mailbox is paused for the
// returned pause (Retry-After itself, or that first step).
func (r RetryPolicy) Throttled(retryAfter time.Duration) (wait, pause time.Duration) {
	if retryAfter > 0 {
		return retryAfter + r.jitter(retryAfter), retryAfter
	}
	d := r.Backoff(1, 0)
	return d + r.jitter(d), d
}

// Unavailable is the wait while a service the send needs (Entra) cannot be
// reached: its RetryAfter (graphmail's token backoff), at least a second,
// with jitter.
func (r RetryPolicy) Unavailable(retryAfter time.Duration) time.Duration {
	d := max(retryAfter, unavailableMin)
	return d + r.jitter(d)
}

// Broker is the wait before a job is tried again after the broker failed.
func (RetryPolicy) Broker() time.Duration { return brokerRetry }

// FinalNext is the wait after a final write that waited prev (0 for the
// first): 100 ms, doubling, at most 2 s.
func (RetryPolicy) FinalNext(prev time.Duration) time.Duration {
	if prev <= 0 {
		return finalFirst
	}
	return min(2*prev, finalMax)
}
