package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/conf"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// trustEnv is the shipped deploy/nats/accounts.conf in an embedded server
// (max_payload 8 MB, as deploy/nats sets it), provisioned by the
// provisioner, with the built binary's worker serving billing and ops.
type trustEnv struct {
	t       *testing.T
	ns      *server.Server
	pw      map[string]string
	fake    *graphtest.Server
	cfgFile string
}

func startTrustEnv(t *testing.T, streams string) *trustEnv {
	t.Helper()
	users := shippedAccountUsers
	e := &trustEnv{t: t, pw: map[string]string{}}
	for _, u := range users {
		e.pw[u] = "pw-" + u + "-" + randomSecret()[:8]
	}
	opts := loadShippedAccounts(t, e.pw)
	e.ns = startTestNATS(t, func(o *server.Options) {
		o.Accounts, o.Users, o.Nkeys = opts.Accounts, opts.Users, opts.Nkeys
		o.MaxPayload = devMaxPayload
	})
	fake, caFile := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: "s1"})
	e.fake = fake
	prof := func(sender string) string {
		return fmt.Sprintf(`{tenantId: t1, clientId: c1, authorityHost: "%s", graphURL: "%s", caFile: "%s",
            credential: {clientSecret: s1}, allowedSenders: [%s]}`, fake.URL(), fake.GraphURL(), caFile, sender)
	}
	e.cfgFile = filepath.Join(t.TempDir(), "worker.yaml")
	if err := os.WriteFile(e.cfgFile, []byte(fmt.Sprintf(`nats: {url: "%s", user: worker, password: %s, inboxPrefix: _INBOX_worker}
http: {listen: "127.0.0.1:0"}
streams: {provision: false%s}
worker: {perMailboxPerMinute: 0}
profiles:
  billing: %s
  ops: %s
`, e.ns.ClientURL(), e.pw["worker"], streams, prof("billing@contoso.example"), prof("ops@contoso.example"))), 0o600); err != nil {
		t.Fatal(err)
	}
	url := strings.Replace(e.ns.ClientURL(), "nats://", "nats://provisioner:"+e.pw["provisioner"]+"@", 1)
	if out, errOut, code := runCmdEnv(t, []string{"MAILWORKER_NATS_INBOX_PREFIX=_INBOX_provisioner"}, "", "provision", "--config", e.cfgFile, "--nats-url", url); code != 0 {
		t.Fatalf("provision as provisioner: exit %d: %s %s", code, out, errOut)
	}
	return e
}

// connect connects as user with its own inbox prefix; errs receives the
// server's asynchronous errors (permission violations).
func (e *trustEnv) connect(user string) (*nats.Conn, jetstream.JetStream, *asyncErrs) {
	e.t.Helper()
	errs := &asyncErrs{}
	url := strings.Replace(e.ns.ClientURL(), "nats://", "nats://"+user+":"+e.pw[user]+"@", 1)
	nc, err := nats.Connect(url, nats.CustomInboxPrefix("_INBOX_"+user),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs.add(err) }))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		e.t.Fatal(err)
	}
	return nc, js, errs
}

type asyncErrs struct {
	mu   sync.Mutex
	errs []string
}

func (a *asyncErrs) add(err error) { a.mu.Lock(); a.errs = append(a.errs, err.Error()); a.mu.Unlock() }
func (a *asyncErrs) count(s string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, e := range a.errs {
		if strings.Contains(e, s) {
			n++
		}
	}
	return n
}
func (a *asyncErrs) has(s string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.errs {
		if strings.Contains(e, s) {
			return true
		}
	}
	return false
}

// deniedReq is a request that nc's permissions must refuse.
type deniedReq struct{ what, subj, data string }

// deniedWait is how long a denied request waits for the answer that must
// not come. The server drops a publish its permissions refuse, so every
// denied request waits this long: checkDenied sends them all at once.
const deniedWait = 2 * time.Second

// checkDenied sends every request from nc at once and reports each one that
// was answered (want denied).
func checkDenied(t *testing.T, nc *nats.Conn, reqs ...deniedReq) {
	t.Helper()
	answered := make([]string, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if m, err := nc.Request(r.subj, []byte(r.data), deniedWait); err == nil {
				answered[i] = fmt.Sprintf("%s (%s): answered %.200q, want denied", r.what, r.subj, m.Data)
			}
		}()
	}
	wg.Wait()
	for _, a := range answered {
		if a != "" {
			t.Error(a)
		}
	}
}

