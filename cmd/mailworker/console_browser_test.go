package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/internal/toolcheck"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/tracking"
)

// The console's browser test: the real console over HTTP, the fake Entra
// over TLS, a worker sending to the fake Graph, and Debian's chromium
// driven by chromedp. One browser for the whole test, two browser contexts
// (a Support person and a Reader, each with its own cookies).
//
// With MAILWORKER_CONSOLE_SCREENSHOTS=<dir> it also writes a PNG of each
// page there (docs/console/ holds the ones docs/console.md shows).

const (
	xssSubject = `<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">Invoice "Q3" & co`
	xssMeta    = `"><svg onload="window.__pwned=3"></svg><b>bold</b>`
	xssHTML    = `<p>Hello</p><script>parent.__pwned=4;window.__pwned=4</script><img src=x onerror="parent.__pwned=5">`
)

func chromiumPath(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	// In CI (CI set, as .ci/run runs) a missing browser is a failure; a
	// MAILWORKER_* variable would not do: the binaries under test read those
	// as configuration and refuse unknown keys.
	toolcheck.Missing(t, "chromium is not installed", "apt-get install chromium")
	return ""
}

// spkiHash is what --ignore-certificate-errors-spki-list takes: the base64
// SHA-256 of the server certificate's public key. Only the fake Entra's own
// key is trusted that way; every other certificate is checked as usual.
func spkiHash(t *testing.T, fake *graphtest.Server) string {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(fake.CACertPEM())
	u, _ := url.Parse(fake.URL())
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(h[:])
}

type consoleRig struct {
	t       *testing.T
	url     string
	q       *queue.Queue    // as the console user
	wq      *queue.Queue    // as the worker user
	wst     *tracking.Store // delivery tracking's buckets, as the worker user
	js      jetstream.JetStream
	fake    *graphtest.Server
	shots   string
	browser context.Context
}

