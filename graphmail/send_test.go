package graphmail

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

func testMsg() *Message {
	return &Message{From: "billing@contoso.com", To: []Address{{Address: "a@example.com"}}, Subject: "hi", Text: "hello"}
}

func asError(t *testing.T, err error) *contract.SendError {
	t.Helper()
	var e *contract.SendError
	if !errors.As(err, &e) {
		t.Fatalf("error %T %v is not *contract.SendError", err, err)
	}
	return e
}

func TestSendStatusTable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status     int
		code       string
		retryAfter string
		class      contract.Class
		reason     contract.Reason
		ambiguous  bool
		wantAfter  time.Duration
	}{
		{400, "ErrorInvalidRecipients", "", contract.ClassPermanent, "recipient_invalid", false, 0},
		{400, "InvalidInternetMessageHeader", "", contract.ClassPermanent, "graph_rejected", false, 0},
		{400, "ErrorInvalidRequest", "", contract.ClassPermanent, "graph_rejected", false, 0},
		{403, "ErrorAccessDenied", "", contract.ClassRetryable, "access_denied", false, 0},
		{403, "Forbidden", "", contract.ClassPermanent, "access_denied", false, 0},
		{404, "ResourceNotFound", "", contract.ClassPermanent, "mailbox_not_found", false, 0},
		{404, "ErrorInvalidUser", "", contract.ClassPermanent, "mailbox_not_found", false, 0},
		{404, "MailboxNotEnabledForRESTAPI", "", contract.ClassPermanent, "mailbox_not_found", false, 0},
		{408, "", "", contract.ClassRetryable, "", false, 0},
		{413, "ErrorMessageSizeExceeded", "", contract.ClassPermanent, "message_too_large", false, 0},
		{415, "", "", contract.ClassPermanent, "graph_rejected", false, 0},
		{429, "ApplicationThrottled", "17", contract.ClassThrottled, "", false, 17 * time.Second},
		{429, "ApplicationThrottled", "", contract.ClassThrottled, "", false, 0},
		{500, "InternalServerError", "", contract.ClassRetryable, "", true, 0},
		{502, "", "", contract.ClassRetryable, "", true, 0},
		{503, "ServiceUnavailable", "5", contract.ClassRetryable, "", true, 5 * time.Second},
		{504, "", "", contract.ClassRetryable, "", true, 0},
	}
	f := newFake(t)
	c := f.client(t)
	var mu sync.Mutex // the fake answers one scripted response at a time
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d_%s", tt.status, tt.code), func(t *testing.T) {
			mu.Lock()
			defer mu.Unlock()
			var sentCRID string
			f.setGraph(func(w http.ResponseWriter, r *http.Request, n int) {
				_, _ = io.Copy(io.Discard, r.Body)
				sentCRID = r.Header.Get("client-request-id")
				if tt.retryAfter != "" {
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				graphError(w, tt.status, tt.code, "graph says no")
			})
			res, err := c.Send(context.Background(), testMsg())
			e := asError(t, err)
			if e.Class != tt.class || e.Reason != tt.reason || e.Ambiguous != tt.ambiguous || e.RetryAfter != tt.wantAfter {
				t.Errorf("got class=%v reason=%q ambiguous=%v retryAfter=%v; want %v %q %v %v",
					e.Class, e.Reason, e.Ambiguous, e.RetryAfter, tt.class, tt.reason, tt.ambiguous, tt.wantAfter)
			}
			if e.Status != tt.status || e.Code != tt.code || e.Message != "graph says no" {
				t.Errorf("got status=%d code=%q message=%q", e.Status, e.Code, e.Message)
			}
			// client-request-id is the GUID this request carried; the job id labels the error.
			if !strings.HasPrefix(e.RequestID, "req-") || !isGUID(e.ClientRequestID) || e.ClientRequestID != sentCRID || e.Date.IsZero() {
				t.Errorf("ids: request-id=%q client-request-id=%q (sent %q) date=%v", e.RequestID, e.ClientRequestID, sentCRID, e.Date)
			}
			if res.Status != tt.status || res.RequestID != e.RequestID || res.ClientRequestID != sentCRID || len(res.Calls) != 1 {
				t.Errorf("result = %+v", res)
			}
		})
	}
}

