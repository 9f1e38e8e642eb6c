package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/cmd/mailworker/internal/smtpd"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/tracking"
	"github.com/mailworker/mailworker/worker"
)

// selfSignedRSA returns a certificate and the PEM of the certificate plus its key.
func selfSignedRSA(t *testing.T, notAfter time.Time) (*x509.Certificate, []byte) {
	t.Helper()
	cert, pemData, err := graphtest.NewAppCertificate(notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return cert, pemData
}

// TestAppInProcess runs the App the way `mailworker run` does, with a
// certificate credential read from a file, and checks an attachment given
// by objectRef reaches Graph, the credential-expiry metric, /readyz and a
// clean shutdown.
func TestAppInProcess(t *testing.T) {
	ns := startTestNATS(t, nil)
	notAfter := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	cert, certPEM := selfSignedRSA(t, notAfter)
	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", Certificate: cert})
	certFile := filepath.Join(t.TempDir(), "tls.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.NATS.URL = ns.ClientURL()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Profiles = map[string]ProfileConfig{"billing": {TenantID: "t1", ClientID: "c1", AuthorityHost: fake.URL(),
		GraphURL: fake.GraphURL(), CAFile: caFile, Credential: CredentialConfig{CertificateFile: certFile},
		AllowedSenders: []string{"billing@contoso.example"}}}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	base, js, stop := startApp(t, cfg, zerolog.New(zerolog.NewTestWriter(t)))
	q, err := queue.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	report := make([]byte, 200_000)
	ref, err := q.Attachments.Put(ctx, "billing", "report.pdf", report)
	if err != nil {
		t.Fatal(err)
	}
	job := &contract.Job{ID: "with-ref", From: "billing@contoso.example", To: []string{"a@example.com"}, Subject: "report",
		Text: "attached", Attachments: []contract.Attachment{{Name: "report.pdf", ContentType: "application/pdf", ObjectRef: ref}}}
	if _, err := queue.NewPublisher(js).Publish(ctx, "billing", job); err != nil {
		t.Fatal(err)
	}
	var msgs []graphtest.Message
	eventually(t, 15*time.Second, "the message at the fake Graph", func() bool { msgs = fake.Messages(); return len(msgs) == 1 })
	m := msgs[0]
	if m.JobID != "with-ref" || len(m.Attachments) != 1 || m.Attachments[0].Size != len(report) || m.Attachments[0].Name != "report.pdf" {
		t.Fatalf("message = %+v", m)
	}
	if m.Headers["X-Mailworker-Job-Id"] != "with-ref" {
		t.Fatalf("headers = %v", m.Headers)
	}
	_, metrics := httpGet(base + "/metrics")
	want := fmt.Sprintf(`mailworker_credential_expiry_timestamp_seconds{profile="billing"} %g`, float64(notAfter.Unix()))
	if !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %s", want)
	}
	if fake.TokenRequests() != 1 {
		t.Errorf("token requests = %d, want 1 (certificate assertion, then cache)", fake.TokenRequests())
	}
	stop()
}

// startApp runs the App with cfg in process until /readyz answers, and
// returns its HTTP base URL, a JetStream context on its NATS server, and
// stop, which shuts it down and fails the test if Run does not return
// cleanly.
func startApp(t *testing.T, cfg Config, log zerolog.Logger) (string, jetstream.JetStream, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	app, err := NewApp(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(app.Close)
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	base := "http://" + app.HTTPAddr()
	eventually(t, 10*time.Second, "/readyz", func() bool { c, _ := httpGet(base + "/readyz"); return c == 200 })
	nc, err := nats.Connect(cfg.NATS.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stop := func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
	return base, js, stop
}

func TestSandboxCommand(t *testing.T) {
	t.Parallel()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	sb := startProc(t, nil, "sandbox", "--listen", "127.0.0.1:0", "--ca-file", caFile)
	url := sb.waitOutput(regexp.MustCompile(`url:\s+(https://\S+)`), 60*time.Second)
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal("no CA in --ca-file")
	}
	client := newTLSClient(pool)
	defer client.CloseIdleConnections()
	resp, err := client.Get(url + "/_sandbox/messages")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /_sandbox/messages: %d", resp.StatusCode)
	}
	if code := sb.stop(20 * time.Second); code != 0 {
		t.Fatalf("sandbox exited %d", code)
	}
}

// TestReadmeListsEveryMetric keeps the README's metrics table equal to what
// the worker registers; deploy/check.sh checks alerts and dashboards against
// that table.
func TestReadmeListsEveryMetric(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`(mailworker_[a-z_]+)`").FindAllStringSubmatch(string(readme), -1) {
		documented[m[1]] = true
	}
	reg := prometheus.NewRegistry()
	m := worker.NewMetrics(reg, []string{"p"})
	m.CredentialExpiry.WithLabelValues("p").Set(1) // only certificate profiles have one
	registerBuildInfo(reg)
	smtpd.NewMetrics(reg, []string{"p"})         // mailworker smtp
	tracking.RegisterMetrics(reg, []string{"p"}) // delivery tracking
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, f := range families {
		registered[f.GetName()] = true
		if !documented[f.GetName()] {
			t.Errorf("%s is exported but not in the README's metrics table", f.GetName())
		}
	}
	for name := range documented {
		if !registered[name] {
			t.Errorf("the README documents %s, which the worker does not export", name)
		}
	}
}
