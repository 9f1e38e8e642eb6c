package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue"
)

// The shipped accounts give the MAIL account JetStream limits, and each
// profile's object store has a max_bytes, so that a producer can fill its
// own store but never the servers' storage (issue 17, item 5): checked on a
// server started from deploy/nats/accounts.conf, as producer_billing.
func TestShippedAccountsLimitJetStream(t *testing.T) {
	t.Parallel()
	pw := map[string]string{}
	for _, u := range shippedAccountUsers {
		pw[u] = "pw-" + u
	}
	opts := loadShippedAccounts(t, pw)
	ns := startTestNATS(t, func(o *server.Options) { o.Accounts, o.Users, o.Nkeys = opts.Accounts, opts.Users, opts.Nkeys })
	connect := func(user string) jetstream.JetStream {
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, "pw-"+user), nats.CustomInboxPrefix("_INBOX_"+user),
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const maxBytes = 2 << 20
	if err := queue.Provision(ctx, connect("provisioner"), queue.Config{Profiles: []string{"billing", "ops"}, AttachmentsMaxBytes: maxBytes}); err != nil {
		t.Fatal(err)
	}
	producer := connect("producer_billing")
	info, err := producer.AccountInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := info.Limits
	if l.MaxMemory <= 0 || l.MaxStore <= 0 || l.MaxStreams <= 0 || l.MaxConsumers <= 0 {
		t.Fatalf("account limits %+v: want max_mem, max_file, max_streams and max_consumers all set", l)
	}
	t.Logf("MAIL account limits: max_mem %d MB, max_file %d GiB, max_streams %d, max_consumers %d",
		l.MaxMemory>>20, l.MaxStore>>30, l.MaxStreams, l.MaxConsumers)

	a := queue.NewAttachments(producer)
	if _, err := a.Put(ctx, "billing", "fits.bin", bytes.Repeat([]byte{1}, maxBytes/2)); err != nil {
		t.Fatalf("an object within the store's max_bytes: %v", err)
	}
	if _, err := a.Put(ctx, "billing", "over.bin", bytes.Repeat([]byte{2}, maxBytes)); err == nil {
		t.Fatal("a producer stored more than its object store's max_bytes")
	}
}
