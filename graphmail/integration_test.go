package graphmail_test

import (
	"context"
	"crypto/x509"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// These tests run the real MSAL client against graphtest, the TLS fake of
// Entra and Graph.

const (
	itSecret  = "it-secret-value"
	itSender  = "billing@contoso.com"
	itOutside = "ceo@contoso.com"
)

func newGraphtest(t *testing.T, opts graphtest.Options) *graphtest.Server {
	t.Helper()
	s, err := graphtest.New(opts)
	if err != nil {
		t.Fatalf("graphtest.New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func newIntegrationClient(t *testing.T, s *graphtest.Server, cred graphmail.Credential) *graphmail.Client {
	t.Helper()
	c, err := graphmail.New(graphmail.Config{
		Name:          "billing",
		TenantID:      s.TenantID(),
		ClientID:      s.ClientID(),
		AuthorityHost: s.URL(),
		GraphURL:      s.GraphURL(),
		Credential:    cred,
		HTTPClient:    s.Client(),
		Timeout:       2 * time.Minute, // an upper bound: a 4 MB request under -race on two shared cores took more than 10 s
	})
	if err != nil {
		t.Fatalf("graphmail.New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func rsaCert(t *testing.T) (*x509.Certificate, []byte) {
	t.Helper()
	cert, pemData, err := graphtest.NewAppCertificate(time.Now().Add(24 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return cert, pemData
}

func TestIntegrationCredentials(t *testing.T) {
	t.Parallel()
	cert, pemData := rsaCert(t)
	for _, tc := range []struct {
		name string
		cred graphmail.Credential
	}{
		{"secret", graphmail.Credential{ClientSecret: itSecret}},
		{"certificate", graphmail.Credential{CertificatePEM: pemData}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret, Certificate: cert})
			c := newIntegrationClient(t, s, tc.cred)
			for i := range 5 {
				msg := &graphmail.Message{From: itSender, To: []graphmail.Address{{Address: "a@example.com"}}, Subject: "s", Text: "t"}
				res, err := c.Send(context.Background(), msg)
				if err != nil {
					t.Fatalf("Send %d: %v", i, err)
				}
				msgs := s.Messages()
				if res.Status != 202 || res.RequestID == "" || len(res.ClientRequestID) != 36 ||
					len(msgs) != i+1 || msgs[i].ClientRequestID != res.ClientRequestID || msgs[i].RequestID != res.RequestID {
					t.Errorf("result = %+v (the fake saw %+v)", res, msgs)
				}
			}
			if n := s.TokenRequests(); n != 1 {
				t.Errorf("token requests = %d, want 1", n)
			}
			if n := len(s.Messages()); n != 5 {
				t.Errorf("messages = %d, want 5", n)
			}
		})
	}
}

func TestIntegrationMapping(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	msg := &graphmail.Message{
		From:    itSender,
		To:      []graphmail.Address{{Name: "Ann", Address: "ann@example.com"}, {Address: "bob@example.com"}},
		Cc:      []graphmail.Address{{Address: "cy@example.com"}},
		Bcc:     []graphmail.Address{{Address: "dee@example.com"}},
		ReplyTo: []graphmail.Address{{Address: "support@contoso.com"}},
		Subject: "Invoice 42",
		Text:    "plain",
		HTML:    "<p>Hi</p>",
		Attachments: []graphmail.Attachment{
			{Name: "a.pdf", ContentType: "application/pdf", Content: []byte("%PDF-1.4 hello")},
			{Name: "logo.png", ContentType: "image/png", Content: []byte{1, 2, 3}, Inline: true, ContentID: "logo"},
		},
		Headers:         []graphmail.Header{{Name: "X-Mailworker-Job-Id", Value: "job-map"}},
		Importance:      "high",
		SaveToSentItems: true,
	}
	if _, err := c.Send(context.Background(), msg); err != nil {
		t.Fatalf("Send: %v", err)
	}
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("messages = %d", len(msgs))
	}
	m := msgs[0]
	check := func(field string, got, want any) {
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", field, got, want)
		}
	}
	check("JobID", m.JobID, "job-map")
	check("From", strings.ToLower(m.From), itSender)
	check("To", m.To, []string{"ann@example.com", "bob@example.com"})
	check("Cc", m.Cc, []string{"cy@example.com"})
	check("Bcc", m.Bcc, []string{"dee@example.com"})
	check("ReplyTo", m.ReplyTo, []string{"support@contoso.com"})
	check("Subject", m.Subject, "Invoice 42")
	check("BodyType", m.BodyType, "HTML")
	check("Body", m.Body, "<p>Hi</p>")
	check("Headers", m.Headers, map[string]string{"X-Mailworker-Job-Id": "job-map"})
	check("Importance", m.Importance, "high")
	check("SaveToSentItems", m.SaveToSentItems, true)
	check("Attachments", m.Attachments, []graphtest.AttachmentInfo{
		{Name: "a.pdf", ContentType: "application/pdf", Size: 14, SHA256: hash([]byte("%PDF-1.4 hello"))},
		{Name: "logo.png", ContentType: "image/png", Size: 3, IsInline: true, ContentID: "logo", SHA256: hash([]byte{1, 2, 3})},
	})
}

func TestIntegrationFaults(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret, Mailboxes: []string{itSender, itOutside}, Scope: []string{itSender}})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	send := func(from string) error {
		_, err := c.Send(context.Background(), &graphmail.Message{From: from, To: []graphmail.Address{{Address: "a@example.com"}}, Text: "t"})
		return err
	}
	class := func(err error) *contract.SendError {
		t.Helper()
		var e *contract.SendError
		if !errors.As(err, &e) {
			t.Fatalf("err = %v, not *contract.SendError", err)
		}
		return e
	}

	s.Script(itSender, graphtest.Fault{Status: 429, RetryAfter: "30"})
	if e := class(send(itSender)); e.Class != contract.ClassThrottled || e.RetryAfter != 30*time.Second {
		t.Errorf("429: %v", e)
	}
	s.Script(itSender, graphtest.Fault{Status: 503, RetryAfter: "5"})
	if e := class(send(itSender)); e.Class != contract.ClassRetryable || !e.Ambiguous || e.RetryAfter != 5*time.Second {
		t.Errorf("503: %v", e)
	}
	s.Script(itSender, graphtest.Fault{Reset: true})
	if e := class(send(itSender)); e.Class != contract.ClassRetryable || !e.Ambiguous {
		t.Errorf("reset: %v", e)
	}
	if e := class(send("nobody@contoso.com")); e.Class != contract.ClassPermanent || e.Reason != "mailbox_not_found" {
		t.Errorf("unknown mailbox: %v", e)
	}
	if e := class(send(itOutside)); e.Reason != "access_denied" {
		t.Errorf("outside RBAC scope: %v", e)
	}
	before := s.TokenRequests()
	s.Script(itSender, graphtest.Fault{Status: 401})
	if err := send(itSender); err != nil {
		t.Errorf("401 then refresh: %v", err)
	}
	if n := s.TokenRequests() - before; n != 1 {
		t.Errorf("401 made %d token requests, want 1", n)
	}
}

