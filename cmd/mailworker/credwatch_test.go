package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// secretVolume lays out a directory the way the kubelet mounts a Secret:
// billing.pem -> ..data/billing.pem, ..data -> a timestamped directory, and an
// update swaps ..data atomically to a new directory.
type secretVolume struct {
	t   *testing.T
	dir string
	n   int
}

func (v *secretVolume) write(content []byte) {
	v.t.Helper()
	v.n++
	gen := fmt.Sprintf("..2026_11_26_00_00_%02d.%d", v.n, v.n)
	if err := os.Mkdir(filepath.Join(v.dir, gen), 0o755); err != nil {
		v.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.dir, gen, "billing.pem"), content, 0o600); err != nil {
		v.t.Fatal(err)
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(gen, tmp); err != nil {
		v.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		v.t.Fatal(err)
	}
	if v.n == 1 {
		if err := os.Symlink(filepath.Join("..data", "billing.pem"), filepath.Join(v.dir, "billing.pem")); err != nil {
			v.t.Fatal(err)
		}
	}
}

// TestCredentialRotationWithoutRestart runs the binary with a certificate
// mounted like a Kubernetes Secret and rotates it the runbook's way while
// mail flows: a broken update is refused with the old certificate kept; the
// new certificate is registered next to the old one, the Secret updated, and
// the old one removed. Mail is sent throughout, the next token comes from
// the new certificate without a restart, the expiry metric follows, and no
// key material reaches the log.
func TestCredentialRotationWithoutRestart(t *testing.T) {
	t.Parallel()
	ns := startTestNATS(t, nil)
	oldCert, oldPEM := selfSignedRSA(t, time.Now().Add(10*24*time.Hour).Truncate(time.Second))
	newCert, newPEM := selfSignedRSA(t, time.Now().Add(400*24*time.Hour).Truncate(time.Second))
	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", Certificate: oldCert})
	vol := &secretVolume{t: t, dir: t.TempDir()}
	vol.write(oldPEM)

	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	cfg := fmt.Sprintf(`nats: {url: "%s"}
http: {listen: "%s"}
worker: {perMailboxPerMinute: 0}
profiles:
  billing:
    tenantId: t1
    clientId: c1
    authorityHost: %s
    graphURL: %s
    caFile: %s
    credential: {certificateFile: %s, reloadInterval: 100ms}
    allowedSenders: [billing@contoso.example]
`, ns.ClientURL(), httpAddr, fake.URL(), fake.GraphURL(), caFile, filepath.Join(vol.dir, "billing.pem"))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	w := startProc(t, nil, "run", "--config", cfgFile)
	metricsURL := "http://" + httpAddr + "/metrics"
	metric := func(line string) bool { _, body := httpGet(metricsURL); return strings.Contains(body, line+"\n") }
	eventually(t, 60*time.Second, "/readyz", func() bool { c, _ := httpGet("http://" + httpAddr + "/readyz"); return c == 200 })

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	q, err := queue.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	pub := queue.NewPublisher(js)
	send := func(id string) {
		t.Helper()
		job := &contract.Job{ID: id, From: "billing@contoso.example", To: []string{"a@example.com"}, Subject: "s", Text: "t"}
		if _, err := pub.Publish(ctx, "billing", job); err != nil {
			t.Fatal(err)
		}
		var st contract.JobState
		eventually(t, 30*time.Second, "job "+id+" to finish", func() bool {
			st, _, _ = q.States.Get(ctx, "billing", id)
			return terminal(st.State)
		})
		if st.State != contract.StateSent {
			t.Fatalf("job %s: %s %+v", id, st.State, st.LastError)
		}
	}
	expiry := func(c *x509.Certificate) string {
		return fmt.Sprintf(`mailworker_credential_expiry_timestamp_seconds{profile="billing"} %g`, float64(c.NotAfter.Unix()))
	}

	send("before")
	if !metric(expiry(oldCert)) {
		t.Fatalf("/metrics lacks %s", expiry(oldCert))
	}

	// A broken update (a key pasted without its certificate) is refused once,
	// the old certificate stays in use.
	vol.write([]byte(strings.SplitAfter(string(oldPEM), "-----END CERTIFICATE-----\n")[1]))
	eventually(t, 10*time.Second, "the refused reload in /metrics", func() bool {
		return metric(`mailworker_credential_reloads_total{profile="billing",result="error"} 1`) &&
			metric(`mailworker_credential_reload_failing{profile="billing"} 1`)
	})
	send("after-broken-update")
	// Put back as it was (the broken update rolled back): nothing to reload,
	// and the failure clears.
	vol.write(oldPEM)
	eventually(t, 10*time.Second, "the failure to clear", func() bool {
		return metric(`mailworker_credential_reload_failing{profile="billing"} 0`)
	})
	if !metric(`mailworker_credential_reloads_total{profile="billing",result="ok"} 0`) {
		t.Error("the credential in use, written back, counted as a reload")
	}

	// Rotation: register the new certificate, update the Secret, remove the old.
	fake.SetCredentials(nil, []*x509.Certificate{oldCert, newCert})
	vol.write(newPEM)
	eventually(t, 10*time.Second, "the reload in /metrics", func() bool {
		return metric(`mailworker_credential_reloads_total{profile="billing",result="ok"} 1`) && metric(expiry(newCert)) &&
			metric(`mailworker_credential_reload_failing{profile="billing"} 0`)
	})
	send("rotated")
	fake.SetCredentials(nil, []*x509.Certificate{newCert})
	send("old-removed")

	want := []string{graphtest.CertificateThumbprint(oldCert), graphtest.CertificateThumbprint(newCert)}
	if got := fake.IssuedWith(); !reflect.DeepEqual(got, want) {
		t.Errorf("tokens issued with %v, want %v", got, want)
	}
	if code := w.stop(30 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
	logs := w.stderr.String()
	thumb := strings.TrimPrefix(graphtest.CertificateThumbprint(newCert), "cert:")
	if !strings.Contains(logs, `"thumbprint":"`+thumb+`"`) || !strings.Contains(logs, "credential reloaded") {
		t.Errorf("no reload log line naming the new thumbprint %s:\n%s", thumb, logs)
	}
	if n := strings.Count(logs, "cannot be used; keeping the credential in use"); n != 1 {
		t.Errorf("%d log lines about the broken update, want 1 (not one per reload interval):\n%s", n, logs)
	}
	for _, secret := range []string{"PRIVATE KEY", "BEGIN CERTIFICATE", "MII"} {
		if strings.Contains(logs, secret) {
			t.Errorf("key material (%q) in the log:\n%s", secret, logs)
		}
	}
}

// TestTenantWideConsentIsReported runs the App against an app registration
// that an admin also gave tenant-wide Mail.Send consent in Entra: mail still
// goes out from the approved mailbox, and the grant shows in the log and in
// mailworker_tenant_wide_mail_roles (which drives a critical alert).
func TestTenantWideConsentIsReported(t *testing.T) {
	t.Parallel()
	ns := startTestNATS(t, nil)
	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: "s3cret-value",
		Roles: []string{"User.Read.All", "Mail.Send"}})
	cfg := defaultConfig()
	cfg.NATS.URL = ns.ClientURL()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Profiles = map[string]ProfileConfig{"billing": {TenantID: "t1", ClientID: "c1", AuthorityHost: fake.URL(),
		GraphURL: fake.GraphURL(), CAFile: caFile, Credential: CredentialConfig{ClientSecret: "s3cret-value"},
		AllowedSenders: []string{"billing@contoso.example"}}}
	var logs syncBuffer
	base, js, stop := startApp(t, cfg, zerolog.New(&logs))
	job := &contract.Job{ID: "consented", From: "billing@contoso.example", To: []string{"a@example.com"}, Subject: "s", Text: "t"}
	if _, err := queue.NewPublisher(js).Publish(context.Background(), "billing", job); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the mail at the fake Graph", func() bool { return len(fake.Messages()) == 1 })
	eventually(t, 5*time.Second, "the roles in /metrics", func() bool {
		_, body := httpGet(base + "/metrics")
		return strings.Contains(body, `mailworker_tenant_wide_mail_roles{profile="billing"} 1`+"\n")
	})
	if l := logs.String(); !strings.Contains(l, `"roles":["Mail.Send"]`) || !strings.Contains(l, "tenant-wide mail permissions") {
		t.Errorf("no error log naming the tenant-wide role:\n%s", l)
	}
	stop()
}

