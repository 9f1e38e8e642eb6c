package graphmail

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestClassify runs the one classification table, keyed by call, status
// and code: sendMail's rows, then where the draft flow's calls differ.
func TestClassify(t *testing.T) {
	t.Parallel()
	const (
		P = contract.ClassPermanent
		R = contract.ClassRetryable
		T = contract.ClassThrottled
	)
	tests := []struct {
		op        string
		status    int
		code      string
		message   string
		wrote     bool
		class     contract.Class
		reason    contract.Reason
		ambiguous bool
		hint      string // a fragment of the hint, "" for none
	}{
		{OpSendMail, 202, "", "", true, 0, "", false, ""},
		// Documented sendMail errors classified by code and message (docs/microsoft.md).
		{OpSendMail, 400, "BadRequest", "Maximum request length exceeded.", true, P, "message_too_large", false, ""},
		{OpSendMail, 400, "ErrorMessageSizeExceeded", "", true, P, "message_too_large", false, ""},
		{OpSendMail, 500, "ErrorMessageSizeExceeded", "", true, P, "message_too_large", true, ""},
		{OpSendMail, 400, "MailboxNotEnabledForRESTAPI", "REST API is not yet supported for this mailbox.", true, P, "mailbox_not_found", false, ""},
		{OpSendMail, 403, "ErrorQuotaExceeded", "The mailbox quota has been exceeded.", true, R, "", false, ""},
		{OpSendMail, 500, "ErrorQuotaExceeded", "", true, R, "", true, ""},
		{OpSendMail, 403, "ErrorAccessDenied", "Access to OData is disabled.", true, P, "access_denied", false, ""},
		{OpSendMail, 0, "", "", false, R, "", false, ""},
		{OpSendMail, 0, "", "", true, R, "", true, ""}, // no answer after the request was written
		{OpSendMail, 400, "ErrorInvalidRecipients", "", true, P, "recipient_invalid", false, ""},
		{OpSendMail, 400, "InvalidInternetMessageHeader", "", true, P, "graph_rejected", false, ""},
		{OpSendMail, 400, "ErrorInvalidRequest", "", true, P, "graph_rejected", false, ""},
		{OpSendMail, 400, "", "", true, P, "graph_rejected", false, ""},
		{OpSendMail, 400, "BadRequest", "Resource not found for the segment 'sendMail'.", true, P, "graph_rejected", false, ""},
		{OpSendMail, 401, "InvalidAuthenticationToken", "", true, R, "auth_failed", false, ""},
		{OpSendMail, 403, "ErrorAccessDenied", "", true, R, "access_denied", false, ""},
		{OpSendMail, 403, "Authorization_RequestDenied", "", true, P, "access_denied", false, ""},
		{OpSendMail, 403, "", "", true, P, "access_denied", false, ""},
		{OpSendMail, 404, "ResourceNotFound", "", true, P, "mailbox_not_found", false, ""},
		{OpSendMail, 404, "ErrorInvalidUser", "", true, P, "mailbox_not_found", false, ""},
		{OpSendMail, 404, "ErrorItemNotFound", "", true, P, "mailbox_not_found", false, ""},
		{OpSendMail, 404, "MailboxNotEnabledForRESTAPI", "", true, P, "mailbox_not_found", false, ""},
		{OpSendMail, 408, "", "", true, R, "", false, ""},
		{OpSendMail, 413, "ErrorMessageSizeExceeded", "", true, P, "message_too_large", false, ""},
		{OpSendMail, 429, "ApplicationThrottled", "", true, T, "", false, ""},
		{OpSendMail, 500, "", "", true, R, "", true, ""},
		{OpSendMail, 502, "", "", true, R, "", true, ""},
		{OpSendMail, 503, "", "", true, R, "", true, ""},
		{OpSendMail, 504, "", "", true, R, "", true, ""},
		{OpSendMail, 409, "", "", true, P, "graph_rejected", false, ""},
		{OpSendMail, 415, "", "", true, P, "graph_rejected", false, ""},
		{OpSendMail, 302, "", "", true, P, "graph_rejected", false, ""},
		// The draft flow: only its send can be ambiguous.
		{OpSendDraft, 503, "", "", true, R, "", true, ""},
		{OpSendDraft, 0, "", "", true, R, "", true, ""},
		{OpSendDraft, 429, "", "", true, T, "", false, ""},
		{OpSendDraft, 404, "ErrorItemNotFound", "", true, R, "", true, ""}, // gone: sent, or deleted
		{OpSendDraft, 403, "ErrorAccessDenied", "", true, R, "access_denied", false, ""},
		{OpCreateDraft, 503, "", "", true, R, "", false, ""},
		{OpCreateDraft, 0, "", "", true, R, "", false, ""},
		{OpUpload, 500, "", "", true, R, "", false, ""},
		{OpAddAttachment, 404, "ErrorItemNotFound", "", true, R, "", false, ""},
		{OpGetMessage, 404, "ErrorItemNotFound", "", true, R, "", false, ""},
		{OpCreateDraft, 403, "ErrorAccessDenied", "", true, R, "access_denied", false, "Application Mail.ReadWrite"},
		{OpFindSent, 403, "", "", true, P, "access_denied", false, "Application Mail.ReadWrite"},
		{OpUpload, 403, "", "", true, P, "access_denied", false, ""},
		{OpCreateSession, 400, "BadRequest", "Resource not found for the segment 'createUploadSession'.", true, P, "graph_rejected", false,
			"does not offer the call (createUploadSession)"},
	}
	for _, tt := range tests {
		v := Classify(tt.op, tt.status, tt.code, tt.message, tt.wrote)
		if v.Class != tt.class || v.Reason != tt.reason || v.Ambiguous != tt.ambiguous ||
			(tt.hint == "") != (v.Hint == "") || !strings.Contains(v.Hint, tt.hint) {
			t.Errorf("Classify(%q, %d, %q, %q, %v) = %+v; want %v, %q, ambiguous %v, hint %q",
				tt.op, tt.status, tt.code, tt.message, tt.wrote, v, tt.class, tt.reason, tt.ambiguous, tt.hint)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"7", 7 * time.Second},
		{" 120 ", 120 * time.Second},
		{"-3", 0},
		{"1.5", 0},
		{"abc", 0},
		{"99999999999", 24 * time.Hour},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"Sat, 01 Mar 2025 12:00:30 GMT", 30 * time.Second},
		{"Saturday, 01-Mar-25 12:00:30 GMT", 30 * time.Second}, // RFC 850
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestErrorText(t *testing.T) {
	t.Parallel()
	cause := errors.New("boom")
	e := &contract.SendError{Class: contract.ClassPermanent, Reason: "mailbox_not_found", Status: 404, Code: "ErrorInvalidUser",
		Message: "user not found", RequestID: "r1", ClientRequestID: "job-1", Profile: "billing", Err: cause}
	got := e.Error()
	for _, want := range []string{"graphmail[billing]", "404", "ErrorInvalidUser", "user not found", "permanent", "reason=mailbox_not_found", "request-id=r1", "client-request-id=job-1"} {
		if !strings.Contains(got, want) {
			t.Errorf("Error() = %q, missing %q", got, want)
		}
	}
	if !errors.Is(e, cause) {
		t.Error("Unwrap does not reach the cause")
	}
	net := &contract.SendError{Class: contract.ClassRetryable, Ambiguous: true, Err: errors.New("connection reset")}
	if got := net.Error(); !strings.Contains(got, "connection reset") || !strings.Contains(got, "ambiguous") {
		t.Errorf("Error() = %q", got)
	}
}

func TestCloudEndpoints(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cloud           Cloud
		authority, grph string
	}{
		{"", "https://login.microsoftonline.com", "https://graph.microsoft.com"},
		{CloudGlobal, "https://login.microsoftonline.com", "https://graph.microsoft.com"},
		{CloudUSGov, "https://login.microsoftonline.us", "https://graph.microsoft.us"},
		{CloudUSGovDoD, "https://login.microsoftonline.us", "https://dod-graph.microsoft.us"},
		{CloudChina, "https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"},
	}
	for _, tt := range tests {
		a, g, err := tt.cloud.Endpoints()
		if err != nil || a != tt.authority || g != tt.grph {
			t.Errorf("%q.Endpoints() = %q, %q, %v", tt.cloud, a, g, err)
		}
	}
	if _, _, err := Cloud("mars").Endpoints(); err == nil {
		t.Error("unknown cloud: no error")
	}
}