// sentFrom counts the mails the fake accepted for jobID from mailbox from.
func (e *trustEnv) sentFrom(jobID, from string) int {
	n := 0
	for _, m := range e.fake.Messages() {
		if m.Headers["X-Mailworker-Job-Id"] == jobID && strings.EqualFold(m.From, from) {
			n++
		}
	}
	return n
}

// TestProducerHeadersCannotReachAnotherProfile plays the attacker holding
// only producer_billing (issue 17, items 1-3 and 7) against the shipped
// accounts and the built worker serving billing and ops. While ops has jobs
// waiting in its stream and deferrals waiting in MAIL_DEFER, billing
// publishes on its own subject with every JetStream header the server
// honours (rollups, schedules and their targets, sources, rollups and
// purges of another schedule, TTLs, counters, batches, stream sources,
// expectations, message-id pre-claims, traces), calls the purge and delete
// APIs, and probes for ops' job ids. Each header is refused or harmless:
// every ops job is sent once, from ops' mailbox, none before its notBefore,
// and nothing billing published is ever sent as ops.
func TestProducerHeadersCannotReachAnotherProfile(t *testing.T) {
	t.Parallel()
	e := startTrustEnv(t, "")
	_, wjs, _ := e.connect("worker")
	bnc, bjs, berrs := e.connect("producer_billing")
	_, ojs, _ := e.connect("producer_ops")
	ctx := context.Background()
	opsJob := func(id string, notBefore *time.Time) []byte {
		b, _ := json.Marshal(contract.Job{ID: id, From: "ops@contoso.example", To: []string{"a@example.com"}, Subject: "s", Text: "t", NotBefore: notBefore})
		return b
	}
	// ops' jobs waiting in its stream before any worker runs.
	var opsIDs []string
	for i := range 3 {
		id := fmt.Sprintf("ops-now-%d", i)
		if _, err := ojs.Publish(ctx, "mail.send.ops", opsJob(id, nil)); err != nil {
			t.Fatal(err)
		}
		opsIDs = append(opsIDs, id)
	}
	// ops' deferrals: a worker turns them into schedules in MAIL_DEFER.
	deferredUntil := time.Now().Add(12 * time.Second).Truncate(time.Second)
	w := startProc(t, nil, "run", "--config", e.cfgFile)
	for i := range 3 {
		id := fmt.Sprintf("ops-later-%d", i)
		if _, err := ojs.Publish(ctx, "mail.send.ops", opsJob(id, &deferredUntil)); err != nil {
			t.Fatal(err)
		}
		opsIDs = append(opsIDs, id)
	}
	eventually(t, 30*time.Second, "ops' deferrals waiting as schedules", func() bool {
		s, err := wjs.Stream(ctx, contract.StreamDefer)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(contract.ScheduleSubjectPrefix+"ops.>"))
		return err == nil && len(info.State.Subjects) == 3
	})
	// More ops jobs stay waiting in MAIL_JOBS_ops while billing attacks:
	// they are deferred for a moment too.
	soon := time.Now().Add(8 * time.Second)
	for i := range 3 {
		id := fmt.Sprintf("ops-soon-%d", i)
		if _, err := ojs.Publish(ctx, "mail.send.ops", opsJob(id, &soon)); err != nil {
			t.Fatal(err)
		}
		opsIDs = append(opsIDs, id)
	}

	// Every JetStream header a producer could send (nats-server 2.15.2,
	// server/stream.go and jetstream_*.go header constants).
	at := "@at " + time.Now().Add(time.Second).UTC().Format(time.RFC3339)
	attacks := []map[string]string{
		{"Nats-Rollup": "all"},
		{"Nats-Rollup": "sub"},
		{"Nats-Schedule": at, "Nats-Schedule-Target": "mail.send.ops"},
		{"Nats-Schedule": at, "Nats-Schedule-Target": "mail.due.ops"},
		{"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": "mail.send.ops"},
		{"Nats-Schedule": at, "Nats-Schedule-Target": "mail.send.billing", "Nats-Schedule-Source": "mail.send.ops"},
		{"Nats-Schedule": at, "Nats-Schedule-Target": "mail.send.billing", "Nats-Schedule-Rollup": "sub"},
		{"Nats-Schedule": at, "Nats-Schedule-Target": "mail.send.billing", "Nats-Schedule-TTL": "1s"},
		{"Nats-Schedule": "0 * * * * *", "Nats-Schedule-Time-Zone": "UTC", "Nats-Schedule-Target": "mail.send.ops"},
		{"Nats-Scheduler": "mail.schedule.ops.ops-later-0", "Nats-Schedule-Next": "purge"},
		{"Nats-Scheduler": "mail.schedule.ops.ops-later-1", "Nats-Schedule-Next": at},
		{"Nats-TTL": "1s"},
		{"Nats-TTL": "never"},
		{"Nats-Incr": "1"},
		{"Nats-Counter-Sources": `{"MAIL_JOBS_ops":{"mail.send.ops":"1"}}`},
		{"Nats-Batch-Id": "b1", "Nats-Batch-Sequence": "1"},
		{"Nats-Batch-Id": "b2", "Nats-Batch-Sequence": "1", "Nats-Batch-Commit": "1"},
		{"Nats-Stream-Source": "MAIL_JOBS_ops 1 mail.send.ops mail.send.ops"},
		{"Nats-Marker-Reason": "Purge"},
		{"Nats-Expected-Stream": "MAIL_JOBS_ops"},
		{"Nats-Expected-Last-Msg-Id": "ops-now-0"},
		{"Nats-Expected-Last-Sequence": "1"},
		{"Nats-Expected-Last-Subject-Sequence": "0", "Nats-Expected-Last-Subject-Sequence-Subject": "mail.send.ops"},
		{"Nats-Msg-Id": "ops-idiom-1"},
		{"Nats-Trace-Dest": "mail.send.ops"},
		{"Nats-Trace-Dest": "mail.send.ops", "Nats-Trace-Only": "true"},
		{"Nats-Required-Api-Level": "0"},
	}
	for i, hdr := range attacks {
		m := &nats.Msg{Subject: "mail.send.billing", Header: nats.Header{},
			Data: fmt.Appendf(nil, `{"id":"evil-%d","from":"ops@contoso.example","to":["x@example.com"],"subject":"s","text":"t"}`, i)}
		for k, v := range hdr {
			m.Header.Set(k, v)
		}
		_, err := bjs.PublishMsg(ctx, m)
		if err != nil && strings.Contains(err.Error(), "ops-") {
			t.Errorf("attack %v: the refusal names ops' jobs: %v", hdr, err)
		}
		t.Logf("attack %v: %v", hdr, err)
	}
	// The standard idiom is safe: billing's Nats-Msg-Id pre-claim above does
	// not drop ops' publish of the same id.
	ack, err := ojs.PublishMsg(ctx, &nats.Msg{Subject: "mail.send.ops", Header: nats.Header{"Nats-Msg-Id": []string{"ops-idiom-1"}}, Data: opsJob("ops-idiom-1", nil)})
	if err != nil || ack.Duplicate {
		t.Fatalf("ops' publish with Nats-Msg-Id = its job id after billing used it: %+v, %v", ack, err)
	}
	opsIDs = append(opsIDs, "ops-idiom-1")

	// The JetStream API: purge, delete, update, steal, and subjects that
	// only the worker or the server write.
	// Each is refused: no answer (all sent at once, checkDenied).
	var refused []deniedReq
	denied := func(what, subj string, data string) { refused = append(refused, deniedReq{what, subj, data}) }
	for _, s := range []string{"MAIL_JOBS_billing", "MAIL_JOBS_ops", "MAIL_DEFER", "OBJ_MAIL_DEFERRED", "KV_MAIL_JOB_STATE"} {
		denied("purge "+s, "$JS.API.STREAM.PURGE."+s, `{}`)
		denied("delete a message of "+s, "$JS.API.STREAM.MSG.DELETE."+s, `{"seq":1}`)
		denied("delete "+s, "$JS.API.STREAM.DELETE."+s, ``)
		denied("update "+s, "$JS.API.STREAM.UPDATE."+s, `{"name":"`+s+`","allow_msg_schedules":true,"allow_rollup_hdrs":true}`)
	}
	denied("delete its consumer", "$JS.API.CONSUMER.DELETE.MAIL_JOBS_billing.mailworker", ``)
	denied("take ops' jobs", "$JS.API.CONSUMER.MSG.NEXT.MAIL_JOBS_ops.mailworker", `{"batch":10}`)
	denied("take ops' due jobs", "$JS.API.CONSUMER.MSG.NEXT.MAIL_DEFER.mailworker_ops", `{"batch":10}`)
	denied("take its own jobs", "$JS.API.CONSUMER.MSG.NEXT.MAIL_JOBS_billing.mailworker", `{"batch":10}`)
	denied("consume MAIL_DEFER", "$JS.API.CONSUMER.CREATE.MAIL_DEFER", `{"stream_name":"MAIL_DEFER","config":{"filter_subject":"mail.schedule.>"}}`)
	for _, subj := range []string{"mail.send.ops", "mail.due.ops", "mail.due.billing", "mail.schedule.ops.evil", "mail.schedule.billing.evil"} {
		denied("publish on "+subj, subj, string(opsJob("evil-direct", nil)))
	}

	// 7. Snooping: nothing lists ops' job ids or deferrals.
	for what, req := range map[string][2]string{
		"MAIL_DEFER info with subjects":    {"$JS.API.STREAM.INFO.MAIL_DEFER", `{"subjects_filter":">"}`},
		"job state info with subjects":     {"$JS.API.STREAM.INFO.KV_MAIL_JOB_STATE", `{"subjects_filter":">"}`},
		"ops' stream info":                 {"$JS.API.STREAM.INFO.MAIL_JOBS_ops", `{"subjects_filter":">"}`},
		"ops' consumer info":               {"$JS.API.CONSUMER.INFO.MAIL_JOBS_ops.mailworker", ``},
		"ops' due consumer info":           {"$JS.API.CONSUMER.INFO.MAIL_DEFER.mailworker_ops", ``},
		"its own due consumer info":        {"$JS.API.CONSUMER.INFO.MAIL_DEFER.mailworker_billing", ``},
		"stream names":                     {"$JS.API.STREAM.NAMES", `{"subject":"mail.>"}`},
		"stream list":                      {"$JS.API.STREAM.LIST", `{}`},
		"MAIL_DEFER consumers":             {"$JS.API.CONSUMER.LIST.MAIL_DEFER", `{}`},
		"MAIL_DEFER consumer names":        {"$JS.API.CONSUMER.NAMES.MAIL_DEFER", `{}`},
		"job states by sequence":           {"$JS.API.DIRECT.GET.KV_MAIL_JOB_STATE", `{"seq":1}`},
		"job states by message get":        {"$JS.API.STREAM.MSG.GET.KV_MAIL_JOB_STATE", `{"seq":1}`},
		"ops' job state by key":            {"$JS.API.DIRECT.GET.KV_MAIL_JOB_STATE.$KV.MAIL_JOB_STATE.ops.ops-now-0", ``},
		"ops' last job state by subject":   {"$JS.API.DIRECT.GET.KV_MAIL_JOB_STATE", `{"last_by_subj":"$KV.MAIL_JOB_STATE.ops.ops-now-0"}`},
		"deferrals by sequence":            {"$JS.API.DIRECT.GET.MAIL_DEFER", `{"seq":1}`},
		"deferrals by subject":             {"$JS.API.DIRECT.GET.MAIL_DEFER.mail.schedule.ops.ops-later-0", ``},
		"deferred bodies":                  {"$JS.API.STREAM.INFO.OBJ_MAIL_DEFERRED", `{"subjects_filter":">"}`},
		"ops' attachments":                 {"$JS.API.STREAM.INFO.OBJ_MAIL_ATTACHMENTS_ops", `{"subjects_filter":">"}`},
		"its own jobs by message get":      {"$JS.API.STREAM.MSG.GET.MAIL_JOBS_billing", `{"seq":1}`},
		"the status events of every job":   {"$JS.API.STREAM.INFO.MAIL_STATUS", `{"subjects_filter":">"}`},
		"the dead letters of every job":    {"$JS.API.STREAM.INFO.MAIL_DLQ", `{"subjects_filter":">"}`},
		"a consumer on the status stream":  {"$JS.API.CONSUMER.CREATE.MAIL_STATUS", `{"stream_name":"MAIL_STATUS","config":{}}`},
		"account-wide advisories (server)": {"$JS.API.ACCOUNT.PURGE.MAIL", ``},
	} {
		denied(what, req[0], req[1])
	}
	checkDenied(t, bnc, refused...)
	// Its own keys' direct get cannot be turned into a walk of the bucket:
	// the server refuses a sequence, a next-for or a batch on that form.
	for _, body := range []string{`{"seq":1}`, `{"next_by_subj":"$KV.MAIL_JOB_STATE.ops.>"}`, `{"last_by_subj":"$KV.MAIL_JOB_STATE.ops.ops-now-0"}`, `{"batch":100,"seq":1}`} {
		m, err := bnc.Request("$JS.API.DIRECT.GET.KV_MAIL_JOB_STATE.$KV.MAIL_JOB_STATE.billing.x", []byte(body), 2*time.Second)
		if err == nil && (m.Header.Get("Status") == "" || strings.Contains(string(m.Data), "ops")) {
			t.Errorf("billing's own-key direct get with %s answered %v %.200q", body, m.Header, m.Data)
		}
	}
	// What it may read shows its own profile only.
	if m, err := bnc.Request("$JS.API.STREAM.INFO.MAIL_JOBS_billing", []byte(`{"subjects_filter":">"}`), minWait); err != nil {
		t.Errorf("billing's own stream info: %v", err)
	} else if strings.Contains(string(m.Data), "ops") || !strings.Contains(string(m.Data), `"mail.send.billing"`) {
		t.Errorf("billing's own stream info: %.300q", m.Data)
	}
	for _, subj := range []string{"mail.>", "_INBOX.>", "_INBOX_worker.>", "$JS.EVENT.>", "$KV.MAIL_JOB_STATE.ops.>"} {
		if _, err := bnc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
	}
	if err := bnc.Flush(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "every subscription refused", func() bool {
		for _, subj := range []string{"mail.>", "_INBOX.>", "_INBOX_worker.>", "$JS.EVENT.>", "$KV.MAIL_JOB_STATE.ops.>"} {
			if !berrs.has(`Subscription to "` + subj + `"`) {
				return false
			}
		}
		return true
	})

	// Every ops job is sent once, from ops' mailbox, none early; none of
	// billing's is ever sent as ops (the 1 s schedules were due long before
	// ops' 12 s deferrals are sent).
	eventually(t, 60*time.Second, "every ops job sent", func() bool {
		for _, id := range opsIDs {
			if e.sentFrom(id, "ops@contoso.example") != 1 {
				return false
			}
		}
		return true
	})
	for _, msg := range e.fake.Messages() {
		id := msg.Headers["X-Mailworker-Job-Id"]
		if strings.EqualFold(msg.From, "ops@contoso.example") && !strings.HasPrefix(id, "ops-") {
			t.Errorf("job %q was sent from ops' mailbox", id)
		}
		if strings.HasPrefix(id, "ops-later-") && msg.ReceivedAt.Before(deferredUntil) {
			t.Errorf("%s sent at %s, before its notBefore %s", id, msg.ReceivedAt, deferredUntil)
		}
	}
	for _, id := range opsIDs {
		if n := e.sentFrom(id, "ops@contoso.example"); n != 1 {
			t.Errorf("ops job %s sent %d times", id, n)
		}
	}
	if t.Failed() {
		t.Logf("worker: %s", tail(w.stderr.String(), 4000))
	}
}