func TestSendOK(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	var got http.Header
	var path string
	f.setGraph(func(w http.ResponseWriter, r *http.Request, n int) {
		got, path = r.Header.Clone(), r.URL.Path
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	})
	var tokenCalls []bool
	var mu sync.Mutex
	c := f.client(t, func(cfg *Config) {
		cfg.OnTokenRequest = func(ok bool) { mu.Lock(); tokenCalls = append(tokenCalls, ok); mu.Unlock() }
	})
	for range 5 {
		res, err := c.Send(context.Background(), testMsg())
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		if res.Status != 202 || res.RequestID == "" || !isGUID(res.ClientRequestID) || res.ClientRequestID != got.Get("client-request-id") || res.Duration <= 0 {
			t.Errorf("result = %+v", res)
		}
	}
	if n := f.tokens.Load(); n != 1 {
		t.Errorf("token requests = %d, want 1 (cache)", n)
	}
	mu.Lock()
	if !reflect.DeepEqual(tokenCalls, []bool{true}) {
		t.Errorf("OnTokenRequest calls = %v, want [true]", tokenCalls)
	}
	mu.Unlock()
	if path != "/v1.0/users/billing@contoso.com/sendMail" {
		t.Errorf("path = %q", path)
	}
	if got.Get("Authorization") != "Bearer tok-1" || got.Get("Content-Type") != "application/json" ||
		!isGUID(got.Get("client-request-id")) || got.Get("return-client-request-id") != "true" {
		t.Errorf("headers = %v", got)
	}
	form := f.lastForm()
	if form["grant_type"][0] != "client_credentials" || !strings.HasPrefix(form["scope"][0], "https://graph.microsoft.com/.default") ||
		form["client_secret"][0] != "s3cret-value" || form["client_id"][0] != "client-1" {
		t.Errorf("token form = %v", form)
	}
}

func TestSend401RefreshesOnceAndRetries(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	var auths []string
	var mu sync.Mutex
	f.setGraph(func(w http.ResponseWriter, r *http.Request, n int) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.Header.Get("Authorization") == "Bearer tok-1" {
			graphError(w, 401, "InvalidAuthenticationToken", "Access token has expired")
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	c := f.client(t)
	if _, err := c.Send(context.Background(), testMsg()); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if _, err := c.Send(context.Background(), testMsg()); err != nil {
		t.Fatalf("Send: %v", err)
	}
	mu.Lock()
	want := []string{"Bearer tok-1", "Bearer tok-2", "Bearer tok-2"}
	if !reflect.DeepEqual(auths, want) {
		t.Errorf("Authorization headers = %v, want %v (refreshed token cached)", auths, want)
	}
	mu.Unlock()
	if n := f.tokens.Load(); n != 2 {
		t.Errorf("token requests = %d, want 2", n)
	}
}

func TestSend401Twice(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	f.setGraph(func(w http.ResponseWriter, r *http.Request, n int) {
		_, _ = io.Copy(io.Discard, r.Body)
		graphError(w, 401, "InvalidAuthenticationToken", "nope")
	})
	c := f.client(t)
	_, err := c.Send(context.Background(), testMsg())
	e := asError(t, err)
	if e.Class != contract.ClassRetryable || e.Reason != "auth_failed" || e.Ambiguous || e.Status != 401 {
		t.Errorf("err = %v", e)
	}
	if s, tk := f.sends.Load(), f.tokens.Load(); s != 2 || tk != 2 {
		t.Errorf("sends=%d tokens=%d, want 2 and 2", s, tk)
	}
}

func TestSendConcurrent401sRefreshOnce(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	f.setGraph(func(w http.ResponseWriter, r *http.Request, n int) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Header.Get("Authorization") == "Bearer tok-1" {
			graphError(w, 401, "InvalidAuthenticationToken", "revoked")
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	c := f.client(t)
	if _, err := c.Token(context.Background()); err != nil { // everyone starts from tok-1
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := c.Send(context.Background(), testMsg()); err != nil {
				t.Errorf("Send: %v", err)
			}
		})
	}
	wg.Wait()
	if n := f.tokens.Load(); n != 2 {
		t.Errorf("token requests = %d, want 2", n)
	}
}

func TestSendTimeoutAfterWriteIsAmbiguous(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	release := make(chan struct{})
	f.setGraph(func(w http.ResponseWriter, r *http.Request, n int) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-release // longer than the client's timeout
		w.WriteHeader(http.StatusAccepted)
	})
	defer close(release)
	c := f.client(t, func(cfg *Config) { cfg.Timeout = 200 * time.Millisecond })
	if _, err := c.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	res, err := c.Send(context.Background(), testMsg())
	if err == nil {
		t.Fatalf("Send succeeded: %+v", res)
	}
	e := asError(t, err)
	if e.Class != contract.ClassRetryable || !e.Ambiguous || e.Status != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v (class %v ambiguous %v), want retryable ambiguous deadline", e, e.Class, e.Ambiguous)
	}
	if !IsAmbiguous(err) {
		t.Error("IsAmbiguous = false")
	}
}

