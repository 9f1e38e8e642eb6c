package validate

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	accountsConf = "../../nats/accounts.conf"
	clusterConf  = "../../nats/nats-cluster.conf"
)

var passwords = map[string]string{
	"producer":         "MAIL_PRODUCER_PASSWORD",
	"producer_billing": "MAIL_PRODUCER_BILLING_PASSWORD",
	"worker":           "MAIL_WORKER_PASSWORD",
	"support":          "MAIL_SUPPORT_PASSWORD",
}

func setPasswords(t *testing.T) {
	for user, env := range passwords {
		t.Setenv(env, "pw-"+user)
	}
}

// TestClusterConfigParses loads the clustered server config (which includes accounts.conf) the way
// the StatefulSet runs it.
func TestClusterConfigParses(t *testing.T) {
	setPasswords(t)
	t.Setenv("SERVER_NAME", "nats-0")
	t.Setenv("CLUSTER_ROUTE_PASSWORD", "route-pw")
	opts, err := server.ProcessConfigFile(clusterConf)
	if err != nil {
		t.Fatalf("%s: %v", clusterConf, err)
	}
	if !opts.JetStream || opts.Cluster.Name == "" || len(opts.Routes) != 3 {
		t.Errorf("want JetStream, a named cluster and 3 routes; got js=%v cluster=%q routes=%d",
			opts.JetStream, opts.Cluster.Name, len(opts.Routes))
	}
	if opts.HTTPPort != 8222 {
		t.Errorf("monitoring port %d, want 8222 (KEDA nats-jetstream trigger, exporter)", opts.HTTPPort)
	}
	if opts.SyncInterval != 0 && !opts.SyncAlways && opts.SyncInterval > 2*time.Minute {
		t.Errorf("sync_interval %v longer than the default", opts.SyncInterval)
	}
}

// permErr is how an allow-list denial shows up through JetStream calls: the API request is dropped,
// so the client times out (or gets a permissions violation from the async error handler).
func denied(err error) bool {
	return err != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrPermissionViolation) || errors.Is(err, jetstream.ErrNoStreamResponse))
}

