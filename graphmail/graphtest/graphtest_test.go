package graphtest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"go.uber.org/goleak"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	secret  = "s3cret"
	mailbox = "Billing@Contoso.com"
	scope   = "https://graph.microsoft.com/.default"
)

func newServer(t *testing.T, opts graphtest.Options) *graphtest.Server {
	t.Helper()
	if opts.ClientSecret == "" {
		opts.ClientSecret = secret
	}
	s, err := graphtest.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func msalClient(t *testing.T, s *graphtest.Server, cred confidential.Credential) confidential.Client {
	t.Helper()
	c, err := confidential.New(s.AuthorityURL(), s.ClientID(), cred,
		confidential.WithHTTPClient(s.Client()),
		confidential.WithInstanceDiscovery(false))
	if err != nil {
		t.Fatalf("confidential.New: %v", err)
	}
	return c
}

func secretClient(t *testing.T, s *graphtest.Server, sec string) confidential.Client {
	t.Helper()
	cred, err := confidential.NewCredFromSecret(sec)
	if err != nil {
		t.Fatal(err)
	}
	return msalClient(t, s, cred)
}

func acquire(t *testing.T, c confidential.Client) string {
	t.Helper()
	res, err := c.AcquireTokenByCredential(context.Background(), []string{scope})
	if err != nil {
		t.Fatalf("AcquireTokenByCredential: %v", err)
	}
	return res.AccessToken
}

// token gets a token straight from the token endpoint (no MSAL).
func token(t *testing.T, s *graphtest.Server) string {
	t.Helper()
	resp, body := postForm(t, s, s.TokenEndpoint(), url.Values{
		"grant_type": {"client_credentials"}, "client_id": {s.ClientID()}, "scope": {scope}, "client_secret": {secret},
	})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token: %d %s", resp.StatusCode, body)
	}
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Fatal(err)
	}
	return tr.AccessToken
}