func startConsoleRig(t *testing.T) *consoleRig {
	chromium := chromiumPath(t)
	// NATS with the deployed accounts (deploy/nats/accounts.conf): the
	// worker runs as user worker, the console as user console, so every
	// page and action here also proves the console user's permissions.
	pw := map[string]string{}
	for _, u := range shippedAccountUsers {
		pw[u] = "pw-" + u + "-" + randomSecret()[:8]
	}
	opts := loadShippedAccounts(t, pw)
	ns := startTestNATS(t, func(o *server.Options) { o.Accounts, o.Users, o.Nkeys = opts.Accounts, opts.Users, opts.Nkeys })
	natsAs := func(user string) NATSConfig {
		return NATSConfig{URL: ns.ClientURL(), User: user, Password: pw[user], InboxPrefix: "_INBOX_" + user, ConnectTimeout: 5 * time.Second}
	}
	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: "worker-secret"})
	cfg := defaultConfig()
	cfg.NATS = natsAs("worker")
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Profiles = map[string]ProfileConfig{"billing": {TenantID: "t1", ClientID: "c1", AuthorityHost: fake.URL(),
		GraphURL: fake.GraphURL(), CAFile: caFile, Credential: CredentialConfig{ClientSecret: "worker-secret"},
		AllowedSenders: []string{"billing@contoso.example"}}}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	// The provisioner creates the assets; the worker may not.
	pnc, err := connectNATS(natsAs("provisioner"), "test-provisioner", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	pjs, _ := jetstream.New(pnc)
	if err := queue.Provision(context.Background(), pjs, cfg.queueConfig()); err != nil {
		t.Fatal(err)
	}
	// As `mailworker provision` does: delivery tracking's buckets too.
	if _, err := tracking.Open(context.Background(), pjs, 1); err != nil {
		t.Fatal(err)
	}
	pnc.Close()
	noProvision := false
	cfg.Streams.Provision = &noProvision
	appCtx, stopApp := context.WithCancel(context.Background())
	app, err := NewApp(appCtx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	appDone := make(chan error, 1)
	go func() { appDone <- app.Run(appCtx) }()
	t.Cleanup(func() { stopApp(); <-appDone; app.Close() })
	eventually(t, 10*time.Second, "/readyz", func() bool { c, _ := httpGet("http://" + app.HTTPAddr() + "/readyz"); return c == 200 })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	public := "http://" + ln.Addr().String()
	fake.RegisterOIDCApp(graphtest.OIDCApp{ClientID: "console", ClientSecret: "console-secret",
		RedirectURIs: []string{public + "/auth/callback"},
		Users: []graphtest.OIDCUser{
			{Name: "Sam Support", Username: "support@contoso.example", Roles: []string{"Mailworker.Support"}},
			{Name: "Rita Reader", Username: "reader@contoso.example", Roles: []string{"Mailworker.Reader"}},
		}})
	ccfg := cfg
	ccfg.NATS = natsAs("console")
	ccfg.Console = ConsoleConfig{PublicURL: public, TenantID: "t1", ClientID: "console", ClientSecret: "console-secret",
		AuthorityHost: fake.URL(), CAFile: caFile, Secret: strings.Repeat("k", 40)}
	cs, err := startConsole(context.Background(), ccfg, ln, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.Close)
	// The test's own hands: the console's user publishes jobs and reads;
	// the worker's user stores the extra dead letters the screenshots show.
	openAs := func(user string) (*queue.Queue, jetstream.JetStream) {
		nc, err := connectNATS(natsAs(user), "test-"+user, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		q, err := queue.Open(context.Background(), js)
		if err != nil {
			t.Fatal(err)
		}
		return q, js
	}
	q, js := openAs("console")
	wq, wjs := openAs("worker")
	wst, err := tracking.Bind(context.Background(), wjs)
	if err != nil {
		t.Fatal(err)
	}

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true), chromedp.Flag("no-sandbox", true), chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", spkiHash(t, fake)),
		chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(t.TempDir()))
	browser, cancelBrowser := chromedp.NewContext(alloc)
	if err := chromedp.Do(browser, chromedp.Navigate("about:blank")); err != nil {
		cancelBrowser()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	return &consoleRig{t: t, url: public, q: q, wq: wq, wst: wst, js: js, fake: fake, browser: browser,
		shots: os.Getenv("MAILWORKER_CONSOLE_SCREENSHOTS")}
}

// person opens a browser context of its own (cookies apart) and signs in as
// user through the fake Entra's sign-in page.
func (r *consoleRig) person(user string) context.Context {
	r.t.Helper()
	ctx, cancel := chromedp.NewContext(r.browser, chromedp.WithNewBrowserContext())
	r.t.Cleanup(cancel)
	// The first action on a context opens its tab for the context's life:
	// it runs without a timeout.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		r.t.Fatal(err)
	}
	r.do(ctx, "sign in as "+user,
		chromedp.Navigate(r.url+"/dlq"),
		chromedp.WaitVisible(chromedp.CSS(`button[value="`+user+`"]`)),
		chromedp.Click(chromedp.CSS(`button[value="`+user+`"]`)),
		chromedp.WaitVisible(chromedp.ID("dlq-table")))
	r.waitURL(ctx, "/dlq")
	return ctx
}

