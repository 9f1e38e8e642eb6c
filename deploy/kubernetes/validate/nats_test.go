package validate

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
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
	"producer_billing": "MAIL_PRODUCER_BILLING_PASSWORD",
	"producer_ops":     "MAIL_PRODUCER_OPS_PASSWORD",
	"provisioner":      "MAIL_PROVISIONER_PASSWORD",
	"worker":           "MAIL_WORKER_PASSWORD",
	"support":          "MAIL_SUPPORT_PASSWORD",
	"console":          "MAIL_CONSOLE_PASSWORD",
}

func setPasswords(t *testing.T) {
	for user, env := range passwords {
		t.Setenv(env, "pw-"+user)
	}
}

// TestClusterConfigParses loads (the cluster forming is tested with three processes in
// cmd/mailworker TestShippedNATSClusterForms) the clustered server config (which includes accounts.conf) the way
// the StatefulSet runs it, with test certificates where cert-manager puts the real ones: TLS for
// clients, routes and the monitoring port, no plaintext listener.
func TestClusterConfigParses(t *testing.T) {
	setPasswords(t)
	t.Setenv("SERVER_NAME", "nats-0")
	t.Setenv("CLIENT_ADVERTISE", "nats-0.nats.nats.svc.cluster.local:4222")
	dir := t.TempDir()
	writeTestCerts(t, dir)
	conf, err := os.ReadFile(clusterConf)
	if err != nil {
		t.Fatal(err)
	}
	accounts, err := os.ReadFile(accountsConf)
	if err != nil {
		t.Fatal(err)
	}
	conf = bytes.ReplaceAll(conf, []byte("/etc/nats/tls"), []byte(dir))
	for name, b := range map[string][]byte{"nats-cluster.conf": conf, "accounts.conf": accounts} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats-cluster.conf"))
	if err != nil {
		t.Fatalf("%s: %v", clusterConf, err)
	}
	if !opts.JetStream || opts.Cluster.Name == "" || len(opts.Routes) != 3 {
		t.Errorf("want JetStream, a named cluster and 3 routes; got js=%v cluster=%q routes=%d",
			opts.JetStream, opts.Cluster.Name, len(opts.Routes))
	}
	if opts.TLSConfig == nil || opts.Cluster.TLSConfig == nil {
		t.Errorf("want TLS for clients (%v) and routes (%v)", opts.TLSConfig != nil, opts.Cluster.TLSConfig != nil)
	}
	if opts.Cluster.TLSConfig != nil && opts.Cluster.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("routes do not verify the peer's certificate")
	}
	if !opts.Cluster.TLSCheckKnownURLs {
		t.Errorf("routes accept any certificate of the CA: want verify_cert_and_check_known_urls")
	}
	for _, r := range opts.Routes {
		if r.User != nil {
			t.Errorf("route %s carries credentials: nats-server does not expand variables inside a URL", r.Redacted())
		}
	}
	if opts.ClientAdvertise != "nats-0.nats.nats.svc.cluster.local:4222" {
		t.Errorf("client_advertise %q, want $CLIENT_ADVERTISE", opts.ClientAdvertise)
	}
	if opts.HTTPPort != 0 || opts.HTTPSPort != 8222 {
		t.Errorf("monitoring: http %d, https %d; want HTTPS only on 8222 (KEDA nats-jetstream trigger, exporter)", opts.HTTPPort, opts.HTTPSPort)
	}
	if opts.SyncInterval != 0 && !opts.SyncAlways && opts.SyncInterval > 2*time.Minute {
		t.Errorf("sync_interval %v longer than the default", opts.SyncInterval)
	}
}

