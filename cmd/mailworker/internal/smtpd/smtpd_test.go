package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// objectPutRace: nats.go v1.55's object store Put publishes through a
// JetStream context of its own and cleans it up when it returns
// (jetstream/object.go:693, cleanupReplySub sets publisher.connStatusCh to
// nil); the goroutine that the first async publish started
// (publish.go:451, resetPendingAcksOnReconnect) reads that field under the
// lock only when it gets to run, and when the cleanup came first it waits on
// a nil channel for ever. One parked goroutine per such Put, in nats.go, not
// in our code: ignored here, named so that nothing else hides behind it.
var objectPutRace = goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, objectPutRace) }

const (
	testUser     = "scanner-3f"
	testPassword = "SENTINEL-smtp-password-7Hq"
	testProfile  = "billing"
	testSender   = "billing@contoso.com"
)

// bundle is one test's server and what it talks to.
type bundle struct {
	t      testing.TB
	ns     *server.Server
	js     jetstream.JetStream
	srv    *Server
	addr   string
	m      *Metrics
	logs   *syncBuf
	client *tls.Config
	creds  string // credentials file
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// setup starts JetStream (provisioned), a credentials file with testUser and
// the server with cfg (Senders filled in) on a loopback port.
func setup(t testing.TB, cfg Config, allowFrom ...string) *bundle {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL(), nats.ReconnectBufSize(-1), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := queue.Provision(ctx, js, queue.Config{Replicas: 1, Profiles: []string{testProfile, "other"}}); err != nil {
		t.Fatal(err)
	}
	store := queue.NewAttachments(js)
	b := &bundle{t: t, ns: ns, js: js, logs: &syncBuf{}}
	b.creds = filepath.Join(t.TempDir(), "credentials.yaml")
	b.writeCreds(testPassword, allowFrom...)
	senders := map[string][]string{testProfile: {"Billing <" + testSender + ">"}, "other": {"other@contoso.com"}}
	creds, err := NewCredentials(nil, b.creds, 0, senders, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, pool := testCert(t)
	b.client = &tls.Config{RootCAs: pool, ServerName: "localhost"}
	cfg.Senders = senders
	if cfg.PublishTimeout == 0 {
		cfg.PublishTimeout = 2 * time.Second
	}
	if cfg.AuthFailureDelay == 0 {
		cfg.AuthFailureDelay = -1 // no tarpit, unless the test is about it
	}
	b.m = NewMetrics(prometheus.NewRegistry(), []string{testProfile, "other"})
	b.srv, err = New(cfg, creds, queue.NewPublisher(js), store, Options{Logger: zerolog.New(b.logs), Metrics: b.m,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = b.srv.Serve(ln) }()
	t.Cleanup(func() { _ = b.srv.Close(); <-done })
	return b
}

func (b *bundle) writeCreds(password string, allowFrom ...string) {
	b.t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost) // lean tests; HashPassword uses the default cost
	if err != nil {
		b.t.Fatal(err)
	}
	y := "credentials:\n  - username: " + testUser + "\n    passwordHash: \"" + string(h) + "\"\n    profile: " + testProfile + "\n"
	if len(allowFrom) > 0 {
		y += "    allowFrom: [" + strings.Join(allowFrom, ", ") + "]\n"
	}
	if err := os.WriteFile(b.creds, []byte(y), 0o600); err != nil {
		b.t.Fatal(err)
	}
}

func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// dial connects with Go's net/smtp, STARTTLS and, when password is not
// empty, AUTH PLAIN.
func (b *bundle) dial(password string) (*smtp.Client, error) {
	b.t.Helper()
	return b.dialAs(testUser, password)
}

// dialAs is dial with another username.
func (b *bundle) dialAs(user, password string) (*smtp.Client, error) {
	b.t.Helper()
	c, err := smtp.Dial(b.addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { c.Close() })
	if err := c.StartTLS(b.client); err != nil {
		b.t.Fatal(err)
	}
	if password == "" {
		return c, nil
	}
	return c, c.Auth(smtp.PlainAuth("", user, password, "127.0.0.1"))
}

// send runs MAIL, RCPT and DATA, returning the final reply (code 0 and the
// error of the first command that failed).
func send(c *smtp.Client, from string, rcpts []string, msg string) (int, string, error) {
	if err := c.Mail(from); err != nil {
		return 0, "", err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r); err != nil {
			return 0, "", err
		}
	}
	id, err := c.Text.Cmd("DATA")
	if err != nil {
		return 0, "", err
	}
	c.Text.StartResponse(id)
	defer c.Text.EndResponse(id)
	if _, _, err := c.Text.ReadResponse(354); err != nil {
		return 0, "", err
	}
	w := c.Text.DotWriter()
	_, _ = w.Write([]byte(msg))
	_ = w.Close()
	return c.Text.ReadResponse(250)
}

// smtpCode is the reply code of an error from net/smtp.
func smtpCode(err error) int {
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// lastJob reads the newest job on mail.send.<profile>.
func (b *bundle) lastJob(profile string) *contract.Job {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := b.js.Stream(ctx, contract.JobsStream(profile))
	if err != nil {
		b.t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, contract.JobSubject(profile))
	if err != nil {
		b.t.Fatal(err)
	}
	var j contract.Job
	if err := json.Unmarshal(m.Data, &j); err != nil {
		b.t.Fatal(err)
	}
	return &j
}

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

var plainMsg = crlf(`From: Billing <billing@contoso.com>
To: Ann <ann@example.com>
Cc: cc@example.com
Subject: invoice
Message-ID: <1@scanner>

the body
`)

func TestSubmitAccepted(t *testing.T) {
	b := setup(t, Config{})
	c, err := b.dial(testPassword)
	if err != nil {
		t.Fatal(err)
	}
	code, text, err := send(c, testSender, []string{"ann@example.com", "cc@example.com", "hidden@example.com"}, plainMsg)
	if err != nil || code != 250 {
		t.Fatalf("DATA: %d %s %v", code, text, err)
	}
	j := b.lastJob(testProfile)
	if !strings.Contains(text, "Queued as "+j.ID) {
		t.Fatalf("reply %q does not carry the job id %s", text, j.ID)
	}
	mime, _ := base64.StdEncoding.DecodeString(j.MIME.ContentBase64)
	if want := "Bcc: hidden@example.com\r\n" + plainMsg; string(mime) != want {
		t.Fatalf("job MIME:\n%q\nwant\n%q", mime, want)
	}
	if j.From != testSender || strings.Join(j.To, ",") != "ann@example.com" || strings.Join(j.Cc, ",") != "cc@example.com" ||
		strings.Join(j.Bcc, ",") != "hidden@example.com" || j.Metadata["smtpLogin"] != testUser {
		t.Fatalf("job %+v", j)
	}
	// The same submission again after its answer was read is a new mail
	// (issue 19 item 5: Microsoft 365 delivers both).
	code, text2, err := send(c, testSender, []string{"ann@example.com", "cc@example.com", "hidden@example.com"}, plainMsg)
	if err != nil || code != 250 || text2 == text {
		t.Fatalf("repeat: %d %q %v, want a new job (first %q)", code, text2, err, text)
	}
	if got := testutil.ToFloat64(b.m.Accepted.WithLabelValues(testProfile)); got != 2 {
		t.Fatalf("accepted_total = %v", got)
	}
	if testutil.CollectAndCount(b.m.AcceptSeconds) != 1 {
		t.Fatal("accept_seconds not collected")
	}
	for _, secret := range []string{testPassword, "ann@", "hidden@", "cc@", "invoice", "the body"} {
		if strings.Contains(b.logs.String(), secret) {
			t.Errorf("logs contain %q:\n%s", secret, b.logs.String())
		}
	}
}

func TestSubmitLargeGoesByReference(t *testing.T) {
	b := setup(t, Config{InlineMaxBytes: 1024})
	c, err := b.dial(testPassword)
	if err != nil {
		t.Fatal(err)
	}
	msg := plainMsg + strings.Repeat("0123456789abcdef\r\n", 200)
	if code, text, err := send(c, testSender, []string{"ann@example.com", "cc@example.com"}, msg); err != nil || code != 250 {
		t.Fatalf("DATA: %d %s %v", code, text, err)
	}
	j := b.lastJob(testProfile)
	if j.MIME.ObjectRef == "" || j.MIME.ContentBase64 != "" {
		t.Fatalf("job MIME %+v, want an objectRef", j.MIME)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := queue.NewAttachments(b.js).Get(ctx, testProfile, j.MIME.ObjectRef)
	if err != nil || string(got) != msg {
		t.Fatalf("stored object differs (%v)", err)
	}
}

// TestRefusals: each refusal has its own reply code, and is counted.
func TestRefusals(t *testing.T) {
	t.Run("AUTH before STARTTLS", func(t *testing.T) {
		b := setup(t, Config{})
		c, err := smtp.Dial(b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.Hello("localhost")
		if ok, _ := c.Extension("AUTH"); ok {
			t.Fatal("AUTH advertised before TLS")
		}
		id, _ := c.Text.Cmd("AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("\x00"+testUser+"\x00"+testPassword)))
		c.Text.StartResponse(id)
		code, _, _ := c.Text.ReadResponse(235)
		c.Text.EndResponse(id)
		if code != 523 {
			t.Fatalf("AUTH before TLS: %d, want 523 (TLS required)", code)
		}
		if err := c.Mail(testSender); smtpCode(err) != 530 {
			t.Fatalf("MAIL FROM without AUTH: %v, want 530", err)
		}
	})
	t.Run("no relay without AUTH over TLS", func(t *testing.T) {
		b := setup(t, Config{})
		c, _ := b.dial("")
		if err := c.Mail(testSender); smtpCode(err) != 530 {
			t.Fatalf("MAIL FROM without AUTH: %v, want 530", err)
		}
	})
	t.Run("wrong password and unknown user", func(t *testing.T) {
		b := setup(t, Config{})
		if _, err := b.dial("wrong-password"); smtpCode(err) != 535 {
			t.Fatalf("wrong password: %v, want 535", err)
		}
		c, _ := b.dial("")
		if err := c.Auth(smtp.PlainAuth("", "nobody", testPassword, "127.0.0.1")); smtpCode(err) != 535 {
			t.Fatalf("unknown user: %v, want 535", err)
		}
		if testutil.ToFloat64(b.m.AuthFailures.WithLabelValues(AuthBadPassword)) != 1 ||
			testutil.ToFloat64(b.m.AuthFailures.WithLabelValues(AuthUnknownUser)) != 1 {
			t.Fatal("auth failures not counted by reason")
		}
		if strings.Contains(b.logs.String(), testPassword) || strings.Contains(b.logs.String(), "wrong-password") {
			t.Fatal("a password reached the logs")
		}
	})
	t.Run("source not allowed", func(t *testing.T) {
		b := setup(t, Config{}, "10.0.0.0/8")
		if _, err := b.dial(testPassword); smtpCode(err) != 535 {
			t.Fatalf("login from outside allowFrom: %v, want 535", err)
		}
		if testutil.ToFloat64(b.m.AuthFailures.WithLabelValues(AuthSourceNotAllowed)) != 1 {
			t.Fatal("source_not_allowed not counted")
		}
	})
	t.Run("unapproved MAIL FROM", func(t *testing.T) {
		b := setup(t, Config{})
		c, _ := b.dial(testPassword)
		for _, from := range []string{"ceo@contoso.com", "other@contoso.com", ""} {
			if err := c.Mail(from); smtpCode(err) != 550 || !strings.Contains(err.Error(), "5.7.1") {
				t.Fatalf("MAIL FROM:<%s>: %v, want 550 5.7.1", from, err)
			}
		}
	})
	t.Run("From header not the envelope sender", func(t *testing.T) {
		b := setup(t, Config{})
		c, _ := b.dial(testPassword)
		msg := strings.Replace(plainMsg, "billing@contoso.com", "ceo@contoso.com", 1)
		if _, _, err := send(c, testSender, []string{"ann@example.com", "cc@example.com"}, msg); smtpCode(err) != 550 {
			t.Fatalf("mismatched From: %v, want 550", err)
		}
	})
	t.Run("oversized", func(t *testing.T) {
		b := setup(t, Config{MaxMessageBytes: 2048})
		c, _ := b.dial(testPassword)
		if ok, arg := c.Extension("SIZE"); !ok || arg != "2048" {
			t.Fatalf("SIZE %v %q", ok, arg)
		}
		_, _, err := send(c, testSender, []string{"ann@example.com", "cc@example.com"}, plainMsg+strings.Repeat("0123456789abcdef\r\n", 256))
		if smtpCode(err) != 552 || !strings.Contains(err.Error(), "5.3.4") {
			t.Fatalf("oversized: %v, want 552 5.3.4", err)
		}
	})
	t.Run("too many recipients", func(t *testing.T) {
		b := setup(t, Config{MaxRecipients: 2})
		c, _ := b.dial(testPassword)
		_ = c.Mail(testSender)
		_ = c.Rcpt("a@example.com")
		_ = c.Rcpt("b@example.com")
		if err := c.Rcpt("c@example.com"); smtpCode(err) != 452 {
			t.Fatalf("third recipient: %v, want 452", err)
		}
	})
	t.Run("messages per minute", func(t *testing.T) {
		b := setup(t, Config{MessagesPerMinute: 1})
		c, _ := b.dial(testPassword)
		if code, _, err := send(c, testSender, []string{"ann@example.com", "cc@example.com"}, plainMsg); code != 250 {
			t.Fatalf("first: %v", err)
		}
		if err := c.Mail(testSender); smtpCode(err) != 450 {
			t.Fatalf("second in the minute: %v, want 450", err)
		}
	})
	t.Run("broker down", func(t *testing.T) {
		b := setup(t, Config{})
		c, _ := b.dial(testPassword)
		b.ns.Shutdown()
		b.ns.WaitForShutdown()
		_, _, err := send(c, testSender, []string{"ann@example.com", "cc@example.com"}, plainMsg)
		if smtpCode(err) != 451 || !strings.Contains(err.Error(), "4.3.0") {
			t.Fatalf("broker down: %v, want 451 4.3.0", err)
		}
		if testutil.ToFloat64(b.m.Refused.WithLabelValues("451")) != 1 {
			t.Fatal("451 not counted")
		}
	})
	t.Run("concurrent sessions", func(t *testing.T) {
		b := setup(t, Config{MaxSessions: 1})
		c1, _ := b.dial(testPassword)
		_ = c1.Noop()
		conn, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		line, _ := textproto.NewReader(bufioReader(conn)).ReadLine()
		if !strings.HasPrefix(line, "421 4.3.2") {
			t.Fatalf("second session greeted %q, want 421 4.3.2", line)
		}
		if testutil.ToFloat64(b.m.SessionsRefused) != 1 {
			t.Fatal("refused session not counted")
		}
	})
}

func TestCredentialRotation(t *testing.T) {
	b := setup(t, Config{})
	if _, err := b.dial(testPassword); err != nil {
		t.Fatal(err)
	}
	b.writeCreds("rotated-" + testPassword)
	if _, err := b.dial(testPassword); smtpCode(err) != 535 {
		t.Fatalf("old password after rotation: %v, want 535", err)
	}
	if _, err := b.dial("rotated-" + testPassword); err != nil {
		t.Fatalf("new password: %v", err)
	}
	// A broken file keeps the credentials that were loaded.
	if err := os.WriteFile(b.creds, []byte("credentials: [ {username: x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.dial("rotated-" + testPassword); err != nil {
		t.Fatalf("after a broken update: %v", err)
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