func postForm(t *testing.T, s *graphtest.Server, u string, form url.Values) (*http.Response, []byte) {
	t.Helper()
	resp, err := s.Client().PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

type graphError struct {
	Error struct {
		Code       string            `json:"code"`
		Message    string            `json:"message"`
		InnerError map[string]string `json:"innerError"`
	} `json:"error"`
}

type result struct {
	status int
	header http.Header
	code   string
	body   []byte
}

func send(t *testing.T, s *graphtest.Server, tok, from, jobID string, body any) result {
	t.Helper()
	r, err := trySend(s, tok, from, jobID, body)
	if err != nil {
		t.Fatalf("sendMail: %v", err)
	}
	return r
}

func trySend(s *graphtest.Server, tok, from, jobID string, body any) (result, error) {
	var raw []byte
	switch b := body.(type) {
	case []byte:
		raw = b
	case string:
		raw = []byte(b)
	default:
		raw, _ = json.Marshal(b)
	}
	req, _ := http.NewRequest(http.MethodPost, s.GraphURL()+"/v1.0/users/"+url.PathEscape(from)+"/sendMail", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if jobID != "" {
		req.Header.Set("client-request-id", jobID)
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := result{status: resp.StatusCode, header: resp.Header, body: b}
	if resp.StatusCode >= 400 {
		var ge graphError
		if err := json.Unmarshal(b, &ge); err != nil {
			return r, errors.New("error body is not Graph-shaped: " + string(b))
		}
		r.code = ge.Error.Code
		if ge.Error.InnerError["request-id"] != resp.Header.Get("request-id") {
			return r, errors.New("innerError.request-id does not match the request-id header")
		}
	}
	return r, nil
}

func rcpt(addrs ...string) []map[string]any {
	out := []map[string]any{}
	for _, a := range addrs {
		out = append(out, map[string]any{"emailAddress": map[string]string{"name": "N " + a, "address": a}})
	}
	return out
}

func simpleMail(to ...string) map[string]any {
	return map[string]any{
		"message": map[string]any{
			"subject":      "Invoice 42",
			"body":         map[string]string{"contentType": "Text", "content": "Hello"},
			"toRecipients": rcpt(to...),
		},
		"saveToSentItems": false,
	}
}

func fullMail() map[string]any {
	return map[string]any{
		"message": map[string]any{
			"subject":       "Rapport trimestriel é",
			"body":          map[string]string{"contentType": "html", "content": "<p>Hi</p>"},
			"toRecipients":  rcpt("a@example.com"),
			"ccRecipients":  rcpt("b@example.com"),
			"bccRecipients": rcpt("c@example.com"),
			"replyTo":       rcpt("r@example.com"),
			"importance":    "high",
			"attachments": []map[string]any{{
				"@odata.type": "#microsoft.graph.fileAttachment", "name": "report.pdf", "contentType": "application/pdf",
				"contentBytes": base64.StdEncoding.EncodeToString([]byte("%PDF-1.4 fake")), "isInline": false,
			}, {
				"@odata.type": "#microsoft.graph.fileAttachment", "name": "logo.png", "contentType": "image/png",
				"contentBytes": base64.StdEncoding.EncodeToString([]byte{1, 2, 3}), "isInline": true, "contentId": "logo",
			}},
			"internetMessageHeaders": []map[string]string{{"name": "X-Mailworker-Job-Id", "value": "job-1"}},
		},
		"saveToSentItems": true,
	}
}

// withJobID sets the message's only internet message header to X-Mailworker-Job-Id: id.
func withJobID(body map[string]any, id string) map[string]any {
	body["message"].(map[string]any)["internetMessageHeaders"] = []map[string]string{{"name": "X-Mailworker-Job-Id", "value": id}}
	return body
}

// newGUID returns a random version 4 GUID, as a client-request-id should be.
func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // an upper bound: CI's two cores are shared under -race
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMSALClientSecret(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	c := secretClient(t, s, secret)
	var tok string
	for range 5 {
		tok = acquire(t, c)
	}
	if got := s.TokenRequests(); got != 1 {
		t.Fatalf("TokenRequests = %d after 5 acquisitions, want 1 (MSAL cache)", got)
	}

	r := send(t, s, tok, mailbox, "job-1", simpleMail("to@example.com"))
	if r.status != http.StatusAccepted || len(r.body) != 0 {
		t.Fatalf("sendMail = %d %q, want 202 with empty body", r.status, r.body)
	}
	if r.header.Get("request-id") == "" || r.header.Get("client-request-id") != "job-1" {
		t.Fatalf("headers request-id=%q client-request-id=%q", r.header.Get("request-id"), r.header.Get("client-request-id"))
	}
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("Messages = %d, want 1", len(msgs))
	}
	m := msgs[0]
	if m.JobID != "job-1" || m.From != mailbox || m.Subject != "Invoice 42" || m.BodyType != "Text" ||
		m.Body != "Hello" || len(m.To) != 1 || m.To[0] != "to@example.com" || m.SaveToSentItems ||
		m.RequestID != r.header.Get("request-id") || m.Importance != "normal" {
		t.Fatalf("message = %+v", m)
	}
}

func TestMSALWrongSecret(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	c := secretClient(t, s, "wrong")
	_, err := c.AcquireTokenByCredential(context.Background(), []string{scope})
	if err == nil || !strings.Contains(err.Error(), "AADSTS7000215") {
		t.Fatalf("err = %v, want AADSTS7000215", err)
	}
	if s.TokenFailures() != 1 || s.TokenRequests() != 0 {
		t.Fatalf("failures=%d requests=%d", s.TokenFailures(), s.TokenRequests())
	}
}

func newCert(t *testing.T) (*x509.Certificate, *rsa.PrivateKey) {
	t.Helper()
	cert, pemData, err := graphtest.NewAppCertificate(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	_, rest := pem.Decode(pemData) // the certificate, then the key
	block, _ := pem.Decode(rest)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key.(*rsa.PrivateKey)
}

func TestMSALCertificate(t *testing.T) {
	cert, key := newCert(t)
	s := newServer(t, graphtest.Options{Certificate: cert})

	cred, err := confidential.NewCredFromCert([]*x509.Certificate{cert}, key)
	if err != nil {
		t.Fatal(err)
	}
	c := msalClient(t, s, cred)
	var tok string
	for range 5 {
		tok = acquire(t, c)
	}
	if got := s.TokenRequests(); got != 1 {
		t.Fatalf("TokenRequests = %d, want 1", got)
	}
	if r := send(t, s, tok, mailbox, "", simpleMail("x@example.com")); r.status != http.StatusAccepted {
		t.Fatalf("sendMail = %d %s", r.status, r.body)
	}

	t.Run("other key is rejected", func(t *testing.T) {
		other, otherKey := newCert(t)
		cred, err := confidential.NewCredFromCert([]*x509.Certificate{other}, otherKey)
		if err != nil {
			t.Fatal(err)
		}
		_, err = msalClient(t, s, cred).AcquireTokenByCredential(context.Background(), []string{scope})
		if err == nil || !strings.Contains(err.Error(), "AADSTS700027") {
			t.Fatalf("err = %v, want AADSTS700027", err)
		}
	})
	t.Run("secret not accepted when only a certificate is registered", func(t *testing.T) {
		// newServer fills ClientSecret; build one without it directly.
		s2, err := graphtest.New(graphtest.Options{Certificate: cert})
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		_, err = secretClient(t, s2, secret).AcquireTokenByCredential(context.Background(), []string{scope})
		if err == nil {
			t.Fatal("secret accepted, want failure")
		}
	})
}

// MSAL treats a cached access token that expires within 5 minutes as expired
// (storage.AccessToken.Validate in MSAL Go v1.10.1), so with expires_in < 300 s every
// AcquireTokenByCredential goes to the token endpoint. Tests that want to count token refreshes
// use a TokenLifetime below 5 minutes; production lifetimes (~1 h) are served from the cache.
func TestShortTokenLifetimeBypassesMSALCache(t *testing.T) {
	s := newServer(t, graphtest.Options{TokenLifetime: 60 * time.Second})
	c := secretClient(t, s, secret)
	for range 3 {
		acquire(t, c)
	}
	if got := s.TokenRequests(); got != 3 {
		t.Fatalf("TokenRequests = %d, want 3 (expires_in < 300 s is never served from MSAL's cache)", got)
	}
}

func TestTokenExpiryOnGraph(t *testing.T) {
	var offset atomic.Int64
	s := newServer(t, graphtest.Options{
		TokenLifetime: time.Minute,
		Now:           func() time.Time { return time.Now().Add(time.Duration(offset.Load())) },
	})
	tok := token(t, s)
	if r := send(t, s, tok, mailbox, "", simpleMail("a@example.com")); r.status != http.StatusAccepted {
		t.Fatalf("fresh token: %d", r.status)
	}
	offset.Store(int64(2 * time.Minute))
	if r := send(t, s, tok, mailbox, "", simpleMail("a@example.com")); r.status != http.StatusUnauthorized || r.code != "InvalidAuthenticationToken" {
		t.Fatalf("expired token: %d %s", r.status, r.code)
	}
}

func TestTokenEndpointErrors(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	good := url.Values{"grant_type": {"client_credentials"}, "client_id": {"test-client"}, "scope": {scope}, "client_secret": {secret}}
	with := func(k, v string) url.Values {
		f := url.Values{}
		for kk, vv := range good {
			f[kk] = vv
		}
		if v == "" {
			f.Del(k)
		} else {
			f.Set(k, v)
		}
		return f
	}
	cases := []struct {
		name   string
		url    string
		form   url.Values
		status int
		err    string
		aadsts int
	}{
		{"wrong tenant", s.URL() + "/other-tenant/oauth2/v2.0/token", good, 400, "invalid_request", 90002},
		{"wrong client", s.TokenEndpoint(), with("client_id", "nope"), 400, "unauthorized_client", 700016},
		{"wrong secret", s.TokenEndpoint(), with("client_secret", "nope"), 401, "invalid_client", 7000215},
		{"no credential", s.TokenEndpoint(), with("client_secret", ""), 401, "invalid_client", 7000218},
		{"scope without /.default", s.TokenEndpoint(), with("scope", "Mail.Send"), 400, "invalid_scope", 1002012},
		{"wrong grant", s.TokenEndpoint(), with("grant_type", "password"), 400, "unsupported_grant_type", 70003},
		{"bad assertion", s.TokenEndpoint(), func() url.Values {
			f := with("client_secret", "")
			f.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
			f.Set("client_assertion", "a.b.c")
			return f
		}(), 401, "invalid_client", 700027},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := postForm(t, s, tc.url, tc.form)
			var e struct {
				Error       string `json:"error"`
				Description string `json:"error_description"`
				Codes       []int  `json:"error_codes"`
			}
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if resp.StatusCode != tc.status || e.Error != tc.err || len(e.Codes) != 1 || e.Codes[0] != tc.aadsts ||
				!strings.HasPrefix(e.Description, "AADSTS"+strconv.Itoa(tc.aadsts)+":") {
				t.Fatalf("got %d %s", resp.StatusCode, body)
			}
		})
	}
	if s.TokenRequests() != 0 || s.TokenFailures() != len(cases) {
		t.Fatalf("requests=%d failures=%d", s.TokenRequests(), s.TokenFailures())
	}

	t.Run("endpoint down", func(t *testing.T) {
		s.SetTokenEndpointDown(true)
		resp, _ := postForm(t, s, s.TokenEndpoint(), good)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("down: %d", resp.StatusCode)
		}
		s.SetTokenEndpointDown(false)
		if resp, _ := postForm(t, s, s.TokenEndpoint(), good); resp.StatusCode != http.StatusOK {
			t.Fatalf("up again: %d", resp.StatusCode)
		}
	})
}

