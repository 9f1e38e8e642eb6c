package main

// End-to-end tests of `mailworker smtp` (issue 14): the built binary with an
// embedded JetStream, `mailworker run` and the TLS fake Graph, driven by SMTP
// clients we did not write: swaks, msmtp and Go's net/smtp.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/internal/toolcheck"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

const (
	smtpE2EUser     = "scanner-floor-2"
	smtpE2EPassword = "SENTINEL-smtp-password-x3Vb"
	smtpE2ESender   = "box1@rel.example"
)

var queuedAs = regexp.MustCompile(`250 2\.0\.0 Queued as (smtp-[A-Za-z0-9_-]+)`)

// smtpRig is the binary-level setup of the SMTP tests.
type smtpRig struct {
	t      *testing.T
	nats   *relNATS
	fake   *graphtest.Server
	h      *harness
	addr   string
	certPE string // the server certificate (self-signed), for clients that verify
	outDir string
	smtp   *proc
	env    []string // the ingress's environment
}

func startSMTPRig(t *testing.T) *smtpRig {
	t.Helper()
	return startSMTPRigWith(t, "  maxRecipients: 3\n")
}

// startSMTPRigWith starts the rig with extra lines in the smtp: section.
func startSMTPRigWith(t *testing.T, extra string) *smtpRig {
	t.Helper()
	return startSMTPRigEnv(t, extra)
}

// startSMTPRigEnv is startSMTPRigWith with extra environment for the
// ingress process (e.g. a fault injection).
func startSMTPRigEnv(t *testing.T, extra string, env ...string) *smtpRig {
	t.Helper()
	return startSMTPRigFull(t, extra, true, env...)
}

// startSMTPRigFull starts the rig; without a worker when worker is false
// (what is accepted stays in MAIL_JOBS).
func startSMTPRigFull(t *testing.T, extra string, worker bool, env ...string) *smtpRig {
	t.Helper()
	return startSMTPRigProfile(t, extra, worker, relProfile{name: "rel", senders: []string{smtpE2ESender}}, relWorker{}, graphtest.Options{}, env...)
}