// TestLargeDeferredJobHoldsNoSlot (issue 17, item 4): jobs of about 8 MB (as
// large as intake accepts under max_payload 8 MB) with a future notBefore are
// more than billing's consumer capacity (maxAckPending 2), yet they wait
// without holding it: by reference in MAIL_DEFERRED, their deliveries acked.
// billing's next job and ops' job are sent at once.
func TestLargeDeferredJobHoldsNoSlot(t *testing.T) {
	t.Parallel()
	e := startTrustEnv(t, ", maxAckPending: 2")
	_, wjs, _ := e.connect("worker")
	_, bjs, _ := e.connect("producer_billing")
	_, ojs, _ := e.connect("producer_ops")
	ctx := context.Background()
	w := startProc(t, nil, "run", "--config", e.cfgFile)
	later := time.Now().Add(time.Hour)
	big := strings.Repeat("x", devMaxPayload-4096)
	for i := range 3 {
		b, _ := json.Marshal(contract.Job{ID: fmt.Sprintf("big-%d", i), From: "billing@contoso.example", To: []string{"a@example.com"},
			Subject: "s", Text: big, NotBefore: &later})
		// The ack of an 8 MB message can take longer than the client's
		// default 5 s on a starved machine: an upper bound of its own.
		pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := bjs.Publish(pctx, "mail.send.billing", b)
		cancel()
		if err != nil {
			t.Fatalf("publish a %d-byte job: %v", len(b), err)
		}
	}
	eventually(t, 3*time.Minute, "the large jobs deferred by reference, their deliveries acked", func() bool { // three 8 MB jobs through a -race worker: minutes on a starved machine
		c, err := wjs.Consumer(ctx, contract.JobsStream("billing"), contract.ConsumerName)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		if err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
			return false
		}
		obs, err := wjs.ObjectStore(ctx, contract.BucketDeferred)
		if err != nil {
			return false
		}
		objs, err := obs.List(ctx)
		return err == nil && len(objs) == 3
	})
	for p, js := range map[string]jetstream.JetStream{"billing": bjs, "ops": ojs} {
		b, _ := json.Marshal(contract.Job{ID: p + "-small", From: p + "@contoso.example", To: []string{"a@example.com"}, Subject: "s", Text: "t"})
		if _, err := js.Publish(ctx, "mail.send."+p, b); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "billing's and ops' small jobs sent", func() bool {
		return e.sentFrom("billing-small", "billing@contoso.example") == 1 && e.sentFrom("ops-small", "ops@contoso.example") == 1
	})
	if t.Failed() {
		t.Logf("worker: %s", tail(w.stderr.String(), 4000))
	}
}

