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
)

// startTestNATS runs an embedded JetStream server for one test.
func startTestNATS(t *testing.T, mod func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true}
	if mod != nil {
		mod(opts)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(minWait) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// TestSecretsNeverLeak runs the binary with sentinel secrets through the
// paths that produce error text — a token refresh after 401, a token
// endpoint that is down, a wrong client secret, 5xx answers — and checks that
// no secret and no issued token appears in its logs, status events,
// dead-letter records, job states or CLI output.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	const (
		natsPassword = "NATS-PASSWORD-SENTINEL-7f3a"
		clientSecret = "CLIENT-SECRET-SENTINEL-91bc"
		wrongSecret  = "WRONG-SECRET-SENTINEL-55d2"
	)
	ns := startTestNATS(t, func(o *server.Options) { o.Username, o.Password = "mw", natsPassword })
	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: clientSecret})
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "config.yaml")
	profile := func(secret string) string {
		return fmt.Sprintf(`
    tenantId: t1
    clientId: c1
    authorityHost: %s
    graphURL: %s
    caFile: %s
    credential: {clientSecret: %s}
    allowedSenders: [app@contoso.example]`, fake.URL(), fake.GraphURL(), caFile, secret)
	}
	cfg := fmt.Sprintf(`nats: {url: "%s", user: mw, password: %s}
http: {listen: "127.0.0.1:0"}
log: {level: debug}
worker: {maxAttempts: 2, backoffInitial: 50ms, backoffMax: 200ms, perMailboxPerMinute: 0}
profiles:
  good:%s
  wrong:%s
`, ns.ClientURL(), natsPassword, profile(clientSecret), profile(wrongSecret))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	w := startProc(t, nil, "run", "--config", cfgFile)

	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("mw", natsPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	eventually(t, 60*time.Second, "the worker to provision the streams", func() bool {
		_, err := queue.Open(ctx, js)
		return err == nil
	})
	q, _ := queue.Open(ctx, js)
	pub := queue.NewPublisher(js)
	job := func(id string) *contract.Job {
		return &contract.Job{ID: id, From: "app@contoso.example", To: []string{"x@example.com"}, Subject: "s", Text: "t"}
	}
	publish := func(profile, id string) {
		if _, err := pub.Publish(ctx, profile, job(id)); err != nil {
			t.Fatal(err)
		}
	}
	waitTerminal := func(id string) contract.JobState {
		var st contract.JobState
		eventually(t, 30*time.Second, "job "+id+" to finish", func() bool {
			st, _, _ = stateAny(ctx, q, id)
			return st.State == contract.StateSent || st.State == contract.StateDeadLettered
		})
		return st
	}

	publish("good", "ok-1")
	waitTerminal("ok-1")
	fake.Script("", graphtest.Fault{Status: 401, Code: "InvalidAuthenticationToken"}) // forces a token refresh
	publish("good", "after-401")
	if st := waitTerminal("after-401"); st.State != contract.StateSent {
		t.Fatalf("after-401: %+v", st)
	}
	fake.Script("", graphtest.Fault{Status: 500}, graphtest.Fault{Status: 500})
	publish("good", "five-hundreds")
	waitTerminal("five-hundreds")
	publish("wrong", "wrong-secret")
	if st := waitTerminal("wrong-secret"); st.State != contract.StateDeadLettered || st.LastError.Reason != contract.ReasonAuthFailed {
		t.Fatalf("wrong-secret: %+v", st.LastError)
	}
	// Entra down while a 401 forces a refresh: the job waits (no attempt
	// spent) and is sent once Entra is back.
	fake.SetTokenEndpointDown(true)
	fake.Script("", graphtest.Fault{Status: 401, Code: "InvalidAuthenticationToken"})
	failures := fake.TokenFailures()
	publish("good", "token-down")
	eventually(t, 30*time.Second, "a failed token request", func() bool { return fake.TokenFailures() > failures })
	fake.SetTokenEndpointDown(false)
	if st := waitTerminal("token-down"); st.State != contract.StateSent {
		t.Fatalf("token-down: %+v", st)
	}

	// Everything a person or a log pipeline could see.
	var seen strings.Builder
	w.stop(30 * time.Second)
	seen.WriteString(w.stderr.String())
	for _, id := range []string{"ok-1", "after-401", "five-hundreds", "wrong-secret", "token-down"} {
		evs, err := q.Events.History(ctx, "", id)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(evs)
		seen.Write(b)
		st, _, _ := stateAny(ctx, q, id)
		b, _ = json.Marshal(st)
		seen.Write(b)
	}
	dls, err := q.DLQ.List(ctx, queue.DLQQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) < 1 {
		t.Fatalf("want a dead letter for wrong-secret, got %d", len(dls))
	}
	for _, dl := range dls {
		fmt.Fprintf(&seen, "%+v %s", dl, dl.Body)
	}
	out, errOut, _ := runCmd(t, "", "dlq", "list", "--json", "--nats-url", ns.ClientURL(), "--config", cfgFile)
	seen.WriteString(out + errOut)
	// A connection error must not echo a password from the URL.
	_, errOut, code := runCmd(t, "", "dlq", "list", "--nats-url", "nats://mw:"+natsPassword+"@127.0.0.1:1")
	if code == 0 {
		t.Fatal("dlq list against a closed port succeeded")
	}
	seen.WriteString(errOut)

	text := seen.String()
	if !strings.Contains(text, "auth_failed") || !strings.Contains(text, "dead_lettered") {
		t.Fatalf("the collected text does not cover the failure paths:\n%s", text)
	}
	secrets := append([]string{natsPassword, clientSecret, wrongSecret}, fake.IssuedTokens()...)
	if len(secrets) < 5 {
		t.Fatalf("expected at least two issued tokens (one refresh), got %d", len(secrets)-3)
	}
	for _, s := range secrets {
		if strings.Contains(text, s) {
			i := strings.Index(text, s)
			t.Errorf("secret %.12s… leaked: …%s…", s, text[max(0, i-200):min(len(text), i+len(s)+50)])
		}
	}
}