func TestSendMailErrors(t *testing.T) {
	s := newServer(t, graphtest.Options{
		Mailboxes: []string{mailbox, "outside@contoso.com"},
		Scope:     []string{"billing@contoso.com"},
	})
	tok := token(t, s)
	big := simpleMail("a@example.com")
	big["message"].(map[string]any)["attachments"] = []map[string]any{{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": "big.bin",
		"contentBytes": base64.StdEncoding.EncodeToString(make([]byte, 3_200_000)),
	}}
	noRcpt := simpleMail()
	badHeader := simpleMail("a@example.com")
	badHeader["message"].(map[string]any)["internetMessageHeaders"] = []map[string]string{{"name": "Reply-By", "value": "x"}}
	badAddr := simpleMail("not-an-address")
	badAttach := simpleMail("a@example.com")
	badAttach["message"].(map[string]any)["attachments"] = []map[string]any{{"name": "x", "contentBytes": "AAAA"}}

	cases := []struct {
		name   string
		tok    string
		from   string
		body   any
		status int
		code   string
	}{
		{"no token", "", mailbox, simpleMail("a@example.com"), 401, "InvalidAuthenticationToken"},
		{"unknown token", "forged", mailbox, simpleMail("a@example.com"), 401, "InvalidAuthenticationToken"},
		{"unknown mailbox", tok, "ghost@contoso.com", simpleMail("a@example.com"), 404, "ErrorInvalidUser"},
		{"outside RBAC scope", tok, "outside@contoso.com", simpleMail("a@example.com"), 403, "ErrorAccessDenied"},
		{"too large", tok, mailbox, big, 413, "RequestEntityTooLarge"},
		{"not JSON", tok, mailbox, "{nope", 400, "RequestBodyRead"},
		{"no message", tok, mailbox, `{"saveToSentItems":true}`, 400, "ErrorInvalidRequest"},
		{"wrong type", tok, mailbox, `{"message":{"subject":5}}`, 400, "RequestBodyRead"},
		{"no recipients", tok, mailbox, noRcpt, 400, "ErrorInvalidRecipients"},
		{"invalid recipient", tok, mailbox, badAddr, 400, "ErrorInvalidRecipients"},
		{"non X- header", tok, mailbox, badHeader, 400, "InvalidInternetMessageHeader"},
		{"attachment without odata type", tok, mailbox, badAttach, 400, "RequestBodyRead"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := send(t, s, tc.tok, tc.from, "job-"+strings.ReplaceAll(tc.name, " ", "-"), tc.body)
			if r.status != tc.status || r.code != tc.code {
				t.Fatalf("got %d %s (%s), want %d %s", r.status, r.code, r.body, tc.status, tc.code)
			}
			if r.header.Get("client-request-id") == "" || r.header.Get("request-id") == "" {
				t.Fatal("missing request-id/client-request-id")
			}
		})
	}
	if n := len(s.Messages()); n != 0 {
		t.Fatalf("Messages = %d, want 0", n)
	}
	if got := s.SendRequests(); got != len(cases) {
		t.Fatalf("SendRequests = %d, want %d", got, len(cases))
	}
	t.Run("case-insensitive mailbox and full message", func(t *testing.T) {
		if r := send(t, s, tok, "BILLING@contoso.COM", "", fullMail()); r.status != http.StatusAccepted {
			t.Fatalf("got %d %s", r.status, r.body)
		}
		m := s.Messages()[0]
		if m.BodyType != "HTML" || m.Importance != "high" || len(m.Cc) != 1 || len(m.Bcc) != 1 || len(m.ReplyTo) != 1 ||
			len(m.Attachments) != 2 || m.Attachments[0].Size != len("%PDF-1.4 fake") || !m.Attachments[1].IsInline ||
			m.Attachments[1].ContentID != "logo" || m.Headers["X-Mailworker-Job-Id"] != "job-1" || !m.SaveToSentItems {
			t.Fatalf("message = %+v", m)
		}
	})
}