// TestTrustTableHoldsForTheShippedAccounts: docs/reliability.md's trust
// table is the shipped accounts' truth. Every NATS user of
// deploy/nats/accounts.conf has a row (producers by the producer_<p>
// template), and every subject the row lists under Writes, Reads or Deletes
// is allowed to that user's publish permissions, every one under Refused
// denied.
func TestTrustTableHoldsForTheShippedAccounts(t *testing.T) {
	t.Parallel()
	pw := map[string]string{}
	for _, u := range shippedAccountUsers {
		pw[u] = "x"
	}
	file := shippedAccountsWith(t, pw)
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatal(err)
	}
	perms := map[string]*server.SubjectPermission{}
	for _, u := range opts.Users {
		if u.Permissions == nil || u.Permissions.Publish == nil {
			t.Fatalf("user %s has no publish allow-list", u.Username)
		}
		perms[u.Username] = u.Permissions.Publish
	}
	accountOf, imports := shippedAccounts(t, file)
	doc, err := os.ReadFile("../../docs/reliability.md")
	if err != nil {
		t.Fatal(err)
	}
	sec := string(doc)
	i := strings.Index(sec, "## Trust model: who can do what")
	if i < 0 {
		t.Fatal(`docs/reliability.md has no "Trust model: who can do what" section`)
	}
	sec = sec[i:]
	if j := strings.Index(sec[3:], "\n## "); j > 0 {
		sec = sec[:j+3]
	}
	allowed := func(p *server.SubjectPermission, subj string) bool {
		ok := false
		for _, a := range p.Allow {
			if server.SubjectsCollide(subj, a) {
				ok = true
			}
		}
		for _, d := range p.Deny {
			if server.SubjectsCollide(subj, d) {
				ok = false
			}
		}
		return ok
	}
	// reaches: the user may publish subj and, outside MAIL, its account
	// imports it from MAIL (nothing else of a user outside MAIL reaches the
	// queue, whatever reply subject it names).
	reaches := func(user, subj string) bool {
		if !allowed(perms[user], subj) {
			return false
		}
		if accountOf[user] == "MAIL" {
			return true
		}
		for _, imp := range imports[accountOf[user]] {
			if server.SubjectsCollide(subj, imp) {
				return true
			}
		}
		return false
	}
	rows := 0
	covered := map[string]bool{}
	for _, line := range strings.Split(sec, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 8 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		role := strings.Trim(strings.Fields(cells[1])[0], "`")
		users := []string{role}
		if role == "producer_<p>" {
			users = []string{"producer_billing", "producer_ops"}
		}
		rows++
		for _, user := range users {
			p, other := "billing", "ops"
			if user == "producer_ops" {
				p, other = "ops", "billing"
			}
			perm := perms[user]
			if perm == nil {
				t.Errorf("the trust table's %s is not a user of accounts.conf", user)
				continue
			}
			covered[user] = true
			if m := regexp.MustCompile("account `([A-Za-z_<>]+)`").FindStringSubmatch(cells[1]); m == nil {
				t.Errorf("the trust table's row %s names no account", role)
			} else if acc := strings.NewReplacer("<p>", p).Replace(m[1]); acc != accountOf[user] {
				t.Errorf("the trust table puts %s in account %s, accounts.conf in %s", user, acc, accountOf[user])
			}
			for col, want := range map[int]bool{2: true, 3: true, 4: true, 5: false} {
				for _, tok := range strings.Split(cells[col], "`")[1:] {
					if !strings.HasPrefix(tok, "$") && !strings.HasPrefix(tok, "mail.") {
						continue
					}
					subj := strings.NewReplacer("<p>", p, "<other>", other, "<id>", "j1").Replace(tok)
					if got := reaches(user, subj); got != want {
						t.Errorf("%s publish %s: reaches MAIL %v, the trust table says %v", user, subj, got, want)
					}
				}
			}
		}
	}
	for u := range perms {
		if !covered[u] {
			t.Errorf("user %s of accounts.conf has no row in the trust table", u)
		}
	}
	if rows < 6 {
		t.Fatalf("read %d rows of the trust table", rows)
	}
}

