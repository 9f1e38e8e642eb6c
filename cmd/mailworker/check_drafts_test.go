package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestCheckDraftMode: for a draft-mode profile `check` explains what the
// Mail.ReadWrite role allows and how to verify its scope, and lists drafts
// left behind (never sent, idle past --drafts-older-than), not the others.
func TestCheckDraftMode(t *testing.T) {
	t.Parallel()
	ns := startTestNATS(t, nil)
	const secret = "CHECK-DRAFT-SECRET-77"
	fake, ca := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: secret})
	cfgPath := filepath.Join(t.TempDir(), "cfg.yaml")
	cfg := fmt.Sprintf("nats: {url: %q}\nstreams: {provision: false}\nprofiles:\n  reports:\n    tenantId: t1\n    clientId: c1\n"+
		"    authorityHost: %s\n    graphURL: %s\n    caFile: %s\n    credential: {clientSecret: %s}\n"+
		"    allowedSenders: [reports@contoso.example]\n    deliveryMode: draft\n", ns.ClientURL(), fake.URL(), fake.GraphURL(), ca, secret)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runCmd(t, "", "provision", "--config", cfgPath); code != 0 {
		t.Fatalf("provision: exit %d: %s", code, errOut)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := queue.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	old, recent := time.Now().Add(-3*time.Hour), time.Now()
	sendAt := old
	for _, st := range []contract.JobState{
		{JobID: "orphan-1", Profile: "reports", State: contract.StateDeadLettered, UpdatedAt: old,
			Draft: &contract.Draft{ID: "AAkALgX", Mailbox: "reports@contoso.example", CreatedAt: old}},
		{JobID: "moving-1", Profile: "reports", State: contract.StateRetrying, UpdatedAt: recent,
			Draft: &contract.Draft{ID: "AAkALgY", Mailbox: "reports@contoso.example", CreatedAt: recent}},
		{JobID: "sent-1", Profile: "reports", State: contract.StateSent, UpdatedAt: old,
			Draft: &contract.Draft{ID: "AAkALgZ", Mailbox: "reports@contoso.example", CreatedAt: old, SendAt: &sendAt}},
		{JobID: "plain-1", Profile: "reports", State: contract.StateDeadLettered, UpdatedAt: old},
	} {
		if _, err := q.States.Create(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code := runCmd(t, "", "check", "--config", cfgPath, "--drafts-older-than", "1h")
	if code != 0 {
		t.Fatalf("check: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"delivery mode: draft", `"Application Mail.ReadWrite"`, "read, change and delete",
		"Test-MailworkerMailboxScope.ps1 -DraftMode", `draft left behind: job "orphan-1"`, "1 drafts never sent"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	for _, not := range []string{"moving-1", "sent-1", "plain-1"} {
		if strings.Contains(out, not) {
			t.Errorf("check lists %s, which is not a draft left behind:\n%s", not, out)
		}
	}
}
