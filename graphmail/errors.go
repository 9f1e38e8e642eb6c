package graphmail

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// Classify maps a Graph sendMail HTTP status and Graph error code to a class
// and a reason. Status 0 means no response (network error). It returns (0, "")
// for 2xx.
func Classify(status int, code string) (contract.Class, contract.Reason) {
	switch {
	case status >= 200 && status < 300:
		return 0, ""
	case status == 0:
		return contract.ClassRetryable, ""
	case status == http.StatusBadRequest:
		if strings.EqualFold(code, "ErrorInvalidRecipients") {
			return contract.ClassPermanent, contract.ReasonRecipientInvalid
		}
		return contract.ClassPermanent, contract.ReasonGraphRejected
	case status == http.StatusUnauthorized:
		return contract.ClassRetryable, contract.ReasonAuthFailed
	case status == http.StatusForbidden:
		if strings.EqualFold(code, "ErrorAccessDenied") {
			// Exchange RBAC for Applications changes take 30 min to 2 h:
			// bounded retries by the worker.
			return contract.ClassRetryable, contract.ReasonAccessDenied
		}
		return contract.ClassPermanent, contract.ReasonAccessDenied
	case status == http.StatusNotFound:
		return contract.ClassPermanent, contract.ReasonMailboxNotFound
	case status == http.StatusRequestTimeout:
		return contract.ClassRetryable, ""
	case status == http.StatusRequestEntityTooLarge:
		return contract.ClassPermanent, contract.ReasonMessageTooLarge
	case status == http.StatusTooManyRequests:
		return contract.ClassThrottled, ""
	case status >= 500:
		return contract.ClassRetryable, ""
	}
	// other 4xx, and 1xx/3xx which Graph does not send for sendMail
	return contract.ClassPermanent, contract.ReasonGraphRejected
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
