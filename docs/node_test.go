package docs

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/internal/toolcheck"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestNodeAttachmentRecipe runs the README's Node.js block (the one that
// uploads an attachment and publishes its job) with node and the nats
// package against an embedded JetStream server provisioned as `mailworker
// provision` does, and checks what a worker would find: the object in the
// profile's store under the job's objectRef, and a job the worker's decoder
// accepts. CI installs node and the locked package (npm ci --prefix
// docs/testdata/node) and fails the test without them.
func TestNodeAttachmentRecipe(t *testing.T) {
	dir, _ := filepath.Abs(filepath.Join("testdata", "node"))
	missing := func(what string) {
		toolcheck.Missing(t, what, "install node and run `npm ci --prefix docs/testdata/node`, as .ci/run does")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not on PATH")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "nats", "package.json")); err != nil {
		missing("the nats package is not installed in " + dir)
	}
	var recipe string
	for _, b := range blocks(t) {
		if b.lang == "js" && strings.Contains(b.text, "putBlob") {
			recipe = b.text
		}
	}
	if recipe == "" {
		t.Fatal("the README has no Node.js attachment recipe (a ```js block with putBlob)")
	}

	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := queue.Provision(ctx, js, queue.Config{Profiles: []string{"billing"}}); err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	pdf := []byte("%PDF-1.4 an invoice " + strings.Repeat("x", 300_000))
	if err := os.WriteFile(filepath.Join(work, "invoice.pdf"), pdf, 0o644); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(work, "recipe.js")
	if err := os.WriteFile(script, []byte(recipe), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "NATS_URL="+ns.ClientURL(), "NODE_PATH="+filepath.Join(dir, "node_modules"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("node recipe.js: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	var out struct {
		ID, ObjectRef, Stream string
		Seq                   uint64
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &out); err != nil || out.Stream == "" {
		t.Fatalf("the recipe's output %q: %v", stdout.String(), err)
	}
	got, err := queue.NewAttachments(js).Get(ctx, "billing", out.ObjectRef)
	if err != nil || !bytes.Equal(got, pdf) {
		t.Fatalf("the object %q in MAIL_ATTACHMENTS_billing: %d bytes, %v", out.ObjectRef, len(got), err)
	}
	st, err := js.Stream(ctx, out.Stream)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetMsg(ctx, out.Seq)
	if err != nil {
		t.Fatal(err)
	}
	job, err := contract.DecodeJob(msg.Data)
	if err != nil {
		t.Fatalf("the published job does not decode: %v\n%s", err, msg.Data)
	}
	if job.ID != out.ID || len(job.Attachments) != 1 || job.Attachments[0].ObjectRef != out.ObjectRef || msg.Subject != "mail.send.billing" {
		t.Fatalf("the published job: %+v on %s", job, msg.Subject)
	}
}
