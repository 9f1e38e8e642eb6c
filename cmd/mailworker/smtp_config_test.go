package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSMTPOnlyConfig: `mailworker smtp` needs no Entra settings in its
// profiles (issue 20 item 14); the worker still does.
func TestSMTPOnlyConfig(t *testing.T) {
	f := filepath.Join(t.TempDir(), "smtp.yaml")
	if err := os.WriteFile(f, []byte("nats: {url: nats://127.0.0.1:4222}\nprofiles:\n  billing: {allowedSenders: [billing@contoso.example]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := readConfig(f, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.validateSMTP(); err != nil {
		t.Fatalf("smtp-only profile: %v", err)
	}
	if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "profiles.billing.tenantId: required") {
		t.Fatalf("worker validation: %v, want tenantId required", err)
	}
}
