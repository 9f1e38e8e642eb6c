package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/worker"
)

func TestUpperSnake(t *testing.T) {
	for in, want := range map[string]string{
		"url": "URL", "perMailboxConcurrency": "PER_MAILBOX_CONCURRENCY", "graphURL": "GRAPH_URL",
		"stateTTL": "STATE_TTL", "credsFile": "CREDS_FILE", "tls": "TLS", "caFile": "CA_FILE",
	} {
		if got := upperSnake(in); got != want {
			t.Errorf("upperSnake(%q) = %q, want %q", in, got, want)
		}
	}
}

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const sampleConfig = `
nats:
  url: nats://nats:4222
worker:
  concurrency: 32
profiles:
  billing:
    tenantId: t
    clientId: c
    credential:
      clientSecret: s
    allowedSenders: [billing@contoso.com]
`

func TestLoadConfig(t *testing.T) {
	t.Run("file, then env overrides", func(t *testing.T) {
		cfg, err := loadConfig(writeConfig(t, sampleConfig), []string{
			"MAILWORKER_NATS_URL=nats://other:4222",
			"MAILWORKER_WORKER_PER_MAILBOX_CONCURRENCY=2",
			"MAILWORKER_WORKER_ACK_WAIT=90s",
			"MAILWORKER_PROFILES_BILLING_CREDENTIAL_CLIENT_SECRET=from-env",
			"MAILWORKER_PROFILES_BILLING_ALLOWED_SENDERS=a@contoso.com, b@contoso.com",
			"MAILWORKER_LOG_RECIPIENTS=true",
			"OTHER=ignored",
		})
		if err != nil {
			t.Fatal(err)
		}
		p := cfg.Profiles["billing"]
		if cfg.NATS.URL != "nats://other:4222" || cfg.Worker.Concurrency != 32 || cfg.Worker.PerMailboxConcurrency != 2 ||
			cfg.Worker.AckWait != 90*time.Second || p.Credential.ClientSecret != "from-env" ||
			strings.Join(p.AllowedSenders, ",") != "a@contoso.com,b@contoso.com" || !cfg.Log.Recipients {
			t.Fatalf("config = %+v", cfg)
		}
		wc := cfg.workerConfig()
		if wc.PerMailboxPerMinute != 30 || wc.MaxAttempts != 8 {
			t.Fatalf("worker defaults: %+v", wc)
		}
	})

	t.Run("each profile's job stream limits: streams.* defaults, profiles.<name>.jobs overrides", func(t *testing.T) {
		cfg, err := loadConfig(writeConfig(t, sampleConfig), []string{
			"MAILWORKER_STREAMS_JOBS_MAX_MSGS=500",
			"MAILWORKER_PROFILES_BILLING_JOBS_MAX_ACK_PENDING=7",
			"MAILWORKER_PROFILES_BILLING_JOBS_MAX_BYTES=1048576",
		})
		if err != nil {
			t.Fatal(err)
		}
		l := cfg.queueConfig().JobsLimitsOf("billing")
		if l.MaxMsgs != 500 || l.MaxBytes != 1<<20 || l.MaxAckPending != 7 || l.MaxMsgSize != 0 {
			t.Fatalf("billing's limits %+v", l)
		}
	})

	t.Run("profiles from env alone", func(t *testing.T) {
		cfg, err := loadConfig("", []string{
			"MAILWORKER_PROFILES=ops",
			"MAILWORKER_PROFILES_OPS_TENANT_ID=t", "MAILWORKER_PROFILES_OPS_CLIENT_ID=c",
			"MAILWORKER_PROFILES_OPS_CREDENTIAL_CERTIFICATE_FILE=/x.pem",
			"MAILWORKER_PROFILES_OPS_ALLOWED_SENDERS=ops@contoso.com",
			"MAILWORKER_WORKER_PER_MAILBOX_PER_MINUTE=0",
		})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Profiles["ops"].Credential.CertificateFile != "/x.pem" || cfg.workerConfig().PerMailboxPerMinute != worker.Unlimited {
			t.Fatalf("config = %+v", cfg)
		}
	})

	for name, tc := range map[string]struct {
		yaml string
		env  []string
		want string
	}{
		"unknown key in the file":           {yaml: "nats:\n  ulr: x\n", want: "line 2: unknown key `ulr` in nats (did you mean url?)"},
		"typo in a profile":                 {yaml: strings.Replace(sampleConfig, "tenantId:", "tenantld:", 1), want: "unknown key `tenantld` in profiles.billing (did you mean tenantId?)"},
		"key in another case":               {yaml: strings.Replace(sampleConfig, "clientId:", "clientID:", 1), want: "unknown key `clientID` in profiles.billing (did you mean clientId?)"},
		"unknown top-level key":             {yaml: "workers: {}\n", want: "unknown key `workers` in the top level (did you mean worker?)"},
		"no near key":                       {yaml: "log: {colour: true}\n", want: "unknown key `colour` in log (its keys are level, format, recipients)"},
		"authority with the tenant":         {yaml: sampleConfig, env: []string{"MAILWORKER_PROFILES_BILLING_AUTHORITY_HOST=https://127.0.0.1:8443/demo-tenant", "MAILWORKER_PROFILES_BILLING_GRAPH_URL=https://127.0.0.1:8443/v1.0"}, want: "has a path: give the bare host, https://127.0.0.1:8443"},
		"sandbox authority, no graphURL":    {yaml: sampleConfig, env: []string{"MAILWORKER_PROFILES_BILLING_AUTHORITY_HOST=https://127.0.0.1:8443"}, want: "are not both Microsoft's"},
		"authority and Graph of two clouds": {yaml: sampleConfig, env: []string{"MAILWORKER_PROFILES_BILLING_GRAPH_URL=https://graph.microsoft.us"}, want: "are different clouds"},
		"authority and Graph on two hosts":  {yaml: sampleConfig, env: []string{"MAILWORKER_PROFILES_BILLING_AUTHORITY_HOST=https://127.0.0.1:8443", "MAILWORKER_PROFILES_BILLING_GRAPH_URL=https://127.0.0.2:8443/v1.0"}, want: "different hosts"},
		"unknown env variable":              {env: []string{"MAILWORKER_NATS_ULR=x"}, want: "MAILWORKER_NATS_ULR: no such setting"},
		"bad duration":                      {env: []string{"MAILWORKER_WORKER_ACK_WAIT=soon"}, want: "MAILWORKER_WORKER_ACK_WAIT"},
		"bad replicas":                      {env: []string{"MAILWORKER_STREAMS_REPLICAS=2"}, want: "streams.replicas"},
		"two credentials":                   {yaml: sampleConfig, env: []string{"MAILWORKER_PROFILES_BILLING_CREDENTIAL_CERTIFICATE_FILE=/x"}, want: "profiles.billing.credential: set exactly one"},
		"missing tenant":                    {yaml: strings.Replace(sampleConfig, "tenantId: t", "tenantId: \"\"", 1), want: "profiles.billing.tenantId: required"},
		"unknown cloud":                     {yaml: sampleConfig, env: []string{"MAILWORKER_PROFILES_BILLING_CLOUD=mars"}, want: "profiles.billing.cloud"},
		"bad log format":                    {env: []string{"MAILWORKER_LOG_FORMAT=xml"}, want: "log.format"},
		"profile name with a subject dot":   {yaml: strings.Replace(sampleConfig, "billing:", "bill.ing:", 1), want: "profiles.bill.ing: a profile name"},
		"recipients over Exchange's 1000":   {yaml: sampleConfig, env: []string{"MAILWORKER_PROFILES_BILLING_MAX_RECIPIENTS_PER_MESSAGE=1001"}, want: "profiles.billing.maxRecipientsPerMessage"},
		"allowed header without X-":         {yaml: strings.Replace(sampleConfig, "tenantId: t", "allowedHeaders: [Reply-By]\n    tenantId: t", 1), want: "profiles.billing.allowedHeaders"},
	} {
		t.Run(name, func(t *testing.T) {
			path := ""
			if tc.yaml != "" {
				path = writeConfig(t, tc.yaml)
			}
			_, err := loadConfig(path, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestConfigReferenceDocumentsEveryKey keeps the README's configuration
// reference complete: every settable key must appear in it.
func TestConfigReferenceDocumentsEveryKey(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	collectKeys(&keys, "", Config{})
	for _, k := range keys {
		if !strings.Contains(string(readme), k) {
			t.Errorf("README does not document %s", k)
		}
	}
}

// TestEndpointsOfOneCloudPass: every cloud's own pair, and a sandbox's one
// host with a path on Graph, are accepted.
func TestEndpointsOfOneCloudPass(t *testing.T) {
	for _, env := range [][]string{
		{"MAILWORKER_PROFILES_BILLING_CLOUD=global"},
		{"MAILWORKER_PROFILES_BILLING_CLOUD=usgov"},
		{"MAILWORKER_PROFILES_BILLING_CLOUD=usgovdod"},
		{"MAILWORKER_PROFILES_BILLING_CLOUD=china"},
		{"MAILWORKER_PROFILES_BILLING_CLOUD=usgov", "MAILWORKER_PROFILES_BILLING_GRAPH_URL=https://dod-graph.microsoft.us"},
		{"MAILWORKER_PROFILES_BILLING_AUTHORITY_HOST=https://127.0.0.1:8443/", "MAILWORKER_PROFILES_BILLING_GRAPH_URL=https://127.0.0.1:8443"},
		{"MAILWORKER_PROFILES_BILLING_AUTHORITY_HOST=https://login.microsoftonline.com", "MAILWORKER_PROFILES_BILLING_GRAPH_URL=https://graph.microsoft.com"},
	} {
		if _, err := loadConfig(writeConfig(t, sampleConfig), env); err != nil {
			t.Errorf("%v: %v", env, err)
		}
	}
}

func TestConfigDeliveryMode(t *testing.T) {
	cfg, err := loadConfig(writeConfig(t, sampleConfig), []string{
		"MAILWORKER_PROFILES_BILLING_DELIVERY_MODE=draft", "MAILWORKER_PROFILES_BILLING_DRAFT_WHEN=always"})
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Profiles["billing"]; p.DeliveryMode != "draft" || p.DraftWhen != "always" {
		t.Fatalf("profile %+v", p)
	}
	for env, want := range map[string]string{
		"MAILWORKER_PROFILES_BILLING_DELIVERY_MODE=drafts": "profiles.billing.deliveryMode",
		"MAILWORKER_PROFILES_BILLING_DRAFT_WHEN=sometimes": "profiles.billing.draftWhen",
	} {
		if _, err := loadConfig(writeConfig(t, sampleConfig), []string{env}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want one naming %s", env, err, want)
		}
	}
}
