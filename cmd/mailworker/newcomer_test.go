package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestNewcomerCLI drives the built binary as a new user and a support
// engineer do (issue 11): `dev` is production-shaped and says how it paces;
// mistakes exit non-zero with what to do next; dead letters with hostile
// fields are shown escaped; bulk replay and purge preview what they would
// do; status summarises per profile and says when a dead letter was purged;
// `send --wait` says where a job is when it times out; a clean stop logs no
// disconnection warning and no colours off a terminal.
func TestNewcomerCLI(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	// Every port of its own: tests run in parallel, so no default port.
	dev := startProc(t, nil, "dev", "--nats-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--console-listen", "127.0.0.1:0", "--smtp-listen", "127.0.0.1:0", "--data-dir", dataDir)
	natsURL := dev.waitOutput(natsURLLine, 60*time.Second)
	httpURL := dev.waitOutput(httpURLLine, 5*time.Second)
	eventually(t, 20*time.Second, "/readyz", func() bool {
		code, _ := httpGet(httpURL + "/readyz")
		return code == 200
	})
	cli := func(args ...string) (string, string, int) {
		return runCmd(t, "", append(args, "--nats-url", natsURL)...)
	}

	t.Run("dev banner: production limits and pacing", func(t *testing.T) {
		banner := dev.stdout.String()
		for _, want := range []string{"max_payload 8 MB", "Pacing:      like production: at most 30 sends per minute", "--unpaced",
			"profile demo is in draft mode (deliveryMode: draft)", "35 MB (36,700,160 bytes)", "dead-letters such a job message_too_large"} {
			if !strings.Contains(banner, want) {
				t.Errorf("dev banner lacks %q:\n%s", want, banner)
			}
		}
	})

	t.Run("a 2 MB attachment that production accepts is sent in dev", func(t *testing.T) {
		job, _ := json.Marshal(map[string]any{"id": "e2e-big", "from": "noreply@demo.example", "to": []string{"a@example.com"}, "subject": "big", "text": "t",
			"attachments": []any{map[string]any{"name": "big.bin", "contentBase64": base64.StdEncoding.EncodeToString(make([]byte, 2<<20))}}})
		file := filepath.Join(t.TempDir(), "big.json")
		if err := os.WriteFile(file, job, 0o600); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := cli("send", "--profile", "demo", "--file", file, "--wait")
		if code != 0 || !strings.Contains(out, "sent") {
			t.Fatalf("send of a %d-byte job: exit %d\n%s%s", len(job), code, out, errOut)
		}
	})

	t.Run("unknown subcommands exit non-zero with a suggestion", func(t *testing.T) {
		for _, args := range [][]string{{"dlq", "shwo"}, {"frobnicate"}, {"dlq", "replya", "x"}} {
			out, errOut, code := runCmd(t, "", args...)
			if code == 0 || !strings.HasPrefix(errOut, "mailworker: unknown command") {
				t.Errorf("%v: exit %d, stderr %q: want non-zero and an unknown-command error", args, code, errOut)
			}
			if args[0] == "dlq" && !strings.Contains(errOut, "did you mean") {
				t.Errorf("%v: no suggestion in %q", args, errOut)
			}
			if strings.Contains(out, "Usage:") {
				t.Errorf("%v: printed the help instead of an error", args)
			}
		}
		if out, _, code := runCmd(t, "", "dlq"); code != 0 || !strings.Contains(out, "Available Commands") {
			t.Errorf("dlq alone: exit %d, want its help:\n%s", code, out)
		}
	})

	t.Run("unknown ids exit 1 with the next step", func(t *testing.T) {
		out, errOut, code := cli("status", "no-such-id")
		if code != 1 || !strings.Contains(errOut, "mailworker: job no-such-id is unknown") || !strings.Contains(errOut, "mailworker dlq show no-such-id") ||
			strings.Contains(out, "AT") {
			t.Errorf("status of an unknown id: exit %d\nstdout %q\nstderr %q", code, out, errOut)
		}
		out, _, code = cli("status", "no-such-id", "--json")
		var res struct {
			Error  string           `json:"error"`
			Events []contract.Event `json:"events"`
		}
		if code != 1 || json.Unmarshal([]byte(out), &res) != nil || !strings.Contains(res.Error, "unknown") || res.Events == nil {
			t.Errorf("status --json of an unknown id: exit %d, %q", code, out)
		}
		_, errOut, code = cli("dlq", "show", "no-such-id")
		if code != 1 || !strings.Contains(errOut, "mailworker: job no-such-id is not in the dead-letter queue") || !strings.Contains(errOut, "mailworker status no-such-id") {
			t.Errorf("dlq show of an unknown id: exit %d, %q", code, errOut)
		}
		_, errOut, code = cli("dlq", "replay", "no-such-id")
		if code != 1 || !strings.Contains(errOut, "try `mailworker status") {
			t.Errorf("dlq replay of an unknown id: exit %d, %q", code, errOut)
		}
		_, errOut, code = cli("status", "not.an.id")
		if code != 1 || !strings.Contains(errOut, "is not a job id") {
			t.Errorf("status of a malformed id: exit %d, %q", code, errOut)
		}
		_, errOut, code = cli("dlq", "list", "--reason", "nope")
		if code != 1 || !strings.HasPrefix(errOut, "mailworker: --reason:") {
			t.Errorf("dlq list --reason nope: exit %d, %q", code, errOut)
		}
	})

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// A subject that rewrites the terminal title, clears the screen and
	// breaks the table: dead-lettered (control characters), then shown.
	hostile := `{"id":"e2e-hostile","from":"noreply@demo.example","to":["a@example.com"],"subject":"\u001b]0;pwned\u0007\u001b[2J\r\nX\tY\u009b","text":"t"}`
	if err := nc.Publish("mail.send.demo", []byte(hostile)); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, cli, "e2e-hostile", "dead_lettered")

	t.Run("dlq list shows the error and escapes hostile fields", func(t *testing.T) {
		out, errOut, code := cli("dlq", "list")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if strings.ContainsAny(out, "\x1b\r\x07\u009b") {
			t.Fatalf("dlq list wrote raw control characters to the terminal: %q", out)
		}
		var row string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "e2e-hostile") {
				row = l
			}
		}
		if !strings.Contains(out, "ERROR") || !strings.Contains(row, "subject: contains a control character") || !strings.Contains(row, `\x1b]0;pwned\x07`) ||
			!strings.Contains(row, `\r\nX\tY\x9b`) {
			t.Errorf("dlq list row %q: want the error column and the subject escaped\n%s", row, out)
		}
		out, _, _ = cli("dlq", "show", "e2e-hostile")
		if strings.ContainsAny(out, "\x1b\r\x07\u009b") || !strings.Contains(out, `\u001b]0;pwned`) {
			t.Errorf("dlq show: %q", out)
		}
	})

	t.Run("bulk replay and purge preview, warn and confirm", func(t *testing.T) {
		out, errOut, code := cli("dlq", "replay", "--all", "--reason", "invalid_job", "--dry-run")
		if code != 0 || !strings.Contains(out, "would replay 1 job(s)") || !strings.Contains(out, "e2e-hostile") ||
			!strings.Contains(errOut, "warning: 1 of these job(s) were dead-lettered invalid_job") {
			t.Errorf("replay --all --dry-run: exit %d\n%s%s", code, out, errOut)
		}
		out, errOut, code = cli("dlq", "purge", "--job-id", "e2e-hostile")
		if code != 1 || !strings.Contains(out, "1 dead letter(s) match") || !strings.Contains(out, "e2e-hostile") || !strings.Contains(errOut, "--yes") {
			t.Errorf("purge without --yes: exit %d\n%s%s", code, out, errOut)
		}
		out, _, code = cli("dlq", "purge", "--reason", "invalid_job", "--dry-run")
		if code != 0 || !strings.Contains(out, "would purge 1 dead letter(s)") {
			t.Errorf("purge --dry-run: exit %d\n%s", code, out)
		}
		if _, _, code := cli("dlq", "show", "e2e-hostile"); code != 0 {
			t.Fatalf("a preview deleted or replayed the dead letter")
		}
		out, errOut, code = cli("dlq", "purge", "--job-id", "e2e-hostile", "--yes")
		if code != 0 || !strings.Contains(out, "purging 1 dead letter(s)") || !strings.Contains(out, "purged 1 dead letter(s)") {
			t.Errorf("purge --yes: exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("status says when a dead letter was purged", func(t *testing.T) {
		out, _, code := cli("status", "e2e-hostile")
		if code != 0 || !strings.Contains(out, "dead letter: purged") || strings.ContainsAny(out, "\x1b\r") {
			t.Errorf("status of a purged job: exit %d\n%q", code, out)
		}
		out, _, _ = cli("status", "e2e-hostile", "--json")
		var st jobStatus
		if json.Unmarshal([]byte(out), &st) != nil || st.DeadLetter != "gone" {
			t.Errorf("status --json of a purged job: %s", out)
		}
	})

	t.Run("send --wait on timeout prints the last event", func(t *testing.T) {
		job := `{"id":"e2e-later","from":"noreply@demo.example","to":["a@example.com"],"subject":"later","text":"t","notBefore":"` +
			time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`
		file := filepath.Join(t.TempDir(), "later.json")
		if err := os.WriteFile(file, []byte(job), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, code := cli("send", "--profile", "demo", "--file", file, "--wait", "--timeout", "3s")
		if code != 2 || !strings.Contains(errOut, "no outcome for job e2e-later within 3s; last event deferred at") ||
			!strings.Contains(errOut, "cause not_before (due ") || !strings.Contains(errOut, "mailworker status e2e-later") {
			t.Errorf("send --wait timeout: exit %d, %q", code, errOut)
		}
	})

	t.Run("status summary per profile", func(t *testing.T) {
		out, errOut, code := cli("status", "--json", "--since", "1h")
		var sum statusSummary
		if code != 0 || json.Unmarshal([]byte(out), &sum) != nil {
			t.Fatalf("status --json: exit %d\n%s%s", code, out, errOut)
		}
		if len(sum.Profiles) != 1 || sum.Profiles[0].Profile != "demo" {
			t.Fatalf("summary %+v", sum)
		}
		d := sum.Profiles[0]
		// e2e-big sent, e2e-hostile dead-lettered, e2e-later deferred (open).
		if d.Jobs != 3 || d.Sent != 1 || d.DeadLettered != 1 || d.Open != 1 || d.Events[contract.EventDeferred] < 1 {
			t.Errorf("demo summary %+v", d)
		}
		out, _, _ = cli("status")
		if !regexp.MustCompile(`(?m)^demo\s+3\s+1\s+1\s+0\s+1\s`).MatchString(out) {
			t.Errorf("status summary table:\n%s", out)
		}
	})

	t.Run("provision lists every bucket it creates", func(t *testing.T) {
		out, errOut, code := cli("provision")
		if code != 0 {
			t.Fatalf("provision: exit %d: %s", code, errOut)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		names := js.StreamNames(ctx)
		n := 0
		for name := range names.Name() {
			n++
			// KV buckets and object stores are streams KV_<name> and OBJ_<name>.
			// A profile's job stream and object store are made for the
			// profiles of the config: this provision has none (dev made the
			// demo's).
			if strings.HasPrefix(name, "OBJ_"+contract.BucketAttachments+"_") || strings.HasPrefix(name, contract.StreamJobsPrefix) {
				continue
			}
			name = strings.TrimPrefix(strings.TrimPrefix(name, "KV_"), "OBJ_")
			if !strings.Contains(out, " "+name+"\n") {
				t.Errorf("provision output lacks %s:\n%s", name, out)
			}
		}
		if n < 7 {
			t.Errorf("only %d streams exist", n)
		}
	})

	t.Run("version names module and commit", func(t *testing.T) {
		// Built as the container image is: no VCS stamp, the commit passed in.
		bin := filepath.Join(t.TempDir(), "mailworker")
		// With -race when the tests run with it, as mailworkerBinary builds:
		// the packages compiled for the test binary are reused, only the
		// link is new.
		args := []string{"build", "-buildvcs=false", "-ldflags", "-X main.version=v1.2.3 -X main.commit=0123456789abcdef", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		build := exec.Command("go", append(args, ".")...)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		out, err := exec.Command(bin, "version").Output()
		if err != nil || !strings.HasPrefix(string(out), "mailworker v1.2.3 (module github.com/mailworker/mailworker ") ||
			!strings.Contains(string(out), ", commit 0123456789abcdef") {
			t.Errorf("version: %v, %q", err, out)
		}
	})

	if code := dev.stop(30 * time.Second); code != 0 {
		t.Fatalf("dev exited %d after SIGINT", code)
	}
	logs := dev.stderr.String()
	if strings.Contains(logs, "nats disconnected") {
		t.Errorf("a clean stop logged a disconnection warning:\n%s", tail(logs, 2000))
	}
	if strings.Contains(logs, "\x1b[") {
		t.Errorf("console logs carry ANSI colours though stderr is not a terminal:\n%q", tail(logs, 500))
	}
}

// TestLogDurationsCarryUnits: a duration field reads "1.5s", not 1500.
func TestLogDurationsCarryUnits(t *testing.T) {
	var buf syncBuffer
	c := &cli{stderr: &buf}
	for _, format := range []string{"json", "console"} {
		log := c.logger(LogConfig{Level: "info", Format: format})
		log.Info().Dur("delay", 1500*time.Millisecond).Msg("x")
	}
	if out := buf.String(); !strings.Contains(out, `"delay":"1.5s"`) || !strings.Contains(out, "delay=1.5s") {
		t.Errorf("logs: %q", out)
	}
}

// TestSandboxProfileBlock: the profile block `mailworker sandbox` prints works
// as pasted: `check` gets a token with it, and `provision` then makes the
// setup ready.
func TestSandboxProfileBlock(t *testing.T) {
	t.Parallel()
	ns := startTestNATS(t, nil)
	dir := t.TempDir()
	sb := startProc(t, nil, "sandbox", "--listen", "127.0.0.1:0", "--ca-file", filepath.Join(dir, "ca.pem"))
	block := sb.waitOutput(regexp.MustCompile(`(?s)paste under "profiles:".*?\n(  sandbox:\n.*allowedSenders: \[[^\]]*\]\n)`), 30*time.Second)
	if strings.Contains(block, "/demo-tenant") {
		t.Errorf("the block's authorityHost carries the tenant:\n%s", block)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("nats: {url: "+ns.ClientURL()+"}\nprofiles:\n"+block), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runCmd(t, "", "provision", "--config", cfg); code != 0 {
		t.Fatalf("provision: exit %d: %s", code, errOut)
	}
	out, errOut, code := runCmd(t, "", "check", "--config", cfg)
	if code != 0 || !strings.Contains(out, "token:       ok") {
		t.Fatalf("check with the sandbox's profile block: exit %d\n%s%s\nblock:\n%s", code, out, errOut, block)
	}
}
