package queue

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestBrowseDirect reads a stream by batch direct gets: across batches
// (more messages than one batch, more bytes than one batch's max_bytes),
// with filters, start sequences and times, over deleted messages, and stops
// when told to.
func TestBrowseDirect(t *testing.T) {
	js, _ := startJS(t)
	ctx := t.Context()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, AllowDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1300
	big := bytes.Repeat([]byte("x"), 300<<10) // 40 of them: 12 MB, three batches' max_bytes
	var mid time.Time
	for i := 1; i <= n; i++ {
		if i == n/2 {
			mid = time.Now()
			time.Sleep(2 * time.Millisecond) // a timestamp strictly between two messages
		}
		m := &nats.Msg{Subject: []string{"t.a", "t.b"}[i%2], Header: nats.Header{"I": {fmt.Sprint(i)}}, Data: []byte(fmt.Sprint(i))}
		if i%25 == 0 && i <= 1000 {
			m.Data = append(big[:len(big):len(big)], m.Data...)
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, seq := range []uint64{3, 4, 5, 777} {
		if err := s.DeleteMsg(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	deleted := func(seq uint64) bool { return seq == 3 || seq == 4 || seq == 5 || seq == 777 }
	read := func(t *testing.T, o BrowseOptions, stop uint64) []uint64 {
		t.Helper()
		var seqs []uint64
		err := BrowseDirect(ctx, js, "T", o, func(m jetstream.Msg) (bool, error) {
			md, err := m.Metadata()
			if err != nil {
				return false, err
			}
			i := fmt.Sprint(md.Sequence.Stream)
			if m.Headers().Get("I") != i || !strings.HasSuffix(string(m.Data()), i) || m.Subject() != []string{"t.a", "t.b"}[md.Sequence.Stream%2] {
				t.Fatalf("message %d: subject %q header %q", md.Sequence.Stream, m.Subject(), m.Headers().Get("I"))
			}
			if m.Headers().Get(jetstream.SequenceHeader) != "" || md.Timestamp.IsZero() {
				t.Fatalf("message %d: direct get headers left in, or no time", md.Sequence.Stream)
			}
			if m.Ack() == nil {
				t.Fatal("a direct-get message acknowledged")
			}
			seqs = append(seqs, md.Sequence.Stream)
			return md.Sequence.Stream != stop, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return seqs
	}
	want := func(from uint64, ok func(uint64) bool) []uint64 {
		var w []uint64
		for seq := from; seq <= n; seq++ {
			if !deleted(seq) && ok(seq) {
				w = append(w, seq)
			}
		}
		return w
	}
	all := func(uint64) bool { return true }
	check := func(t *testing.T, got, want []uint64) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("read %d messages, want %d (first %v, want %v)", len(got), len(want), got[:min(5, len(got))], want[:min(5, len(want))])
		}
	}
	t.Run("everything, in order", func(t *testing.T) { check(t, read(t, BrowseOptions{}, 0), want(1, all)) })
	t.Run("filter", func(t *testing.T) {
		check(t, read(t, BrowseOptions{Filter: "t.b"}, 0), want(1, func(s uint64) bool { return s%2 == 1 }))
	})
	t.Run("start sequence", func(t *testing.T) { check(t, read(t, BrowseOptions{StartSeq: 600}, 0), want(600, all)) })
	t.Run("since", func(t *testing.T) {
		check(t, read(t, BrowseOptions{Since: mid, Filter: "t.a"}, 0), want(n/2, func(s uint64) bool { return s%2 == 0 }))
	})
	t.Run("stops when fn says so", func(t *testing.T) {
		check(t, read(t, BrowseOptions{}, 900), want(1, func(s uint64) bool { return s <= 900 }))
	})
	t.Run("nothing matches", func(t *testing.T) {
		check(t, read(t, BrowseOptions{Filter: "t.none"}, 0), nil)
		check(t, read(t, BrowseOptions{StartSeq: n + 1}, 0), nil)
		check(t, read(t, BrowseOptions{Since: time.Now().Add(time.Hour)}, 0), nil)
	})
	t.Run("a stream without allow_direct is a clear error, not a hang", func(t *testing.T) {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "U", Subjects: []string{"u.>"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, "u.a", nil); err != nil {
			t.Fatal(err)
		}
		err := BrowseDirect(ctx, js, "U", BrowseOptions{}, func(jetstream.Msg) (bool, error) { return true, nil })
		if err == nil || !strings.Contains(err.Error(), "U") {
			t.Fatalf("err = %v, want an error naming the stream", err)
		}
	})
}

// TestKVScan lists a bucket's live keys and latest values without a
// consumer: deleted and purged keys are left out, a key's last revision
// wins, a filter narrows.
func TestKVScan(t *testing.T) {
	js, _ := startJS(t)
	ctx := t.Context()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "B", History: 5})
	if err != nil {
		t.Fatal(err)
	}
	for _, kvp := range [][2]string{{"billing.a", "1"}, {"billing.b", "1"}, {"ops.a", "1"}, {"billing.a", "2"}, {"billing.c", "1"}, {"ops.b", "1"}} {
		if _, err := kv.Put(ctx, kvp[0], []byte(kvp[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "billing.b"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "ops.b"); err != nil {
		t.Fatal(err)
	}
	str := func(es []KVEntry) string {
		var b strings.Builder
		for _, e := range es {
			fmt.Fprintf(&b, "%s=%s ", e.Key, e.Value)
		}
		return b.String()
	}
	es, err := KVScan(ctx, js, "B", "")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := str(es), "billing.a=2 billing.c=1 ops.a=1 "; got != want {
		t.Errorf("all: %q, want %q", got, want)
	}
	es, err = KVScan(ctx, js, "B", "billing.>")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := str(es), "billing.a=2 billing.c=1 "; got != want {
		t.Errorf("billing.>: %q, want %q", got, want)
	}
}

// TestReadsCreateNoConsumer: every read support and the console make
// (dead-letter pages, counts, finds, status events, audit, the recipient
// ledger) leaves no consumer behind and needs none: the streams' consumer
// counts stay 0 even while they run (checked after: ephemeral consumers of
// the old Browse were deleted on return, so the counts are read by a
// server-side advisory subscription instead).
func TestReadsCreateNoConsumer(t *testing.T) {
	b := setup(t)
	created, err := b.nc.SubscribeSync("$JS.EVENT.ADVISORY.CONSUMER.CREATED.>")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		id := fmt.Sprintf("nc%d", i)
		if err := b.q.DLQ.Put(b.ctx, contract.DeadLetter{JobID: id, Profile: "billing", Reason: contract.ReasonAccessDenied, Body: deadJob(id)}); err != nil {
			t.Fatal(err)
		}
		if err := b.q.Audit.Append(b.ctx, AuditRecord{Profile: "billing", JobID: id, Actor: "t", Action: "purge"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.q.DLQ.Page(b.ctx, DLQQuery{Limit: 2}); err != nil {
		t.Fatal(err)
	}
	if c, err := b.q.DLQ.Counts(b.ctx); err != nil || c.Total != 5 {
		t.Fatalf("counts %+v, %v", c, err)
	}
	if _, err := b.q.DLQ.Find(b.ctx, "", "nc3"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.q.DLQ.FindNear(b.ctx, "billing", "nc2", time.Now()); err != nil {
		t.Fatal(err)
	}
	if recs, err := b.q.Audit.ForJobSince(b.ctx, "nc1", time.Time{}); err != nil || len(recs) != 1 {
		t.Fatalf("audit %v, %v", recs, err)
	}
	if err := b.q.Events.EventsSince(b.ctx, time.Time{}, func(contract.Event) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if _, err := b.q.Pacing.Mailboxes(b.ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if m, err := created.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("a read created a consumer: %s", m.Subject)
	}
}

// TestProvisionSwitchesOnAllowDirect: MAIL_STATUS, MAIL_DLQ and MAIL_AUDIT
// created by an older release without allow_direct get it in place.
func TestProvisionSwitchesOnAllowDirect(t *testing.T) {
	js, _ := startJS(t)
	ctx := t.Context()
	cfg := Config{Profiles: []string{"billing"}}
	names := []string{contract.StreamStatus, contract.StreamDLQ, contract.StreamAudit}
	for _, sc := range streamConfigs(cfg.WithDefaults()) {
		for _, n := range names {
			if sc.Name == n {
				sc.AllowDirect = false
				if _, err := js.CreateStream(ctx, sc); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := Provision(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		s, err := js.Stream(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if !s.CachedInfo().Config.AllowDirect {
			t.Errorf("%s: allow_direct still off after Provision", n)
		}
	}
}
