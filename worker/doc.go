// Package worker is mailworker's engine: it consumes mail jobs from the shared
// durable consumer, validates them, applies the sender policy, paces each
// mailbox, sends through a Sender, and maps every outcome to exactly one queue
// action (ack, dead-letter then terminate, nak with a computed delay).
//
// Work on a delivery splits in three, as river's jobexecutor and jobcompleter
// do: the executor (handle.go) runs the attempt and returns one Action; decide
// (decide.go), pure and table-tested, is the only maker of Actions; the
// completer (complete.go, with the state writes of record.go) carries the
// Action out and is the only place that acks, naks or terminates.
//
// It owns the small interfaces it consumes: Sender (one mail out), Delivery
// (a JetStream message with ack/nak/term/in-progress), the broker's stores
// (broker.go) and Clock.
package worker
