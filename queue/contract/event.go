package contract

import "time"

// EventType names what happened to a job.
type EventType string

// Status event types.
const (
	EventSent                EventType = "sent"
	EventDeferred            EventType = "deferred"
	EventRetrying            EventType = "retrying"
	EventDeadLettered        EventType = "dead_lettered"
	EventDuplicateSuppressed EventType = "duplicate_suppressed"
	EventReplayed            EventType = "replayed"

	// Delivery events, one per recipient after `sent`, from Exchange
	// message trace (package tracking; README "Delivery events").
	EventDelivered       EventType = "delivered"
	EventBounced         EventType = "bounced"
	EventQuarantined     EventType = "quarantined"
	EventFilteredAsSpam  EventType = "filtered_as_spam"
	EventExpanded        EventType = "expanded"
	EventDeliveryUnknown EventType = "delivery_unknown"
	// EventSuppressed: the recipient was on the profile's suppression list
	// and was not sent to (no Graph call for it).
	EventSuppressed EventType = "suppressed"
)

// Event is one status event, published on mail.status.<profile>.<jobId>.
type Event struct {
	JobID   string     `json:"jobId"`
	Profile string     `json:"profile"`
	Event   EventType  `json:"event"`
	Attempt int        `json:"attempt"`
	At      time.Time  `json:"at"`
	Graph   *GraphInfo `json:"graph,omitempty"`
	Error   *ErrorInfo `json:"error,omitempty"`
	// LatencyMs is the Graph call's duration for sent/retrying, and the time
	// from publish to outcome for terminal events when known.
	LatencyMs int64 `json:"latencyMs,omitempty"`
	// RetryAt is when a deferred or retrying job is due again.
	RetryAt *time.Time `json:"retryAt,omitempty"`
	// Cause says why a `deferred` job waits: retry_after, pace, recipients,
	// upload, concurrency, unavailable, not_before or busy.
	Cause string `json:"cause,omitempty"`
	// Ambiguous marks a send whose outcome is unknown: Graph may have accepted it.
	Ambiguous bool `json:"ambiguous,omitempty"`
	// PossibleDuplicate marks a send made after an ambiguous attempt: the
	// recipient may receive the mail twice.
	PossibleDuplicate bool `json:"possibleDuplicate,omitempty"`
	// InternetMessageID is the Message-ID of a mail sent through a draft
	// (draft delivery mode): find it in Exchange message trace by it.
	InternetMessageID string `json:"internetMessageId,omitempty"`
	// Recipient is the address a delivery event is about, as the job gave
	// it (lower-cased): producers need it to act on a bounce. Only delivery
	// and suppressed events carry it.
	Recipient string `json:"recipient,omitempty"`
	// Trace is what Exchange message trace said (delivery events).
	Trace    *TraceInfo        `json:"trace,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// TraceInfo is the message trace row a delivery event comes from.
type TraceInfo struct {
	Status         string    `json:"status,omitempty"`         // exchangeMessageTraceStatus
	MessageTraceID string    `json:"messageTraceId,omitempty"` // Get-MessageTraceDetailV2 -MessageTraceId
	MessageID      string    `json:"messageId,omitempty"`      // the Message-ID
	ReceivedAt     time.Time `json:"receivedAt,omitzero"`
	// Detail is the failure's text from the trace details (bounced).
	Detail string `json:"detail,omitempty"`
	// Correlation is how the row was tied to the job: CorrelationMessageID
	// (the Message-ID the worker knew from the send: draft delivery mode)
	// or CorrelationTime (sender, recipient and time: sendMail; see
	// docs/microsoft.md, "Correlation", for when two jobs can swap rows).
	Correlation string `json:"correlation,omitempty"`
}

// How a delivery event's trace row was found (TraceInfo.Correlation).
const (
	CorrelationMessageID = "messageId"
	CorrelationTime      = "time"
)

// GraphInfo is what Graph said about one call.
type GraphInfo struct {
	Status          int    `json:"status,omitempty"`
	Code            string `json:"code,omitempty"`
	RequestID       string `json:"requestId,omitempty"`
	ClientRequestID string `json:"clientRequestId,omitempty"`
	// Date is the Graph response's Date header (RFC 3339, UTC): with the two ids,
	// what a Microsoft support case or a message trace needs to find the call.
	Date string `json:"date,omitempty"`
	// EarlierCalls are the calls of the same attempt before this one: the
	// sendMail answered 401 before the token was refreshed and the call made
	// again. Each is as findable in Microsoft's logs as the last.
	EarlierCalls []GraphCall `json:"earlierCalls,omitempty"`
}

// GraphCall identifies one Graph HTTP call as Microsoft support and message
// trace know it.
type GraphCall struct {
	Status          int    `json:"status,omitempty"`
	RequestID       string `json:"requestId,omitempty"`
	ClientRequestID string `json:"clientRequestId,omitempty"`
	Date            string `json:"date,omitempty"`
}

// GraphDate formats a Graph response's Date for GraphInfo.Date; "" when zero.
func GraphDate(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// ErrorInfo is a failure in the closed reason vocabulary plus a message a
// support engineer understands. It never carries secrets or tokens.
type ErrorInfo struct {
	Reason  Reason `json:"reason"`
	Message string `json:"message"`
}
