package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var (
	natsURLLine    = regexp.MustCompile(`NATS:\s+(nats://\S+)`)
	httpURLLine    = regexp.MustCompile(`HTTP:\s+(http://\S+)`)
	consoleURLLine = regexp.MustCompile(`Console:\s+(http://\S+)`)
)

// TestDevEndToEnd drives the built binary the way a new user does: `dev`,
// then `send --wait`, a plain-JSON publish from a NATS client that is not
// ours, bad jobs that must reach the DLQ with the right reasons, a replay of
// a fixed job, and /metrics.
func TestDevEndToEnd(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	dev := startProc(t, nil, "dev", "--nats-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--console-listen", "127.0.0.1:0", "--smtp-listen", "127.0.0.1:0", "--data-dir", dataDir)
	natsURL := dev.waitOutput(natsURLLine, 60*time.Second)
	httpURL := dev.waitOutput(httpURLLine, 5*time.Second)
	consoleURL := dev.waitOutput(consoleURLLine, 5*time.Second)
	if code, _ := httpGet(consoleURL + "/healthz"); code != 200 {
		t.Fatalf("console %s/healthz: %d", consoleURL, code)
	}
	eventually(t, 20*time.Second, "/readyz", func() bool {
		code, _ := httpGet(httpURL + "/readyz")
		return code == 200
	})
	cli := func(args ...string) (string, string, int) {
		return runCmd(t, "", append(args, "--nats-url", natsURL)...)
	}

	t.Run("mailworker console serves from env config and sends people to Entra", func(t *testing.T) {
		fakeURL := dev.waitOutput(regexp.MustCompile(`Fake Graph:\s+(https://\S+)`), 5*time.Second)
		con := startProc(t, []string{"MAILWORKER_NATS_URL=" + natsURL, "MAILWORKER_CONSOLE_LISTEN=127.0.0.1:0",
			"MAILWORKER_CONSOLE_TENANT_ID=demo-tenant", "MAILWORKER_CONSOLE_CLIENT_ID=e2e-console",
			"MAILWORKER_CONSOLE_CLIENT_SECRET=e2e-secret", "MAILWORKER_CONSOLE_SECRET=" + strings.Repeat("e", 40),
			"MAILWORKER_CONSOLE_AUTHORITY_HOST=" + fakeURL, "MAILWORKER_CONSOLE_CA_FILE=" + filepath.Join(dataDir, "sandbox-ca.pem")},
			"console")
		url := con.waitOutput(regexp.MustCompile(`console: (http://\S+)`), 30*time.Second)
		client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := client.Get(url + "/login")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, fakeURL+"/demo-tenant/oauth2/v2.0/authorize?") ||
			!strings.Contains(loc, "client_id=e2e-console") || !strings.Contains(loc, "code_challenge_method=S256") {
			t.Fatalf("GET /login: %d %s", resp.StatusCode, loc)
		}
		if code := con.stop(20 * time.Second); code != 0 {
			t.Fatalf("console exited %d", code)
		}
	})

	t.Run("send --wait reports sent", func(t *testing.T) {
		out, errOut, code := cli("send", "--profile", "demo", "--id", "e2e-send", "--from", "noreply@demo.example",
			"--to", "Someone <someone@example.com>", "--subject", "hello", "--text", "it works", "--wait")
		if code != 0 || !strings.Contains(out, "e2e-send") || !strings.Contains(out, "sent") {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		// Delivered to the fake as files, stamped with the job id.
		eml, err := os.ReadFile(filepath.Join(dataDir, "mail", "e2e-send.eml"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(eml), "X-Mailworker-Job-Id: e2e-send") {
			t.Fatalf("delivered mail lacks the job id header:\n%s", eml)
		}
	})

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	t.Run("plain JSON published by another NATS client is sent", func(t *testing.T) {
		// Core NATS publish: no JetStream client, no headers, like `nats pub`.
		job := `{"id":"e2e-plain","from":"noreply@demo.example","to":["you@example.com"],"subject":"plain","text":"from any language"}`
		if err := nc.Publish("mail.send.demo", []byte(job)); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, cli, "e2e-plain", "sent")
	})

	t.Run("malformed job and unapproved sender land in the DLQ with their reasons", func(t *testing.T) {
		if err := nc.Publish("mail.send.demo", []byte(`{"id":"e2e-bad","from":"noreply@demo.example","to":"not-a-list"}`)); err != nil {
			t.Fatal(err)
		}
		out, _, code := cli("send", "--profile", "demo", "--id", "e2e-evil", "--from", "ceo@demo.example",
			"--to", "you@example.com", "--subject", "s", "--text", "t", "--wait")
		if code != 1 {
			t.Fatalf("send --wait for an unapproved sender exited %d, want 1: %s", code, out)
		}
		var recs []dlqRecord
		eventually(t, 20*time.Second, "two dead letters", func() bool {
			out, _, _ := cli("dlq", "list", "--json")
			recs = nil
			_ = json.Unmarshal([]byte(out), &recs)
			return len(recs) >= 2
		})
		reasons := map[string]string{}
		for _, r := range recs {
			reasons[r.JobID] = string(r.Reason)
		}
		if reasons["e2e-bad"] != "invalid_job" || reasons["e2e-evil"] != "sender_not_allowed" {
			t.Fatalf("reasons = %v", reasons)
		}
		out, _, _ = cli("dlq", "show", "e2e-bad")
		if !strings.Contains(out, "to") || !strings.Contains(out, `"to":"not-a-list"`) {
			t.Fatalf("dlq show must name the field and keep the original body:\n%s", out)
		}
		out, _, _ = cli("dlq", "list", "--reason", "sender_not_allowed")
		if !strings.Contains(out, "e2e-evil") || strings.Contains(out, "e2e-bad") {
			t.Fatalf("reason filter:\n%s", out)
		}
	})

	t.Run("replay of a fixed job sends it", func(t *testing.T) {
		fixed := filepath.Join(t.TempDir(), "fixed.json")
		if err := os.WriteFile(fixed, []byte(`{"id":"e2e-bad","from":"noreply@demo.example","to":["not-a-list@example.com"],"subject":"fixed","text":"now valid"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := cli("dlq", "replay", "e2e-bad", "--file", fixed)
		if code != 0 {
			t.Fatalf("replay exit %d: %s %s", code, out, errOut)
		}
		waitStatus(t, cli, "e2e-bad", "sent")
		out, _, _ = cli("status", "e2e-bad")
		for _, ev := range []string{"dead_lettered", "replayed", "sent"} {
			if !strings.Contains(out, ev) {
				t.Fatalf("status history lacks %s:\n%s", ev, out)
			}
		}
		out, _, _ = cli("dlq", "list")
		if strings.Contains(out, "e2e-bad") {
			t.Fatalf("replayed job still listed in the DLQ:\n%s", out)
		}
	})

	t.Run("metrics count the outcomes", func(t *testing.T) {
		_, body := httpGet(httpURL + "/metrics")
		for _, want := range []string{
			`mailworker_jobs_total{outcome="sent",profile="demo",reason=""} 3`,
			`mailworker_jobs_total{outcome="dead_lettered",profile="demo",reason="invalid_job"} 1`,
			`mailworker_jobs_total{outcome="dead_lettered",profile="demo",reason="sender_not_allowed"} 1`,
			`mailworker_graph_requests_total{profile="demo",status="202"} 3`,
			`mailworker_token_requests_total{profile="demo",result="ok"} 1`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	t.Run("the printed swaks command delivers an attachment over SMTP", func(t *testing.T) {
		line := regexp.MustCompile(`(?m)^\s*(swaks .*)$`).FindStringSubmatch(dev.stdout.String())
		if line == nil {
			t.Fatalf("dev printed no swaks command:\n%s", dev.stdout.String())
		}
		args := shellFields(line[1])
		needTool(t, args[0])
		dir := t.TempDir()
		attachment := []byte("attached by swaks\x00\x01\x02 binary tail")
		if err := os.WriteFile(filepath.Join(dir, "README.md"), attachment, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		m := queuedAs.FindStringSubmatch(string(out))
		if err != nil || m == nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
		waitStatus(t, cli, m[1], "sent")
		eml, err := os.ReadFile(filepath.Join(dataDir, "mail", m[1]+".eml"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(eml), base64.StdEncoding.EncodeToString(attachment)) {
			t.Fatalf("delivered mail lacks the attachment:\n%s", eml)
		}
		// Byte for byte: what swaks sent after DATA (its transcript shows each
		// line, dot-stuffed), with the job id stamp first.
		var sent []string
		inData := false
		for _, l := range strings.Split(strings.ReplaceAll(string(out), "\r\n", "\n"), "\n") {
			l, ok := strings.CutPrefix(l, " ~> ")
			switch {
			case !ok:
			case l == "DATA":
				inData = true
			case inData && l == ".":
				inData = false
			case inData:
				sent = append(sent, strings.TrimPrefix(l, "."))
			}
		}
		want := "X-Mailworker-Job-Id: " + m[1] + "\r\n" + strings.Join(sent, "\r\n") + "\r\n"
		if len(sent) < 5 || string(eml) != want {
			t.Fatalf("delivered .eml is not what swaks sent: %s", firstDiff(string(eml), want))
		}
	})

	t.Run("large mail goes out as a draft, byte for byte", func(t *testing.T) {
		devLargeMail(t, nc, cli, filepath.Join(dataDir, "mail"))
	})

	if code := dev.stop(30 * time.Second); code != 0 {
		t.Fatalf("dev exited %d after SIGINT", code)
	}
}

// shellFields splits a printed command line: fields separated by spaces,
// double quotes group.
func shellFields(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, have = !quoted, true
		case r == ' ' && !quoted:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// waitStatus polls `status --json` until the job reaches state and, for a
// final state, its event of that name is in the history too: the worker
// stores the state before it publishes the event, so a `status` read as
// soon as the state is there may not show the event yet.
func waitStatus(t *testing.T, cli func(...string) (string, string, int), id, state string) {
	t.Helper()
	eventually(t, 20*time.Second, "job "+id+" "+state, func() bool {
		out, _, code := cli("status", id, "--json")
		if code != 0 {
			return false
		}
		var st struct {
			State *struct {
				State string `json:"state"`
			} `json:"state"`
			Events []struct {
				Event string `json:"event"`
			} `json:"events"`
		}
		if json.Unmarshal([]byte(out), &st) != nil || st.State == nil || st.State.State != state {
			return false
		}
		if !terminal(contract.State(state)) {
			return true
		}
		for _, ev := range st.Events {
			if ev.Event == state {
				return true
			}
		}
		return false
	})
}

// devLargePDF is the size of devLargeMail's PDF: 25 MB, and 6 MB under
// -race (a race-built dev uploads many times slower): still over 3 MB (an
// upload session of several chunks) and over the 4 MB one sendMail request
// carries (a draft).
var devLargePDF = raceOr(25<<20, 6<<20)

// devLargeMail sends, through `dev` (draft mode, draftWhen large), a job with
// a 25 MB objectRef PDF (devLargePDF) and one with three inline images over
// 3 MB each, and checks the delivered .eml carries every attachment byte for
// byte.
func devLargeMail(t *testing.T, nc *nats.Conn, cli func(...string) (string, string, int), mailDir string) {
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, err := queue.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	put := func(name string, data []byte) string {
		ref, err := q.Attachments.PutReader(ctx, "demo", name, bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	content := func(header string, n int) []byte {
		b := make([]byte, n)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		return append([]byte(header), b[len(header):]...)
	}
	want := map[string]map[string][]byte{
		"e2e-pdf": {"scan.pdf": content("%PDF-1.7\n", devLargePDF)},
		"e2e-images": {"a.png": content("\x89PNG\r\n", 3<<20+1), "b.png": content("\x89PNG\r\n", 3<<20+4096),
			"c.png": content("\x89PNG\r\n", 3<<20+333_333)},
	}
	type att struct {
		Name        string `json:"name"`
		ContentType string `json:"contentType"`
		ObjectRef   string `json:"objectRef"`
		Inline      bool   `json:"inline,omitempty"`
		ContentID   string `json:"contentId,omitempty"`
	}
	pdf := []att{{Name: "scan.pdf", ContentType: "application/pdf", ObjectRef: put("scan.pdf", want["e2e-pdf"]["scan.pdf"])}}
	var imgs []att
	html := "<p>three images:"
	for _, n := range []string{"a", "b", "c"} {
		imgs = append(imgs, att{Name: n + ".png", ContentType: "image/png", ObjectRef: put(n+".png", want["e2e-images"][n+".png"]),
			Inline: true, ContentID: "img-" + n})
		html += ` <img src="cid:img-` + n + `">`
	}
	for id, atts := range map[string][]att{"e2e-pdf": pdf, "e2e-images": imgs} {
		job, _ := json.Marshal(map[string]any{"id": id, "from": "noreply@demo.example", "to": []string{"you@example.com"},
			"subject": id, "html": html, "attachments": atts})
		if err := nc.Publish("mail.send.demo", job); err != nil {
			t.Fatal(err)
		}
	}
	for id, files := range want {
		waitStatus(t, cli, id, "sent")
		out, _, _ := cli("status", id)
		if !strings.Contains(out, "message-id") {
			t.Errorf("status %s does not show the Message-ID:\n%s", id, out)
		}
		eml, err := os.ReadFile(filepath.Join(mailDir, id+".eml"))
		if err != nil {
			t.Fatal(err)
		}
		got := emlAttachments(t, eml)
		if len(got) != len(files) {
			t.Errorf("%s: delivered %d attachments, want %d", id, len(got), len(files))
		}
		for name, data := range files {
			if h := sha256.Sum256(data); got[name] != hex.EncodeToString(h[:]) {
				t.Errorf("%s: attachment %s not delivered byte for byte", id, name)
			}
		}
	}
}

// emlAttachments returns the hex SHA-256 of each attachment of an .eml by file name.
func emlAttachments(t *testing.T, eml []byte) map[string]string {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(eml))
	if err != nil {
		t.Fatal(err)
	}
	_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if p.FileName() == "" {
			continue
		}
		h := sha256.New()
		if _, err := io.Copy(h, base64.NewDecoder(base64.StdEncoding, p)); err != nil {
			t.Fatal(err)
		}
		out[p.FileName()] = hex.EncodeToString(h.Sum(nil))
	}
}
