package worker

import (
	"testing"
	"time"
)

func TestRetryPolicy(t *testing.T) {
	t.Parallel()
	low := func(int64) int64 { return 0 }
	high := func(n int64) int64 { return n - 1 }
	r := RetryPolicy{Initial: time.Second, Max: time.Minute}

	t.Run("backoff doubles from Initial within ±50%, never above Max", func(t *testing.T) {
		for attempt := 1; attempt <= 10; attempt++ {
			base := min(time.Second<<(attempt-1), time.Minute)
			lo, hi := r, r
			lo.Rand, hi.Rand = low, high
			if d := lo.Backoff(attempt, 0); d != base/2 {
				t.Errorf("attempt %d, lowest draw: %v, want %v", attempt, d, base/2)
			}
			if d := hi.Backoff(attempt, 0); d != min(base*3/2, time.Minute) {
				t.Errorf("attempt %d, highest draw: %v, want %v", attempt, d, min(base*3/2, time.Minute))
			}
		}
	})
	t.Run("Retry-After first: never shorter, at most 10% longer", func(t *testing.T) {
		lo, hi := r, r
		lo.Rand, hi.Rand = low, high
		if d := lo.Backoff(3, 30*time.Second); d != 30*time.Second {
			t.Errorf("lowest: %v", d)
		}
		if d := hi.Backoff(3, 30*time.Second); d != 33*time.Second {
			t.Errorf("highest: %v", d)
		}
	})
	t.Run("throttled: Retry-After and a pause of exactly it; without one, the first step", func(t *testing.T) {
		lo := r
		lo.Rand = low
		if w, p := lo.Throttled(7 * time.Second); w != 7*time.Second || p != 7*time.Second {
			t.Errorf("Throttled(7s) = %v, %v", w, p)
		}
		if w, p := lo.Throttled(0); w != 500*time.Millisecond || p != 500*time.Millisecond {
			t.Errorf("Throttled(0) = %v, %v", w, p)
		}
	})
	t.Run("unavailable: at least a second", func(t *testing.T) {
		lo := r
		lo.Rand = low
		if d := lo.Unavailable(0); d != time.Second {
			t.Errorf("Unavailable(0) = %v", d)
		}
		if d := lo.Unavailable(8 * time.Second); d != 8*time.Second {
			t.Errorf("Unavailable(8s) = %v", d)
		}
	})
	t.Run("broker and final writes", func(t *testing.T) {
		if r.Broker() != 2*time.Second {
			t.Errorf("Broker = %v", r.Broker())
		}
		var waits []time.Duration
		var w time.Duration
		for range 7 {
			w = r.FinalNext(w)
			waits = append(waits, w)
		}
		want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
			1600 * time.Millisecond, 2 * time.Second, 2 * time.Second}
		for i := range want {
			if waits[i] != want[i] {
				t.Fatalf("final waits %v, want %v", waits, want)
			}
		}
	})
}
