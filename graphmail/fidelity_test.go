package graphmail_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// Issue 10, "Faithful to Microsoft": each test runs the real client against graphtest.

var guidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func jobMsg(jobID string) *graphmail.Message {
	return &graphmail.Message{From: itSender, To: []graphmail.Address{{Address: "a@example.com"}}, Subject: "s", Text: "t",
		Headers: []graphmail.Header{{Name: contract.HeaderStampJobID, Value: jobID}}}
}

func asErr(t *testing.T, err error) *contract.SendError {
	t.Helper()
	var e *contract.SendError
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want *contract.SendError", err)
	}
	return e
}

// A fresh GUID as client-request-id on every request, the 401 retry included; the job id
// travels in X-Mailworker-Job-Id; each call's request-id, client-request-id and Date are kept.
func TestFidelityClientRequestIDPerRequest(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	s.Script(itSender, graphtest.Fault{Status: 401})
	res, err := c.Send(context.Background(), jobMsg("job-7"))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if len(res.Calls) != 2 || res.Calls[0].Status != 401 || res.Calls[1].Status != 202 {
		t.Fatalf("calls = %+v, want a 401 then a 202", res.Calls)
	}
	a, b := res.Calls[0], res.Calls[1]
	if !guidRE.MatchString(a.ClientRequestID) || !guidRE.MatchString(b.ClientRequestID) || a.ClientRequestID == b.ClientRequestID {
		t.Errorf("client-request-ids %q, %q: want two different GUIDs", a.ClientRequestID, b.ClientRequestID)
	}
	if a.RequestID == "" || b.RequestID == "" || a.Date.IsZero() || b.Date.IsZero() {
		t.Errorf("calls lack request-id or Date: %+v", res.Calls)
	}
	m := s.Messages()
	if len(m) != 1 || m[0].ClientRequestID != b.ClientRequestID || m[0].JobID != "job-7" || m[0].RequestID != res.RequestID {
		t.Fatalf("the fake saw %+v; result %+v", m, res)
	}
}

// The call before a token refresh reaches the contract: in the result of a
// send that then succeeded, and in the error of one that then failed, so
// status events and dead letters name both calls.
func TestFidelityEarlierCallsReachTheContract(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	jobs := graphmail.NewSender(nil)
	jobs.Add("p", c, false)
	job := &contract.Job{From: itSender, To: []string{"a@example.com"}, Subject: "s", Text: "t"}

	s.Script(itSender, graphtest.Fault{Status: 401})
	res, err := jobs.Send(context.Background(), "p", "job-8", job)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.EarlierCalls) != 1 || res.EarlierCalls[0].Status != 401 || res.EarlierCalls[0].RequestID == "" ||
		!guidRE.MatchString(res.EarlierCalls[0].ClientRequestID) || res.EarlierCalls[0].Date == "" {
		t.Fatalf("earlier calls %+v, want the 401", res.EarlierCalls)
	}

	s.Script(itSender, graphtest.Fault{Status: 401}, graphtest.Fault{Status: 503})
	_, err = jobs.Send(context.Background(), "p", "job-9", job)
	e := asErr(t, err)
	if e.Status != 503 || len(e.EarlierCalls) != 1 || e.EarlierCalls[0].Status != 401 || e.EarlierCalls[0].RequestID == "" {
		t.Fatalf("error %v with earlier calls %+v, want a 503 after a 401", e, e.EarlierCalls)
	}
}

// Entra's error keeps the AADSTS code, trace id, correlation id and timestamp, never the secret.
func TestFidelityEntraErrorKeepsIDs(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	const wrong = "wrong-secret-SENTINEL"
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: wrong})
	_, err := c.Send(context.Background(), jobMsg("job-1"))
	e := asErr(t, err)
	d := graphmail.EntraDetails(err)
	if d == nil || len(d.Codes) != 1 || d.Codes[0] != 7000215 ||
		!guidRE.MatchString(d.TraceID) || !guidRE.MatchString(d.CorrelationID) || d.Timestamp == "" {
		t.Fatalf("Entra = %+v", d)
	}
	text := e.Error()
	for _, want := range []string{"AADSTS7000215", "trace-id=" + d.TraceID, "correlation-id=" + d.CorrelationID, "timestamp="} {
		if !strings.Contains(text, want) {
			t.Errorf("error text %q lacks %q", text, want)
		}
	}
	if strings.Contains(text, wrong) || strings.Contains(text, "\r") || strings.Contains(text, "\n") {
		t.Errorf("error text carries the secret or raw lines: %q", text)
	}
	if e.Class != contract.ClassRetryable || graphmail.IsCredentialFault(err) {
		t.Errorf("class %v local %v", e.Class, graphmail.IsCredentialFault(err))
	}
	// Message is what status events, dead letters and `mailworker check` show.
	if !strings.HasPrefix(e.Message, "AADSTS7000215: ") || !strings.Contains(e.Message, "trace-id="+d.TraceID) ||
		!strings.Contains(e.Message, "correlation-id="+d.CorrelationID) || strings.Contains(e.Message, wrong) {
		t.Errorf("Message = %q", e.Message)
	}
}

