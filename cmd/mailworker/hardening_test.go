package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestDevNeverReachesConfiguredEndpoints: `mailworker dev --config prod.yaml`
// with MAILWORKER_* env pointing a second profile elsewhere sends every job
// to its own fake Graph; the "real" endpoints (another fake standing in for
// Entra + Graph) get no token request and no mail.
func TestDevNeverReachesConfiguredEndpoints(t *testing.T) {
	t.Parallel()
	real, caFile := startFake(t, graphtest.Options{TenantID: "prod-tenant", ClientID: "prod-client", ClientSecret: "prod-secret"})
	dir := t.TempDir()
	prod := filepath.Join(dir, "prod.yaml")
	if err := os.WriteFile(prod, []byte(fmt.Sprintf(`profiles:
  billing: {tenantId: prod-tenant, clientId: prod-client, authorityHost: "%s", graphURL: "%s", caFile: "%s",
            credential: {clientSecret: prod-secret}, allowedSenders: [billing@contoso.example]}
`, real.URL(), real.GraphURL(), caFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"MAILWORKER_PROFILES=ops", "MAILWORKER_PROFILES_OPS_TENANT_ID=prod-tenant", "MAILWORKER_PROFILES_OPS_CLIENT_ID=prod-client",
		"MAILWORKER_PROFILES_OPS_AUTHORITY_HOST=" + real.URL(), "MAILWORKER_PROFILES_OPS_GRAPH_URL=" + real.GraphURL(),
		"MAILWORKER_PROFILES_OPS_CA_FILE=" + caFile, "MAILWORKER_PROFILES_OPS_CREDENTIAL_CLIENT_SECRET=prod-secret",
		"MAILWORKER_PROFILES_OPS_ALLOWED_SENDERS=ops@contoso.example"}
	dev := startProc(t, env, "dev", "--config", prod, "--nats-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--console-listen", "127.0.0.1:0", "--smtp-listen", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "dev"))
	natsURL := dev.waitOutput(natsURLLine, 60*time.Second)
	if !strings.Contains(dev.stdout.String(), "billing, demo, ops") {
		t.Errorf("banner does not list the redirected profiles:\n%s", dev.stdout.String())
	}
	for profile, from := range map[string]string{"billing": "billing@contoso.example", "ops": "ops@contoso.example"} {
		out, errOut, code := runCmd(t, "", "send", "--nats-url", natsURL, "--profile", profile, "--id", "dev-"+profile,
			"--from", from, "--to", "a@example.com", "--subject", "s", "--text", "t", "--wait")
		if code != 0 || !strings.Contains(out, "sent") {
			t.Fatalf("%s: exit %d %s %s", profile, code, out, errOut)
		}
	}
	if real.TokenRequests() != 0 || real.SendRequests() != 0 {
		t.Fatalf("dev reached the configured endpoints: %d token requests, %d sends", real.TokenRequests(), real.SendRequests())
	}
}

// TestJobNearMaxPayloadReachesAnOutcome: a job just under the server's
// max_payload that is dead-lettered is stored (cut to fit, marked) and
// terminated, not retried for ever; `dlq show` says so, and replaying it
// without a fixed body is refused. Built binary, real nats-server.
func TestJobNearMaxPayloadReachesAnOutcome(t *testing.T) {
	t.Parallel()
	const maxPayload = 64 << 10
	ns := startTestNATS(t, func(o *server.Options) { o.MaxPayload = maxPayload })
	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: "s1"})
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`nats: {url: "%s"}
http: {listen: "127.0.0.1:0"}
profiles:
  billing: {tenantId: t1, clientId: c1, authorityHost: "%s", graphURL: "%s", caFile: "%s",
            credential: {clientSecret: s1}, allowedSenders: [billing@contoso.example]}
`, ns.ClientURL(), fake.URL(), fake.GraphURL(), caFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runCmd(t, "", "provision", "--config", cfgFile); code != 0 {
		t.Fatalf("provision: exit %d %s %s", code, out, errOut)
	}
	w := startProc(t, nil, "run", "--config", cfgFile)
	// From an unapproved sender: dead-lettered at once. Sized so that the job
	// fits max_payload but the job plus the dead-letter headers do not.
	job := contract.Job{ID: "near-max", From: "ceo@contoso.example", To: []string{"a@example.com"}, Subject: "big"}
	b, _ := json.Marshal(job)
	job.Text = strings.Repeat("x", maxPayload-len(b)-300)
	data, _ := json.Marshal(job)
	file := filepath.Join(dir, "big.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCmd(t, "", "send", "--config", cfgFile, "--profile", "billing", "--file", file, "--wait", "--timeout", "60s")
	if code != 1 || !strings.Contains(errOut, "sender_not_allowed") {
		t.Fatalf("send --wait of a %d-byte job: exit %d %s %s\nworker: %s", len(data), code, out, errOut, tail(w.stderr.String(), 2000))
	}
	out, errOut, code = runCmd(t, "", "dlq", "show", "near-max", "--config", cfgFile)
	if code != 0 || !strings.Contains(out, "TRUNCATED") || !strings.Contains(out, fmt.Sprintf("was %d bytes", len(data))) {
		t.Fatalf("dlq show: exit %d %s %s", code, out, errOut)
	}
	if out, errOut, code = runCmd(t, "", "dlq", "replay", "near-max", "--config", cfgFile); code == 0 || !strings.Contains(out+errOut, "--file") {
		t.Fatalf("replay of a truncated record: exit %d %s %s", code, out, errOut)
	}
	// The job was terminated: nothing is left pending on the consumer.
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	eventually(t, 20*time.Second, "no job pending or redelivered", func() bool {
		m, err := nc.Request("$JS.API.CONSUMER.INFO.MAIL_JOBS_billing.mailworker", nil, 2*time.Second)
		if err != nil {
			return false
		}
		var info struct {
			NumAckPending int `json:"num_ack_pending"`
			NumPending    int `json:"num_pending"`
		}
		return json.Unmarshal(m.Data, &info) == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	if strings.Contains(w.stderr.String(), "write dead letter failed") {
		t.Fatalf("the dead-letter write failed at least once:\n%s", tail(w.stderr.String(), 2000))
	}
}
