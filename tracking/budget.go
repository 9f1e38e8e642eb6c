package tracking

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// budgetKey is the one MAIL_TRACE_BUDGET key: the tenant's window.
const budgetKey = "tenant"

type budgetRecord struct {
	// Requests are the unix milliseconds of the requests granted in the window.
	Requests []int64 `json:"requests"`
	// PausedUntil is a Retry-After Graph gave any replica (unix ms).
	PausedUntil int64 `json:"pausedUntil,omitempty"`
}

// Budget is the tenant's message trace budget (Microsoft: 100 requests per
// 5 minutes), shared by every replica through compare-and-set on one KV key:
// a request is made only after Take granted it, so all replicas together
// never make more than Limit in any Window.
type Budget struct {
	kv     jetstream.KeyValue
	Limit  int
	Window time.Duration
	Now    func() time.Time
}

// NewBudget returns the shared budget of s's bucket.
func (s *Store) NewBudget(limit int, window time.Duration, now func() time.Time) *Budget {
	if now == nil {
		now = time.Now
	}
	return &Budget{kv: s.budget, Limit: limit, Window: window, Now: now}
}

// Take grants one request, waiting (bounded by ctx) until the window has
// room and no Retry-After pause holds. It returns ctx's error when it ends
// first, or an error when the bucket cannot be read or written.
func (b *Budget) Take(ctx context.Context) error {
	for {
		wait, err := b.try(ctx)
		if err != nil {
			return err
		}
		if wait == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// try grants a request now (0) or says how long to wait.
func (b *Budget) try(ctx context.Context) (time.Duration, error) {
	for range 16 {
		var rec budgetRecord
		var rev uint64
		e, err := b.kv.Get(ctx, budgetKey)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return 0, fmt.Errorf("tracking: read trace budget: %w", err)
		default:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				return 0, fmt.Errorf("tracking: trace budget is not valid JSON: %w", err)
			}
		}
		now := b.Now().UnixMilli()
		if rec.PausedUntil > now {
			return time.Duration(rec.PausedUntil-now) * time.Millisecond, nil
		}
		// A request is counted for a little longer than the window: it
		// reaches Graph some time after it was granted here, and the
		// replicas' clocks differ from Graph's.
		win := (b.Window + b.Window/100 + time.Second).Milliseconds()
		kept := rec.Requests[:0]
		for _, t := range rec.Requests {
			if now-t < win {
				kept = append(kept, t)
			}
		}
		rec.Requests = kept
		if len(rec.Requests) >= b.Limit {
			return time.Duration(rec.Requests[0]+win-now)*time.Millisecond + time.Millisecond, nil
		}
		rec.Requests = append(rec.Requests, now)
		data, _ := json.Marshal(rec)
		if rev == 0 {
			_, err = b.kv.Create(ctx, budgetKey, data)
		} else {
			_, err = b.kv.Update(ctx, budgetKey, data, rev)
		}
		if err == nil {
			return 0, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, fmt.Errorf("tracking: write trace budget: %w", err)
		}
		time.Sleep(time.Duration(rand.Int64N(int64(5 * time.Millisecond))))
	}
	return 0, errors.New("tracking: trace budget: 16 compare-and-set conflicts in a row")
}

// Pause records a Retry-After for every replica: no request before now+d.
func (b *Budget) Pause(ctx context.Context, d time.Duration) error {
	for range 16 {
		var rec budgetRecord
		var rev uint64
		e, err := b.kv.Get(ctx, budgetKey)
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("tracking: read trace budget: %w", err)
		}
		if err == nil {
			rev = e.Revision()
			_ = json.Unmarshal(e.Value(), &rec)
		}
		until := b.Now().Add(d).UnixMilli()
		if rec.PausedUntil >= until {
			return nil
		}
		rec.PausedUntil = until
		data, _ := json.Marshal(rec)
		if rev == 0 {
			_, err = b.kv.Create(ctx, budgetKey, data)
		} else {
			_, err = b.kv.Update(ctx, budgetKey, data, rev)
		}
		if err == nil {
			return nil
		}
	}
	return errors.New("tracking: trace budget: could not record the pause")
}