func TestSendResetAfterWriteIsAmbiguous(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	f.setGraph(func(w http.ResponseWriter, r *http.Request, n int) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
			if tcp, ok := tc.NetConn().(*net.TCPConn); ok {
				_ = tcp.SetLinger(0) // RST
			}
		}
		_ = conn.Close()
	})
	c := f.client(t)
	_, err := c.Send(context.Background(), testMsg())
	e := asError(t, err)
	if e.Class != contract.ClassRetryable || !e.Ambiguous || e.Status != 0 {
		t.Errorf("err = %v, want retryable ambiguous", e)
	}
}

func TestSendConnectionRefusedIsNotAmbiguous(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	c := f.client(t, func(cfg *Config) { cfg.GraphURL = "https://" + addr })
	_, err = c.Send(context.Background(), testMsg())
	e := asError(t, err)
	if e.Class != contract.ClassRetryable || e.Ambiguous || e.Status != 0 || e.Reason != "" {
		t.Errorf("err = %v, want retryable, not ambiguous", e)
	}
}

func TestSendTLSFailureIsNotAmbiguous(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer plain.Close()
	c := f.client(t, func(cfg *Config) { cfg.GraphURL = strings.Replace(plain.URL, "http://", "https://", 1) })
	_, err := c.Send(context.Background(), testMsg())
	e := asError(t, err)
	if e.Class != contract.ClassRetryable || e.Ambiguous || e.Status != 0 {
		t.Errorf("err = %v, want retryable, not ambiguous", e)
	}
}

