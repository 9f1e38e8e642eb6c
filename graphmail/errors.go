package graphmail

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Class tells the worker what to do with a failed send.
type Class int

// Failure classes.
const (
	ClassPermanent Class = iota + 1 // dead-letter now
	ClassRetryable                  // retry later, spends an attempt
	ClassThrottled                  // 429: wait Retry-After, does not spend an attempt
	// ClassUnavailable: a service the send depends on could not be reached
	// (Entra's token endpoint down or failing) and nothing was sent: wait
	// RetryAfter, does not spend an attempt.
	ClassUnavailable
)

func (c Class) String() string {
	switch c {
	case ClassPermanent:
		return "permanent"
	case ClassRetryable:
		return "retryable"
	case ClassThrottled:
		return "throttled"
	case ClassUnavailable:
		return "unavailable"
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// Reasons graphmail reports; a subset of the closed set of reasons in the
// wire contract. Retryable and throttled errors may carry the empty reason:
// the worker decides (e.g. attempts_exhausted).
const (
	ReasonRecipientInvalid = "recipient_invalid"
	ReasonMailboxNotFound  = "mailbox_not_found"
	ReasonAccessDenied     = "access_denied"
	ReasonMessageTooLarge  = "message_too_large"
	ReasonAuthFailed       = "auth_failed"
	ReasonGraphRejected    = "graph_rejected"
	ReasonInternal         = "internal"
)

// Error is the only error type Send and Token return. Its text never contains
// a token, a secret, an assertion or a private key.
type Error struct {
	Class      Class
	Reason     string        // closed set, see the Reason constants; "" when the worker decides
	Status     int           // HTTP status, 0 when no response
	Code       string        // Graph (or Entra) error code
	Message    string        // Graph's error message (redacted)
	RetryAfter time.Duration // from Retry-After: delta-seconds or HTTP-date; 0 when absent
	// Ambiguous is set when the request body may have reached Graph and the
	// mail may have been sent (5xx, timeouts and connection errors after the
	// request was written).
	Ambiguous       bool
	RequestID       string
	ClientRequestID string
	Profile         string // Config.Name
	Err             error  // wrapped cause (never an MSAL error carrying the token request)
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("graphmail")
	if e.Profile != "" {
		b.WriteString("[")
		b.WriteString(e.Profile)
		b.WriteString("]")
	}
	b.WriteString(": ")
	if e.Status != 0 {
		b.WriteString("sendMail ")
		b.WriteString(strconv.Itoa(e.Status))
		if e.Code != "" {
			b.WriteString(" ")
			b.WriteString(e.Code)
		}
		if e.Message != "" {
			b.WriteString(": ")
			b.WriteString(e.Message)
		}
	} else if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString(e.Message)
	}
	b.WriteString(" (")
	b.WriteString(e.Class.String())
	if e.Reason != "" {
		b.WriteString(", reason=")
		b.WriteString(e.Reason)
	}
	if e.Ambiguous {
		b.WriteString(", ambiguous")
	}
	if e.RetryAfter > 0 {
		b.WriteString(", retry-after=")
		b.WriteString(e.RetryAfter.String())
	}
	if e.RequestID != "" {
		b.WriteString(", request-id=")
		b.WriteString(e.RequestID)
	}
	if e.ClientRequestID != "" {
		b.WriteString(", client-request-id=")
		b.WriteString(e.ClientRequestID)
	}
	b.WriteString(")")
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Classify maps a Graph sendMail HTTP status and Graph error code to a class
// and a reason. Status 0 means no response (network error). It returns (0, "")
// for 2xx.
func Classify(status int, code string) (Class, string) {
	switch {
	case status >= 200 && status < 300:
		return 0, ""
	case status == 0:
		return ClassRetryable, ""
	case status == http.StatusBadRequest:
		if strings.EqualFold(code, "ErrorInvalidRecipients") {
			return ClassPermanent, ReasonRecipientInvalid
		}
		return ClassPermanent, ReasonGraphRejected
	case status == http.StatusUnauthorized:
		return ClassRetryable, ReasonAuthFailed
	case status == http.StatusForbidden:
		if strings.EqualFold(code, "ErrorAccessDenied") {
			// Exchange RBAC for Applications changes take 30 min to 2 h:
			// bounded retries by the worker.
			return ClassRetryable, ReasonAccessDenied
		}
		return ClassPermanent, ReasonAccessDenied
	case status == http.StatusNotFound:
		return ClassPermanent, ReasonMailboxNotFound
	case status == http.StatusRequestTimeout:
		return ClassRetryable, ""
	case status == http.StatusRequestEntityTooLarge:
		return ClassPermanent, ReasonMessageTooLarge
	case status == http.StatusTooManyRequests:
		return ClassThrottled, ""
	case status >= 500:
		return ClassRetryable, ""
	}
	// other 4xx, and 1xx/3xx which Graph does not send for sendMail
	return ClassPermanent, ReasonGraphRejected
}

// ambiguousStatus reports whether a response with this status leaves open
// whether the mail was sent.
func ambiguousStatus(status int) bool { return status >= 500 }

// parseRetryAfter parses a Retry-After value: delta-seconds or an HTTP-date.
// It returns 0 when v is empty, malformed or in the past.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0
		}
		const max = int64(24 * time.Hour / time.Second)
		if n > max {
			n = max
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	if d := t.Sub(now); d > 0 {
		return d
	}
	return 0
}