// shippedAccounts reads file, deploy/nats/accounts.conf with its passwords
// filled in (shippedAccountsWith), and returns each user's account and each
// account's service imports from MAIL.
func shippedAccounts(t *testing.T, file string) (accountOf map[string]string, imports map[string][]string) {
	t.Helper()
	m, err := conf.ParseFileWithChecks(file)
	if err != nil {
		t.Fatal(err)
	}
	accountOf, imports = map[string]string{}, map[string][]string{}
	val := func(v any) any {
		if tk, ok := v.(interface{ Value() any }); ok {
			return tk.Value()
		}
		return v
	}
	accs, _ := val(m["accounts"]).(map[string]any)
	for name, a := range accs {
		am, _ := val(a).(map[string]any)
		users, _ := val(am["users"]).([]any)
		for _, u := range users {
			um, _ := val(u).(map[string]any)
			if n, ok := val(um["user"]).(string); ok {
				accountOf[n] = name
			}
		}
		ims, _ := val(am["imports"]).([]any)
		for _, im := range ims {
			imm, _ := val(im).(map[string]any)
			if st, ok := val(imm["stream"]).(map[string]any); ok {
				// Push consumers' deliveries to the account's one user's
				// inbox: nothing else may be imported as a stream.
				subj, _ := val(st["subject"]).(string)
				from, _ := val(st["account"]).(string)
				if from != "MAIL" || !strings.HasPrefix(subj, "_INBOX_") || !strings.HasSuffix(subj, ".>") {
					t.Fatalf("account %s imports stream %s from %s: only its user's inbox prefix may be", name, subj, from)
				}
				continue
			}
			svc, ok := val(imm["service"]).(map[string]any)
			if !ok {
				t.Fatalf("account %s imports something other than a service or its inbox: %v", name, imm)
			}
			if from, _ := val(svc["account"]).(string); from != "MAIL" {
				t.Fatalf("account %s imports from %s", name, from)
			}
			subj, _ := val(svc["subject"]).(string)
			imports[name] = append(imports[name], subj)
		}
	}
	if len(accountOf) < 7 {
		t.Fatalf("read %d users from accounts.conf", len(accountOf))
	}
	return accountOf, imports
}
