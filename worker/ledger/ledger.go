// Package ledger holds the request the worker's pacer makes of the shared
// recipient ledger (worker.Ledger), which queue.Pacing keeps in JetStream:
// the worker's own type, in a package of its own so that the queue can
// implement the ledger without importing the worker, and the job contract
// (queue/contract) need not know it.
package ledger

import "time"

// Lease is a request to the recipient ledger (worker.Ledger; queue.Pacing.Lease implements it).
type Lease struct {
	// Mailbox is the sending address (case does not matter).
	Mailbox string
	// Limit is the mailbox's budget: recipients per the rolling 24 hours.
	Limit int
	// Need is the least that is of any use to the caller; Want is what it
	// would like (Want >= Need). 0 and 0 only give back.
	Need, Want int
	// Hour is the start of the UTC hour the lease is counted in: the hour the
	// caller will spend it in (it may be the next hour when this one is about
	// to end).
	Hour time.Time
	// Now is the caller's time, which decides which hours have aged out.
	Now time.Time
	// GiveBack recipients of an earlier lease, counted in the hour starting at
	// GiveBackHour, were not spent and never will be: they are taken off that
	// hour first. A caller gives a remainder back once, whatever the outcome.
	GiveBack     int
	GiveBackHour time.Time
}