func TestIntegrationTokenEndpointDown(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	s.SetTokenEndpointDown(true)
	_, err := c.Token(context.Background())
	var e *contract.SendError
	// Entra failing says nothing about the credential: wait, spend no attempt.
	if !errors.As(err, &e) || e.Class != contract.ClassUnavailable || e.Reason != "auth_failed" || e.Ambiguous ||
		e.RetryAfter <= 0 || e.RetryAfter > 30*time.Second {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), itSecret) {
		t.Errorf("secret in error: %v", err)
	}
	// While Entra is failing, callers share the failure instead of each
	// asking again: a hundred sends make one more request at most.
	failures := s.TokenFailures()
	for range 100 {
		if _, err := c.Token(context.Background()); err == nil {
			t.Fatal("token while the endpoint is down")
		}
	}
	if n := s.TokenFailures() - failures; n > 1 {
		t.Errorf("100 calls during an outage made %d token requests, want at most 1", n)
	}
	// Concurrent sends share the failure; each gets its own error to annotate
	// (a fresh client, so that one of them makes the failing request).
	c = newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := &graphmail.Message{From: itSender, To: []graphmail.Address{{Address: "a@example.com"}}, Subject: "s", Text: "t"}
			_, err := c.Send(context.Background(), msg)
			var e *contract.SendError
			if d := graphmail.EntraDetails(err); !errors.As(err, &e) || d == nil || d.TraceID == "" {
				t.Errorf("send %d during the outage: %v", i, err)
			}
		}()
	}
	wg.Wait()
	s.SetTokenEndpointDown(false)
	deadline := time.Now().Add(time.Minute) // an upper bound (CI shares two cores under -race)
	for {
		if _, err := c.Token(context.Background()); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no token within a minute of recovery: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A wrong secret is reported without echoing it.
	bad := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: "wrong-secret-sentinel"})
	_, err = bad.Token(context.Background())
	// A refused credential is the app's problem: retries spend attempts.
	if !errors.As(err, &e) || e.Class != contract.ClassRetryable || e.Reason != "auth_failed" {
		t.Errorf("wrong secret: class %v, want retryable auth_failed: %v", e.Class, err)
	}
	if err == nil || strings.Contains(err.Error(), "wrong-secret-sentinel") {
		t.Errorf("wrong secret: %v", err)
	}
}