func (r *consoleRig) do(ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	r.t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, steps...); err != nil {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		loc, _ := chromedp.Run(dctx, chromedp.Location())
		body, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 2000) : ""`))
		r.t.Fatalf("%s: %v\nat %s:\n%s", what, err, loc, body)
	}
}

func run[T any](r *consoleRig, ctx context.Context, what string, a chromedp.Action[T]) T {
	r.t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(tctx, a)
	if err != nil {
		r.t.Fatalf("%s: %v", what, err)
	}
	return v
}

func (r *consoleRig) shot(ctx context.Context, name string) {
	if r.shots == "" {
		return
	}
	png := run(r, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(r.shots, name+".png"), png, 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// notPwned fails the test if any payload's script ran in the page.
func (r *consoleRig) notPwned(ctx context.Context, where string) {
	r.t.Helper()
	if v := run(r, ctx, "read window.__pwned", chromedp.Evaluate[string](`String(window.__pwned)`)); v != "undefined" {
		r.t.Fatalf("%s: a job field's script ran: window.__pwned = %s", where, v)
	}
}

// waitURL waits until the tab shows a loaded page whose URL contains part
// (after a click that navigates: the old page's elements would satisfy a
// WaitVisible).
func (r *consoleRig) waitURL(ctx context.Context, part string) {
	r.t.Helper()
	eventually(r.t, 20*time.Second, "a page at "+part, func() bool {
		// An evaluation that meets the navigation itself ("target
		// navigated or closed") is asked again.
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		v, err := chromedp.Run(tctx, chromedp.Evaluate[string](`document.readyState + " " + location.href`))
		return err == nil && strings.HasPrefix(v, "complete ") && strings.Contains(v, part)
	})
}

// settle waits until the tab's document has loaded (node ids of a page
// still loading can be replaced under an action).
func (r *consoleRig) settle(ctx context.Context) {
	r.t.Helper()
	run(r, ctx, "page loaded", chromedp.Evaluate[bool](`new Promise(ok => document.readyState === "complete" ? ok(true) : window.addEventListener("load", () => ok(true)))`, chromedp.EvalAwaitPromise))
}

// with returns the rig for subtest t.
func (r *consoleRig) with(t *testing.T) *consoleRig {
	c := *r
	c.t = t
	return &c
}

func (r *consoleRig) waitDead(id string) {
	r.t.Helper()
	eventually(r.t, 20*time.Second, id+" dead-lettered", func() bool {
		_, err := r.q.DLQ.Find(context.Background(), "billing", id)
		return err == nil
	})
}

func TestConsoleInBrowser(t *testing.T) {
	t.Parallel()
	r := startConsoleRig(t)
	ctx := context.Background()
	pub := queue.NewPublisher(r.js)
	// A job with a bad recipient (invalid_job), one whose fields carry
	// script and markup (sent from a mailbox the profile may not use), and
	// a few mails that go out.
	if _, err := pub.PublishRaw(ctx, "billing", []byte(`{"id":"fix-me","from":"billing@contoso.example","to":["not an address"],"subject":"Your invoice 1042","text":"Dear customer, your invoice is attached.","metadata":{"invoice":"1042"}}`), "fix-me"); err != nil {
		t.Fatal(err)
	}
	xss := &contract.Job{ID: "xss-job", From: "intruder@contoso.example", To: []string{"victim@example.com"}, Subject: xssSubject,
		HTML: xssHTML, Metadata: map[string]string{"note": xssMeta, "order": "<script>window.__pwned=6</script>"}}
	if _, err := pub.Publish(ctx, "billing", xss); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		j := &contract.Job{ID: "ok-" + string(rune('a'+i)), From: "billing@contoso.example", To: []string{"jane@example.com"},
			Subject: "Receipt", Text: "thanks", Metadata: map[string]string{"invoice": "2000"}}
		if _, err := pub.Publish(ctx, "billing", j); err != nil {
			t.Fatal(err)
		}
	}
	r.waitDead("fix-me")
	r.waitDead("xss-job")
	// A few more, as a worker leaves them, for the counts, the overview and
	// the screenshots: an RBAC refusal, a credential refusal, deferrals.
	now := time.Now().UTC()
	for i, reason := range []contract.Reason{contract.ReasonAccessDenied, contract.ReasonAccessDenied, contract.ReasonAuthFailed, contract.ReasonGraphRejected, contract.ReasonGraphRejected} {
		id := "more-" + strconv.Itoa(i)
		msg := "Graph 403 ErrorAccessDenied: Access is denied. Check credentials and try again. (RBAC scope changes take 30 min to 2 h to apply)"
		if reason == contract.ReasonAuthFailed {
			msg = "AADSTS7000215: Invalid client secret provided. Trace ID: 0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0 Correlation ID: 1a2b3c4d-5e6f-4071-8293-a4b5c6d7e8f9"
		}
		body := `{"id":"` + id + `","from":"billing@contoso.example","to":["ann@example.com"],"subject":"Statement ` + id + `","text":"..."}`
		if err := r.wq.DLQ.Put(ctx, contract.DeadLetter{JobID: id, Profile: "billing", Reason: reason, Error: msg, Attempts: 3, Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
		if err := r.q.Events.Publish(ctx, contract.Event{JobID: id, Profile: "billing", Event: contract.EventDeadLettered, Attempt: 3, At: now,
			Error: &contract.ErrorInfo{Reason: reason, Message: msg}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		at := now.Add(time.Duration(i) * time.Second)
		retry := now.Add(time.Hour)
		ev := contract.Event{JobID: "waiting-" + strconv.Itoa(i), Profile: "billing", Event: contract.EventDeferred, At: at, RetryAt: &retry}
		ev.Cause = []string{"retry_after", "pace", "recipients"}[i%3]
		if i%3 == 0 {
			ev.Graph = &contract.GraphInfo{Status: 429, Code: "ApplicationThrottled"}
		}
		if err := r.q.Events.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("support finds, fixes and replays a dead letter", func(t *testing.T) {
		r := r.with(t)
		sup := r.person("support@contoso.example")
		if role := run(r, sup, "role", chromedp.Text(chromedp.ID("role"))); role != "Support" {
			t.Fatalf("role shown = %q", role)
		}
		r.notPwned(sup, "list")
		r.shot(sup, "list")
		r.do(sup, "filter by reason",
			chromedp.SetValue(chromedp.ID("f-reason"), "invalid_job"),
			chromedp.Click(chromedp.ID("f-apply")))
		r.waitURL(sup, "reason=invalid_job")
		rows := run(r, sup, "rows", chromedp.Evaluate[int](`document.querySelectorAll("#dlq-table a.job").length`))
		if rows != 1 {
			t.Fatalf("rows with reason invalid_job = %d, want 1", rows)
		}
		// The list shows each row's error, as `dlq list` does.
		if e := run(r, sup, "error cell", chromedp.Text(chromedp.CSS(`#dlq-table td.error-cell`))); !strings.Contains(e, "to[0]") {
			t.Fatalf("the list's error column shows %q, want the validation error", e)
		}
		// Replaying all of them unchanged would fail again: the
		// confirmation says so (as `dlq replay --all` does).
		r.do(sup, "replay all invalid_job: the confirmation",
			chromedp.Click(chromedp.ID("bulk-replay")),
			chromedp.WaitVisible(chromedp.ID("confirm-count")))
		r.waitURL(sup, "/dlq/bulk?")
		if w := run(r, sup, "warning", chromedp.Text(chromedp.ID("confirm-warning"))); !strings.Contains(w, "fails again") {
			t.Fatalf("no warning before replaying invalid_job: %q", w)
		}
		r.do(sup, "back to the list", chromedp.Navigate(r.url+"/dlq?reason=invalid_job"), chromedp.WaitVisible(chromedp.ID("dlq-table")))
		r.waitURL(sup, "/dlq?reason=invalid_job")
		r.do(sup, "open the job",
			chromedp.Click(chromedp.CSS(`a[href="/jobs/billing/fix-me"]`)),
			chromedp.WaitVisible(chromedp.ID("dead-letter")))
		r.waitURL(sup, "/jobs/billing/fix-me")
		if to := run(r, sup, "masked to", chromedp.Text(chromedp.ID("to"))); strings.Contains(to, "not an address") {
			t.Fatalf("recipient shown before reveal: %q", to)
		}
		// It never reached Graph: no message-trace advice, no Graph line.
		if n := run(r, sup, "no call", chromedp.Evaluate[int](`document.querySelectorAll("#no-call").length + 10 * document.querySelectorAll("#timeline .graph").length`)); n != 1 {
			t.Fatalf("a job that made no Graph call: no-call note and Graph lines = %d, want the note and no Graph line", n)
		}
		r.shot(sup, "job")
		r.do(sup, "open the editor",
			chromedp.Click(chromedp.ID("edit")),
			chromedp.WaitVisible(chromedp.ID("editor")))
		r.waitURL(sup, "/jobs/billing/fix-me/edit")
		if e := run(r, sup, "original error", chromedp.Text(chromedp.ID("original-error"))); !strings.Contains(e, "invalid_job") || !strings.Contains(e, "to[0]") {
			t.Fatalf("the editor does not repeat the original error: %q", e)
		}
		// A still invalid address: the error is shown next to the field.
		r.do(sup, "submit a still invalid job",
			chromedp.SetValue(chromedp.ID("e-to"), "still@@wrong"),
			chromedp.Click(chromedp.ID("save-replay")),
			chromedp.WaitVisible(chromedp.ID("err-to")))
		r.waitURL(sup, "/jobs/billing/fix-me/edit")
		r.shot(sup, "edit")
		r.do(sup, "fix the recipient and replay",
			chromedp.SetValue(chromedp.ID("e-to"), "customer@example.com"),
			chromedp.Click(chromedp.ID("save-replay")),
			chromedp.WaitVisible(chromedp.ID("flash")))
		r.settle(sup)
		// The timeline shows replayed, then sent (the worker took it).
		var events string
		eventually(t, 20*time.Second, "sent in the timeline", func() bool {
			r.do(sup, "reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("timeline")))
			events = run(r, sup, "timeline", chromedp.Evaluate[string](`Array.from(document.querySelectorAll("#timeline .ev")).map(e => e.dataset.event).join(" ")`))
			return strings.Contains(events, "sent")
		})
		if i, j := strings.Index(events, "replayed"), strings.LastIndex(events, "sent"); i < 0 || j < i {
			t.Fatalf("timeline = %q, want replayed then sent", events)
		}
		if !strings.Contains(events, "reveal") || !strings.Contains(events, "replay_edited") {
			t.Fatalf("timeline = %q, want the audited reveal (editor) and replay_edited", events)
		}
		// The edited replay's record says what changed, masked.
		if c := run(r, sup, "changes", chromedp.Text(chromedp.CSS(`#timeline ul.changes`))); !strings.Contains(c, "c•••@example.com") || strings.Contains(c, "customer@") {
			t.Fatalf("the replay_edited record's changes: %q", c)
		}
		who := run(r, sup, "actor", chromedp.Text(chromedp.CSS(`#timeline li.audit strong`)))
		if who != "support@contoso.example" {
			t.Fatalf("audit actor = %q", who)
		}
		r.shot(sup, "timeline")
		msgs := r.fake.Messages()
		found := false
		for _, m := range msgs {
			found = found || m.JobID == "fix-me"
		}
		if !found {
			t.Fatal("the fixed job did not reach Graph")
		}

		// The hostile job, revealed: its HTML body only in a sandboxed frame.
		r.do(sup, "open the hostile job",
			chromedp.Navigate(r.url+"/jobs/billing/xss-job"),
			chromedp.WaitVisible(chromedp.ID("reveal")),
			chromedp.Click(chromedp.ID("reveal")),
			chromedp.WaitVisible(chromedp.ID("html-frame")))
		if sb := run(r, sup, "sandbox", chromedp.Evaluate[string](`document.getElementById("html-frame").getAttribute("sandbox")`)); sb != "" {
			t.Fatalf("iframe sandbox = %q, want empty (no allow-scripts)", sb)
		}
		// The window's load event waits for its frames: then the body's
		// scripts, had they been allowed, would have run.
		run(r, sup, "page and frame loaded", chromedp.Evaluate[bool](`new Promise(ok => document.readyState === "complete" ? ok(true) : window.addEventListener("load", () => ok(true)))`, chromedp.EvalAwaitPromise))
		csp := run(r, sup, "body CSP", chromedp.Evaluate[string](`fetch(document.getElementById("html-frame").src).then(r => r.status + " " + r.headers.get("content-security-policy"))`, chromedp.EvalAwaitPromise))
		if !strings.HasPrefix(csp, "200 sandbox; default-src 'none'") {
			t.Fatalf("the HTML body is served with %q", csp)
		}
		r.notPwned(sup, "revealed hostile job")
		src := run(r, sup, "html source", chromedp.Text(chromedp.ID("html-source")))
		if !strings.Contains(src, "<script>parent.__pwned=4") {
			t.Fatalf("HTML source not shown as text: %q", src)
		}

		// Search: by metadata, and by recipient (POST, hashed).
		r.do(sup, "search by metadata",
			chromedp.Navigate(r.url+"/search?kind=meta&q=1042"),
			chromedp.WaitVisible(chromedp.ID("results")))
		if n := run(r, sup, "hits", chromedp.Evaluate[int](`document.querySelectorAll("#results a.job").length`)); n != 1 {
			t.Fatalf("metadata search hits = %d, want 1", n)
		}
		r.do(sup, "search by recipient",
			chromedp.Navigate(r.url+"/search"),
			chromedp.WaitVisible(chromedp.ID("q-rcpt")),
			chromedp.SetValue(chromedp.ID("q-rcpt"), "Victim@Example.com"),
			chromedp.Submit(chromedp.ID("q-rcpt")))
		r.waitURL(sup, "rh=")
		loc := run(r, sup, "location", chromedp.Location())
		if strings.Contains(strings.ToLower(loc), "victim") || !strings.Contains(loc, "rh=") {
			t.Fatalf("recipient search URL = %s: the address must not be in it", loc)
		}
		if n := run(r, sup, "hits", chromedp.Evaluate[int](`document.querySelectorAll('#results a[href="/jobs/billing/xss-job"]').length`)); n != 1 {
			t.Fatalf("recipient search did not find xss-job")
		}
		r.shot(sup, "search")
		r.do(sup, "overview", chromedp.Navigate(r.url+"/overview"), chromedp.WaitVisible(chromedp.CSS(`#chart-billing svg`)))
		r.shot(sup, "overview")
	})

	t.Run("support replays every dead letter of a reason and purges one", func(t *testing.T) {
		r := r.with(t)
		sup := r.person("support@contoso.example")
		r.do(sup, "bulk replay",
			chromedp.Navigate(r.url+"/dlq?profile=billing&reason=access_denied"),
			chromedp.Click(chromedp.ID("bulk-replay")),
			chromedp.WaitVisible(chromedp.ID("confirm-count")))
		r.waitURL(sup, "/dlq/bulk?")
		if n := run(r, sup, "count", chromedp.Text(chromedp.CSS("#confirm-count strong"))); n != "2" {
			t.Fatalf("confirmation shows %q dead letters, want 2", n)
		}
		r.do(sup, "confirm", chromedp.Click(chromedp.ID("confirm")), chromedp.WaitVisible(chromedp.ID("message")))
		r.settle(sup)
		if msg := run(r, sup, "result", chromedp.Text(chromedp.ID("message"))); msg != "Replayed 2 dead letter(s)." {
			t.Fatalf("result %q", msg)
		}
		for _, id := range []string{"more-0", "more-1"} {
			if _, err := r.q.DLQ.Find(ctx, "billing", id); err == nil {
				t.Fatalf("%s is still dead-lettered", id)
			}
		}
		r.do(sup, "purge one",
			chromedp.Navigate(r.url+"/jobs/billing/more-2"),
			chromedp.Click(chromedp.ID("purge")),
			chromedp.WaitVisible(chromedp.ID("confirm")))
		r.waitURL(sup, "/jobs/billing/more-2/purge")
		r.do(sup, "confirm the purge",
			chromedp.Click(chromedp.ID("confirm")),
			chromedp.WaitVisible(chromedp.ID("flash")))
		r.settle(sup)
		events := run(r, sup, "timeline", chromedp.Evaluate[string](`Array.from(document.querySelectorAll("#timeline .ev")).map(e => e.dataset.event).join(" ")`))
		if !strings.Contains(events, "purge") {
			t.Fatalf("timeline after purge = %q", events)
		}
		if _, err := r.q.DLQ.Find(ctx, "billing", "more-2"); err == nil {
			t.Fatal("more-2 is still dead-lettered")
		}
		// Tick every row (the page's script) and replay the selection.
		r.do(sup, "replay selected",
			chromedp.Navigate(r.url+"/dlq?reason=graph_rejected"),
			chromedp.WaitVisible(chromedp.ID("select-all")),
			chromedp.Click(chromedp.ID("select-all")),
			chromedp.Click(chromedp.ID("replay-selected")),
			chromedp.WaitVisible(chromedp.ID("message")))
		r.settle(sup)
		if msg := run(r, sup, "result", chromedp.Text(chromedp.ID("message"))); msg != "Replayed 2 job(s)." {
			t.Fatalf("replay selected: %q", msg)
		}
		recs, err := r.q.Audit.ForJob(ctx, "billing", "more-0")
		if err != nil || len(recs) != 1 || recs[0].Action != queue.AuditReplay || recs[0].Actor != "support@contoso.example" || recs[0].Via != "console" {
			t.Fatalf("audit of more-0 = %+v, %v", recs, err)
		}
	})

	t.Run("hostile fields render inert", func(t *testing.T) {
		r := r.with(t)
		rd := r.person("reader@contoso.example")
		r.do(rd, "hostile job", chromedp.Navigate(r.url+"/jobs/billing/xss-job"), chromedp.WaitVisible(chromedp.ID("metadata")))
		r.notPwned(rd, "job page")
		subj := run(r, rd, "subject", chromedp.Text(chromedp.ID("subject")))
		if subj != xssSubject {
			t.Fatalf("subject shown as %q, want the literal text %q", subj, xssSubject)
		}
		meta := run(r, rd, "metadata", chromedp.Text(chromedp.ID("metadata")))
		if !strings.Contains(meta, xssMeta) {
			t.Fatalf("metadata shown as %q", meta)
		}
		if n := run(r, rd, "injected", chromedp.Evaluate[int](`document.querySelectorAll("main script, main svg[onload], main img[onerror], #metadata b").length`)); n != 0 {
			t.Fatalf("%d injected elements in the page", n)
		}
		r.do(rd, "list", chromedp.Navigate(r.url+"/dlq?reason=sender_not_allowed"), chromedp.WaitVisible(chromedp.CSS(`a[href="/jobs/billing/xss-job"]`)))
		r.notPwned(rd, "list page")
	})

	t.Run("support finds and removes a suppressed recipient, audited; a reader cannot", func(t *testing.T) {
		r := r.with(t)
		// Two hard bounces, as the tracker leaves them (the worker's user
		// writes the list; the console's user only reads and removes).
		for _, e := range []tracking.Suppression{
			{Address: "Bounced.Person@Example.com", JobID: "ok-a", Reason: "550 5.1.1 <bounced.person@example.com>: Recipient address rejected: User unknown in virtual mailbox table"},
			{Address: "gone@example.org", JobID: "ok-b", Reason: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient gone@example.org not found by SMTP address lookup"},
		} {
			e.Profile, e.At, e.ExpiresAt = "billing", now, now.Add(90*24*time.Hour)
			if err := r.wst.Suppress(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		rowsShown := func(c context.Context) int {
			return run(r, c, "rows", chromedp.Evaluate[int](`document.querySelectorAll("#suppressions tbody tr:not(:has(td.empty))").length`))
		}
		sup := r.person("support@contoso.example")
		r.do(sup, "the suppression page",
			chromedp.Navigate(r.url+"/suppressions"),
			chromedp.WaitVisible(chromedp.ID("suppressions")))
		if n := rowsShown(sup); n != 2 {
			t.Fatalf("suppression page shows %d entries, want 2", n)
		}
		// Addresses masked, in the address column and in the reasons.
		text := run(r, sup, "page text", chromedp.Evaluate[string](`document.querySelector("main").innerText`))
		for _, a := range []string{"bounced.person", "Bounced.Person", "gone@example.org"} {
			if strings.Contains(text, a) {
				t.Fatalf("the page shows %q unmasked:\n%s", a, text)
			}
		}
		if !strings.Contains(text, "b•••@example.com") || !strings.Contains(text, "5.1.1") {
			t.Fatalf("the page lacks the masked address or the reason:\n%s", text)
		}
		r.shot(sup, "suppressions")
		// Search by the full address (any case): POST, then a URL with its
		// keyed hash only.
		r.do(sup, "search by address",
			chromedp.SetValue(chromedp.ID("q-sup"), "Bounced.Person@EXAMPLE.com"),
			chromedp.Submit(chromedp.ID("q-sup")))
		r.waitURL(sup, "rh=")
		if loc := run(r, sup, "location", chromedp.Location()); strings.Contains(strings.ToLower(loc), "bounced") {
			t.Fatalf("search URL %s names the address", loc)
		}
		if n := rowsShown(sup); n != 1 {
			t.Fatalf("search shows %d entries, want 1", n)
		}
		if c := run(r, sup, "job link", chromedp.Evaluate[int](`document.querySelectorAll('#suppressions a[href="/jobs/billing/ok-a"]').length`)); c != 1 {
			t.Fatal("the searched entry does not link its bounced job ok-a")
		}
		r.do(sup, "remove it",
			chromedp.Click(chromedp.CSS(`#suppressions button.remove`)),
			chromedp.WaitVisible(chromedp.ID("flash")))
		r.waitURL(sup, "done=removed")
		r.settle(sup)
		if n := rowsShown(sup); n != 1 {
			t.Fatalf("after the removal the page shows %d entries, want the other 1", n)
		}
		if e, err := r.wst.Suppressed(ctx, "billing", "bounced.person@example.com", time.Now()); err != nil || e != nil {
			t.Fatalf("still suppressed after the removal: %+v %v", e, err)
		}
		// Recorded in MAIL_AUDIT under the person's name, via the console,
		// naming the address by its key only.
		recs, err := r.q.Audit.ForJob(ctx, "billing", "ok-a")
		if err != nil {
			t.Fatal(err)
		}
		var rec *queue.AuditRecord
		for i := range recs {
			if recs[i].Action == queue.AuditUnsuppress {
				rec = &recs[i]
			}
		}
		if rec == nil || rec.Actor != "support@contoso.example" || rec.Via != "console" ||
			!strings.Contains(rec.Detail, queue.RecipientKey("bounced.person@example.com")) || strings.Contains(strings.ToLower(rec.Detail), "bounced.person") {
			t.Fatalf("audit of the removal: %+v (all: %+v)", rec, recs)
		}

		// A reader sees the list without a Remove button, and a forged
		// removal with the reader's own CSRF token is refused.
		rd := r.person("reader@contoso.example")
		r.do(rd, "the suppression page as a reader",
			chromedp.Navigate(r.url+"/suppressions"),
			chromedp.WaitVisible(chromedp.ID("suppressions")))
		if n := rowsShown(rd); n != 1 {
			t.Fatalf("the reader sees %d entries, want 1", n)
		}
		if n := run(r, rd, "remove buttons", chromedp.Evaluate[int](`document.querySelectorAll("#suppressions button.remove").length`)); n != 0 {
			t.Fatalf("a reader sees %d Remove buttons", n)
		}
		key := queue.RecipientKey("gone@example.org")
		code := run(r, rd, "forged removal", chromedp.Evaluate[int](`fetch("/suppressions/remove", {method: "POST", body: new URLSearchParams({
			csrf: document.querySelector('#sup-search input[name=csrf]').value, profile: "billing", key: "`+key+`"})}).then(r => r.status)`, chromedp.EvalAwaitPromise))
		if code != 403 {
			t.Fatalf("a reader's removal POST answered %d, want 403", code)
		}
		if e, err := r.wst.Suppressed(ctx, "billing", "gone@example.org", time.Now()); err != nil || e == nil {
			t.Fatalf("the reader's POST removed the entry: %+v %v", e, err)
		}
	})

	t.Run("a reader sees no action and a forged POST is refused", func(t *testing.T) {
		r := r.with(t)
		rd := r.person("reader@contoso.example")
		if role := run(r, rd, "role", chromedp.Text(chromedp.ID("role"))); role != "Reader" {
			t.Fatalf("role shown = %q", role)
		}
		r.do(rd, "hostile job", chromedp.Navigate(r.url+"/jobs/billing/xss-job"), chromedp.WaitVisible(chromedp.ID("dead-letter")))
		if n := run(r, rd, "buttons", chromedp.Evaluate[int](`document.querySelectorAll("#actions, #replay, #edit, #reveal, #purge, input.sel, #bulk-replay").length`)); n != 0 {
			t.Fatalf("a reader sees %d action controls", n)
		}
		r.shot(rd, "reader")
		// The reader's own CSRF token (from the search form) does not give
		// the reader the right to replay; nor does no token at all.
		r.do(rd, "search page", chromedp.Navigate(r.url+"/search"), chromedp.WaitVisible(chromedp.ID("search-rcpt")))
		for _, body := range []string{
			`new URLSearchParams({csrf: document.querySelector('#search-rcpt input[name=csrf]').value})`,
			`new URLSearchParams({})`,
		} {
			code := run(r, rd, "forged POST", chromedp.Evaluate[int](`fetch("/jobs/billing/xss-job/replay", {method: "POST", body: `+body+`}).then(r => r.status)`, chromedp.EvalAwaitPromise))
			if code != 403 {
				t.Fatalf("forged replay POST answered %d, want 403", code)
			}
		}
		if _, err := r.q.DLQ.Find(ctx, "billing", "xss-job"); err != nil {
			t.Fatalf("the forged POST replayed the job: %v", err)
		}

		// Signing out ends the session on the server: the old cookie,
		// put back in the browser, no longer opens the console.
		cctx, cancel := context.WithTimeout(rd, 30*time.Second)
		defer cancel()
		got, err := chromedp.Call(cctx, network.GetCookies, network.GetCookiesParams{URLs: []string{r.url}})
		if err != nil {
			t.Fatal(err)
		}
		var old *network.Cookie
		for _, c := range got.Cookies {
			if c.Name == "__Host-mw_session" {
				old = c
			}
		}
		if old == nil {
			t.Fatal("no session cookie before signing out")
		}
		list := func(what string) string { // the list as this browser's cookie opens it
			return run(r, rd, what, chromedp.Evaluate[string](`fetch("/dlq", {redirect: "manual"}).then(r => r.type + " " + r.status)`, chromedp.EvalAwaitPromise))
		}
		if got := list("the list before signing out"); got != "basic 200" {
			t.Fatalf("the list before signing out: %s", got)
		}
		r.do(rd, "sign out", chromedp.Navigate(r.url+"/dlq"), chromedp.WaitVisible(chromedp.ID("who")))
		if got := run(r, rd, "sign out", chromedp.Evaluate[string](`fetch("/logout", {method: "POST", redirect: "manual"}).then(r => r.type + " " + r.status)`, chromedp.EvalAwaitPromise)); got != "opaqueredirect 0" {
			t.Fatalf("sign out: %s", got)
		}
		yes := true
		if _, err := chromedp.Call(cctx, network.SetCookie, network.SetCookieParams{Name: old.Name, Value: old.Value, URL: r.url, Path: "/", Secure: &yes, HTTPOnly: &yes}); err != nil {
			t.Fatal(err)
		}
		// The same cookie is sent again, and sent to sign in.
		if got := list("the list with the old cookie"); got != "opaqueredirect 0" {
			t.Fatalf("the list with the signed-out session's cookie: %s, want a redirect to sign in", got)
		}
	})
}
