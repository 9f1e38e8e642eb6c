package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
)

// TestNATSAccountsWithTheRealCommands loads deploy/nats/accounts.conf into an
// embedded server and runs the binary's own commands as each user, with a
// worker serving two profiles (billing, ops): the provisioner provisions, the
// worker's runtime user cannot; each producer sends for its own profile only;
// support lists, shows, replays and purges through the worker (recorded in
// MAIL_AUDIT) and can do nothing else. It then plays the attacker holding
// producer_billing's credential (issue 9): no job id, dedupe id, fallback id
// or objectRef lets it prevent, suppress, misreport or read ops' mail.
func TestNATSAccountsWithTheRealCommands(t *testing.T) {
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
	connect := func(user string) (*nats.Conn, jetstream.JetStream) {
		t.Helper()
		nc, err := nats.Connect(url(user), nats.CustomInboxPrefix("_INBOX_"+user),
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return nc, js
	}

	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: "s1"})
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "worker.yaml")
	prof := func(sender string) string {
		return fmt.Sprintf(`{tenantId: t1, clientId: c1, authorityHost: "%s", graphURL: "%s", caFile: "%s",
            credential: {clientSecret: s1}, allowedSenders: [%s]}`, fake.URL(), fake.GraphURL(), caFile, sender)
	}
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`nats: {url: "%s", user: worker, password: %s, inboxPrefix: _INBOX_worker}
http: {listen: "127.0.0.1:0"}
streams: {provision: false}
worker: {perMailboxPerMinute: 0}
profiles:
  billing: %s
  ops: %s
`, ns.ClientURL(), pw["worker"], prof("billing@contoso.example"), prof("ops@contoso.example"))), 0o600); err != nil {
		t.Fatal(err)
	}

	var last string
	defer func() {
		if t.Failed() {
			t.Logf("last output: %s", last)
		}
	}()
	as := func(user string, env []string, args ...string) cmdResult {
		out, errOut, code := runCmdEnv(t, append([]string{"MAILWORKER_NATS_INBOX_PREFIX=_INBOX_" + user}, env...), "",
			append(args, "--nats-url", url(user))...)
		last = out + errOut
		return cmdResult{out + errOut, code}
	}
	mustOK := func(what string, r cmdResult) string {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("%s: exit %d: %s", what, r.code, r.out)
		}
		return r.out
	}
	mustFail := func(what string, r cmdResult) cmdResult {
		t.Helper()
		if r.code == 0 {
			t.Fatalf("%s succeeded, want it refused: %s", what, r.out)
		}
		return r
	}
	denied := func(nc *nats.Conn, what, subj string, data []byte) {
		t.Helper()
		if m, err := nc.Request(subj, data, 700*time.Millisecond); err == nil {
			t.Errorf("%s (%s): answered %q, want denied", what, subj, m.Data)
		}
	}

	// Provisioning is the provisioner's; the worker's runtime user cannot
	// change a stream.
	mustOK("provisioner provision", as("provisioner", nil, "provision", "--config", cfgFile))
	mustFail("worker provision (a stream update)", as("worker", []string{"MAILWORKER_STREAMS_STATUSMAXAGE=1h"}, "provision", "--config", cfgFile))
	startProc(t, nil, "run", "--config", cfgFile)

	send := func(user, profile, id, from string, extra ...string) cmdResult {
		args := []string{"send", "--profile", profile, "--from", from, "--to", "a@example.com", "--subject", "s", "--text", "t"}
		if id != "" {
			args = append(args, "--id", id)
		}
		return as(user, nil, append(args, extra...)...)
	}
	sentFrom := func(jobID, from string) int {
		n := 0
		for _, m := range fake.Messages() {
			if m.Headers["X-Mailworker-Job-Id"] == jobID && strings.EqualFold(m.From, from) {
				n++
			}
		}
		return n
	}
	mustFail("producer_billing send for ops", send("producer_billing", "ops", "acct-other", "ops@contoso.example"))

	// 1a/1b. billing uses ops' job id first, as a job id and as Nats-Msg-Id
	// in every form a producer might; ops' job is still sent, and ops' own
	// send --wait reports ops' own outcome.
	bnc, bjs := connect("producer_billing")
	for _, msgID := range []string{"pwreset-88", "ops.pwreset-88", "ops:pwreset-88"} {
		m := &nats.Msg{Subject: "mail.send.billing", Header: nats.Header{"Nats-Msg-Id": []string{msgID}},
			Data: []byte(`{"id":"pwreset-88","from":"billing@contoso.example","to":["x@example.com"],"subject":"s","text":"t"}`)}
		if _, err := bjs.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "billing's pwreset-88 sent (once)", func() bool { return sentFrom("pwreset-88", "billing@contoso.example") == 1 })
	out := mustOK("ops send --wait of the same id", send("producer_ops", "ops", "pwreset-88", "ops@contoso.example", "--wait"))
	if !strings.Contains(out, "sent") || sentFrom("pwreset-88", "ops@contoso.example") != 1 {
		t.Fatalf("ops' pwreset-88: %q, %d sent from ops", out, sentFrom("pwreset-88", "ops@contoso.example"))
	}
	// A second publish of ops' id is ops' own duplicate: --wait says it was
	// not sent, and exits non-zero; nothing is sent.
	r := send("producer_ops", "ops", "pwreset-88", "ops@contoso.example", "--wait")
	if r.code == 0 || !strings.Contains(r.out, "not sent") || sentFrom("pwreset-88", "ops@contoso.example") != 1 {
		t.Fatalf("ops re-publish of pwreset-88: exit %d %q", r.code, r.out)
	}

	// 1c. billing takes the fallback ids ops' next id-less job will get
	// (s<stream sequence>; guessed here from ops' own view, which billing
	// cannot read): ops' job is sent all the same.
	_, ojs := connect("producer_ops")
	if _, err := bjs.Stream(context.Background(), "MAIL_JOBS_ops"); err == nil {
		t.Fatal("producer_billing read ops' stream info")
	}
	info, err := ojs.Stream(context.Background(), "MAIL_JOBS_ops")
	if err != nil {
		t.Fatal(err)
	}
	next := info.CachedInfo().State.LastSeq
	for i := uint64(1); i <= 3; i++ {
		mustOK("billing takes a fallback id", send("producer_billing", "billing", fmt.Sprintf("s%d", next+i), "billing@contoso.example"))
	}
	eventually(t, 30*time.Second, "billing's s-ids sent", func() bool {
		return sentFrom(fmt.Sprintf("s%d", next+1), "billing@contoso.example") == 1
	})
	idless := filepath.Join(dir, "idless.json")
	if err := os.WriteFile(idless, []byte(`{"from":"ops@contoso.example","to":["a@example.com"],"subject":"s","text":"t"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out = mustOK("ops id-less job", as("producer_ops", nil, "send", "--profile", "ops", "--file", idless, "--raw", "--wait"))
	if !strings.Contains(out, fmt.Sprintf("s%d\n", next+1)) || !strings.Contains(out, "sent") || sentFrom(fmt.Sprintf("s%d", next+1), "ops@contoso.example") != 1 {
		t.Fatalf("ops' id-less job: %q (billing took s%d..s%d)", out, next+1, next+3)
	}

	// 2. Objects belong to a profile: ops uploads payroll; billing names it
	// in a job to an outside address; nothing is attached or sent.
	ref, err := queue.NewAttachments(ojs).Put(context.Background(), "ops", "payroll.xlsx", []byte("salaries"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.NewAttachments(bjs).Get(context.Background(), "ops", ref); err == nil {
		t.Fatal("producer_billing read ops' object")
	}
	b64 := "$O.MAIL_ATTACHMENTS_ops.M." + base64.URLEncoding.EncodeToString([]byte(ref))
	denied(bnc, "billing reads ops' object metadata", "$JS.API.DIRECT.GET.OBJ_MAIL_ATTACHMENTS_ops."+b64, nil)
	denied(bnc, "billing replaces ops' object", b64, []byte(`{}`))
	denied(bnc, "billing purges ops' objects", "$JS.API.STREAM.PURGE.OBJ_MAIL_ATTACHMENTS_ops", []byte(`{}`))
	steal := filepath.Join(dir, "steal.json")
	if err := os.WriteFile(steal, []byte(`{"id":"steal-1","from":"billing@contoso.example","to":["evil@example.net"],"subject":"s","text":"t",
"attachments":[{"name":"p.xlsx","contentType":"application/octet-stream","objectRef":"`+ref+`"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r = as("producer_billing", nil, "send", "--profile", "billing", "--file", steal, "--wait")
	if r.code == 0 || sentFrom("steal-1", "billing@contoso.example") != 0 || !strings.Contains(r.out, "invalid_job") || !strings.Contains(r.out, "attachment not found") {
		t.Fatalf("billing's job naming ops' object: exit %d %q", r.code, r.out)
	}

	// A deferred job waits as the worker's message schedule (the worker's
	// user may publish it; a producer may not schedule into any profile).
	later := filepath.Join(dir, "later.json")
	if err := os.WriteFile(later, []byte(`{"id":"later-1","from":"ops@contoso.example","to":["a@example.com"],"subject":"s","text":"t","notBefore":"`+
		time.Now().Add(2*time.Second).UTC().Format(time.RFC3339)+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	mustOK("ops deferred job sent", as("producer_ops", nil, "send", "--profile", "ops", "--file", later, "--wait"))
	denied(bnc, "billing schedules a job into ops", "mail.schedule.ops.evil", []byte(`{}`))

	// 7. support: reads, and replays and purges through the worker only.
	out = mustOK("support dlq list", as("support", nil, "dlq", "list"))
	if !strings.Contains(out, "steal-1") {
		t.Fatalf("dlq list: %s", out)
	}
	mustOK("support dlq show", as("support", nil, "dlq", "show", "steal-1"))
	mustOK("support status", as("support", nil, "status", "pwreset-88", "--profile", "ops"))
	mustFail("support send", send("support", "billing", "support-mail", "billing@contoso.example"))
	snc, _ := connect("support")
	denied(snc, "support publishes a status event", "mail.status.billing.forged", []byte(`{"event":"sent"}`))
	denied(snc, "support writes job state", "$KV.MAIL_JOB_STATE.ops.future-job", []byte(`{"state":"sent"}`))
	denied(snc, "support purges the DLQ by raw API", "$JS.API.STREAM.PURGE.MAIL_DLQ", []byte(`{}`))
	denied(snc, "support deletes a dead letter by raw API", "$JS.API.STREAM.MSG.DELETE.MAIL_DLQ", []byte(`{"seq":1}`))
	denied(snc, "support asks the worker as someone else", "mail.admin.alice.purge", []byte(`{}`))
	mustFail("producer dlq list", as("producer_billing", nil, "dlq", "list"))

	// A dead letter that support fixes and replays is sent; one it purges
	// frees its id at once (8): the producer's re-publish is sent.
	fixed := filepath.Join(dir, "fixed.json")
	if err := os.WriteFile(fixed, []byte(`{"id":"steal-1","from":"billing@contoso.example","to":["a@example.com"],"subject":"s","text":"t"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	mustOK("support replay --file", as("support", nil, "dlq", "replay", "steal-1", "--file", fixed))
	eventually(t, 30*time.Second, "the replayed job sent", func() bool { return sentFrom("steal-1", "billing@contoso.example") == 1 })
	mustFail("a job from an unapproved sender", send("producer_billing", "billing", "purge-me", "ceo@contoso.example", "--wait"))
	mustOK("support purge --job-id", as("support", nil, "dlq", "purge", "--job-id", "purge-me", "--yes"))
	mustOK("re-publish of a purged id is sent", send("producer_billing", "billing", "purge-me", "billing@contoso.example", "--wait"))

	// Every support action is in MAIL_AUDIT, with its actor.
	_, wjs := connect("worker")
	q, err := queue.Open(context.Background(), wjs)
	if err != nil {
		t.Fatal(err)
	}
	for id, action := range map[string]string{"steal-1": "replay_edited", "purge-me": "purge"} {
		recs, err := q.Audit.ForJob(context.Background(), "billing", id)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1 || recs[0].Actor != "support" || recs[0].Action != action || recs[0].Via != "cli" {
			t.Errorf("audit of %s: %+v, want one %s by support", id, recs, action)
		}
	}
}

// cmdResult is a command's combined output and exit code.
type cmdResult struct {
	out  string
	code int
}

// TestNkeyAuthentication: a worker config with nats.nkeySeedFile provisions
// and reads the queue against a server that knows only the nkey's public key.
func TestNkeyAuthentication(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	ns := startTestNATS(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "worker.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("nats: {url: %q, nkeySeedFile: %q}\n", ns.ClientURL(), seedFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runCmd(t, "", "provision", "--config", cfg); code != 0 {
		t.Fatalf("provision with an nkey: exit %d: %s %s", code, out, errOut)
	}
	if out, errOut, code := runCmd(t, "", "dlq", "list", "--config", cfg); code != 0 || !strings.Contains(out, "0 dead-lettered") {
		t.Fatalf("dlq list with an nkey: exit %d: %s %s", code, out, errOut)
	}
	// Without the seed the server refuses the connection.
	if _, _, code := runCmd(t, "", "dlq", "list", "--nats-url", ns.ClientURL()); code == 0 {
		t.Fatal("an unauthenticated client was let in")
	}
	out, errOut, _ := runCmd(t, "", "dlq", "list", "--config", cfg, "--nats-url", "nats://127.0.0.1:1")
	if strings.Contains(out+errOut, string(seed)) {
		t.Fatal("the nkey seed appears in error output")
	}
}

// TestCredsFileAuthentication: a worker config with nats.credsFile (JWT +
// nkey, decentralised auth) provisions and reads the queue against an
// operator-mode server.
func TestCredsFileAuthentication(t *testing.T) {
	t.Parallel()
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	useed, _ := ukp.Seed()
	uc := jwt.NewUserClaims(upub)
	uc.IssuerAccount = apub
	ujwt, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	if err != nil {
		t.Fatal(err)
	}
	opClaims, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}
	// JetStream in operator mode needs a system account.
	skp, _ := nkeys.CreateAccount()
	spub, _ := skp.PublicKey()
	sjwt, err := jwt.NewAccountClaims(spub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	for pub, j := range map[string]string{apub: ajwt, spub: sjwt} {
		if err := resolver.Store(pub, j); err != nil {
			t.Fatal(err)
		}
	}
	ns := startTestNATS(t, func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{opClaims}
		o.AccountResolver = resolver
		o.SystemAccount = spub
	})
	dir := t.TempDir()
	credsFile := filepath.Join(dir, "worker.creds")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("nats: {url: %q, credsFile: %q}\n", ns.ClientURL(), credsFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runCmd(t, "", "provision", "--config", cfg); code != 0 {
		t.Fatalf("provision with a creds file: exit %d: %s %s", code, out, errOut)
	}
	if out, errOut, code := runCmd(t, "", "dlq", "list", "--config", cfg); code != 0 || !strings.Contains(out, "0 dead-lettered") {
		t.Fatalf("dlq list with a creds file: exit %d: %s %s", code, out, errOut)
	}
	if _, _, code := runCmd(t, "", "dlq", "list", "--nats-url", ns.ClientURL()); code == 0 {
		t.Fatal("a client without credentials was let in")
	}
}

// shippedAccountUsers are the NATS users of deploy/nats/accounts.conf.
var shippedAccountUsers = []string{"producer_billing", "producer_ops", "provisioner", "worker", "support", "console", "smtp"}

// loadShippedAccounts parses deploy/nats/accounts.conf with the password
// of each user of pw in place of its variable (password:
// $MAIL_<USER>_PASSWORD, which nats-server reads from its environment), so
// that tests that load it run in parallel, each with passwords of its own. A
// variable the file no longer has fails the test: it must follow the file.
func loadShippedAccounts(t *testing.T, pw map[string]string) *server.Options {
	t.Helper()
	opts, err := server.ProcessConfigFile(shippedAccountsWith(t, pw))
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

// shippedAccountsWith writes deploy/nats/accounts.conf with pw's passwords
// filled in (see loadShippedAccounts) and returns the file.
func shippedAccountsWith(t *testing.T, pw map[string]string) string {
	t.Helper()
	shipped, err := os.ReadFile("../../deploy/nats/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := string(shipped)
	for _, u := range shippedAccountUsers {
		ref := "password: $MAIL_" + strings.ToUpper(u) + "_PASSWORD\n"
		if !strings.Contains(conf, ref) {
			t.Fatalf("deploy/nats/accounts.conf no longer has %q: update loadShippedAccounts", strings.TrimSpace(ref))
		}
		conf = strings.ReplaceAll(conf, ref, fmt.Sprintf("password: %q\n", pw[u]))
	}
	file := filepath.Join(t.TempDir(), "accounts.conf")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}