// TestIntegrationRotateCertificate rotates a certificate the way the runbook
// does, without a restart: the app registration gets the new certificate
// next to the old one, the client switches to it (the mounted file changed),
// and the old one is removed from the app registration. Mail keeps flowing
// throughout, the next token is fetched with the new certificate at once,
// and the expiry reported is the new certificate's.
func TestIntegrationRotateCertificate(t *testing.T) {
	t.Parallel()
	oldCert, oldPEM := rsaCert(t)
	newCert, newPEM := rsaCert(t)
	s := newGraphtest(t, graphtest.Options{Certificate: oldCert})
	c := newIntegrationClient(t, s, graphmail.Credential{CertificatePEM: oldPEM})
	send := func(id string) {
		t.Helper()
		msg := &graphmail.Message{From: itSender, To: []graphmail.Address{{Address: "a@example.com"}}, Subject: "s", Text: "t"}
		if _, err := c.Send(context.Background(), msg); err != nil {
			t.Fatalf("Send %s: %v", id, err)
		}
	}
	send("before")

	// A file that does not parse (a half-written mount, a wrong key) is
	// refused and the credential in use is kept: no new token request.
	if err := c.SetCredential(graphmail.Credential{CertificatePEM: []byte("-----BEGIN CERTIFICATE-----\nnot base64\n")}); err == nil {
		t.Fatal("SetCredential accepted a PEM that does not parse")
	}
	send("after-bad-file")
	if got := s.IssuedWith(); len(got) != 1 {
		t.Fatalf("tokens issued %v: a refused credential must not drop the token", got)
	}

	s.SetCredentials(nil, []*x509.Certificate{oldCert, newCert}) // step 1: both valid
	if err := c.SetCredential(graphmail.Credential{CertificatePEM: newPEM}); err != nil {
		t.Fatalf("SetCredential: %v", err)
	}
	send("rotated")
	s.SetCredentials(nil, []*x509.Certificate{newCert}) // step 4: old one removed
	send("old-removed")

	want := []string{graphtest.CertificateThumbprint(oldCert), graphtest.CertificateThumbprint(newCert)}
	if got := s.IssuedWith(); !reflect.DeepEqual(got, want) {
		t.Errorf("tokens issued with %v, want %v (one per certificate, the new one right after the switch)", got, want)
	}
	if na, ok := c.CertificateNotAfter(); !ok || !na.Equal(newCert.NotAfter) {
		t.Errorf("CertificateNotAfter = %v %v, want the new certificate's %v", na, ok, newCert.NotAfter)
	}
	if got := "cert:" + c.CertificateThumbprint(); got != graphtest.CertificateThumbprint(newCert) {
		t.Errorf("CertificateThumbprint = %s, want the new certificate's %s", got, graphtest.CertificateThumbprint(newCert))
	}
	if n := len(s.Messages()); n != 4 {
		t.Errorf("messages = %d, want 4", n)
	}
}

