package tracking

import "github.com/mailworker/mailworker/queue/contract"

// SetAfterPublish makes f run after each delivery event is stored and before
// the tracking record says so; an error from f stops the pass there, as a
// crash would.
func SetAfterPublish(t *Tracker, f func(contract.Event) error) { t.afterPublish = f }

// SetAfterRecord makes f run after a stored event is recorded in the
// tracking record; an error from f stops the pass there.
func SetAfterRecord(t *Tracker, f func(contract.Event) error) { t.afterRecord = f }