func TestSendTokenFailure(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	f.setToken(func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}`)
	})
	var calls []bool
	c := f.client(t, func(cfg *Config) { cfg.OnTokenRequest = func(ok bool) { calls = append(calls, ok) } })
	_, err := c.Send(context.Background(), testMsg())
	e := asError(t, err)
	if e.Class != contract.ClassRetryable || e.Reason != "auth_failed" || e.Ambiguous || e.Status != 0 || e.Code != "invalid_client" {
		t.Errorf("err = %#v", e)
	}
	if !strings.Contains(e.Error(), "AADSTS7000215") || e.ClientRequestID != "" {
		t.Errorf("err text = %q", e.Error())
	}
	if f.sends.Load() != 0 {
		t.Error("sendMail called without a token")
	}
	if !reflect.DeepEqual(calls, []bool{false}) {
		t.Errorf("OnTokenRequest calls = %v", calls)
	}
}

func TestSendMapping(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	var body []byte
	f.setGraph(func(w http.ResponseWriter, r *http.Request, n int) {
		body, _ = io.ReadAll(r.Body)
		w.WriteHeader(http.StatusAccepted)
	})
	c := f.client(t)
	msg := &Message{
		From:    "billing@contoso.com",
		To:      []Address{{Name: "Ann", Address: "ann@example.com"}, {Address: "bob@example.com"}},
		Cc:      []Address{{Name: "Cy", Address: "cy@example.com"}},
		Bcc:     []Address{{Address: "dee@example.com"}},
		ReplyTo: []Address{{Name: "Support", Address: "support@contoso.com"}},
		Subject: "Invoice <42> & more",
		Text:    "plain",
		HTML:    "<p>Hi &amp; bye</p>",
		Attachments: []Attachment{
			{Name: "a.pdf", ContentType: "application/pdf", Content: []byte{0, 1, 2, 250}},
			{Name: "logo.png", ContentType: "image/png", Content: []byte("png"), Inline: true, ContentID: "logo"},
		},
		Headers:         []Header{{Name: "X-Mailworker-Job-Id", Value: "job-9"}},
		Importance:      "high",
		SaveToSentItems: true,
	}
	if _, err := c.Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	want := map[string]any{
		"saveToSentItems": true,
		"message": map[string]any{
			"subject": "Invoice <42> & more",
			"body":    map[string]any{"contentType": "HTML", "content": "<p>Hi &amp; bye</p>"},
			"toRecipients": []any{
				map[string]any{"emailAddress": map[string]any{"name": "Ann", "address": "ann@example.com"}},
				map[string]any{"emailAddress": map[string]any{"address": "bob@example.com"}},
			},
			"ccRecipients":  []any{map[string]any{"emailAddress": map[string]any{"name": "Cy", "address": "cy@example.com"}}},
			"bccRecipients": []any{map[string]any{"emailAddress": map[string]any{"address": "dee@example.com"}}},
			"replyTo":       []any{map[string]any{"emailAddress": map[string]any{"name": "Support", "address": "support@contoso.com"}}},
			"attachments": []any{
				map[string]any{"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.pdf", "contentType": "application/pdf",
					"contentBytes": base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 250})},
				map[string]any{"@odata.type": "#microsoft.graph.fileAttachment", "name": "logo.png", "contentType": "image/png",
					"contentBytes": base64.StdEncoding.EncodeToString([]byte("png")), "isInline": true, "contentId": "logo"},
			},
			"internetMessageHeaders": []any{map[string]any{"name": "X-Mailworker-Job-Id", "value": "job-9"}},
			"importance":             "high",
		},
	}
	gm, wm := got["message"].(map[string]any), want["message"].(map[string]any)
	for k, v := range wm {
		if !reflect.DeepEqual(gm[k], v) {
			t.Errorf("message.%s = %#v, want %#v", k, gm[k], v)
		}
	}
	for k := range gm {
		if _, ok := wm[k]; !ok {
			t.Errorf("unexpected message.%s = %#v", k, gm[k])
		}
	}
	if got["saveToSentItems"] != true || len(got) != 2 {
		t.Errorf("top level = %v", got)
	}
	if strings.Contains(string(body), `\u003c`) {
		t.Error("HTML escaped in JSON")
	}

	// Text only, no optional fields.
	if _, err := c.Send(context.Background(), &Message{From: "billing@contoso.com", To: []Address{{Address: "a@b.c"}}, Text: "t"}); err != nil {
		t.Fatal(err)
	}
	got = nil
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	wantMin := map[string]any{"saveToSentItems": false, "message": map[string]any{
		"subject": "", "body": map[string]any{"contentType": "Text", "content": "t"},
		"toRecipients": []any{map[string]any{"emailAddress": map[string]any{"address": "a@b.c"}}},
	}}
	if !reflect.DeepEqual(got, wantMin) {
		t.Errorf("minimal body = %v, want %v", got, wantMin)
	}
}

func TestSendRejectsMessageWithoutFrom(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	c := f.client(t)
	_, err := c.Send(context.Background(), &Message{})
	if e := asError(t, err); e.Class != contract.ClassPermanent || e.Reason != "internal" {
		t.Errorf("err = %v", e)
	}
}

// TestSecretsNeverInErrors sets sentinel secrets and makes the token endpoint
// and Graph echo everything they receive; no error text may contain them.
func TestSecretsNeverInErrors(t *testing.T) {
	t.Parallel()
	const (
		secret   = "SENTINEL-SECRET~value+/="
		password = "SENTINEL-PASSWORD"
		fedToken = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJTRU5USU5FTC1GRUQifQ.c2lnbmF0dXJl"
	)
	echo := func(w http.ResponseWriter, r *http.Request, n int) {
		body, _ := io.ReadAll(r.Body)
		if r.Form != nil {
			body = []byte(r.PostForm.Encode())
		}
		dump := fmt.Sprintf("%s %s %v %s", r.Method, r.URL, r.Header, body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": "invalid_request", "error_description": dump})
	}
	graphEcho := func(w http.ResponseWriter, r *http.Request, n int) {
		body, _ := io.ReadAll(r.Body)
		msg := fmt.Sprintf("you sent %v %s", r.Header, body)
		graphError(w, 400, "Echo"+r.Header.Get("Authorization"), msg)
	}
	check := func(t *testing.T, err error, sentinels ...string) {
		t.Helper()
		if err == nil {
			t.Fatal("no error")
		}
		var texts []string
		for e := err; e != nil; e = errors.Unwrap(e) {
			texts = append(texts, e.Error(), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e))
		}
		for _, txt := range texts {
			for _, s := range sentinels {
				if strings.Contains(txt, s) {
					t.Errorf("error text contains sentinel %q: %s", s, txt)
				}
			}
		}
	}

	t.Run("client secret", func(t *testing.T) {
		t.Parallel()
		f := newFake(t)
		f.setToken(echo)
		c := f.client(t, func(cfg *Config) { cfg.Credential = Credential{ClientSecret: secret} })
		_, err := c.Send(context.Background(), testMsg())
		check(t, err, secret, "SENTINEL-SECRET")
		if f.tokens.Load() == 0 {
			t.Fatal("token endpoint not called")
		}
	})
	t.Run("certificate", func(t *testing.T) {
		t.Parallel()
		f := newFake(t)
		f.setToken(echo)
		pemData := selfSignedPEM(t, time.Now().Add(time.Hour))
		c := f.client(t, func(cfg *Config) { cfg.Credential = Credential{CertificatePEM: pemData, CertificatePassword: password} })
		_, err := c.Send(context.Background(), testMsg())
		check(t, err, password, "eyJ", "PRIVATE KEY")
		if a := f.lastForm()["client_assertion"]; len(a) == 0 {
			t.Error("no client_assertion sent")
		}
	})
	t.Run("federated token", func(t *testing.T) {
		t.Parallel()
		f := newFake(t)
		f.setToken(echo)
		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte(fedToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c := f.client(t, func(cfg *Config) { cfg.Credential = Credential{FederatedTokenFile: file} })
		_, err := c.Send(context.Background(), testMsg())
		check(t, err, fedToken, "SENTINEL-FED", "eyJzdWIi")
		if a := f.lastForm()["client_assertion"]; len(a) != 1 || a[0] != fedToken {
			t.Errorf("client_assertion = %v, want the file content", a)
		}
	})
	t.Run("graph echoes the access token", func(t *testing.T) {
		t.Parallel()
		f := newFake(t)
		f.setToken(func(w http.ResponseWriter, r *http.Request, n int) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"token_type": "Bearer", "access_token": "SENTINEL-ACCESS-TOKEN", "expires_in": 3600})
		})
		f.setGraph(graphEcho)
		c := f.client(t)
		_, err := c.Send(context.Background(), testMsg())
		check(t, err, "SENTINEL-ACCESS-TOKEN")
	})
	t.Run("new with bad certificate", func(t *testing.T) {
		t.Parallel()
		bad := []byte("-----BEGIN PRIVATE KEY-----\nU0VOVElORUwtS0VZ\n-----END PRIVATE KEY-----\n")
		_, err := New(Config{TenantID: "t", ClientID: "c", Credential: Credential{CertificatePEM: bad, CertificatePassword: password}})
		check(t, err, password, "U0VOVElORUwtS0VZ")
	})
}

func TestCertificateCredential(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	notAfter := time.Now().Add(48 * time.Hour).Truncate(time.Second).UTC()
	c := f.client(t, func(cfg *Config) { cfg.Credential = Credential{CertificatePEM: selfSignedPEM(t, notAfter)} })
	na, ok := c.CertificateNotAfter()
	if !ok || !na.Equal(notAfter) {
		t.Errorf("CertificateNotAfter = %v, %v; want %v", na, ok, notAfter)
	}
	for range 5 {
		if _, err := c.Send(context.Background(), testMsg()); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.tokens.Load(); n != 1 {
		t.Errorf("token requests = %d, want 1", n)
	}
	form := f.lastForm()
	if form["client_assertion_type"][0] != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || len(form["client_secret"]) != 0 {
		t.Errorf("token form = %v", form)
	}
	s := f.client(t)
	if _, ok := s.CertificateNotAfter(); ok {
		t.Error("secret credential reports a certificate")
	}
}

func TestNewValidation(t *testing.T) {
	t.Parallel()
	good := Config{TenantID: "t", ClientID: "c", Credential: Credential{ClientSecret: "x"}}
	tests := []struct {
		field string
		mod   func(*Config)
	}{
		{"TenantID", func(c *Config) { c.TenantID = "" }},
		{"TenantID", func(c *Config) { c.TenantID = "a/b" }},
		{"ClientID", func(c *Config) { c.ClientID = "" }},
		{"Cloud", func(c *Config) { c.Cloud = "mars" }},
		{"AuthorityHost", func(c *Config) { c.AuthorityHost = "http://127.0.0.1:1" }},
		{"GraphURL", func(c *Config) { c.GraphURL = "graph" }},
		{"Timeout", func(c *Config) { c.Timeout = -1 }},
		{"Credential", func(c *Config) { c.Credential = Credential{} }},
		{"Credential.CertificatePEM", func(c *Config) { c.Credential = Credential{CertificatePEM: []byte("junk")} }},
		{"Credential.CertificatePEM", func(c *Config) { c.Credential = Credential{CertificatePEM: ecCertPEM(t)} }},
	}
	for _, tt := range tests {
		cfg := good
		tt.mod(&cfg)
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s: err = %v", tt.field, err)
		}
	}
	for _, cloud := range []Cloud{"", CloudGlobal, CloudUSGov, CloudUSGovDoD, CloudChina} {
		cfg := good
		cfg.Cloud = cloud
		c, err := New(cfg)
		if err != nil {
			t.Errorf("cloud %q: %v", cloud, err)
			continue
		}
		_, g, _ := cloud.Endpoints()
		if c.scopes[0] != g+"/.default" || c.sendPrefix != g+"/v1.0/users/" {
			t.Errorf("cloud %q: scope %q prefix %q", cloud, c.scopes[0], c.sendPrefix)
		}
		c.Close()
	}
}

func ecCertPEM(t *testing.T) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM(t, key, &key.PublicKey, time.Now().Add(time.Hour))
}

// A 202 may carry Retry-After (Microsoft Q&A 5629476): the mail is sent (no error) and
// Result.RetryAfter tells the caller to pause the mailbox.
func TestSend202WithRetryAfter(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	f.setGraph(func(w http.ResponseWriter, r *http.Request, n int) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Retry-After", "12")
		w.WriteHeader(http.StatusAccepted)
	})
	c := f.client(t)
	res, err := c.Send(context.Background(), testMsg())
	if err != nil || res.Status != 202 || res.RetryAfter != 12*time.Second {
		t.Fatalf("res %+v err %v: want 202 with RetryAfter 12s", res, err)
	}
	if n := f.sends.Load(); n != 1 {
		t.Fatalf("sendMail requests = %d, want 1", n)
	}
}
