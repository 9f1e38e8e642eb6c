package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestReplySubjectsStayInTheirAccount plays the attacker holding only
// producer_billing, then only smtp, of the shipped deploy/nats/accounts.conf
// (the closing attacker's pass of issue 17). nats-server checks a client's
// permissions on the subject it publishes to, never on the reply subject it
// names, and JetStream publishes its answer to that reply subject. So each
// request the credential may make (a direct get of one of its own object
// chunks, whose bytes are a valid ops job; a job publish and an object
// publish answered by a PubAck; $JS.API.INFO; stream info; a job-state get)
// is sent with a reply subject of the queue: ops' job subject, the worker's
// admin requests, the JetStream API's stream and consumer deletes and purges,
// ops' job state, status, dead-letter, audit and schedule subjects. A message
// traced with Nats-Trace-Dest names one too, and so does the deliver subject
// of a push consumer it asks for on its own object store. Each request is followed by the
// same request answered to the attacker's own inbox, which proves the server
// answered it. Then nothing reached the MAIL account: every stream and the
// worker's consumers exist, ops' stream, MAIL_AUDIT, MAIL_STATUS, MAIL_DLQ
// and MAIL_DEFER hold nothing, ops' job state has no key, and no admin
// request reached the worker's subject.
func TestReplySubjectsStayInTheirAccount(t *testing.T) {
	t.Parallel()
	e := startTrustEnv(t, "")
	wnc, wjs, _ := e.connect("worker")
	ctx := context.Background()

	// Every admin request that reaches MAIL, whoever sent it.
	var mu sync.Mutex
	var admin []string
	adminSub, err := wnc.Subscribe("mail.admin.>", func(m *nats.Msg) { mu.Lock(); admin = append(admin, m.Subject); mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	defer adminSub.Unsubscribe() //nolint:errcheck // test cleanup
	if err := wnc.Flush(); err != nil {
		t.Fatal(err)
	}

	opsJob, _ := json.Marshal(contract.Job{ID: "j1", From: "ops@contoso.example", To: []string{"a@example.com"}, Subject: "s", Text: "t"})
	targets := []string{
		"mail.send.ops",
		"mail.admin.support.purge",
		"mail.admin.support.replay",
		"$JS.API.STREAM.DELETE.MAIL_JOBS_ops",
		"$JS.API.STREAM.DELETE.MAIL_DLQ",
		"$JS.API.STREAM.DELETE.MAIL_AUDIT",
		"$JS.API.STREAM.PURGE.MAIL_JOBS_ops",
		"$JS.API.STREAM.PURGE.MAIL_DEFER",
		"$JS.API.CONSUMER.DELETE.MAIL_JOBS_ops.mailworker",
		"$JS.API.CONSUMER.DELETE.MAIL_DEFER.mailworker_ops",
		"$KV.MAIL_JOB_STATE.ops.j1",
		"mail.status.ops.j1",
		"mail.dlq.ops",
		"mail.audit.ops",
		"mail.schedule.ops.j1",
		"mail.due.ops",
	}

	attack := func(t *testing.T, user, profile string) {
		nc, js, _ := e.connect(user)
		obs, err := js.ObjectStore(ctx, queue.AttachmentsBucket(profile))
		if err != nil {
			t.Fatal(err)
		}
		info, err := obs.PutBytes(ctx, "evil-"+user, opsJob)
		if err != nil {
			t.Fatal(err)
		}
		chunk := "$O." + queue.AttachmentsBucket(profile) + ".C." + info.NUID
		ownJob, _ := json.Marshal(contract.Job{ID: "mine-" + user, From: profile + "@contoso.example", To: []string{"a@example.com"}, Subject: "s", Text: "t"})
		requests := []struct{ subj, body string }{
			{"$JS.API.DIRECT.GET.OBJ_" + queue.AttachmentsBucket(profile) + "." + chunk, ""},
			{"$JS.API.DIRECT.GET.OBJ_" + queue.AttachmentsBucket(profile), `{"last_by_subj":"` + chunk + `"}`},
			{"$JS.API.STREAM.MSG.GET.OBJ_" + queue.AttachmentsBucket(profile), `{"last_by_subj":"` + chunk + `"}`},
			{"mail.send." + profile, string(ownJob)},
			{chunk, string(opsJob)},
			{"$JS.API.INFO", ""},
			{"$JS.API.STREAM.INFO.OBJ_" + queue.AttachmentsBucket(profile), ""},
			{"$JS.API.STREAM.INFO.MAIL_JOBS_" + profile, ""},
		}
		if user != "smtp" {
			requests = append(requests,
				struct{ subj, body string }{"$JS.API.DIRECT.GET.KV_MAIL_JOB_STATE.$KV.MAIL_JOB_STATE." + profile + ".mine-" + user, ""},
				struct{ subj, body string }{"$JS.API.CONSUMER.INFO.MAIL_JOBS_" + profile + ".mailworker", ""})
		}
		answered := 0
		for _, r := range requests {
			for _, target := range targets {
				if err := nc.PublishMsg(&nats.Msg{Subject: r.subj, Reply: target, Data: []byte(r.body)}); err != nil {
					t.Fatalf("%s %s reply %s: %v", user, r.subj, target, err)
				}
				// The same request to its own inbox: answered, so the server
				// has handled the one before it.
				if _, err := nc.Request(r.subj, []byte(r.body), minWait); err != nil {
					t.Fatalf("%s may %s (answered to its inbox): %v", user, r.subj, err)
				}
				answered++
			}
		}
		// A traced publish names a trace destination of the queue.
		for _, target := range targets {
			m := &nats.Msg{Subject: "mail.send." + profile, Data: ownJob, Header: nats.Header{"Nats-Trace-Dest": []string{target}}}
			if err := nc.PublishMsg(m); err != nil {
				t.Fatalf("%s traced publish to %s: %v", user, target, err)
			}
		}
		if _, err := js.Publish(ctx, "mail.send."+profile, ownJob); err != nil {
			t.Fatalf("%s publishes its own job: %v", user, err)
		}
		// A push consumer on its own object store whose deliver subject is
		// one of the queue's: the consumer would publish the store's
		// metadata there from inside MAIL. No account outside MAIL may
		// create a consumer there.
		bucket := queue.AttachmentsBucket(profile)
		for i, target := range targets {
			name := "evil" + strconv.Itoa(i)
			req, _ := json.Marshal(map[string]any{"stream_name": "OBJ_" + bucket, "config": map[string]any{
				"name": name, "deliver_subject": target, "filter_subject": "$O." + bucket + ".M.>",
				"ack_policy": "none", "deliver_policy": "all"}})
			if err := nc.PublishRequest("$JS.API.CONSUMER.CREATE.OBJ_"+bucket+"."+name+".$O."+bucket+".M.>", nc.NewRespInbox(), req); err != nil {
				t.Fatal(err)
			}
		}
		// An API request answered after them: they have been handled.
		if _, err := nc.Request("$JS.API.STREAM.INFO.OBJ_"+bucket, nil, minWait); err != nil {
			t.Fatal(err)
		}
		for i := range targets {
			if _, err := wjs.Consumer(ctx, "OBJ_"+bucket, "evil"+strconv.Itoa(i)); err == nil {
				t.Errorf("%s created a push consumer in MAIL delivering to %s", user, targets[i])
			}
		}
		t.Logf("%s: %d requests with a reply subject of the queue, each answered to its own inbox too", user, answered)
		// Its jobs are in its profile's own stream: the requests reached
		// the queue (their answers are what must not).
		if s, err := wjs.Stream(ctx, "MAIL_JOBS_"+profile); err != nil {
			t.Errorf("stream MAIL_JOBS_%s: %v", profile, err)
		} else if info, err := s.Info(ctx); err != nil || info.State.Msgs == 0 {
			t.Errorf("no %s job stored: the attack did not run (%v)", profile, err)
		}
	}

	check := func(t *testing.T) {
		t.Helper()
		for _, name := range []string{"MAIL_JOBS_billing", "MAIL_JOBS_ops", contract.StreamDefer, "MAIL_STATUS", "MAIL_DLQ",
			"MAIL_AUDIT", "KV_MAIL_JOB_STATE", "OBJ_MAIL_ATTACHMENTS_billing", "OBJ_MAIL_ATTACHMENTS_ops"} {
			s, err := wjs.Stream(ctx, name)
			if err != nil {
				t.Errorf("stream %s: %v (deleted through a reply subject?)", name, err)
				continue
			}
			info, err := s.Info(ctx)
			if err != nil {
				t.Errorf("stream %s info: %v", name, err)
				continue
			}
			switch name {
			case "MAIL_JOBS_ops", contract.StreamDefer, "MAIL_STATUS", "MAIL_AUDIT":
				if info.State.LastSeq != 0 {
					t.Errorf("%s holds %d messages (last seq %d): an answer was published into it", name, info.State.Msgs, info.State.LastSeq)
				}
			case "MAIL_DLQ": // the one dead letter planted below
				if info.State.LastSeq != 1 || info.State.Msgs != 1 {
					t.Errorf("%s holds %d messages (last seq %d), not the one dead letter: an answer was published into it", name, info.State.Msgs, info.State.LastSeq)
				}
			}
		}
		for _, c := range [][2]string{{"MAIL_JOBS_ops", "mailworker"}, {"MAIL_JOBS_billing", "mailworker"}, {contract.StreamDefer, "mailworker_ops"}} {
			if _, err := wjs.Consumer(ctx, c[0], c[1]); err != nil {
				t.Errorf("consumer %s on %s: %v (deleted through a reply subject?)", c[1], c[0], err)
			}
		}
		kv, err := wjs.KeyValue(ctx, contract.BucketState)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Get(ctx, "ops.j1"); err == nil || !strings.Contains(err.Error(), "not found") {
			t.Errorf("ops' job state j1 was written through a reply subject (%v)", err)
		}
		if err := wnc.Flush(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(admin) > 0 {
			t.Errorf("admin requests reached the worker through a reply subject: %v", admin)
		}
	}

	// support and the console read dead letters (whose bodies are jobs),
	// status events, audit records and job states: each read, by direct
	// get (single and batch), message get and API info, is answered to a
	// reply subject of the queue.
	dead, _ := json.Marshal(contract.Job{ID: "dl1", From: "ops@contoso.example", To: []string{"a@example.com"}, Subject: "s", Text: "t"})
	if _, err := wjs.PublishMsg(ctx, &nats.Msg{Subject: "mail.dlq.ops", Data: dead,
		Header: nats.Header{contract.HeaderJobID: []string{"dl1"}, contract.HeaderReason: []string{string(contract.ReasonGraphRejected)}}}); err != nil {
		t.Fatal(err)
	}
	reader := func(t *testing.T, user string) {
		nc, js, _ := e.connect(user)
		requests := []struct{ subj, body string }{
			{"$JS.API.STREAM.MSG.GET.MAIL_DLQ", `{"seq":1}`},
			{"$JS.API.STREAM.MSG.GET.MAIL_DLQ", `{"last_by_subj":"mail.dlq.ops"}`},
			{"$JS.API.DIRECT.GET.KV_MAIL_JOB_STATE", `{"seq":1,"batch":5}`},
			{"$JS.API.INFO", ""},
			{"$JS.API.STREAM.NAMES", ""},
			{"$JS.API.STREAM.INFO.MAIL_DLQ", ""},
			{"$JS.API.DIRECT.GET.KV_MAIL_JOB_STATE.$KV.MAIL_JOB_STATE.ops.dl1", ""},
		}
		for _, r := range requests {
			for _, target := range targets {
				if err := nc.PublishMsg(&nats.Msg{Subject: r.subj, Reply: target, Data: []byte(r.body)}); err != nil {
					t.Fatal(err)
				}
				if _, err := nc.Request(r.subj, []byte(r.body), minWait); err != nil {
					t.Fatalf("%s may %s (answered to its inbox): %v", user, r.subj, err)
				}
			}
		}
		// A batch direct get of MAIL_DLQ (how support and the console list
		// it), whose answers are several messages, to each target.
		for _, target := range targets {
			if err := nc.PublishMsg(&nats.Msg{Subject: "$JS.API.DIRECT.GET.MAIL_DLQ", Reply: target, Data: []byte(`{"seq":1,"batch":10,"next_by_subj":">"}`)}); err != nil {
				t.Fatal(err)
			}
		}
		n := 0
		err := queue.BrowseDirect(ctx, js, "MAIL_DLQ", queue.BrowseOptions{}, func(jetstream.Msg) (bool, error) { n++; return true, nil })
		if err != nil || n != 1 {
			t.Fatalf("%s lists MAIL_DLQ by batch direct get: %d records, %v", user, n, err)
		}
	}

	for _, c := range []struct{ user, profile string }{{"producer_billing", "billing"}, {"smtp", "billing"}, {"support", ""}, {"console", ""}} {
		t.Run(c.user, func(t *testing.T) {
			if c.profile != "" {
				attack(t, c.user, c.profile)
			} else {
				reader(t, c.user)
			}
			check(t)
		})
	}
}

// TestSupportAndConsoleCreateNoConsumer: a push consumer's deliver subject,
// named in the body of its create request, is a subject of MAIL that no
// service import remaps, so whoever may create a consumer in MAIL may have
// MAIL publish its messages to any subject there (a dead letter pushed into
// ops' job stream fills it up to its max_bytes, and its producers are then
// refused). Support and the console read through direct gets only, so they
// may create no consumer at all, nor pull from, delete or flow-control one:
// holding each credential, the attacker asks for push consumers delivering
// to mail.send.ops (and pull consumers, named, durable and ephemeral,
// through every create subject) on every stream of the queue, pulls from
// and deletes the worker's consumers and answers their flow control. Every
// request is refused (the server's permission violations prove it), no
// consumer is created or deleted, ops' stream holds only its own job and
// nobody took it.
func TestSupportAndConsoleCreateNoConsumer(t *testing.T) {
	t.Parallel()
	e := startTrustEnv(t, "")
	_, wjs, _ := e.connect("worker")
	_, ojs, _ := e.connect("producer_ops")
	ctx := context.Background()
	dead, _ := json.Marshal(contract.Job{ID: "dl-push", From: "ops@contoso.example", To: []string{"a@example.com"}, Subject: "s", Text: "t"})
	if _, err := wjs.PublishMsg(ctx, &nats.Msg{Subject: "mail.dlq.ops", Data: dead, Header: nats.Header{
		contract.HeaderJobID: []string{"dl-push"}, contract.HeaderReason: []string{string(contract.ReasonGraphRejected)},
		contract.HeaderProfile: []string{"ops"}}}); err != nil {
		t.Fatal(err)
	}
	job, _ := json.Marshal(contract.Job{ID: "ops-own", From: "ops@contoso.example", To: []string{"b@example.com"}, Subject: "s", Text: "t"})
	if _, err := ojs.Publish(ctx, "mail.send.ops", job); err != nil {
		t.Fatal(err)
	}
	streams := []string{"MAIL_DLQ", "MAIL_STATUS", "MAIL_AUDIT", "KV_MAIL_JOB_STATE", "KV_MAIL_PACING", "KV_MAIL_SUPPRESSION",
		"KV_MAIL_TRACKING", "KV_MAIL_WORKERS", "MAIL_JOBS_ops", "MAIL_JOBS_billing", contract.StreamDefer,
		"OBJ_MAIL_ATTACHMENTS_ops", "OBJ_MAIL_DEFERRED"}
	// Some streams exist only with tracking or a deferral: the ones that
	// exist are checked.
	var present []string
	before := map[string]int{} // consumers on each stream (the worker's)
	for _, st := range streams {
		if s, err := wjs.Stream(ctx, st); err == nil {
			present = append(present, st)
			before[st] = s.CachedInfo().State.Consumers
		}
	}
	if len(present) < 8 {
		t.Fatalf("only %v of the queue's streams exist", present)
	}
	// The worker's consumers: pulled from, deleted, flow-controlled.
	workerConsumers := [][2]string{{"MAIL_JOBS_ops", contract.ConsumerName}, {"MAIL_JOBS_billing", contract.ConsumerName},
		{contract.StreamDefer, contract.DueConsumer("ops")}}
	for _, user := range []string{"support", "console"} {
		nc, _, errs := e.connect(user)
		got, err := nc.SubscribeSync(nc.NewRespInbox())
		if err != nil {
			t.Fatal(err)
		}
		sent := 0
		send := func(subj string, body []byte) {
			t.Helper()
			if err := nc.PublishRequest(subj, got.Subject, body); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		for _, st := range present {
			for i, kind := range []string{"push", "pull"} {
				name := user + "-" + kind
				cfg := map[string]any{"name": name, "ack_policy": "none", "deliver_policy": "all"}
				if kind == "push" {
					cfg["deliver_subject"] = "mail.send.ops"
				}
				ecfg := map[string]any{"ack_policy": "none", "deliver_policy": "all"}
				if i == 0 {
					ecfg["deliver_subject"] = "mail.send.ops"
				}
				named, _ := json.Marshal(map[string]any{"stream_name": st, "config": cfg})
				durable := map[string]any{"durable_name": name + "-d", "ack_policy": "none", "deliver_policy": "all"}
				if i == 0 {
					durable["deliver_subject"] = "mail.send.ops"
				}
				dur, _ := json.Marshal(map[string]any{"stream_name": st, "config": durable})
				eph, _ := json.Marshal(map[string]any{"stream_name": st, "config": ecfg})
				send("$JS.API.CONSUMER.CREATE."+st+"."+name, named)
				send("$JS.API.CONSUMER.CREATE."+st+"."+name+".>", named)
				send("$JS.API.CONSUMER.DURABLE.CREATE."+st+"."+name+"-d", dur)
				send("$JS.API.CONSUMER.CREATE."+st, eph)
			}
		}
		for _, c := range workerConsumers {
			send("$JS.API.CONSUMER.MSG.NEXT."+c[0]+"."+c[1], []byte(`{"batch":10,"expires":2000000000}`))
			send("$JS.API.CONSUMER.DELETE."+c[0]+"."+c[1], nil)
			send("$JS.FC."+c[0]+"."+c[1]+".1.1.1", nil)
		}
		// Each request is refused: the server says so for each one.
		deadline := time.Now().Add(30 * time.Second)
		for errs.count("Publish to") < sent && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := errs.count("Publish to"); n < sent {
			t.Errorf("%s: %d of %d consumer requests refused", user, n, sent)
		}
		if m, err := got.NextMsg(time.Millisecond); err == nil {
			t.Errorf("%s: an answer to a consumer request reached the attacker: %q %s", user, m.Header, m.Data)
		}
	}
	for _, st := range present {
		s, err := wjs.Stream(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if n := s.CachedInfo().State.Consumers; n != before[st] {
			t.Errorf("%s has %d consumers, %d before: support or the console created or deleted one", st, n, before[st])
		}
	}
	ops, err := wjs.Stream(ctx, "MAIL_JOBS_ops")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := ops.Info(ctx); err != nil || info.State.LastSeq != 1 {
		t.Errorf("ops' job stream holds %d messages, its last is %d (%v): pushed into it", info.State.Msgs, info.State.LastSeq, err)
	}
	if c, err := ops.Consumer(ctx, contract.ConsumerName); err != nil {
		t.Errorf("the worker's consumer on MAIL_JOBS_ops: %v", err)
	} else if d := c.CachedInfo().Delivered.Consumer; d != 0 {
		t.Errorf("ops' job was delivered %d times with no worker running: pulled by support or the console", d)
	}
}
