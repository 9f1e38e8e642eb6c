package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// TestNATSAccountsWithTheRealCommands loads deploy/nats/accounts.conf into an
// embedded server and runs the binary's own commands as each user: the worker
// provisions and sends, a producer can publish jobs but not read status or
// dead letters, a per-profile producer cannot publish for another profile,
// and support can list, show and replay dead letters and read status.
func TestNATSAccountsWithTheRealCommands(t *testing.T) {
	var last string
	defer func() {
		if t.Failed() {
			t.Logf("last output: %s", last)
		}
	}()
	pw := map[string]string{}
	for _, u := range []string{"producer", "producer_billing", "worker", "support"} {
		pw[u] = "pw-" + u + "-" + randomSecret()[:8]
		t.Setenv("MAIL_"+strings.ToUpper(u)+"_PASSWORD", pw[u])
	}
	opts, err := server.ProcessConfigFile("../../deploy/nats/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	ns := startTestNATS(t, func(o *server.Options) {
		o.Accounts, o.Users, o.Nkeys = opts.Accounts, opts.Users, opts.Nkeys
	})
	url := func(user string) string {
		return strings.Replace(ns.ClientURL(), "nats://", "nats://"+user+":"+pw[user]+"@", 1)
	}

	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: "s1"})
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "worker.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`nats: {url: "%s", user: worker, password: %s, inboxPrefix: _INBOX_worker}
http: {listen: "127.0.0.1:0"}
profiles:
  billing: {tenantId: t1, clientId: c1, authorityHost: "%s", graphURL: "%s", caFile: "%s",
            credential: {clientSecret: s1}, allowedSenders: [billing@contoso.example]}
`, ns.ClientURL(), pw["worker"], fake.URL(), fake.GraphURL(), caFile)), 0o600); err != nil {
		t.Fatal(err)
	}

	as := func(user string, args ...string) (string, int) {
		out, errOut, code := runCmdEnv(t, []string{"MAILWORKER_NATS_INBOX_PREFIX=_INBOX_" + user}, "",
			append(args, "--nats-url", url(user))...)
		return out + errOut, code
	}
	mustOK := func(what string, out string, code int) string {
		t.Helper()
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", what, code, out)
		}
		return out
	}
	mustFail := func(what string, out string, code int) {
		t.Helper()
		if code == 0 {
			t.Fatalf("%s succeeded, want it denied: %s", what, out)
		}
	}

	out, code := as("worker", "provision")
	mustOK("worker provision", out, code)
	startProc(t, nil, "run", "--config", cfgFile)

	send := func(user, profile, id, from string, extra ...string) (string, int) {
		return as(user, append([]string{"send", "--profile", profile, "--id", id, "--from", from,
			"--to", "a@example.com", "--subject", "s", "--text", "t"}, extra...)...)
	}
	out, code = send("producer", "billing", "acct-ok", "billing@contoso.example")
	mustOK("producer send", out, code)
	out, code = send("producer_billing", "billing", "acct-bad-from", "ceo@contoso.example")
	mustOK("producer_billing send", out, code)
	out, code = send("producer_billing", "other", "acct-other", "billing@contoso.example")
	mustFail("producer_billing send for another profile", out, code)

	eventually(t, 30*time.Second, "acct-ok sent", func() bool {
		out, code := as("support", "status", "acct-ok")
		last = out
		return code == 0 && strings.Contains(out, "state sent")
	})
	_ = last
	eventually(t, 30*time.Second, "acct-bad-from dead-lettered", func() bool {
		out, code := as("support", "dlq", "list")
		return code == 0 && strings.Contains(out, "acct-bad-from")
	})
	out, code = as("support", "dlq", "show", "acct-bad-from")
	mustOK("support dlq show", out, code)
	out, code = as("producer", "dlq", "list")
	mustFail("producer dlq list", out, code)
	// Nor can a producer read the replies of another user: the jobs the
	// worker pulls arrive on the worker's inbox.
	snoopErr := make(chan error, 1)
	nc, err := nats.Connect(url("producer"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case snoopErr <- err:
		default:
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.SubscribeSync("_INBOX_worker.>"); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	select {
	case err := <-snoopErr:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("snooping subscription: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a producer could subscribe to the worker's inbox")
	}
	out, code = as("producer", "status", "acct-ok")
	mustFail("producer status", out, code)

	// Support fixes the job and replays it; the worker sends it.
	fixed := filepath.Join(dir, "fixed.json")
	if err := os.WriteFile(fixed, []byte(`{"id":"acct-bad-from","from":"billing@contoso.example","to":["a@example.com"],"subject":"s","text":"t"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = as("support", "dlq", "replay", "acct-bad-from", "--file", fixed)
	mustOK("support replay", out, code)
	eventually(t, 30*time.Second, "the replayed job sent", func() bool {
		out, code := as("support", "status", "acct-bad-from")
		return code == 0 && strings.Contains(out, "state sent")
	})
	out, code = as("support", "send", "--profile", "billing", "--id", "acct-smoke", "--from", "billing@contoso.example",
		"--to", "a@example.com", "--subject", "smoke", "--text", "t", "--wait")
	mustOK("support smoke test send --wait", out, code)
	out, code = as("support", "dlq", "purge", "--yes")
	mustOK("support dlq purge", out, code)
}

// TestNkeyAuthentication: a worker config with nats.nkeySeedFile provisions
// and reads the queue against a server that knows only the nkey's public key.
func TestNkeyAuthentication(t *testing.T) {
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