func TestConcurrencyLimitAndInRetryAfter(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	// A slow mailbox: four requests are held in flight.
	s.SetMailboxFault(mailbox, &graphtest.Fault{Delay: 2 * time.Second})
	var wg sync.WaitGroup
	statuses := make(chan int, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := trySend(s, tok, mailbox, "held-"+strconv.Itoa(i), simpleMail("a@example.com"))
			if err != nil {
				t.Error(err)
				return
			}
			statuses <- r.status
		}()
	}
	waitFor(t, "4 requests in flight", func() bool { return s.InFlight(mailbox) == 4 })
	s.SetMailboxFault(mailbox, nil)

	r := send(t, s, tok, mailbox, "fifth", simpleMail("a@example.com"))
	if r.status != http.StatusTooManyRequests || r.code != "ApplicationThrottled" || r.header.Get("Retry-After") != "1" {
		t.Fatalf("fifth: %d %s Retry-After=%q", r.status, r.code, r.header.Get("Retry-After"))
	}
	if r := send(t, s, tok, "other@contoso.com", "", simpleMail("a@example.com")); r.status != http.StatusAccepted {
		t.Fatalf("other mailbox is not limited: %d", r.status)
	}
	wg.Wait()
	close(statuses)
	for st := range statuses {
		if st != http.StatusAccepted {
			t.Fatalf("held request: %d", st)
		}
	}
	if s.Throttled() != 1 {
		t.Fatalf("Throttled = %d", s.Throttled())
	}

	t.Run("InRetryAfter", func(t *testing.T) {
		s.Reset()
		s.Script(mailbox, graphtest.Fault{Status: 429, RetryAfter: "30"})
		r := send(t, s, tok, mailbox, "", simpleMail("a@example.com"))
		if r.status != 429 || r.header.Get("Retry-After") != "30" || r.code != "ApplicationThrottled" {
			t.Fatalf("scripted: %d %q", r.status, r.header.Get("Retry-After"))
		}
		if s.InRetryAfter() != 0 {
			t.Fatal("InRetryAfter counted the throttled request itself")
		}
		if r := send(t, s, tok, mailbox, "", simpleMail("a@example.com")); r.status != 202 {
			t.Fatalf("after script: %d", r.status)
		}
		if s.InRetryAfter() != 1 || s.Throttled() != 1 {
			t.Fatalf("InRetryAfter=%d Throttled=%d", s.InRetryAfter(), s.Throttled())
		}
		if r := send(t, s, tok, "other@contoso.com", "", simpleMail("a@example.com")); r.status != 202 || s.InRetryAfter() != 1 {
			t.Fatal("Retry-After of one mailbox counted for another")
		}
	})
}