// TestAccountsLeastPrivilege starts an embedded JetStream server from accounts.conf and walks each
// user through what mailworker does with it, then checks a few things each must not be able to do.
func TestAccountsLeastPrivilege(t *testing.T) {
	setPasswords(t)
	opts, err := server.ProcessConfigFile(accountsConf)
	if err != nil {
		t.Fatalf("%s: %v", accountsConf, err)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.JetStream, opts.StoreDir = true, t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}

	connect := func(user string) jetstream.JetStream {
		nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, "pw-"+user), nats.CustomInboxPrefix("_INBOX_"+user),
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		if err != nil {
			t.Fatalf("connect %s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 500*time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	mustDeny := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: allowed, want denied", what)
		} else if !denied(err) {
			t.Logf("%s: denied with %v", what, err)
		}
	}

	// worker provisions everything.
	worker := connect("worker")
	_, err = worker.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_JOBS", Subjects: []string{"mail.send.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage})
	must("worker create MAIL_JOBS", err)
	_, err = worker.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_STATUS", Subjects: []string{"mail.status.>"}, AllowDirect: true})
	must("worker create MAIL_STATUS", err)
	_, err = worker.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_DLQ", Subjects: []string{"mail.dlq.>"}, AllowDirect: true})
	must("worker create MAIL_DLQ", err)
	_, err = worker.UpdateStream(ctx, jetstream.StreamConfig{Name: "MAIL_DLQ", Subjects: []string{"mail.dlq.>"}, AllowDirect: true, MaxAge: 0})
	must("worker update MAIL_DLQ", err)
	kv, err := worker.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "MAIL_JOB_STATE", TTL: time.Hour})
	must("worker create KV", err)
	workersKV, err := worker.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "MAIL_WORKERS", TTL: 15 * time.Second})
	must("worker create KV MAIL_WORKERS", err)
	_, err = worker.UpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "MAIL_WORKERS", TTL: 20 * time.Second})
	must("worker update KV MAIL_WORKERS", err)
	pacingKV, err := worker.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "MAIL_PACING", TTL: 25 * time.Hour})
	must("worker create KV MAIL_PACING", err)
	wobs, err := worker.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "MAIL_ATTACHMENTS"})
	must("worker create object store", err)
	cons, err := worker.CreateOrUpdateConsumer(ctx, "MAIL_JOBS", jetstream.ConsumerConfig{Durable: "mailworker", AckPolicy: jetstream.AckExplicitPolicy})
	must("worker create consumer", err)
	_, err = worker.Consumer(ctx, "MAIL_JOBS", "mailworker")
	must("worker consumer info", err)
	_, err = worker.AccountInfo(ctx)
	must("worker account info", err)

	// producer submits a job and uploads an attachment.
	producer := connect("producer")
	_, err = producer.Publish(ctx, "mail.send.billing", []byte(`{"id":"j1"}`), jetstream.WithMsgID("j1"))
	must("producer publish", err)
	pobs, err := producer.ObjectStore(ctx, "MAIL_ATTACHMENTS")
	must("producer object store", err)
	_, err = pobs.PutBytes(ctx, "j1/invoice.pdf", bytes.Repeat([]byte("x"), 300_000))
	must("producer put object", err)
	_, err = pobs.PutBytes(ctx, "j1/invoice.pdf", []byte("replaced"))
	must("producer replace object", err)
	c, cc := short()
	_, err = producer.Publish(c, "mail.status.billing.j1", []byte(`{}`))
	cc()
	mustDeny("producer publish status", err)
	c, cc = short()
	_, err = producer.CreateStream(c, jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
	cc()
	mustDeny("producer create stream", err)
	c, cc = short()
	_, err = producer.Consumer(c, "MAIL_JOBS", "mailworker")
	cc()
	mustDeny("producer consumer info", err)

	billing := connect("producer_billing")
	_, err = billing.Publish(ctx, "mail.send.billing", []byte(`{"id":"j2"}`))
	must("producer_billing publish own profile", err)
	c, cc = short()
	_, err = billing.Publish(c, "mail.send.hr", []byte(`{"id":"j3"}`))
	cc()
	mustDeny("producer_billing publish other profile", err)

	// worker consumes, acks, writes state, reads the attachment, records outcomes.
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	must("worker fetch", err)
	var n int
	for m := range batch.Messages() {
		n++
		must("worker in-progress", m.InProgress())
		must("worker ack", m.DoubleAck(ctx))
	}
	if n != 2 {
		t.Fatalf("worker fetched %d jobs, want 2 (err %v)", n, batch.Error())
	}
	_, err = kv.Put(ctx, "j1", []byte(`{"state":"sent"}`))
	must("worker kv put", err)
	_, err = kv.Get(ctx, "j1")
	must("worker kv get", err)
	// Live replicas: heartbeat (put), count (stream info), leave (purge of the own key).
	_, err = workersKV.Put(ctx, "r1", []byte("now"))
	must("worker heartbeat", err)
	wst, err := worker.Stream(ctx, "KV_MAIL_WORKERS")
	must("worker count replicas (stream info)", err)
	must("worker leave (purge own key)", wst.Purge(ctx, jetstream.WithPurgeSubject("$KV.MAIL_WORKERS.r1")))
	// Recipient ledger: create, get, compare-and-set update.
	rev, err := pacingKV.Create(ctx, "MJUWY3DJNZTUAY3PNZ2G643PFZRW63I", []byte(`{"hours":[]}`))
	must("worker ledger create", err)
	_, err = pacingKV.Get(ctx, "MJUWY3DJNZTUAY3PNZ2G643PFZRW63I")
	must("worker ledger get", err)
	_, err = pacingKV.Update(ctx, "MJUWY3DJNZTUAY3PNZ2G643PFZRW63I", []byte(`{"hours":[{"start":0,"n":1}]}`), rev)
	must("worker ledger update", err)
	_, err = wobs.GetBytes(ctx, "j1/invoice.pdf")
	must("worker object get", err)
	must("worker object delete", wobs.Delete(ctx, "j1/invoice.pdf"))
	_, err = worker.Publish(ctx, "mail.status.billing.j1", []byte(`{"event":"sent"}`))
	must("worker publish status", err)
	dl := nats.NewMsg("mail.dlq.billing")
	dl.Header.Set("Mail-Job-Id", "j2")
	dl.Header.Set("Mail-Reason", "recipient_invalid")
	dl.Data = []byte(`{"id":"j2"}`)
	_, err = worker.PublishMsg(ctx, dl)
	must("worker publish dlq", err)
	c, cc = short()
	err = worker.DeleteStream(c, "MAIL_DLQ")
	cc()
	mustDeny("worker delete stream", err)

	// support inspects, replays and deletes the dead letter.
	support := connect("support")
	dlq, err := support.Stream(ctx, "MAIL_DLQ")
	must("support dlq info", err)
	oc, err := dlq.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"mail.dlq.billing"}})
	must("support ordered consumer", err)
	msg, err := oc.Next(jetstream.FetchMaxWait(5 * time.Second))
	must("support read dlq", err)
	if msg.Headers().Get("Mail-Reason") != "recipient_invalid" {
		t.Errorf("dlq headers lost: %v", msg.Headers())
	}
	meta, err := msg.Metadata()
	must("support metadata", err)
	_, err = dlq.GetMsg(ctx, meta.Sequence.Stream)
	must("support dlq get", err)
	_, err = dlq.GetLastMsgForSubject(ctx, "mail.dlq.billing")
	must("support dlq direct get", err)
	st, err := support.Stream(ctx, "MAIL_STATUS")
	must("support status info", err)
	_, err = st.GetLastMsgForSubject(ctx, "mail.status.billing.j1")
	must("support status get", err)
	for _, b := range []string{"MAIL_WORKERS", "MAIL_PACING"} {
		_, err = support.KeyValue(ctx, b)
		must("support binds KV "+b+" (queue.Open)", err)
	}
	skv, err := support.KeyValue(ctx, "MAIL_JOB_STATE")
	must("support kv", err)
	_, err = skv.Get(ctx, "j1")
	must("support kv get", err)
	_, err = support.Publish(ctx, "mail.send.billing", msg.Data(), jetstream.WithMsgID("j2-replay-1"))
	must("support replay", err)
	must("support delete dlq msg", dlq.DeleteMsg(ctx, meta.Sequence.Stream))
	must("support purge dlq by subject", dlq.Purge(ctx, jetstream.WithPurgeSubject("mail.dlq.billing")))
	// A replay resets the job state (attempts, generation) before re-publishing.
	_, err = skv.Put(ctx, "j1", []byte("x"))
	must("support kv put (replay resets the job state)", err)
	c, cc = short()
	_, err = support.Consumer(c, "MAIL_JOBS", "mailworker")
	cc()
	if err != nil {
		t.Errorf("support consumer info (backlog): %v", err)
	}
	c, cc = short()
	err = support.DeleteStream(c, "MAIL_JOBS")
	cc()
	mustDeny("support delete stream", err)

	// No anonymous access.
	if nc, err := nats.Connect(s.ClientURL()); err == nil {
		nc.Close()
		t.Errorf("anonymous connection accepted")
	}
}
