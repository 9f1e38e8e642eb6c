package contract

// Reason says why a job was dead-lettered or retried. The set is closed: it is
// part of the wire contract and a metric label.
type Reason string

// The closed set of reasons.
const (
	ReasonInvalidJob        Reason = "invalid_job"
	ReasonSenderNotAllowed  Reason = "sender_not_allowed"
	ReasonRecipientInvalid  Reason = "recipient_invalid"
	ReasonMailboxNotFound   Reason = "mailbox_not_found"
	ReasonAccessDenied      Reason = "access_denied"
	ReasonMessageTooLarge   Reason = "message_too_large"
	ReasonAuthFailed        Reason = "auth_failed"
	ReasonExpired           Reason = "expired"
	ReasonAttemptsExhausted Reason = "attempts_exhausted"
	ReasonGraphRejected     Reason = "graph_rejected"
	ReasonInternal          Reason = "internal"
	// ReasonWorkerCrashed: the worker handling the job stopped (killed, out
	// of memory, crashed) while the job was in hand, Policy.MaxStops times:
	// the job is set aside so that it cannot take more workers down.
	ReasonWorkerCrashed Reason = "worker_crashed"
)

// Reasons lists every reason, in a stable order (metric label pre-creation, docs).
var Reasons = []Reason{
	ReasonInvalidJob, ReasonSenderNotAllowed, ReasonRecipientInvalid, ReasonMailboxNotFound,
	ReasonAccessDenied, ReasonMessageTooLarge, ReasonAuthFailed, ReasonExpired,
	ReasonAttemptsExhausted, ReasonGraphRejected, ReasonInternal, ReasonWorkerCrashed,
}

// Valid reports whether r is one of the closed set.
func (r Reason) Valid() bool {
	for _, x := range Reasons {
		if r == x {
			return true
		}
	}
	return false
}
