// Package contract is mailworker's wire contract, shared by producers, the
// worker and graphmail without importing NATS: the job and its validation (and
// JSON Schema), the closed sets of reasons, failure classes, status events and
// job states, the dead-letter record, subjects, stream and header names, and
// the typed send failure (SendError) that graphmail returns and the worker
// decides on.
//
// Producers in any language depend on the JSON shapes defined here: change
// them only with a version bump.
package contract
