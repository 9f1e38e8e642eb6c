// Package queue is mailworker's wire contract and its JetStream plumbing.
//
// It owns the job schema and its validation, the subjects, streams, consumer and
// buckets (and their idempotent provisioning), the publisher that producers use,
// status events, the job-state store, and dead-letter records with their replay.
// Producers in any language depend on the JSON shapes defined here: change them
// only with a version bump.
package queue
