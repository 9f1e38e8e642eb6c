// Package tracking turns "Graph accepted it" into per-recipient delivery
// truth: it reads Exchange message trace (Graph v1.0 messageTraces) for the
// mail the worker sent and publishes one delivery event per recipient on the
// status stream (delivered, bounced, quarantined, filtered_as_spam, expanded,
// and delivery_unknown past the horizon); hard bounces feed a per-profile
// suppression list that the worker consults before every send.
//
// Durability: before each Graph send the Sender wrapper writes a tracking
// record (KV MAIL_TRACKING: sender, recipients, job) and the Tracker works
// from those records and the job states, never from memory, so a tracker
// that is down for an hour loses nothing: it finds every record still open
// and catches up (message trace keeps 90 days). Each recipient's event is
// stored once (queue.Events.PublishOnce): its Nats-Msg-Id names the job, the
// send and the recipient, the publish expects the job's status subject to
// be where the record last saw it (Record.StatusSeq), and a refused publish
// reads what came after and records an event of the recipient found there
// instead of publishing it again — so a crash between the publish and the
// record's compare-and-set update publishes nothing twice, however late the
// tracker restarts.
//
// The tenant's message trace budget (100 requests per 5 minutes) is shared
// by every replica through a KV-backed rolling window (Budget), as the pacer
// shares the mailbox limits; a 429's Retry-After pauses all replicas.
package tracking
