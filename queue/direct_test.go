package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
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

// staleReplica answers $JS.API.DIRECT.GET.<stream> in place of the server's
// replicas (the stream has no allow_direct, so nothing else does), from the
// messages the leader holds (read by STREAM.MSG.GET), as answer says: for
// the n-th request (from 1) it returns the last sequence it holds (a
// follower that has applied only that far) and whether it stops answering
// after its first message (a node frozen or killed mid-batch).
func staleReplica(t *testing.T, nc *nats.Conn, js jetstream.JetStream, stream string, answer func(n int) (last uint64, freeze bool)) {
	t.Helper()
	s, err := js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	sub, err := nc.Subscribe("$JS.API.DIRECT.GET."+stream, func(req *nats.Msg) {
		var r directGetRequest
		if err := json.Unmarshal(req.Data, &r); err != nil {
			t.Errorf("stale replica: %v", err)
			return
		}
		mu.Lock()
		n++
		last, freeze := answer(n)
		mu.Unlock()
		sent := 0
		seq := max(r.Seq, 1)
		for ; seq <= last && sent < r.Batch; seq++ {
			m, err := s.GetMsg(context.Background(), seq)
			if err != nil || r.NextFor != ">" && r.NextFor != m.Subject {
				continue // deleted, or another subject
			}
			h := nats.Header{}
			maps.Copy(h, m.Header)
			h.Set(jetstream.StreamHeader, stream)
			h.Set(jetstream.SubjectHeader, m.Subject)
			h.Set(jetstream.SequenceHeader, fmt.Sprint(m.Sequence))
			h.Set(jetstream.TimeStampHeaer, m.Time.UTC().Format(time.RFC3339Nano))
			h.Set("Nats-Num-Pending", fmt.Sprint(last-seq))
			if err := nc.PublishMsg(&nats.Msg{Subject: req.Reply, Header: h, Data: m.Data}); err != nil {
				t.Errorf("stale replica: %v", err)
			}
			sent++
			if freeze {
				return // no more, no end of batch
			}
		}
		h := nats.Header{"Status": {"204"}, "Description": {"EOB"}, "Nats-Num-Pending": {fmt.Sprint(last - min(seq-1, last))}}
		if sent == 0 {
			h = nats.Header{"Status": {"404"}, "Description": {"No Results"}}
		}
		if err := nc.PublishMsg(&nats.Msg{Subject: req.Reply, Header: h}); err != nil {
			t.Errorf("stale replica: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

// TestBrowseDirectAcrossLaggingReplicas: in a replicated stream a direct get
// may be answered by a follower that lags behind the last acked write, or by
// a node that is frozen or killed mid-batch (the cluster fault suite does
// both). BrowseDirect still reads every message stored before it began, each
// once and in order: it asks again from the message after the last one
// received when an answer stops, and ends only when the stream leader
// (STREAM.MSG.GET, leader only) has nothing more.
func TestBrowseDirectAcrossLaggingReplicas(t *testing.T) {
	js, nc := startJS(t)
	ctx := t.Context()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "L", Subjects: []string{"l.>"}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1200 // three batches
	for i := 1; i <= n; i++ {
		if _, err := js.Publish(ctx, []string{"l.a", "l.b"}[i%2], []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteMsg(ctx, 7); err != nil {
		t.Fatal(err)
	}
	read := func(t *testing.T, o BrowseOptions) []uint64 {
		t.Helper()
		var seqs []uint64
		err := BrowseDirect(ctx, js, "L", o, func(m jetstream.Msg) (bool, error) {
			md, _ := m.Metadata()
			if string(m.Data()) != fmt.Sprint(md.Sequence.Stream) || m.Subject() != []string{"l.a", "l.b"}[md.Sequence.Stream%2] {
				t.Errorf("message %d: subject %q body %q", md.Sequence.Stream, m.Subject(), m.Data())
			}
			seqs = append(seqs, md.Sequence.Stream)
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return seqs
	}
	check := func(t *testing.T, got []uint64, from uint64, step uint64) {
		t.Helper()
		var want []uint64
		for seq := from; seq <= n; seq += step {
			if seq != 7 {
				want = append(want, seq)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("read %d messages (%v…), want %d", len(got), got[:min(len(got), 5)], len(want))
		}
	}
	t.Run("a follower behind the leader", func(t *testing.T) {
		// Every answer comes from a follower that holds the first 1,000
		// messages: without the leader's word the scan ends at 1,000.
		staleReplica(t, nc, js, "L", func(int) (uint64, bool) { return 1000, false })
		check(t, read(t, BrowseOptions{}), 1, 1)
		check(t, read(t, BrowseOptions{Filter: "l.b"}), 1, 2)
		check(t, read(t, BrowseOptions{StartSeq: 990}), 990, 1)
		check(t, read(t, BrowseOptions{Since: time.Now().Add(-time.Hour)}), 1, 1)
	})
	t.Run("a follower far behind", func(t *testing.T) {
		// A follower that restarted with an empty store answers 404.
		staleReplica(t, nc, js, "L", func(int) (uint64, bool) { return 0, false })
		check(t, read(t, BrowseOptions{StartSeq: 1195}), 1195, 1)
	})
	t.Run("a node frozen mid-batch", func(t *testing.T) {
		// The second request's answer stops after one message (SIGSTOP,
		// kill -9): the scan asks again from the next one.
		staleReplica(t, nc, js, "L", func(i int) (uint64, bool) { return n, i == 2 })
		check(t, read(t, BrowseOptions{}), 1, 1)
	})
}
