// Package queue is the JetStream plumbing of mailworker's wire contract
// (package queue/contract): idempotent provisioning of the streams, consumer
// and buckets, the publisher that Go producers use, status events, the
// job-state store, the recipient ledger and replica membership, objectRef
// attachments, and dead-letter records with their replay. Its types implement
// the small interfaces the worker consumes.
package queue