// A missing or empty federated token file is a local configuration fault, not an Entra outage:
// it spends attempts (retryable, auth_failed), says Local, and nothing reaches Entra.
func TestFidelityLocalCredentialFault(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	const iss, sub = "https://oidc.example.com/cluster", "system:serviceaccount:mail:mailworker"
	s := newGraphtest(t, graphtest.Options{Federated: []graphtest.FederatedCredential{{Issuer: iss, Subject: sub, Key: &key.PublicKey}}})
	dir := t.TempDir()
	for _, tc := range []struct{ name, content string }{{"missing", ""}, {"empty", " \n"}} {
		file := filepath.Join(dir, tc.name)
		if tc.content != "" {
			if err := os.WriteFile(file, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		c := newIntegrationClient(t, s, graphmail.Credential{FederatedTokenFile: file})
		_, err := c.Send(context.Background(), jobMsg("job-1"))
		e := asErr(t, err)
		if !graphmail.IsCredentialFault(err) || e.Class != contract.ClassRetryable || e.Reason != contract.ReasonAuthFailed {
			t.Errorf("%s token file: class %v reason %q local %v (%v)", tc.name, e.Class, e.Reason, graphmail.IsCredentialFault(err), e)
		}
		if c.CredentialFault() == nil {
			t.Errorf("%s token file: CredentialFault() = nil", tc.name)
		}
	}
	if n := s.TokenFailures() + s.TokenRequests(); n != 0 {
		t.Errorf("%d token requests reached Entra", n)
	}
	// The same client path with a valid workload identity token sends.
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte(signJWT(t, key, map[string]any{"iss": iss, "sub": sub,
		"aud": graphtest.DefaultFederatedAudience, "exp": time.Now().Add(time.Hour).Unix()})), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newIntegrationClient(t, s, graphmail.Credential{FederatedTokenFile: file})
	if _, err := c.Send(context.Background(), jobMsg("job-2")); err != nil || c.CredentialFault() != nil {
		t.Fatalf("valid federated token: %v (fault %v)", err, c.CredentialFault())
	}
}

// A token's refresh_in is honoured: the client goes back to MSAL, which refreshes it.
func TestFidelityRefreshIn(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret, RefreshIn: time.Second})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	first, err := c.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute) // an upper bound (CI shares two cores under -race)
	for s.TokenRequests() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no refresh after refresh_in: %d token requests", s.TokenRequests())
		}
		tok, err := c.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if tok != first && s.TokenRequests() < 2 {
			t.Fatal("token changed without a token request")
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not a wait for an outcome
	}
	if tok, _ := c.Token(context.Background()); tok == first {
		t.Error("still serving the token past its refresh_in after the refresh")
	}
}

// The 4 MB cap is on the whole request: 3 MiB of attachment plus a body is refused before
// any call, as message_too_large.
func TestFidelityWholeRequestSize(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	msg := jobMsg("job-1")
	msg.HTML = "<p>" + strings.Repeat("x", 300) + "</p>"
	msg.Attachments = []graphmail.Attachment{{Name: "a.bin", ContentType: "application/octet-stream", Content: make([]byte, 3<<20)}}
	_, err := c.Send(context.Background(), msg)
	e := asErr(t, err)
	if e.Class != contract.ClassPermanent || e.Reason != contract.ReasonMessageTooLarge {
		t.Fatalf("got %v", e)
	}
	if n := s.SendRequests(); n != 0 {
		t.Errorf("%d requests reached Graph", n)
	}
	// Just under: sent.
	msg.Attachments[0].Content = make([]byte, 3<<20-2048)
	if _, err := c.Send(context.Background(), msg); err != nil {
		t.Fatalf("under the cap: %v", err)
	}
}

