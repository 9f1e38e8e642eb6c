package smtpd

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"testing"
)

// TestImplicitTLSAndLogin: port-465 style implicit TLS, AUTH LOGIN (the
// mechanism many devices use), and a message accepted through them.
func TestImplicitTLSAndLogin(t *testing.T) {
	b := setup(t, Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = b.srv.ServeTLS(ln) }()
	t.Cleanup(func() { _ = b.srv.Close(); <-done })

	conn, err := tls.Dial("tcp", ln.Addr().String(), b.client)
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.NewClient(conn, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Fatalf("AUTH %v %q over implicit TLS", ok, mechs)
	}
	for _, step := range []struct {
		send string
		want int
	}{
		{"AUTH LOGIN", 334},
		{base64.StdEncoding.EncodeToString([]byte(testUser)), 334},
		{base64.StdEncoding.EncodeToString([]byte(testPassword)), 235},
	} {
		id, err := c.Text.Cmd("%s", step.send)
		if err != nil {
			t.Fatal(err)
		}
		c.Text.StartResponse(id)
		code, msg, _ := c.Text.ReadResponse(step.want)
		c.Text.EndResponse(id)
		if code != step.want {
			t.Fatalf("%s: %d %s, want %d", step.send[:min(len(step.send), 10)], code, msg, step.want)
		}
	}
	if code, text, err := send(c, testSender, []string{"ann@example.com", "cc@example.com"}, plainMsg); code != 250 {
		t.Fatalf("DATA: %d %s %v", code, text, err)
	}
}

// TestKeyPairReload: a renewed certificate (cert-manager rewrites the
// Secret) is served without a restart; a broken pair keeps the old one.
func TestKeyPairReload(t *testing.T) {
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	write := func(c tls.Certificate) {
		t.Helper()
		if err := os.WriteFile(cf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(kf, keyPEM(t, c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	first, _ := testCert(t)
	write(first)
	var errs int
	kp, err := NewKeyPair(cf, kf, 0, func(error) { errs++ })
	if err != nil {
		t.Fatal(err)
	}
	got, _ := kp.GetCertificate(nil)
	if string(got.Certificate[0]) != string(first.Certificate[0]) {
		t.Fatal("first certificate not served")
	}
	second, _ := testCert(t)
	write(second)
	got, _ = kp.GetCertificate(nil)
	if string(got.Certificate[0]) != string(second.Certificate[0]) {
		t.Fatal("renewed certificate not served")
	}
	if err := os.WriteFile(kf, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ = kp.GetCertificate(nil)
	if string(got.Certificate[0]) != string(second.Certificate[0]) || errs != 1 {
		t.Fatalf("broken update: served the old certificate %v, errors reported %d", string(got.Certificate[0]) == string(second.Certificate[0]), errs)
	}
}

func keyPEM(t *testing.T, c tls.Certificate) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
