// Package worker is mailworker's engine: it consumes mail jobs from the shared
// durable consumer, validates them, applies the sender policy, paces each
// mailbox, sends through a Sender, and maps every outcome to exactly one queue
// action (ack, dead-letter then terminate, nak with a computed delay).
//
// It owns the small interfaces it consumes: Sender (one mail out), Delivery
// (a JetStream message with ack/nak/term/in-progress) and Clock.
package worker