// Documented sendMail errors, answered by the fake with Microsoft's codes and messages.
func TestFidelityDocumentedErrors(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	for _, tc := range []struct {
		fault  graphtest.Fault
		class  contract.Class
		reason contract.Reason
	}{
		{graphtest.Fault{Status: 400, Code: "BadRequest", Message: "Maximum request length exceeded."}, contract.ClassPermanent, contract.ReasonMessageTooLarge},
		{graphtest.Fault{Status: 413, Code: "ErrorMessageSizeExceeded"}, contract.ClassPermanent, contract.ReasonMessageTooLarge},
		{graphtest.Fault{Status: 404, Code: "MailboxNotEnabledForRESTAPI", Message: "The mailbox is either inactive, soft-deleted, or is hosted on-premise."}, contract.ClassPermanent, contract.ReasonMailboxNotFound},
		{graphtest.Fault{Status: 403, Code: "ErrorAccessDenied", Message: "Access to OData is disabled."}, contract.ClassPermanent, contract.ReasonAccessDenied},
		{graphtest.Fault{Status: 403, Code: "ErrorAccessDenied", Message: "Access is denied. Check credentials and try again."}, contract.ClassRetryable, contract.ReasonAccessDenied},
		{graphtest.Fault{Status: 403, Code: "ErrorQuotaExceeded", Message: "The mailbox quota has been exceeded."}, contract.ClassRetryable, ""},
		{graphtest.Fault{Status: 503, RetryAfter: "7"}, contract.ClassRetryable, ""},
	} {
		s.Script(itSender, tc.fault)
		_, err := c.Send(context.Background(), jobMsg("job-1"))
		e := asErr(t, err)
		if e.Class != tc.class || e.Reason != tc.reason {
			t.Errorf("%d %s %q: got %v %q, want %v %q", tc.fault.Status, tc.fault.Code, tc.fault.Message, e.Class, e.Reason, tc.class, tc.reason)
		}
		if tc.fault.RetryAfter != "" && e.RetryAfter != 7*time.Second {
			t.Errorf("503 Retry-After 7: RetryAfter = %v", e.RetryAfter)
		}
	}
}

// Per-profile limits: recipients per message (the tenant's Exchange setting) and header names.
func TestFidelityProfileLimits(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	newClient := func(mod func(*graphmail.Config)) (*graphmail.Client, error) {
		cfg := graphmail.Config{Name: "billing", TenantID: s.TenantID(), ClientID: s.ClientID(), AuthorityHost: s.URL(),
			GraphURL: s.GraphURL(), Credential: graphmail.Credential{ClientSecret: itSecret}, HTTPClient: s.Client()}
		mod(&cfg)
		return graphmail.New(cfg)
	}
	for _, n := range []int{-1, 1001} {
		if _, err := newClient(func(c *graphmail.Config) { c.MaxRecipientsPerMessage = n }); err == nil {
			t.Errorf("MaxRecipientsPerMessage %d accepted", n)
		}
	}
	if _, err := newClient(func(c *graphmail.Config) { c.AllowedHeaders = []string{"Reply-By"} }); err == nil {
		t.Error("a non-X- allowed header accepted")
	}
	c, err := newClient(func(c *graphmail.Config) {
		c.MaxRecipientsPerMessage = 2
		c.AllowedHeaders = []string{"X-Tenant"}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	three := jobMsg("job-1")
	three.Cc = []graphmail.Address{{Address: "b@example.com"}}
	three.Bcc = []graphmail.Address{{Address: "c@example.com"}}
	if e := asErr(t, sendErr(c, three)); e.Class != contract.ClassPermanent || e.Reason != contract.ReasonInvalidJob {
		t.Errorf("3 recipients over 2: %v", e)
	}
	other := jobMsg("job-2")
	other.Headers = append(other.Headers, graphmail.Header{Name: "X-Order-12345", Value: "1"})
	if e := asErr(t, sendErr(c, other)); e.Reason != contract.ReasonInvalidJob || !strings.Contains(e.Message, `"X-Order-12345"`) {
		t.Errorf("header outside the allow-list: %v", e)
	}
	if n := s.SendRequests(); n != 0 {
		t.Errorf("%d refused messages reached Graph", n)
	}
	ok := jobMsg("job-3")
	ok.Headers = append(ok.Headers, graphmail.Header{Name: "x-tenant", Value: "acme"})
	if err := sendErr(c, ok); err != nil {
		t.Errorf("allowed header (any case) with the job id stamp: %v", err)
	}
}

func sendErr(c *graphmail.Client, m *graphmail.Message) error {
	_, err := c.Send(context.Background(), m)
	return err
}

func signJWT(t *testing.T, key *rsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	tok, err := graphtest.SignRS256JWT(key, claims)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