func TestSimulatedPerMinuteThrottle(t *testing.T) {
	s := newServer(t, graphtest.Options{SimulatedPerMinuteThrottle: 2})
	tok := token(t, s)
	for i := range 2 {
		if r := send(t, s, tok, mailbox, "", simpleMail("a@example.com")); r.status != 202 {
			t.Fatalf("send %d: %d", i, r.status)
		}
	}
	r := send(t, s, tok, mailbox, "", simpleMail("a@example.com"))
	ra, _ := strconv.Atoi(r.header.Get("Retry-After"))
	if r.status != 429 || ra < 1 || ra > 60 {
		t.Fatalf("third: %d Retry-After=%q", r.status, r.header.Get("Retry-After"))
	}
	if r := send(t, s, tok, mailbox, "", simpleMail("a@example.com")); r.status != 429 || s.InRetryAfter() != 1 {
		t.Fatalf("fourth: %d InRetryAfter=%d", r.status, s.InRetryAfter())
	}
}

func TestFaults(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	ok := func(from string) result { return send(t, s, tok, from, "", simpleMail("a@example.com")) }

	t.Run("script order and any-mailbox queue", func(t *testing.T) {
		s.Script(mailbox, graphtest.Fault{Status: 503, RetryAfter: "5"}, graphtest.Fault{Status: 500})
		s.Script("", graphtest.Fault{Status: 504})
		if r := ok(mailbox); r.status != 503 || r.code != "ServiceUnavailable" || r.header.Get("Retry-After") != "5" {
			t.Fatalf("1: %d %s", r.status, r.code)
		}
		if r := ok("other@contoso.com"); r.status != 504 || r.code != "GatewayTimeout" {
			t.Fatalf("any: %d %s", r.status, r.code)
		}
		if r := ok(mailbox); r.status != 500 {
			t.Fatalf("2: %d", r.status)
		}
		if r := ok(mailbox); r.status != 202 {
			t.Fatalf("after script: %d", r.status)
		}
	})
	t.Run("reset closes the connection", func(t *testing.T) {
		s.Script(mailbox, graphtest.Fault{Reset: true})
		if _, err := trySend(s, tok, mailbox, "", simpleMail("a@example.com")); err == nil {
			t.Fatal("want a transport error")
		}
	})
	t.Run("accept then fail", func(t *testing.T) {
		n := len(s.Messages())
		s.Script(mailbox, graphtest.Fault{AcceptThenFail: true})
		if r := send(t, s, tok, mailbox, "amb-1", simpleMail("a@example.com")); r.status != 504 {
			t.Fatalf("got %d", r.status)
		}
		if r := send(t, s, tok, mailbox, "amb-1", simpleMail("a@example.com")); r.status != 202 {
			t.Fatalf("retry: %d", r.status)
		}
		if got := len(s.Messages()) - n; got != 2 || s.Duplicates() != 1 {
			t.Fatalf("messages +%d, duplicates %d", got, s.Duplicates())
		}
	})
	t.Run("delay outlasts the client timeout", func(t *testing.T) {
		s.Script(mailbox, graphtest.Fault{Delay: time.Minute, Status: 500})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.GraphURL()+"/v1.0/users/"+mailbox+"/sendMail", strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+tok)
		if resp, err := s.Client().Do(req); err == nil {
			resp.Body.Close()
			t.Fatal("want a timeout")
		}
		waitFor(t, "held request released", func() bool { return s.InFlight(mailbox) == 0 })
	})
	t.Run("persistent faults", func(t *testing.T) {
		s.SetFault(&graphtest.Fault{Status: 503, Probability: 1})
		s.SetMailboxFault(mailbox, &graphtest.Fault{Status: 429, RetryAfter: "7"})
		if r := ok(mailbox); r.status != 429 || r.header.Get("Retry-After") != "7" {
			t.Fatalf("mailbox fault: %d", r.status)
		}
		if r := ok("other@contoso.com"); r.status != 503 {
			t.Fatalf("global fault: %d", r.status)
		}
		s.SetMailboxFault(mailbox, nil)
		if r := ok(mailbox); r.status != 503 {
			t.Fatalf("global fault after mailbox cleared: %d", r.status)
		}
		s.SetFault(nil)
		if r := ok(mailbox); r.status != 202 {
			t.Fatalf("cleared: %d", r.status)
		}
	})
	t.Run("Reset clears messages and counters", func(t *testing.T) {
		if len(s.Messages()) == 0 || s.SendRequests() == 0 {
			t.Fatal("nothing to reset")
		}
		s.Reset()
		if st := s.Stats(); st != (graphtest.Stats{}) || len(s.Messages()) != 0 {
			t.Fatalf("after Reset: %+v", st)
		}
		if r := ok(mailbox); r.status != 202 {
			t.Fatalf("token survives Reset: %d", r.status)
		}
	})
}

