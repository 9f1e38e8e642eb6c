package graphmail

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

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

// EntraError is the part of an Entra token error response that finds the request in the
// sign-in logs (Microsoft Entra error codes reference: error_codes, timestamp, trace_id,
// correlation_id). It never holds the request, a secret or an assertion. EntraDetails reads
// it from a token failure.
type EntraError struct {
	Codes         []int  // AADSTS codes, e.g. 7000215
	TraceID       string // GUID
	CorrelationID string // GUID
	Timestamp     string // as Entra wrote it, e.g. "2026-11-30 05:33:10Z"
}

// ids renders the ids alone: "trace-id=… correlation-id=… timestamp=…"; "" for a nil e.
func (e *EntraError) ids() string {
	if e == nil {
		return ""
	}
	c := *e
	c.Codes = nil
	return c.String()
}

// String renders the codes and ids: "AADSTS7000215 trace-id=… correlation-id=… timestamp=…".
func (e *EntraError) String() string {
	var b strings.Builder
	for i, c := range e.Codes {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("AADSTS")
		b.WriteString(strconv.Itoa(c))
	}
	for _, kv := range [3][2]string{{"trace-id", e.TraceID}, {"correlation-id", e.CorrelationID}, {"timestamp", e.Timestamp}} {
		if kv[1] != "" {
			if b.Len() > 0 {
				b.WriteString(" ")
			}
			b.WriteString(kv[0])
			b.WriteString("=")
			b.WriteString(kv[1])
		}
	}
	return b.String()
}

// EntraDetails returns the Entra codes and ids of a token failure returned by Token or
// Send, or nil when err did not come from Entra's token endpoint.
func EntraDetails(err error) *EntraError {
	var ae *authError
	if errors.As(err, &ae) {
		return ae.entra
	}
	return nil
}

// CredentialFaultError is a credential fault on this machine (the federated token file
// missing, unreadable or empty), raised before any request to Entra: a configuration
// error, not an Entra outage. Token and Send wrap it in the *contract.SendError they return
// (class retryable, reason auth_failed); find it with IsCredentialFault.
type CredentialFaultError struct{ msg string }

func (e *CredentialFaultError) Error() string { return e.msg }

// IsCredentialFault reports whether err is, or wraps, a local credential fault.
func IsCredentialFault(err error) bool {
	var cf *CredentialFaultError
	return errors.As(err, &cf)
}
