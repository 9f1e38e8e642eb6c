package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// cliRun runs one mailworker command in process and returns exit code, stdout, stderr.
func cliRun(env []string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := runCLI(ctx, args, strings.NewReader(""), &out, &errb, env)
	return code, out.String(), errb.String()
}

// TestReliabilityNATSAuthTLS runs provision, send, status and dlq list against
// a server that requires user/password over TLS signed by a private CA: they
// work with the CA configured, fail clearly without it or with a wrong
// password, and never print the password.
func TestReliabilityNATSAuthTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caPEM, certPEM, keyPEM := testPKI(t)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, TLS: true, TLSTimeout: 5,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Users:     []*server.User{{Username: "ops", Password: sentinelNATSPassword}}})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(minWait) {
		t.Fatal("nats-server not ready")
	}
	url := "tls://" + srv.Addr().String()
	env := []string{"MAILWORKER_NATS_URL=" + url, "MAILWORKER_NATS_USER=ops", "MAILWORKER_NATS_PASSWORD=" + sentinelNATSPassword,
		"MAILWORKER_NATS_TLS_CA_FILE=" + caFile}
	var outputs []string
	run := func(env []string, args ...string) (int, string, string) {
		code, out, errOut := cliRun(env, args...)
		outputs = append(outputs, out, errOut)
		return code, out, errOut
	}

	// Profile rel gets its own job stream: provision reads the profiles from
	// the config (per-profile streams).
	cfgFile := filepath.Join(dir, "mailworker.yaml")
	if err := os.WriteFile(cfgFile, []byte("profiles:\n  rel:\n    tenantId: 00000000-0000-0000-0000-000000000000\n"+
		"    clientId: 11111111-1111-1111-1111-111111111111\n    credential:\n      clientSecret: not-used-here\n"+
		"    allowedSenders: [noreply@rel.example]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run(env, "provision", "--config", cfgFile); code != 0 || !strings.Contains(out, "provisioned") {
		t.Fatalf("provision over TLS with user/password: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut := run(env, "send", "--profile", "rel", "--id", "tls-1", "--from", "noreply@rel.example", "--to", "a@example.com", "--subject", "s", "--text", "t")
	if code != 0 || strings.TrimSpace(out) != "tls-1" {
		t.Fatalf("send: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := run(env, "dlq", "list"); code != 0 {
		t.Errorf("dlq list: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := run(env, "status", "tls-1"); code == 1 && strings.Contains(errOut, "connect") {
		t.Errorf("status: exit %d\n%s%s", code, out, errOut)
	}

	// Without the CA the server's certificate is not trusted.
	noCA := env[:3]
	code, _, errOut = run(noCA, "dlq", "list")
	if code == 0 || !strings.Contains(errOut, "certificate") {
		t.Errorf("dlq list without the CA: exit %d, %q: want a certificate error", code, errOut)
	}
	// A wrong password is refused, and neither password is echoed.
	bad := append(append([]string(nil), env...), "MAILWORKER_NATS_PASSWORD=SENTINEL-wrong-pw-x1")
	code, _, errOut = run(bad, "dlq", "list")
	if code == 0 || !strings.Contains(strings.ToLower(errOut), "authorization") {
		t.Errorf("dlq list with a wrong password: exit %d, %q: want an authorization error", code, errOut)
	}
	for _, o := range outputs {
		if strings.Contains(o, sentinelNATSPassword) || strings.Contains(o, "SENTINEL-wrong-pw-x1") {
			t.Errorf("a password was printed: %q", o)
		}
	}
}

// testPKI returns a CA and a server certificate for 127.0.0.1 signed by it.
func testPKI(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "reliability test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}