func TestSandboxEndpoints(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	send(t, s, tok, mailbox, "j1", simpleMail("a@example.com"))

	get := func(path string, v any) {
		resp, err := s.Client().Get(s.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	var msgs []graphtest.Message
	get("/_sandbox/messages", &msgs)
	if len(msgs) != 1 || msgs[0].JobID != "j1" {
		t.Fatalf("messages = %+v", msgs)
	}
	var st graphtest.Stats
	get("/_sandbox/stats", &st)
	if st.SendRequests != 1 || st.Accepted != 1 || st.TokenRequests != 1 {
		t.Fatalf("stats = %+v", st)
	}
	req, _ := http.NewRequest(http.MethodDelete, s.URL()+"/_sandbox/messages", nil)
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(s.Messages()) != 0 {
		t.Fatal("DELETE did not reset")
	}
	resp, err = s.Client().Get(s.URL() + "/_sandbox/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(pemBytes, s.CACertPEM()) {
		t.Fatal("ca.pem differs from CACertPEM")
	}
}

func TestOutDir(t *testing.T) {
	dir := t.TempDir()
	s := newServer(t, graphtest.Options{OutDir: dir})
	tok := token(t, s)
	// The job id is the X-Mailworker-Job-Id header (client-request-id is a fresh GUID per request).
	send(t, s, tok, mailbox, newGUID(), withJobID(fullMail(), "job-42"))
	send(t, s, tok, mailbox, newGUID(), withJobID(simpleMail("a@example.com"), "job-42"))
	send(t, s, tok, mailbox, "../evil", simpleMail("a@example.com"))

	var m graphtest.Message
	b, err := os.ReadFile(filepath.Join(dir, "job-42.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &m); err != nil || m.JobID != "job-42" || len(m.Attachments) != 2 {
		t.Fatalf("json: %v %+v", err, m)
	}
	eml, err := os.ReadFile(filepath.Join(dir, "job-42.eml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"From: <" + mailbox + ">", "To: \"N a@example.com\" <a@example.com>", "Cc: ", "Subject: =?utf-8?q?",
		"Message-ID: <", "Date: ", "X-Mailworker-Job-Id: job-42", "multipart/mixed; boundary=", "filename=report.pdf", "Content-ID: <logo>"} {
		if !bytes.Contains(eml, []byte(want)) {
			t.Errorf("eml lacks %q:\n%s", want, eml)
		}
	}
	if bytes.Contains(eml, []byte("c@example.com")) {
		t.Error("eml reveals Bcc")
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	// job-42 twice (the duplicate gets a sequence suffix) and one unsafe id named by sequence.
	if len(names) != 6 || !contains(names, "job-42-000002.json") || !contains(names, "000003.eml") {
		t.Fatalf("files = %v", names)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestConcurrentLoad(t *testing.T) {
	s := newServer(t, graphtest.Options{MaxConcurrentPerMailbox: -1})
	tok := token(t, s)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := "box" + strconv.Itoa(i%10) + "@contoso.com"
			if r, err := trySend(s, tok, from, "load-"+strconv.Itoa(i), simpleMail("a@example.com")); err != nil || r.status != 202 {
				t.Errorf("send %d: %v %d", i, err, r.status)
			}
		}()
	}
	wg.Wait()
	if n := len(s.Messages()); n != 200 || s.Duplicates() != 0 {
		t.Fatalf("messages %d duplicates %d", n, s.Duplicates())
	}
}

// Another process trusts the server through CACertPEM alone, under every name the certificate covers.
func TestCACertPEMTrustedElsewhere(t *testing.T) {
	var logged atomic.Int64
	s := newServer(t, graphtest.Options{Logf: func(string, ...any) { logged.Add(1) }})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CACertPEM()) {
		t.Fatal("CACertPEM is not PEM")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	port := strings.TrimPrefix(s.URL(), "https://127.0.0.1:")
	for _, host := range []string{"127.0.0.1", "localhost"} {
		resp, err := c.Get("https://" + host + ":" + port + "/" + s.TenantID() + "/v2.0/.well-known/openid-configuration")
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		var doc map[string]any
		err = json.NewDecoder(resp.Body).Decode(&doc)
		resp.Body.Close()
		if err != nil || doc["issuer"] != s.AuthorityURL()+"/v2.0" || doc["token_endpoint"] != s.TokenEndpoint() || doc["authorization_endpoint"] == nil {
			t.Fatalf("%s: %v %v", host, err, doc)
		}
	}
	// An untrusting client fails the handshake; the server logs through Logf, not stderr.
	if _, err := http.Get(s.URL() + "/_sandbox/stats"); err == nil {
		t.Fatal("default client trusted the fake CA")
	}
	waitFor(t, "handshake error logged", func() bool { return logged.Load() > 0 })
}

func TestLatency(t *testing.T) {
	s := newServer(t, graphtest.Options{Latency: 50 * time.Millisecond, LatencyJitter: 10 * time.Millisecond})
	tok := token(t, s)
	start := time.Now()
	if r := send(t, s, tok, mailbox, "", simpleMail("a@example.com")); r.status != 202 {
		t.Fatalf("got %d", r.status)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("answered after %v, before the configured latency", d)
	}
}
