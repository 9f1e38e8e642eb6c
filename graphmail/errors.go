package graphmail

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// Classify maps a Graph sendMail HTTP status, Graph error code and message to
// a class and a reason. Status 0 means no response (network error). It returns
// (0, "") for 2xx. The rows and their sources are in docs/microsoft.md and the
// runbook's troubleshooting table.
func Classify(status int, code, message string) (contract.Class, contract.Reason) {
	switch {
	case status >= 200 && status < 300:
		return 0, ""
	case status == 0:
		return contract.ClassRetryable, ""
	// By code first: these mean the same whatever status carries them.
	case strings.EqualFold(code, "ErrorMessageSizeExceeded"):
		return contract.ClassPermanent, contract.ReasonMessageTooLarge
	case strings.EqualFold(code, "MailboxNotEnabledForRESTAPI"):
		// The mailbox is on-premises, inactive or not provisioned for REST.
		return contract.ClassPermanent, contract.ReasonMailboxNotFound
	case strings.EqualFold(code, "ErrorQuotaExceeded"):
		// The sending mailbox is over its storage quota (sendMail saves the message in it):
		// it heals when space is freed, so bounded retries; the worker decides the end.
		return contract.ClassRetryable, ""
	case strings.EqualFold(code, "ErrorAccessDenied") && strings.Contains(strings.ToLower(message), "access to odata is disabled"):
		// REST/OData access is turned off for the mailbox or organisation (an Exchange
		// setting, not the RBAC scope): waiting for RBAC propagation will not heal it.
		return contract.ClassPermanent, contract.ReasonAccessDenied
	case (status == http.StatusBadRequest || status == http.StatusNotFound) &&
		strings.Contains(strings.ToLower(message), "resource not found for the segment"):
		// The URL names an API this Graph does not have (400 BadRequest "Resource not
		// found for the segment '…'.", microsoft-graph-docs#4900, #21648), e.g.
		// createUploadSession in the US Government clouds: not a missing mailbox.
		return contract.ClassPermanent, contract.ReasonGraphRejected
	case status == http.StatusBadRequest && strings.Contains(strings.ToLower(message), "maximum request length"):
		// Graph's 400 form of the 4 MB request cap ("Maximum request length exceeded.").
		return contract.ClassPermanent, contract.ReasonMessageTooLarge
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

// classifyDraft adjusts a draft flow failure that httpError classified as
// sendMail's: only the send can deliver mail, so no other call is
// ambiguous; a 404 ErrorItemNotFound on a draft is not a missing mailbox but
// a draft that is gone (sent, or deleted), retryable, and ambiguous on send;
// a 403 says which role the draft mode needs.
func classifyDraft(op string, e *contract.SendError) {
	if op != OpSendDraft {
		e.Ambiguous = false
	}
	switch {
	case e.Status == http.StatusNotFound && strings.EqualFold(e.Code, "ErrorItemNotFound"):
		e.Class, e.Reason = contract.ClassRetryable, ""
		e.Ambiguous = op == OpSendDraft
	case e.Reason == contract.ReasonGraphRejected && strings.Contains(strings.ToLower(e.Message), "resource not found for the segment"):
		e.Message = strings.TrimSpace(e.Message + " This cloud's Graph does not offer the call (" + op + "): createUploadSession, which attachments of 3 MB or more need, is not available in the US Government clouds (L4, L5); such a profile must use deliveryMode sendMail.")
	case e.Status == http.StatusForbidden && op != OpSendDraft && op != OpUpload:
		e.Message = strings.TrimSpace(e.Message + " The draft delivery mode needs the Exchange role \"Application Mail.ReadWrite\" in the mailbox's management scope.")
	}
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
