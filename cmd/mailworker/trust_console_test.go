package main

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestConsoleCannotWipeEveryJobState: the console writes job states (the
// reset of a replay) and deletes one (a purge) on $KV.MAIL_JOB_STATE.>, and
// removes suppressed addresses on $KV.MAIL_SUPPRESSION.>; no permission can
// refuse a header: one publish with Nats-Rollup: all deleted every
// profile's job states (the duplicate suppression and the records of sends
// that may have reached Graph), or its whole suppression list. The buckets
// provisioned by the built binary honour no rollup: every rollup form is
// refused, every entry stays, and deleting one state (what a purge does)
// still works.
func TestConsoleCannotWipeEveryJobState(t *testing.T) {
	t.Parallel()
	e := startTrustEnv(t, "")
	_, wjs, _ := e.connect("worker")
	cnc, _, _ := e.connect("console")
	ctx := context.Background()
	kv, err := wjs.KeyValue(ctx, contract.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ops.o1", "ops.o2", "billing.b1"} {
		if _, err := kv.Put(ctx, k, []byte(`{"state":"sent"}`)); err != nil {
			t.Fatal(err)
		}
	}
	sup, err := wjs.KeyValue(ctx, "MAIL_SUPPRESSION")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sup.Put(ctx, "ops.k1", []byte(`{"address":"a@example.com","suppressed":true}`)); err != nil {
		t.Fatal(err)
	}
	for _, subj := range []string{"$KV.MAIL_JOB_STATE.billing.x", "$KV.MAIL_SUPPRESSION.billing.x"} {
		for _, roll := range []string{"all", "sub", "ALL"} {
			m := &nats.Msg{Subject: subj, Data: []byte(`{}`), Header: nats.Header{"Nats-Rollup": []string{roll}}}
			r, err := cnc.RequestMsg(m, minWait)
			if err != nil {
				t.Fatalf("%s rollup %s: %v", subj, roll, err)
			}
			if !strings.Contains(string(r.Data), "10111") {
				t.Errorf("the console's publish on %s with Nats-Rollup: %s answered %s, want refused (10111)", subj, roll, r.Data)
			}
		}
	}
	if _, err := sup.Get(ctx, "ops.k1"); err != nil {
		t.Errorf("ops' suppressed address after the console's rollups: %v", err)
	}
	for _, k := range []string{"ops.o1", "ops.o2", "billing.b1"} {
		if _, err := kv.Get(ctx, k); err != nil {
			t.Errorf("state %s after the console's rollups: %v", k, err)
		}
	}
	// A purge's delete of one state still works, and leaves the others.
	en, err := kv.Get(ctx, "ops.o1")
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "ops.o1", jetstream.LastRevision(en.Revision())); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "ops.o1"); err == nil {
		t.Error("ops.o1 still there after its delete")
	}
	if _, err := kv.Get(ctx, "ops.o2"); err != nil {
		t.Errorf("ops.o2 after ops.o1's delete: %v", err)
	}
}