// writeTestCerts writes ca.crt, tls.crt and tls.key (a self-signed CA and a server+client
// certificate it issued), as cert-manager lays them out.
func writeTestCerts(t *testing.T, dir string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		DNSNames:  []string{"*.nats.nats.svc.cluster.local", "nats.nats.svc.cluster.local"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	for name, blk := range map[string]*pem.Block{
		"ca.crt":  {Type: "CERTIFICATE", Bytes: caDER},
		"tls.crt": {Type: "CERTIFICATE", Bytes: der},
		"tls.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(blk), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// permErr is how an allow-list denial shows up through JetStream calls: the API request is dropped,
// so the client times out (or gets a permissions violation from the async error handler).
func denied(err error) bool {
	return err != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrPermissionViolation) || errors.Is(err, jetstream.ErrNoStreamResponse))
}

// startAccountsServer starts an embedded JetStream server from accounts.conf
// (every user's password set by setPasswords) and returns a connect function
// that logs in as a user, with that user's inbox prefix, and its client URL.
func startAccountsServer(t *testing.T) (url string, connect func(user string) jetstream.JetStream) {
	t.Helper()
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
	return s.ClientURL(), func(user string) jetstream.JetStream {
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
}

// TestAccountsLeastPrivilege starts an embedded JetStream server from accounts.conf and walks each
// user through what mailworker does with it, then checks a few things each must not be able to do.
func TestAccountsLeastPrivilege(t *testing.T) {
	url, connect := startAccountsServer(t)
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 500*time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // an upper bound (CI shares two cores under -race)
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

	// provisioner creates everything; the worker cannot.
	prov := connect("provisioner")
	var err error
	for _, p := range []string{"billing", "ops"} {
		_, err = prov.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_JOBS_" + p, Subjects: []string{"mail.send." + p},
			Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, DenyDelete: true, DenyPurge: true})
		must("provisioner create MAIL_JOBS_"+p, err)
	}
	_, err = prov.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_DEFER", Subjects: []string{"mail.schedule.>", "mail.due.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, AllowMsgSchedules: true, AllowRollup: true})
	must("provisioner create MAIL_DEFER", err)
	_, err = prov.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_STATUS", Subjects: []string{"mail.status.>"}, AllowDirect: true})
	must("provisioner create MAIL_STATUS", err)
	_, err = prov.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_DLQ", Subjects: []string{"mail.dlq.>"}, AllowDirect: true})
	must("provisioner create MAIL_DLQ", err)
	_, err = prov.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_AUDIT", Subjects: []string{"mail.audit.>"}})
	must("provisioner create MAIL_AUDIT", err)
	_, err = prov.UpdateStream(ctx, jetstream.StreamConfig{Name: "MAIL_DLQ", Subjects: []string{"mail.dlq.>"}, AllowDirect: true, MaxAge: 0})
	must("provisioner update MAIL_DLQ", err)
	_, err = prov.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "MAIL_JOB_STATE", TTL: time.Hour})
	must("provisioner create KV", err)
	_, err = prov.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "MAIL_WORKERS", TTL: 15 * time.Second})
	must("provisioner create KV MAIL_WORKERS", err)
	_, err = prov.UpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "MAIL_WORKERS", TTL: 20 * time.Second})
	must("provisioner update KV MAIL_WORKERS", err)
	_, err = prov.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "MAIL_PACING", TTL: 25 * time.Hour})
	must("provisioner create KV MAIL_PACING", err)
	for _, p := range []string{"billing", "ops"} {
		_, err = prov.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "MAIL_ATTACHMENTS_" + p})
		must("provisioner create object store of "+p, err)
	}
	_, err = prov.CreateOrUpdateConsumer(ctx, "MAIL_JOBS_billing", jetstream.ConsumerConfig{Durable: "mailworker", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: "mail.send.billing"})
	must("provisioner create consumer", err)
	_, err = prov.CreateOrUpdateConsumer(ctx, "MAIL_DEFER", jetstream.ConsumerConfig{Durable: "mailworker_billing", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: "mail.due.billing"})
	must("provisioner create due consumer", err)
	c, cc := short()
	_, err = prov.Publish(c, "mail.send.billing", []byte(`{}`))
	cc()
	mustDeny("provisioner publish a job", err)
	c, cc = short()
	err = prov.DeleteStream(c, "MAIL_AUDIT")
	cc()
	mustDeny("provisioner delete stream", err)

	worker := connect("worker")
	kv, err := worker.KeyValue(ctx, "MAIL_JOB_STATE")
	must("worker bind KV", err)
	workersKV, err := worker.KeyValue(ctx, "MAIL_WORKERS")
	must("worker bind KV MAIL_WORKERS", err)
	pacingKV, err := worker.KeyValue(ctx, "MAIL_PACING")
	must("worker bind KV MAIL_PACING", err)
	cons, err := worker.Consumer(ctx, "MAIL_JOBS_billing", "mailworker")
	must("worker consumer info", err)
	_, err = worker.Consumer(ctx, "MAIL_DEFER", "mailworker_billing")
	must("worker due consumer info", err)
	_, err = worker.AccountInfo(ctx)
	must("worker account info", err)
	for what, f := range map[string]func(context.Context) error{
		"update a stream": func(c context.Context) error {
			_, err := worker.UpdateStream(c, jetstream.StreamConfig{Name: "MAIL_DLQ", Subjects: []string{"mail.dlq.>"}, MaxAge: time.Second})
			return err
		},
		"create a stream": func(c context.Context) error {
			_, err := worker.CreateStream(c, jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
			return err
		},
		"update the consumer": func(c context.Context) error {
			_, err := worker.CreateOrUpdateConsumer(c, "MAIL_JOBS_billing", jetstream.ConsumerConfig{Durable: "mailworker", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1})
			return err
		},
		"purge the audit stream": func(c context.Context) error {
			s, err := worker.Stream(c, "MAIL_AUDIT")
			if err != nil {
				return err
			}
			return s.Purge(c)
		},
		"delete a stream": func(c context.Context) error { return worker.DeleteStream(c, "MAIL_DLQ") },
	} {
		c, cc := short()
		mustDeny("worker "+what, f(c))
		cc()
	}

	// Producers submit jobs and upload attachments into their own profile only.
	billing := connect("producer_billing")
	ops := connect("producer_ops")
	_, err = billing.Publish(ctx, "mail.send.billing", []byte(`{"id":"j1"}`))
	must("producer_billing publish own profile", err)
	_, err = ops.Publish(ctx, "mail.send.ops", []byte(`{"id":"j2"}`))
	must("producer_ops publish own profile", err)
	c, cc = short()
	_, err = billing.Publish(c, "mail.send.ops", []byte(`{"id":"j3"}`))
	cc()
	mustDeny("producer_billing publish for ops", err)
	bobs, err := billing.ObjectStore(ctx, "MAIL_ATTACHMENTS_billing")
	must("producer_billing own object store", err)
	_, err = bobs.PutBytes(ctx, "j1/invoice.pdf", bytes.Repeat([]byte("x"), 300_000))
	must("producer_billing put object", err)
	_, err = bobs.PutBytes(ctx, "j1/invoice.pdf", []byte("replaced"))
	must("producer_billing replace own object", err)
	oobs, err := ops.ObjectStore(ctx, "MAIL_ATTACHMENTS_ops")
	must("producer_ops own object store", err)
	_, err = oobs.PutBytes(ctx, "payroll.xlsx", []byte("salaries"))
	must("producer_ops put object", err)
	// billing cannot bind, read, replace or purge ops' objects, by any path.
	c, cc = short()
	_, err = billing.ObjectStore(c, "MAIL_ATTACHMENTS_ops")
	cc()
	mustDeny("producer_billing bind ops' object store", err)
	bnc := billingConn(t, url)
	for what, subj := range map[string]string{
		"write ops' chunks":   "$O.MAIL_ATTACHMENTS_ops.C.evil",
		"write ops' metadata": "$O.MAIL_ATTACHMENTS_ops.M.cGF5cm9sbC54bHN4",
		"purge ops' store":    "$JS.API.STREAM.PURGE.OBJ_MAIL_ATTACHMENTS_ops",
		"read ops' metadata":  "$JS.API.DIRECT.GET.OBJ_MAIL_ATTACHMENTS_ops.$O.MAIL_ATTACHMENTS_ops.M.cGF5cm9sbC54bHN4",
		"get ops' message":    "$JS.API.STREAM.MSG.GET.OBJ_MAIL_ATTACHMENTS_ops",
		"read ops' job state": "$JS.API.DIRECT.GET.KV_MAIL_JOB_STATE.$KV.MAIL_JOB_STATE.ops.j2",
		"list job ids":        "$JS.API.STREAM.INFO.KV_MAIL_JOB_STATE",
		"list deferrals":      "$JS.API.STREAM.INFO.MAIL_DEFER",
		"ops' stream info":    "$JS.API.STREAM.INFO.MAIL_JOBS_ops",
		"schedule into ops":   "mail.schedule.ops.evil",
		"publish a due job":   "mail.due.billing",
		"write job state":     "$KV.MAIL_JOB_STATE.billing.j1",
		"publish a status":    "mail.status.billing.j1",
		"ask the worker":      "mail.admin.support.purge",
	} {
		if _, err := bnc.Request(subj, []byte(`{"seq":1}`), 500*time.Millisecond); err == nil {
			t.Errorf("producer_billing %s (%s): answered, want denied", what, subj)
		}
	}

	// worker consumes, acks, writes state, reads the attachment, records outcomes.
	// (billing's stream holds billing's one job; ops' is in MAIL_JOBS_ops)
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Minute)) // an upper bound: returns with the job
	must("worker fetch", err)
	var n int
	for m := range batch.Messages() {
		n++
		must("worker in-progress", m.InProgress())
		must("worker ack", m.DoubleAck(ctx))
	}
	if n != 1 {
		t.Fatalf("worker fetched %d jobs, want 1 (err %v)", n, batch.Error())
	}
	_, err = kv.Put(ctx, "billing.j1", []byte(`{"state":"sent"}`))
	must("worker kv put", err)
	_, err = kv.Get(ctx, "billing.j1")
	must("worker kv get", err)
	// send --wait reads its own job's state by one direct get by key
	// (queue.OwnStates); binding the bucket needs its stream info, which
	// would list every profile's job ids, and is denied.
	c, cc = short()
	_, err = billing.KeyValue(c, "MAIL_JOB_STATE")
	cc()
	mustDeny("producer_billing binds the state bucket (stream info lists every job id)", err)
	sm, err := billing.Conn().Request("$JS.API.DIRECT.GET.KV_MAIL_JOB_STATE.$KV.MAIL_JOB_STATE.billing.j1", nil, time.Minute)
	if err != nil || sm.Header.Get("Status") != "" || string(sm.Data) != `{"state":"sent"}` {
		t.Errorf("producer_billing reads its own job's state by key: %v %v %q", err, sm, sm.Data)
	}
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
	for _, p := range []string{"billing", "ops"} {
		wobs, err := worker.ObjectStore(ctx, "MAIL_ATTACHMENTS_"+p)
		must("worker binds the object store of "+p, err)
		names := map[string]string{"billing": "j1/invoice.pdf", "ops": "payroll.xlsx"}
		_, err = wobs.GetBytes(ctx, names[p])
		must("worker object get of "+p, err)
	}
	_, err = worker.Publish(ctx, "mail.status.billing.j1", []byte(`{"event":"sent"}`))
	must("worker publish status", err)
	_, err = worker.Publish(ctx, "mail.audit.billing", []byte(`{"action":"purge"}`))
	must("worker publish audit", err)
	dl := nats.NewMsg("mail.dlq.billing")
	dl.Header.Set("Mail-Job-Id", "j2")
	dl.Header.Set("Mail-Reason", "recipient_invalid")
	dl.Data = []byte(`{"id":"j2"}`)
	_, err = worker.PublishMsg(ctx, dl)
	must("worker publish dlq", err)
	wdlq, err := worker.Stream(ctx, "MAIL_DLQ")
	must("worker dlq info", err)
	wm, err := wdlq.GetMsg(ctx, 1)
	must("worker dlq get (replay)", err)
	_, err = worker.PublishMsg(ctx, &nats.Msg{Subject: "mail.send.billing", Data: wm.Data})
	must("worker replay publish", err)

	// support reads the DLQ, status and state by direct gets (it may create
	// no consumer: a push consumer's deliver subject could name a job
	// stream's subject); it changes nothing itself.
	support := connect("support")
	dlq, err := support.Stream(ctx, "MAIL_DLQ")
	must("support dlq info", err)
	rec, err := dlq.GetLastMsgForSubject(ctx, "mail.dlq.billing")
	must("support dlq direct get", err)
	if rec.Header.Get("Mail-Reason") != "recipient_invalid" {
		t.Errorf("dlq headers lost: %v", rec.Header)
	}
	_, err = dlq.GetMsg(ctx, rec.Sequence)
	must("support dlq get", err)
	// A batch direct get, as support's and the console's listings read.
	inbox := support.Conn().NewRespInbox()
	sub, err := support.Conn().SubscribeSync(inbox)
	must("support inbox", err)
	must("support batch direct get", support.Conn().PublishRequest("$JS.API.DIRECT.GET.MAIL_DLQ", inbox, []byte(`{"seq":1,"batch":10,"next_by_subj":"mail.dlq.>"}`)))
	first, err := sub.NextMsg(time.Minute) // an upper bound: the first record comes at once
	must("support batch direct get answer", err)
	if first.Header.Get("Nats-Subject") != "mail.dlq.billing" || first.Header.Get("Mail-Reason") != "recipient_invalid" {
		t.Errorf("batch direct get answered %q %v", first.Data, first.Header)
	}
	_ = sub.Unsubscribe()
	st, err := support.Stream(ctx, "MAIL_STATUS")
	must("support status info", err)
	_, err = st.GetLastMsgForSubject(ctx, "mail.status.billing.j1")
	must("support status get", err)
	_, err = support.Stream(ctx, "MAIL_AUDIT")
	must("support audit info", err)
	for _, b := range []string{"MAIL_WORKERS", "MAIL_PACING"} {
		_, err = support.KeyValue(ctx, b)
		must("support binds KV "+b+" (queue.Open)", err)
	}
	skv, err := support.KeyValue(ctx, "MAIL_JOB_STATE")
	must("support kv", err)
	_, err = skv.Get(ctx, "billing.j1")
	must("support kv get", err)
	_, err = support.Consumer(ctx, "MAIL_JOBS_billing", "mailworker") // allowed: the whole test's deadline, not short()'s
	if err != nil {
		t.Errorf("support consumer info (backlog): %v", err)
	}
	// Everything a replay or purge changes is the worker's to do (recorded in MAIL_AUDIT).
	for what, f := range map[string]func(context.Context) error{
		"send mail": func(c context.Context) error {
			_, err := support.Publish(c, "mail.send.billing", rec.Data)
			return err
		},
		"publish a status event": func(c context.Context) error {
			_, err := support.Publish(c, "mail.status.billing.j9", []byte(`{"event":"sent"}`))
			return err
		},
		"write job state": func(c context.Context) error {
			_, err := skv.Put(c, "billing.future-job", []byte(`{"state":"sent"}`))
			return err
		},
		"purge the DLQ by raw API": func(c context.Context) error { return dlq.Purge(c) },
		"delete a dead letter":     func(c context.Context) error { return dlq.DeleteMsg(c, rec.Sequence) },
		"forge an audit record": func(c context.Context) error {
			_, err := support.Publish(c, "mail.audit.billing", []byte(`{}`))
			return err
		},
		"delete a stream": func(c context.Context) error { return support.DeleteStream(c, "MAIL_JOBS_billing") },
		"create a consumer": func(c context.Context) error {
			_, err := dlq.OrderedConsumer(c, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"mail.dlq.billing"}})
			return err
		},
	} {
		c, cc := short()
		mustDeny("support "+what, f(c))
		cc()
	}

	// No anonymous access.
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Errorf("anonymous connection accepted")
	}
}

// billingConn is a plain connection of producer_billing, for raw requests
// that the JetStream client would not make.
func billingConn(t *testing.T, url string) *nats.Conn {
	nc, err := nats.Connect(url, nats.UserInfo("producer_billing", "pw-producer_billing"),
		nats.CustomInboxPrefix("_INBOX_producer_billing"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
