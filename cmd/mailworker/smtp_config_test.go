package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
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

// TestSMTPHTTPPprof: `mailworker smtp` serves net/http/pprof when
// http.pprof is set (it ignored the option before), and not otherwise.
func TestSMTPHTTPPprof(t *testing.T) {
	in := &smtpIngress{reg: prometheus.NewRegistry()}
	for _, on := range []bool{true, false} {
		rec := httptest.NewRecorder()
		in.handler(HTTPConfig{Pprof: on}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/cmdline", nil))
		if got, want := rec.Code == http.StatusOK, on; got != want {
			t.Fatalf("http.pprof %v: /debug/pprof/cmdline answered %d", on, rec.Code)
		}
	}
}