// startSMTPRigProfile starts the rig with profile "rel" as given, the
// worker tuned by w, and the fake with fo (OutDir set here).
func startSMTPRigProfile(t *testing.T, extra string, worker bool, prof relProfile, w relWorker, fo graphtest.Options, env ...string) *smtpRig {
	t.Helper()
	r := &smtpRig{t: t, outDir: t.TempDir()}
	r.nats = startRelNATS(t)
	fo.OutDir = r.outDir
	r.fake = newFake(t, fo)
	r.h = newHarness(t, r.nats.url(), r.fake, w, prof)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	r.certPE = certFile
	writeSelfSigned(t, certFile, keyFile)
	hash, err := bcrypt.GenerateFromPassword([]byte(smtpE2EPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	credFile := filepath.Join(dir, "smtp-credentials.yaml")
	if err := os.WriteFile(credFile, fmt.Appendf(nil, "credentials:\n  - username: %s\n    passwordHash: %q\n    profile: rel\n", smtpE2EUser, hash), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	r.addr = fmt.Sprintf("127.0.0.1:%d", port)
	f, err := os.OpenFile(r.h.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(extra, "publishTimeout:") {
		extra += "  publishTimeout: 2s\n"
	}
	fmt.Fprintf(f, "smtp:\n  listen: %q\n  certFile: %q\n  keyFile: %q\n  credentialsFile: %q\n%s",
		r.addr, certFile, keyFile, credFile, extra)
	f.Close()
	// The profile's object store first, as `mailworker provision` in a
	// deployment (`run` also creates it, but may come later).
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // an upper bound: slow on a starved machine
	err = queue.Provision(ctx, r.h.js, queue.Config{Replicas: 1, Profiles: []string{"rel"}})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if worker {
		r.h.startReplica()
	}
	r.env = append(append([]string{"MAILWORKER_CONFIG=" + r.h.cfgPath}, r.h.env...), env...)
	r.smtp = startProc(t, r.env, "smtp")
	r.h.mu.Lock()
	r.h.procs = append(r.h.procs, r.smtp) // checked for secrets with the replicas
	r.h.mu.Unlock()
	eventually(t, 30*time.Second, "the SMTP port", func() bool {
		c, err := net.DialTimeout("tcp", r.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return r
}

func writeSelfSigned(t *testing.T, certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// needTool finds a client on PATH; .ci/run installs them. In CI (CI set)
// a missing client fails the test: it must not pass silently there. On a
// machine with only Go (the README's `go test ./...`) the test is skipped
// with the command that installs it.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		install := "apt-get install swaks msmtp"
		if name == "postfix" {
			install = "apt-get install postfix libsasl2-modules"
		}
		toolcheck.Missing(t, name+" is not installed", install)
	}
	return p
}

// swaks runs swaks against the rig with STARTTLS and AUTH PLAIN.
func (r *smtpRig) swaks(password string, args ...string) (string, int) {
	r.t.Helper()
	base := []string{"--server", r.addr, "--tls", "--auth", "PLAIN", "--auth-user", smtpE2EUser, "--auth-password", password,
		"--timeout", "30"}
	cmd := exec.Command(needTool(r.t, "swaks"), append(base, args...)...)
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

// delivered waits until the fake has the job and returns its .eml.
func (r *smtpRig) delivered(id string) (graphtest.Message, []byte) {
	r.t.Helper()
	r.h.waitTerminal([]string{id}, 60*time.Second)
	var got []graphtest.Message
	for _, m := range r.fake.Messages() {
		if m.JobID == id {
			got = append(got, m)
		}
	}
	if len(got) != 1 {
		r.t.Fatalf("job %s: the fake accepted %d copies, want exactly 1", id, len(got))
	}
	evs, _ := r.h.statusEvents()
	if names := eventNames(evs[id]); len(names) == 0 || names[len(names)-1] != string(contract.EventSent) {
		r.t.Fatalf("job %s: status events %v, want a final sent", id, names)
	}
	eml, err := os.ReadFile(filepath.Join(r.outDir, id+".eml"))
	if err != nil {
		r.t.Fatal(err)
	}
	return got[0], eml
}

// attachmentMail is a multipart message with a binary attachment, CRLF.
func attachmentMail(subject, to string) []byte {
	bin := make([]byte, 3000)
	for i := range bin {
		bin[i] = byte(i * 7)
	}
	b64 := base64.StdEncoding.EncodeToString(bin)
	var lines []string
	for len(b64) > 76 {
		lines, b64 = append(lines, b64[:76]), b64[76:]
	}
	lines = append(lines, b64)
	return []byte(strings.ReplaceAll(`From: Scanner <`+smtpE2ESender+`>
To: `+to+`
Subject: `+subject+`
Date: Mon, 30 Nov 2026 06:00:00 +0000
Message-ID: <`+subject+`@scanner.rel.example>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="sep"

--sep
Content-Type: text/plain; charset=utf-8

Scan attached.
--sep
Content-Type: application/pdf; name="scan.pdf"
Content-Disposition: attachment; filename="scan.pdf"
Content-Transfer-Encoding: base64

`+strings.Join(lines, "\n")+`
--sep--
`, "\n", "\r\n"))
}

func TestSMTPEndToEnd(t *testing.T) {
	t.Parallel()
	r := startSMTPRig(t)

	t.Run("swaks: STARTTLS + AUTH, attachment and Bcc delivered byte for byte", func(t *testing.T) {
		msg := attachmentMail("swaks-scan", "Ann <ann@example.com>")
		file := filepath.Join(t.TempDir(), "scan.eml")
		// swaks ends the data with CRLF "." CRLF whatever the file ends
		// with, so the file leaves out the message's last CRLF.
		if err := os.WriteFile(file, msg[:len(msg)-2], 0o600); err != nil {
			t.Fatal(err)
		}
		out, code := r.swaks(smtpE2EPassword, "--from", smtpE2ESender, "--to", "ann@example.com,hidden@example.com", "--data", "@"+file)
		m := queuedAs.FindStringSubmatch(out)
		if code != 0 || m == nil {
			t.Fatalf("swaks exit %d:\n%s", code, out)
		}
		got, eml := r.delivered(m[1])
		if want := "X-Mailworker-Job-Id: " + m[1] + "\r\n" + string(msg); string(eml) != want {
			t.Fatalf("delivered .eml differs from what was submitted: %s", firstDiff(string(eml), want))
		}
		if strings.Join(got.Bcc, ",") != "hidden@example.com" || strings.Contains(string(eml), "hidden@") {
			t.Fatalf("Bcc: recorded %v; in the delivered headers: %v", got.Bcc, strings.Contains(string(eml), "hidden@"))
		}
		if len(got.Attachments) != 1 || got.Attachments[0].Name != "scan.pdf" || got.Attachments[0].Size != 3000 {
			t.Fatalf("attachments %+v", got.Attachments)
		}
	})

	t.Run("msmtp: delivered", func(t *testing.T) {
		conf := filepath.Join(t.TempDir(), "msmtprc")
		host, port, _ := net.SplitHostPort(r.addr)
		if err := os.WriteFile(conf, fmt.Appendf(nil, "account default\nhost %s\nport %s\ntls on\ntls_starttls on\ntls_trust_file %s\n"+
			"auth plain\nuser %s\npassword %s\nfrom %s\n", host, port, r.certPE, smtpE2EUser, smtpE2EPassword, smtpE2ESender), 0o600); err != nil {
			t.Fatal(err)
		}
		msg := attachmentMail("msmtp-scan", "bob@example.com")
		cmd := exec.Command(needTool(t, "msmtp"), "-C", conf, "bob@example.com")
		cmd.Stdin = strings.NewReader(string(msg))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("msmtp: %v\n%s", err, out)
		}
		var id string
		eventually(t, 30*time.Second, "the msmtp mail at the fake", func() bool {
			for _, m := range r.fake.Messages() {
				if m.Subject == "msmtp-scan" {
					id = m.JobID
				}
			}
			return id != ""
		})
		_, eml := r.delivered(id)
		if want := "X-Mailworker-Job-Id: " + id + "\r\n" + string(msg); string(eml) != want {
			t.Fatalf("delivered .eml differs: %s", firstDiff(string(eml), want))
		}
	})

	t.Run("refusals each have their own code", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			pass string
			want string
		}{
			{"wrong password", []string{"--from", smtpE2ESender, "--to", "a@example.com"}, "wrong-password", "535 5.7.8"},
			{"unapproved MAIL FROM", []string{"--from", "ceo@rel.example", "--to", "a@example.com"}, smtpE2EPassword, "550 5.7.1"},
			{"mismatched From header", []string{"--from", smtpE2ESender, "--to", "a@example.com", "--header", "From: ceo@rel.example"}, smtpE2EPassword, "550 5.7.1 The From: header"},
			{"too many recipients", []string{"--from", smtpE2ESender, "--to", "a@example.com,b@example.com,c@example.com,d@example.com"}, smtpE2EPassword, "452 4.5.3"},
			{"oversized", []string{"--from", smtpE2ESender, "--to", "a@example.com", "--data", "@" + bigMail(t)}, smtpE2EPassword, "552 5.3.4"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out, _ := r.swaks(tc.pass, tc.args...)
				if !strings.Contains(out, tc.want) {
					t.Fatalf("swaks output lacks %q:\n%s", tc.want, tail(out, 2000))
				}
			})
		}
	})

	t.Run("net/smtp: AUTH before STARTTLS refused", func(t *testing.T) {
		c, err := smtp.Dial(r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Hello("localhost"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := c.Extension("AUTH"); ok {
			t.Fatal("AUTH advertised before STARTTLS")
		}
		id, _ := c.Text.Cmd("AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("\x00"+smtpE2EUser+"\x00"+smtpE2EPassword)))
		c.Text.StartResponse(id)
		code, _, _ := c.Text.ReadResponse(235)
		c.Text.EndResponse(id)
		if code != 523 {
			t.Fatalf("AUTH before STARTTLS: %d, want 523", code)
		}
	})

	t.Run("net/smtp: broker stopped gives 4xx, the retry is delivered once", func(t *testing.T) {
		msg := attachmentMail("retry-scan", "carol@example.com")
		submit := func() (int, string, error) {
			c, err := smtp.Dial(r.addr)
			if err != nil {
				return 0, "", err
			}
			defer c.Close()
			if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil { //nolint:gosec // test certificate
				return 0, "", err
			}
			if err := c.Auth(smtp.PlainAuth("", smtpE2EUser, smtpE2EPassword, "127.0.0.1")); err != nil {
				return 0, "", err
			}
			return submitData(c, smtpE2ESender, []string{"carol@example.com"}, msg)
		}
		r.nats.stop()
		code, text, err := submit()
		if code != 451 || !strings.HasPrefix(text, "4.3.0") {
			t.Fatalf("with the broker stopped: %d %q %v, want 451 4.3.0 at DATA", code, text, err)
		}
		r.nats.start()
		var id string
		eventually(t, 60*time.Second, "a 250 after the broker returned", func() bool {
			code, text, _ := submit()
			if m := queuedAs.FindStringSubmatch("250 " + text); code == 250 && m != nil {
				id = m[1]
			}
			return id != ""
		})
		got, _ := r.delivered(id)
		if got.Subject != "retry-scan" {
			t.Fatalf("delivered %q", got.Subject)
		}
	})

	r.h.checkNoSecrets()
	for _, p := range []*proc{r.smtp} {
		if strings.Contains(p.stderr.String(), smtpE2EPassword) || strings.Contains(p.stderr.String(), "ann@example.com") {
			t.Error("the SMTP ingress logged a password or a recipient")
		}
	}
}

// submitData runs MAIL, RCPT and DATA on c and returns DATA's final reply;
// a refused command gives its code and text.
func submitData(c *smtp.Client, from string, rcpts []string, msg []byte) (int, string, error) {
	if err := c.Mail(from); err != nil {
		return errCode(err), err.Error(), err
	}
	for _, rc := range rcpts {
		if err := c.Rcpt(rc); err != nil {
			return errCode(err), err.Error(), err
		}
	}
	id, err := c.Text.Cmd("DATA")
	if err != nil {
		return 0, "", err
	}
	c.Text.StartResponse(id)
	defer c.Text.EndResponse(id)
	if code, text, err := c.Text.ReadResponse(354); err != nil {
		return code, text, err
	}
	w := c.Text.DotWriter()
	_, _ = w.Write(msg)
	_ = w.Close()
	return c.Text.ReadResponse(250)
}

func errCode(err error) int {
	var code int
	_, _ = fmt.Sscanf(err.Error(), "%d", &code)
	return code
}

// firstDiff describes where got and want part.
func firstDiff(got, want string) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	return fmt.Sprintf("lengths %d and %d, first difference at byte %d: got %q, want %q", len(got), len(want), i,
		got[i:min(len(got), i+80)], want[i:min(len(want), i+80)])
}

// bigMail writes a message over what one Graph request carries.
func bigMail(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "big.eml")
	body := "From: " + smtpE2ESender + "\r\nTo: a@example.com\r\nSubject: big\r\n\r\n" +
		strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", contract.MaxMIMEBytes/66+10)
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestSMTPNATSUser runs `mailworker smtp` as NATS user "smtp" of
// deploy/nats/accounts.conf: a login of profile "billing" (the profile the
// user may publish) gets 250, small and large (object store) messages alike;
// a login of profile "ops" gets 451, because the NATS user may not publish
// ops's jobs. Its retry records are looked up per submission (the SMTP
// account creates no consumer in MAIL).
func TestSMTPNATSUser(t *testing.T) {
	t.Parallel()
	pw := map[string]string{}
	for _, u := range shippedAccountUsers {
		pw[u] = "pw-" + u + "-" + randomSecret()[:8]
	}
	opts := loadShippedAccounts(t, pw)
	ns := startTestNATS(t, func(o *server.Options) { o.Accounts, o.Users, o.Nkeys = opts.Accounts, opts.Users, opts.Nkeys })
	dir := t.TempDir()
	provCfg := filepath.Join(dir, "provision.yaml")
	if err := os.WriteFile(provCfg, fmt.Appendf(nil, `nats: {url: %q, user: provisioner, inboxPrefix: _INBOX_provisioner}
profiles:
  billing: {tenantId: t, clientId: c, credential: {clientSecret: unused}, allowedSenders: [billing@contoso.example]}
  ops: {tenantId: t, clientId: c, credential: {clientSecret: unused}, allowedSenders: [ops@contoso.example]}
`, ns.ClientURL()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runCmdEnv(t, []string{"MAILWORKER_CONFIG=" + provCfg, "MAILWORKER_NATS_PASSWORD=" + pw["provisioner"]}, "", "provision"); code != 0 {
		t.Fatalf("provision: %s %s", out, errOut)
	}

	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeSelfSigned(t, certFile, keyFile)
	hash, _ := bcrypt.GenerateFromPassword([]byte(smtpE2EPassword), bcrypt.MinCost)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf(`nats: {url: %q, user: smtp, inboxPrefix: _INBOX_smtp}
http: {listen: %q}
smtp:
  listen: %q
  certFile: %q
  keyFile: %q
  inlineMaxBytes: 1024
  publishTimeout: 2s
  credentials:
    - {username: scanner, passwordHash: %q, profile: billing}
    - {username: ops-app, passwordHash: %q, profile: ops}
profiles:
  billing: {tenantId: t, clientId: c, credential: {clientSecret: unused}, allowedSenders: [billing@contoso.example]}
  ops: {tenantId: t, clientId: c, credential: {clientSecret: unused}, allowedSenders: [ops@contoso.example]}
`, ns.ClientURL(), httpAddr, addr, certFile, keyFile, hash, hash)
	cfgFile := filepath.Join(dir, "smtp.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, []string{"MAILWORKER_CONFIG=" + cfgFile, "MAILWORKER_NATS_PASSWORD=" + pw["smtp"]}, "smtp")
	eventually(t, 30*time.Second, "the SMTP port", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	submit := func(login, from string, body string) (int, string) {
		c, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil { //nolint:gosec // test certificate
			t.Fatal(err)
		}
		if err := c.Auth(smtp.PlainAuth("", login, smtpE2EPassword, "127.0.0.1")); err != nil {
			t.Fatal(err)
		}
		msg := "From: " + from + "\r\nTo: a@example.com\r\nSubject: nats user\r\n\r\n" + body
		code, text, _ := submitData(c, from, []string{"a@example.com"}, []byte(msg))
		return code, text
	}
	if code, text := submit("scanner", "billing@contoso.example", "small\r\n"); code != 250 {
		t.Fatalf("billing, inline: %d %s\n%s", code, text, p.stderr.String())
	}
	if code, text := submit("scanner", "billing@contoso.example", strings.Repeat("large message line\r\n", 200)); code != 250 {
		t.Fatalf("billing, by objectRef: %d %s\n%s", code, text, p.stderr.String())
	}
	// The SMTP account may not create consumers in MAIL (a consumer's
	// deliver subject, chosen in the request body, is a subject of MAIL: see
	// accounts.conf), so no replica watches the retry records and each
	// submission looks its record up in the store, with its own account's
	// imports.
	_, m := httpGet("http://" + httpAddr + "/metrics")
	if !strings.Contains(m, `mailworker_smtp_retry_records_watched{profile="billing"} 0`) ||
		!strings.Contains(m, `mailworker_smtp_retry_records_watched{profile="ops"} 0`) {
		t.Fatal("retry records watched by a user of an account that may create no consumer in MAIL")
	}
	if strings.Contains(m, "mailworker_smtp_retry_lookups_total 0\n") || !strings.Contains(m, "mailworker_smtp_retry_lookups_total") {
		t.Fatal("no submission looked its retry record up in the store")
	}
	// billing's messages per minute are counted in the broker (shared by
	// the replicas), not on this replica alone.
	if _, m := httpGet("http://" + httpAddr + "/metrics"); !strings.Contains(m, "mailworker_smtp_rate_count_failures_total 0") {
		t.Fatal("the shared message count failed for billing (NATS permissions?)")
	}
	if code, text := submit("ops-app", "ops@contoso.example", "not mine\r\n"); code != 451 {
		t.Fatalf("ops through the smtp NATS user: %d %s, want 451 (publish denied)", code, text)
	}
}
