package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/support"
)

// TestDeliveryTrackingDev runs the built binary's `dev` (tracking on against
// the fake's message trace): a job to a delivered and a bouncing recipient
// gets `delivered` and `bounced` per recipient; the bounce suppresses the
// address (suppressions list shows it); a later job to it alone is
// dead-lettered recipient_invalid without reaching Graph; `suppressions
// remove` takes it off the list.
func TestDeliveryTrackingDev(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	dev := startProc(t, nil, "dev", "--nats-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--console-listen", "127.0.0.1:0", "--smtp-listen", "127.0.0.1:0", "--data-dir", dataDir, "--unpaced")
	natsURL := dev.waitOutput(natsURLLine, 60*time.Second)
	httpURL := dev.waitOutput(httpURLLine, 5*time.Second)
	eventually(t, 20*time.Second, "/readyz", func() bool {
		code, _ := httpGet(httpURL + "/readyz")
		return code == 200
	})
	if !strings.Contains(dev.stdout.String(), "tracking is on") {
		t.Errorf("dev banner does not say tracking is on:\n%s", dev.stdout.String())
	}
	cli := func(args ...string) (string, string, int) {
		return runCmd(t, "", append(args, "--nats-url", natsURL)...)
	}
	out, errOut, code := cli("send", "--profile", "demo", "--id", "trk-1", "--from", "noreply@demo.example",
		"--to", "you@example.com", "--to", "bounce@example.com", "--subject", "hi", "--text", "t", "--wait")
	if code != 0 {
		t.Fatalf("send: exit %d\n%s%s", code, out, errOut)
	}
	var evs []contract.Event
	eventually(t, 60*time.Second, "delivered and bounced events", func() bool {
		out, _, _ := cli("status", "trk-1", "--json")
		var st struct {
			Events []contract.Event `json:"events"`
		}
		if json.Unmarshal([]byte(out), &st) != nil {
			return false
		}
		evs = evs[:0]
		for _, e := range st.Events {
			if e.Recipient != "" {
				evs = append(evs, e)
			}
		}
		return len(evs) == 2
	})
	got := map[string]contract.EventType{}
	for _, e := range evs {
		got[e.Recipient] = e.Event
	}
	if got["you@example.com"] != contract.EventDelivered || got["bounce@example.com"] != contract.EventBounced {
		t.Fatalf("delivery events %v, want you delivered, bounce bounced", got)
	}
	// Delivery events follow a job's outcome: the summary does not count the job as open.
	out, _, _ = cli("status", "--since", "1h", "--profile", "demo", "--json")
	var sum struct {
		Profiles []struct {
			Open int `json:"open"`
			Sent int `json:"sent"`
		} `json:"profiles"`
	}
	if json.Unmarshal([]byte(out), &sum) != nil || len(sum.Profiles) != 1 || sum.Profiles[0].Open != 0 || sum.Profiles[0].Sent != 1 {
		t.Errorf("status summary after delivery events: %s, want open 0, sent 1", out)
	}
	out, _, _ = cli("status", "trk-1")
	if !strings.Contains(out, "delivery per recipient") || !strings.Contains(out, "bounced") {
		t.Errorf("status does not show the deliveries:\n%s", out)
	}
	out, _, code = cli("suppressions", "list")
	if code != 0 || !strings.Contains(out, "bounce@example.com") {
		t.Fatalf("suppressions list: exit %d\n%s", code, out)
	}
	out, errOut, code = cli("send", "--profile", "demo", "--id", "trk-2", "--from", "noreply@demo.example",
		"--to", "bounce@example.com", "--subject", "again", "--text", "t", "--wait")
	if code == 0 || !strings.Contains(out+errOut, "recipient_invalid") {
		t.Errorf("send to a suppressed address: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli("suppressions", "remove", "--profile", "demo", "bounce@example.com")
	if code != 0 || !strings.Contains(out, "removed") {
		t.Errorf("suppressions remove: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, _ = cli("suppressions", "list"); strings.Contains(out, "bounce@example.com") {
		t.Errorf("still listed after remove:\n%s", out)
	}
}

// TestDeliveryTrackingShippedAccounts runs the built binary's worker with
// tracking on under the shipped deploy/nats/accounts.conf (the worker's own
// NATS user, streams provisioned by the provisioner): a producer's job to a
// delivered and a bouncing recipient gets `delivered` and `bounced`, which
// support reads with its own user; the bounce suppresses the address, so
// the next job to it is refused recipient_invalid without a Graph call;
// support cannot write the suppression list itself, but `suppressions
// remove` through the worker (mail.admin.support.unsuppress) takes the
// address off, recorded in MAIL_AUDIT under support's name, and the next
// job to it is sent. The worker logs no permission violation on the way.
func TestDeliveryTrackingShippedAccounts(t *testing.T) {
	t.Parallel()
	users := shippedAccountUsers
	pw := map[string]string{}
	for _, u := range users {
		pw[u] = "pw-" + u + "-" + randomSecret()[:8]
	}
	opts := loadShippedAccounts(t, pw)
	ns := startTestNATS(t, func(o *server.Options) {
		o.Accounts, o.Users, o.Nkeys = opts.Accounts, opts.Users, opts.Nkeys
	})
	url := func(user string) string {
		return strings.Replace(ns.ClientURL(), "nats://", "nats://"+user+":"+pw[user]+"@", 1)
	}
	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: "s1",
		Roles: []string{graphtest.TraceRole}})
	cfgFile := filepath.Join(t.TempDir(), "worker.yaml")
	prof := func(sender string) string {
		return fmt.Sprintf(`{tenantId: t1, clientId: c1, authorityHost: "%s", graphURL: "%s", caFile: "%s",
            credential: {clientSecret: s1}, allowedSenders: [%s]}`, fake.URL(), fake.GraphURL(), caFile, sender)
	}
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`nats: {url: "%s", user: worker, password: %s, inboxPrefix: _INBOX_worker}
http: {listen: "127.0.0.1:0"}
streams: {provision: false}
worker: {perMailboxPerMinute: 0}
tracking: {enabled: true, profile: billing, interval: 1s}
profiles:
  billing: %s
  ops: %s
`, ns.ClientURL(), pw["worker"], prof("billing@contoso.example"), prof("ops@contoso.example"))), 0o600); err != nil {
		t.Fatal(err)
	}
	as := func(user string, args ...string) cmdResult {
		out, errOut, code := runCmdEnv(t, []string{"MAILWORKER_NATS_INBOX_PREFIX=_INBOX_" + user}, "", append(args, "--nats-url", url(user))...)
		return cmdResult{out + errOut, code}
	}
	if r := as("provisioner", "provision", "--config", cfgFile); r.code != 0 {
		t.Fatalf("provision: exit %d: %s", r.code, r.out)
	}
	worker := startProc(t, nil, "run", "--config", cfgFile)
	send := func(id string, to ...string) cmdResult {
		args := []string{"send", "--profile", "billing", "--id", id, "--from", "billing@contoso.example", "--subject", "s", "--text", "t", "--wait"}
		for _, a := range to {
			args = append(args, "--to", a)
		}
		return as("producer_billing", args...)
	}
	sentToGraph := func(id string) int {
		n := 0
		for _, m := range fake.Messages() {
			if m.Headers["X-Mailworker-Job-Id"] == id {
				n++
			}
		}
		return n
	}
	if r := send("trk-a", "you@example.com", "bounce@example.com", "bounce2@example.com"); r.code != 0 {
		t.Fatalf("send trk-a: exit %d: %s", r.code, r.out)
	}
	got := map[string]contract.EventType{}
	eventually(t, 60*time.Second, "delivered and bounced, read by support", func() bool {
		r := as("support", "status", "trk-a", "--profile", "billing", "--json")
		var st struct {
			Events []contract.Event `json:"events"`
		}
		if r.code != 0 || json.Unmarshal([]byte(r.out), &st) != nil {
			return false
		}
		clear(got)
		for _, e := range st.Events {
			if e.Recipient != "" {
				got[e.Recipient] = e.Event
			}
		}
		return len(got) == 3
	})
	if got["you@example.com"] != contract.EventDelivered || got["bounce@example.com"] != contract.EventBounced || got["bounce2@example.com"] != contract.EventBounced {
		t.Fatalf("delivery events %v, want you delivered, bounce bounced", got)
	}
	if r := as("support", "suppressions", "list", "--profile", "billing"); r.code != 0 || !strings.Contains(r.out, "bounce@example.com") {
		t.Fatalf("support suppressions list: exit %d: %s", r.code, r.out)
	}
	if r := send("trk-b", "bounce@example.com"); r.code == 0 || !strings.Contains(r.out, "recipient_invalid") || sentToGraph("trk-b") != 0 {
		t.Fatalf("a job to the suppressed address: exit %d, %d sent to Graph: %s", r.code, sentToGraph("trk-b"), r.out)
	}

	// Support may not write the bucket: neither a put nor a purge of the key.
	snc, err := nats.Connect(url("support"), nats.CustomInboxPrefix("_INBOX_support"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer snc.Close()
	subj := "$KV.MAIL_SUPPRESSION.billing." + queue.RecipientKey("bounce@example.com")
	purge := &nats.Msg{Subject: subj, Header: nats.Header{"KV-Operation": {"PURGE"}, "Nats-Rollup": {"sub"}}}
	for what, m := range map[string]*nats.Msg{"put": {Subject: subj, Data: []byte(`{}`)}, "purge": purge} {
		if reply, err := snc.RequestMsg(m, 700*time.Millisecond); err == nil {
			t.Errorf("support %ss a suppression entry itself: answered %q", what, reply.Data)
		}
	}

	// The console's user lists the suppression list and removes an entry
	// itself, through the same support service (recorded first).
	cnc, err := nats.Connect(url("console"), nats.CustomInboxPrefix("_INBOX_console"))
	if err != nil {
		t.Fatal(err)
	}
	defer cnc.Close()
	cjs, _ := jetstream.New(cnc)
	cq, err := queue.Open(context.Background(), cjs)
	if err != nil {
		t.Fatal(err)
	}
	desk := support.New(cq, support.Options{})
	list, err := desk.Suppressions(context.Background(), "billing")
	if err != nil || len(list) != 2 {
		t.Fatalf("the console's user lists the suppression list: %v, %d entries, want 2", err, len(list))
	}
	if err := desk.Unsuppress(context.Background(), support.Who{Actor: "sam@contoso.example", Via: support.ViaConsole}, "billing",
		queue.RecipientKey("bounce2@example.com"), ""); err != nil {
		t.Fatalf("the console's user removes an entry: %v", err)
	}

	r := as("support", "suppressions", "remove", "--profile", "billing", "bounce@example.com")
	if r.code != 0 || !strings.Contains(r.out, "removed") {
		t.Fatalf("support suppressions remove: exit %d: %s", r.code, r.out)
	}
	if r := as("support", "suppressions", "remove", "--profile", "billing", "bounce@example.com"); r.code == 0 || !strings.Contains(r.out, "not on the suppression list") {
		t.Errorf("a second remove: exit %d: %s", r.code, r.out)
	}
	wnc, wjs := func() (*nats.Conn, jetstream.JetStream) {
		nc, err := nats.Connect(url("worker"), nats.CustomInboxPrefix("_INBOX_worker"))
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		return nc, js
	}()
	defer wnc.Close()
	q, err := queue.Open(context.Background(), wjs)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := q.Audit.ForJob(context.Background(), "billing", "trk-a")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("audit of the removals: %+v, want two", recs)
	}
	for i, want := range []struct{ actor, via string }{{"sam@contoso.example", "console"}, {"support", "cli"}} {
		if r := recs[i]; r.Actor != want.actor || r.Via != want.via || r.Action != queue.AuditUnsuppress || strings.Contains(r.Detail, "bounce") {
			t.Errorf("audit record %d: %+v, want unsuppress by %s via %s naming the key only", i, r, want.actor, want.via)
		}
	}
	if r := send("trk-c", "bounce@example.com"); r.code != 0 || sentToGraph("trk-c") != 1 {
		t.Fatalf("a job to the address after its removal: exit %d, %d sent: %s", r.code, sentToGraph("trk-c"), r.out)
	}
	for _, bad := range []string{"ermissions violation", "ermission denied", "delivery tracking pass failed", "lease unavailable"} {
		if strings.Contains(worker.stderr.String()+worker.stdout.String(), bad) {
			t.Errorf("worker log has %q", bad)
		}
	}
}