// TestIntegrationRotateSecret switches a client secret and checks that both
// the old and the new value stay out of error text afterwards.
func TestIntegrationRotateSecret(t *testing.T) {
	t.Parallel()
	const oldSecret, newSecret = "old-secret-value-1", "new-secret-value-2"
	s := newGraphtest(t, graphtest.Options{ClientSecret: oldSecret})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: oldSecret})
	msg := &graphmail.Message{From: itSender, To: []graphmail.Address{{Address: "a@example.com"}}, Subject: "s", Text: "t"}
	if _, err := c.Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	// The new secret is not registered yet: the switch is visible at once as
	// a refused credential, with neither secret in the error.
	if err := c.SetCredential(graphmail.Credential{ClientSecret: newSecret}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Send(context.Background(), msg)
	var ge *contract.SendError
	if !errors.As(err, &ge) || ge.Reason != "auth_failed" {
		t.Fatalf("send with an unregistered secret: %v, want auth_failed", err)
	}
	for _, sec := range []string{oldSecret, newSecret} {
		if strings.Contains(err.Error(), sec) {
			t.Errorf("error text holds a secret: %v", err)
		}
	}
	// That failure started the token back-off; registering the secret and
	// switching to it again clears it, so mail resumes at once.
	s.SetCredentials([]string{oldSecret, newSecret}, nil)
	if err := c.SetCredential(graphmail.Credential{ClientSecret: newSecret}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(context.Background(), msg); err != nil {
		t.Fatalf("send after the secret was registered: %v", err)
	}
	want := []string{"secret:old", "secret:new"}
	if got := s.IssuedWith(); !reflect.DeepEqual(got, want) {
		t.Errorf("tokens issued with %v, want %v", got, want)
	}
}

// TestIntegrationRotateWhileSending switches credentials while sends run
// (run with -race): every send succeeds, each credential gets tokens.
func TestIntegrationRotateWhileSending(t *testing.T) {
	t.Parallel()
	certA, pemA := rsaCert(t)
	certB, pemB := rsaCert(t)
	s := newGraphtest(t, graphtest.Options{})
	s.SetCredentials(nil, []*x509.Certificate{certA, certB})
	c := newIntegrationClient(t, s, graphmail.Credential{CertificatePEM: pemA})
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for range 4 {
		wg.Go(func() {
			for range 25 {
				msg := &graphmail.Message{From: itSender, To: []graphmail.Address{{Address: "a@example.com"}}, Subject: "s", Text: "t"}
				if _, err := c.Send(context.Background(), msg); err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range 10 {
		pem := pemA
		if i%2 == 0 {
			pem = pemB
		}
		if err := c.SetCredential(graphmail.Credential{CertificatePEM: pem}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("send during rotation: %v", err)
	}
	if n := len(s.Messages()); n != 100 {
		t.Errorf("messages = %d, want 100", n)
	}
	// The last switch was to A: whatever happened before, the next token is A's.
	msg := &graphmail.Message{From: itSender, To: []graphmail.Address{{Address: "a@example.com"}}, Subject: "s", Text: "t"}
	if _, err := c.Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	if got := s.IssuedWith(); got[len(got)-1] != graphtest.CertificateThumbprint(certA) {
		t.Errorf("last token issued with %s, want certificate A %s", got[len(got)-1], graphtest.CertificateThumbprint(certA))
	}
}

// TestIntegrationTokenRoles reads the application permissions of each token
// fetched from Entra: none with Exchange RBAC alone; Mail.Send once an admin
// grants tenant-wide consent, which TenantWideMailRoles flags.
func TestIntegrationTokenRoles(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	var mu sync.Mutex
	var infos []graphmail.TokenInfo
	c, err := graphmail.New(graphmail.Config{
		Name: "billing", TenantID: s.TenantID(), ClientID: s.ClientID(), AuthorityHost: s.URL(), GraphURL: s.GraphURL(),
		Credential: graphmail.Credential{ClientSecret: itSecret}, HTTPClient: s.Client(),
		OnToken: func(ti graphmail.TokenInfo) { mu.Lock(); infos = append(infos, ti); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.SetRoles("User.Read.All", "Mail.Send")
	// A credential switch drops the cached token: the next one is fresh.
	if err := c.SetCredential(graphmail.Credential{ClientSecret: itSecret}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(context.Background()); err != nil { // cached: not reported
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(infos) != 2 {
		t.Fatalf("OnToken called %d times, want 2 (once per token from Entra)", len(infos))
	}
	if !infos[0].Readable || len(infos[0].Roles) != 0 || len(graphmail.TenantWideMailRoles(infos[0].Roles)) != 0 {
		t.Errorf("first token: %+v, want readable with no roles", infos[0])
	}
	if got := graphmail.TenantWideMailRoles(infos[1].Roles); !reflect.DeepEqual(got, []string{"Mail.Send"}) {
		t.Errorf("second token roles %v: tenant-wide mail roles %v, want [Mail.Send]", infos[1].Roles, got)
	}
}
