package graphmail

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status  int
		code    string
		class   contract.Class
		reason  contract.Reason
		message string
	}{
		{202, "", 0, "", ""},
		// Documented sendMail errors classified by code and message (docs/microsoft.md).
		{400, "BadRequest", contract.ClassPermanent, "message_too_large", "Maximum request length exceeded."},
		{400, "ErrorMessageSizeExceeded", contract.ClassPermanent, "message_too_large", ""},
		{500, "ErrorMessageSizeExceeded", contract.ClassPermanent, "message_too_large", ""},
		{400, "MailboxNotEnabledForRESTAPI", contract.ClassPermanent, "mailbox_not_found", "REST API is not yet supported for this mailbox."},
		{403, "ErrorQuotaExceeded", contract.ClassRetryable, "", "The mailbox quota has been exceeded."},
		{500, "ErrorQuotaExceeded", contract.ClassRetryable, "", ""},
		{403, "ErrorAccessDenied", contract.ClassPermanent, "access_denied", "Access to OData is disabled."},
		{0, "", contract.ClassRetryable, "", ""},
		{400, "ErrorInvalidRecipients", contract.ClassPermanent, "recipient_invalid", ""},
		{400, "InvalidInternetMessageHeader", contract.ClassPermanent, "graph_rejected", ""},
		{400, "ErrorInvalidRequest", contract.ClassPermanent, "graph_rejected", ""},
		{400, "", contract.ClassPermanent, "graph_rejected", ""},
		{401, "InvalidAuthenticationToken", contract.ClassRetryable, "auth_failed", ""},
		{403, "ErrorAccessDenied", contract.ClassRetryable, "access_denied", ""},
		{403, "Authorization_RequestDenied", contract.ClassPermanent, "access_denied", ""},
		{403, "", contract.ClassPermanent, "access_denied", ""},
		{404, "ResourceNotFound", contract.ClassPermanent, "mailbox_not_found", ""},
		{404, "ErrorInvalidUser", contract.ClassPermanent, "mailbox_not_found", ""},
		{404, "MailboxNotEnabledForRESTAPI", contract.ClassPermanent, "mailbox_not_found", ""},
		{408, "", contract.ClassRetryable, "", ""},
		{413, "ErrorMessageSizeExceeded", contract.ClassPermanent, "message_too_large", ""},
		{429, "ApplicationThrottled", contract.ClassThrottled, "", ""},
		{500, "", contract.ClassRetryable, "", ""},
		{502, "", contract.ClassRetryable, "", ""},
		{503, "", contract.ClassRetryable, "", ""},
		{504, "", contract.ClassRetryable, "", ""},
		{409, "", contract.ClassPermanent, "graph_rejected", ""},
		{415, "", contract.ClassPermanent, "graph_rejected", ""},
		{302, "", contract.ClassPermanent, "graph_rejected", ""},
	}
	for _, tt := range tests {
		class, reason := Classify(tt.status, tt.code, tt.message)
		if class != tt.class || reason != tt.reason {
			t.Errorf("Classify(%d, %q, %q) = %v, %q; want %v, %q", tt.status, tt.code, tt.message, class, reason, tt.class, tt.reason)
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
