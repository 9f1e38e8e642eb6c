package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var sandboxURLLine = regexp.MustCompile(`url:\s+(https://\S+)`)

// TestSandboxFaultTriggers drives `mailworker sandbox --fault` as support
// practising triage does: the fake Graph answers sendMail with the fault
// asked for (403 ErrorAccessDenied), a PUT on /_sandbox/faults changes it
// while running (429 with Retry-After), DELETE clears it, and a bad spec is
// refused at start with what to write instead.
func TestSandboxFaultTriggers(t *testing.T) {
	t.Parallel()
	if _, errOut, code := runCmd(t, "", "sandbox", "--listen", "127.0.0.1:0", "--fault", "sendMail=418"); code == 0 || !strings.Contains(errOut, "unknown kind \"418\"") {
		t.Fatalf("a bad --fault: exit %d, stderr %q", code, errOut)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	sb := startProc(t, nil, "sandbox", "--listen", "127.0.0.1:0", "--ca-file", caFile, "--client-secret", "s3cret",
		"--fault", "sendMail=403")
	base := sb.waitOutput(sandboxURLLine, 30*time.Second)
	if out := sb.stdout.String(); !strings.Contains(out, "100% 403 ErrorAccessDenied") {
		t.Errorf("the banner does not say which faults are on:\n%s", out)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()

	resp, err := client.PostForm(base+"/"+demoTenant+"/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"},
		"client_id": {demoClient}, "client_secret": {"s3cret"}, "scope": {"https://graph.microsoft.com/.default"}})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if tok.AccessToken == "" {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
	send := func() (int, string, string) {
		t.Helper()
		body := `{"message":{"subject":"s","body":{"contentType":"Text","content":"t"},"toRecipients":[{"emailAddress":{"address":"a@example.com"}}]}}`
		req, _ := http.NewRequest(http.MethodPost, base+"/v1.0/users/noreply@sandbox.example/sendMail", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e.Error.Code, resp.Header.Get("Retry-After")
	}
	if code, gcode, _ := send(); code != http.StatusForbidden || gcode != "ErrorAccessDenied" {
		t.Fatalf("sendMail under --fault sendMail=403: %d %s", code, gcode)
	}
	faults := func(method, spec string) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+"/_sandbox/faults", strings.NewReader(spec))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := faults(http.MethodPut, "sendMail=429"); c != http.StatusOK {
		t.Fatalf("PUT /_sandbox/faults: %d", c)
	}
	if code, _, ra := send(); code != http.StatusTooManyRequests || ra == "" {
		t.Fatalf("sendMail after PUT sendMail=429: %d, Retry-After %q", code, ra)
	}
	if c := faults(http.MethodPut, "sendMail=429:0.7,503:0.6"); c != http.StatusBadRequest {
		t.Errorf("PUT of probabilities over 1: %d, want 400", c)
	}
	faults(http.MethodDelete, "")
	if code, _, _ := send(); code != http.StatusAccepted {
		t.Fatalf("sendMail after DELETE /_sandbox/faults: %d, want 202", code)
	}
}

// TestDevFaultDeadLetters: `dev --fault` makes the worker meet the failure
// support practises on: a 403 from Graph for the demo sender dead-letters
// the job access_denied, seen by `send --wait` and `dlq list`.
func TestDevFaultDeadLetters(t *testing.T) {
	t.Parallel()
	// Graph's 403 is retried (an RBAC scope change takes 30 min to 2 h to
	// apply); two quick attempts, as the runbook's practice recipe sets.
	env := []string{"MAILWORKER_WORKER_MAX_ATTEMPTS=2", "MAILWORKER_WORKER_BACKOFF_INITIAL=100ms", "MAILWORKER_WORKER_BACKOFF_MAX=200ms"}
	dev := startProc(t, env, "dev", "--nats-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--console-listen", "127.0.0.1:0", "--smtp-listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--fault", "sendMail@"+demoSender+"=403")
	natsURL := dev.waitOutput(natsURLLine, 60*time.Second)
	if out := dev.stdout.String(); !strings.Contains(out, "Faults:      sendMail of "+demoSender+": 100% 403 ErrorAccessDenied") {
		t.Errorf("the dev banner does not say which faults are on:\n%s", out)
	}
	out, errOut, code := runCmd(t, "", "send", "--nats-url", natsURL, "--profile", demoProfile, "--from", demoSender,
		"--to", "you@example.com", "--subject", "practice", "--text", "t", "--wait", "--timeout", "60s")
	if code == 0 || !strings.Contains(out+errOut, "access_denied") {
		t.Fatalf("send --wait under a 403 fault: exit %d\n%s%s", code, out, errOut)
	}
	out, _, _ = runCmd(t, "", "dlq", "list", "--nats-url", natsURL)
	if !strings.Contains(out, "access_denied") || !strings.Contains(out, "gave up after 2 attempts") {
		t.Fatalf("dlq list after the fault:\n%s", out)
	}
}