// TestTrackingCredentialRotation: the tracker's own app registration
// (tracking.app) with a certificate mounted like a Kubernetes Secret is
// rotated the runbook's way while the worker runs: the new certificate is
// taken up without a restart (mailworker_credential_reloads_total and the
// expiry metric with profile="tracking"), the tracker's next token comes
// from it, and delivery events keep coming after the old certificate is
// removed from the registration.
func TestTrackingCredentialRotation(t *testing.T) {
	t.Parallel()
	ns := startTestNATS(t, nil)
	oldCert, oldPEM := selfSignedRSA(t, time.Now().Add(10*24*time.Hour).Truncate(time.Second))
	newCert, newPEM := selfSignedRSA(t, time.Now().Add(400*24*time.Hour).Truncate(time.Second))
	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: "s1", Certificate: oldCert,
		Roles: []string{graphtest.TraceRole}, Trace: graphtest.TraceOptions{Lag: 10 * time.Millisecond, Settle: 10 * time.Millisecond}})
	vol := &secretVolume{t: t, dir: t.TempDir()}
	vol.write(oldPEM)

	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	cfg := fmt.Sprintf(`nats: {url: "%s"}
http: {listen: "%s"}
worker: {perMailboxPerMinute: 0}
tracking:
  enabled: true
  interval: 100ms
  budgetPer5Minutes: 100
  app:
    tenantId: t1
    clientId: c1
    authorityHost: %[3]s
    graphURL: %[4]s
    caFile: %[5]s
    credential: {certificateFile: %[6]s, reloadInterval: 100ms}
profiles:
  billing:
    tenantId: t1
    clientId: c1
    authorityHost: %[3]s
    graphURL: %[4]s
    caFile: %[5]s
    credential: {clientSecret: s1}
    allowedSenders: [billing@contoso.example]
`, ns.ClientURL(), httpAddr, fake.URL(), fake.GraphURL(), caFile, filepath.Join(vol.dir, "billing.pem"))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	w := startProc(t, nil, "run", "--config", cfgFile)
	metricsURL := "http://" + httpAddr + "/metrics"
	metric := func(line string) bool { _, body := httpGet(metricsURL); return strings.Contains(body, line+"\n") }
	eventually(t, 60*time.Second, "/readyz", func() bool { c, _ := httpGet("http://" + httpAddr + "/readyz"); return c == 200 })

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	q, err := queue.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	pub := queue.NewPublisher(js)
	delivered := func(id string) {
		t.Helper()
		job := &contract.Job{ID: id, From: "billing@contoso.example", To: []string{"a@example.com"}, Subject: "s", Text: "t"}
		if _, err := pub.Publish(ctx, "billing", job); err != nil {
			t.Fatal(err)
		}
		eventually(t, 60*time.Second, "job "+id+"'s delivered event", func() bool {
			h, _ := q.Events.History(ctx, "billing", id)
			for _, e := range h {
				if e.Recipient == "a@example.com" && e.Event == contract.EventDelivered {
					return true
				}
			}
			return false
		})
	}
	certTokens := func() []string {
		var out []string
		for _, c := range fake.IssuedWith() {
			if strings.HasPrefix(c, "cert:") {
				out = append(out, c)
			}
		}
		return out
	}
	expiry := func(c *x509.Certificate) string {
		return fmt.Sprintf(`mailworker_credential_expiry_timestamp_seconds{profile="tracking"} %g`, float64(c.NotAfter.Unix()))
	}

	delivered("before")
	if !metric(expiry(oldCert)) {
		t.Fatalf("/metrics lacks %s", expiry(oldCert))
	}
	if got, want := certTokens(), []string{graphtest.CertificateThumbprint(oldCert)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("tracker tokens issued with %v, want %v", got, want)
	}

	// Rotation: register the new certificate, update the Secret, remove the old.
	fake.SetCredentials([]string{"s1"}, []*x509.Certificate{oldCert, newCert})
	vol.write(newPEM)
	eventually(t, 10*time.Second, "the tracker's reload in /metrics", func() bool {
		return metric(`mailworker_credential_reloads_total{profile="tracking",result="ok"} 1`) && metric(expiry(newCert)) &&
			metric(`mailworker_credential_reload_failing{profile="tracking"} 0`)
	})
	fake.SetCredentials([]string{"s1"}, []*x509.Certificate{newCert})
	delivered("rotated")
	if got, want := certTokens(), []string{graphtest.CertificateThumbprint(oldCert), graphtest.CertificateThumbprint(newCert)}; !reflect.DeepEqual(got, want) {
		t.Errorf("tracker tokens issued with %v, want %v", got, want)
	}
	if code := w.stop(30 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
	logs := w.stderr.String()
	if !strings.Contains(logs, `"profile":"tracking"`) || !strings.Contains(logs, "credential reloaded") {
		t.Errorf("no reload log line for the tracker's registration:\n%s", logs)
	}
	for _, secret := range []string{"PRIVATE KEY", "BEGIN CERTIFICATE", "MII"} {
		if strings.Contains(logs, secret) {
			t.Errorf("key material (%q) in the log:\n%s", secret, logs)
		}
	}
}
