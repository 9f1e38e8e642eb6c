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

// retryDelay is the wait before attempt+1 after a retryable failure of attempt
// (1-based): the server's Retry-After when it gave one (never shortened, with
// up to 10% added so that a crowd does not return in step), otherwise
// exponential backoff with jitter.
func retryDelay(attempt int, retryAfter, initial, maxDelay time.Duration) time.Duration {
	if retryAfter > 0 {
		return retryAfter + time.Duration(rand.Int64N(int64(retryAfter)/10+1))
	}
	b := &backoff.ExponentialBackOff{
		InitialInterval:     initial,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         maxDelay,
		MaxElapsedTime:      0,
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	d := initial
	for range max(attempt, 1) {
		d = b.NextBackOff()
	}
	return min(d, maxDelay)
}
