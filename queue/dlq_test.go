package queue

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go"
)

func deadJob(id string) []byte {
	return []byte(`{"id":"` + id + `","from":"billing@contoso.com","to":["a@x.com"],"subject":"Invoice ` + id + `","text":"t","metadata":{"order":"` + id + `"}}`)
}

func TestDLQ(t *testing.T) {
	b := setup(t)
	d := b.q.DLQ
	failedAt := time.Date(2026, 3, 1, 10, 0, 0, 123, time.UTC)
	put := func(id, profile string, reason contract.Reason, gen int) {
		t.Helper()
		err := d.Put(b.ctx, contract.DeadLetter{JobID: id, Profile: profile, Reason: reason, Error: "Graph said no\r\nreally",
			Attempts: 3, FailedAt: failedAt, GraphRequestID: "req-" + id, Generation: gen, Body: deadJob(id),
			GraphCalls: []contract.GraphCall{{Status: 401, RequestID: "req0-" + id, ClientRequestID: "c0", Date: "2026-03-01T10:00:00Z"},
				{Status: 404, RequestID: "req-" + id, ClientRequestID: "c1"}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	put("j1", "billing", contract.ReasonMailboxNotFound, 0)
	put("j1", "billing", contract.ReasonMailboxNotFound, 0) // a redelivered failure: stored once
	put("j2", "billing", contract.ReasonAccessDenied, 0)
	put("j3", "hr", contract.ReasonMailboxNotFound, 0)

	all, err := d.List(b.ctx, DLQQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 {
		t.Fatalf("List = %d records, want 3", len(all))
	}
	j1 := all[0]
	if j1.JobID != "j1" || j1.Profile != "billing" || j1.Reason != contract.ReasonMailboxNotFound || j1.Attempts != 3 ||
		!j1.FailedAt.Equal(failedAt) || j1.GraphRequestID != "req-j1" || j1.Error != "Graph said no  really" ||
		string(j1.Body) != string(deadJob("j1")) || j1.From != "billing@contoso.com" || j1.Subject != "Invoice j1" || j1.Seq == 0 {
		t.Errorf("record %+v", j1)
	}
	if c := j1.GraphCalls; len(c) != 2 || c[0] != (contract.GraphCall{Status: 401, RequestID: "req0-j1", ClientRequestID: "c0", Date: "2026-03-01T10:00:00Z"}) ||
		c[1] != (contract.GraphCall{Status: 404, RequestID: "req-j1", ClientRequestID: "c1"}) {
		t.Errorf("graph calls %+v: want both calls of the last attempt back", c)
	}
	for _, tt := range []struct {
		f    DLQQuery
		want int
	}{
		{DLQQuery{Profile: "billing"}, 2},
		{DLQQuery{Profile: "hr"}, 1},
		{DLQQuery{Reason: contract.ReasonMailboxNotFound}, 2},
		{DLQQuery{Profile: "billing", Reason: contract.ReasonAccessDenied}, 1},
		{DLQQuery{JobID: "j3"}, 1},
		{DLQQuery{Profile: "nobody"}, 0},
	} {
		got, err := d.List(b.ctx, tt.f)
		if err != nil || len(got) != tt.want {
			t.Errorf("List(%+v) = %d, %v; want %d", tt.f, len(got), err, tt.want)
		}
	}
	if _, err := d.List(b.ctx, DLQQuery{Profile: "a.>"}); err == nil {
		t.Error("List accepted a wildcard profile")
	}
	if dl, err := d.Get(b.ctx, "", "j2"); err != nil || dl.Reason != contract.ReasonAccessDenied {
		t.Errorf("Get j2 = %+v, %v", dl, err)
	}
	if _, err := d.Get(b.ctx, "", "nope"); !errors.Is(err, ErrNotInDLQ) {
		t.Errorf("Get missing = %v", err)
	}
	if err := d.Put(b.ctx, contract.DeadLetter{JobID: "j9", Profile: "billing", Reason: "nonsense"}); err == nil {
		t.Error("Put accepted an unknown reason")
	}

	// Replay j1: state reset, body re-published with headers, replayed event, record gone.
	if _, err := b.q.States.Create(b.ctx, contract.JobState{JobID: "j1", Profile: "billing", State: contract.StateDeadLettered, Attempts: 3, Ambiguous: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Replay(b.ctx, "", "j1", ReplayOptions{}); err != nil {
		t.Fatal(err)
	}
	st, _, err := b.q.States.Get(b.ctx, "billing", "j1")
	if err != nil || st.State != contract.StateReplayed || st.Attempts != 0 || st.Ambiguous || st.Generation != 1 {
		t.Errorf("state after replay %+v, %v", st, err)
	}
	jobs, _ := b.js.Stream(b.ctx, contract.JobsStream("billing"))
	m, err := jobs.GetLastMsgForSubject(b.ctx, contract.JobSubject("billing"))
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != string(deadJob("j1")) || m.Header.Get(contract.HeaderJobID) != "j1" || m.Header.Get(contract.HeaderReplay) != "1" || !strings.HasPrefix(m.Header.Get(contract.HeaderMsgID), "replay.billing.j1.") {
		t.Errorf("replayed message %q headers %v", m.Data, m.Header)
	}
	h, _ := b.q.Events.History(b.ctx, "billing", "j1")
	if len(h) != 1 || h[0].Event != contract.EventReplayed || h[0].Profile != "billing" || h[0].Metadata["order"] != "j1" {
		t.Errorf("events %+v", h)
	}
	if _, err := d.Get(b.ctx, "", "j1"); !errors.Is(err, ErrNotInDLQ) {
		t.Errorf("j1 still in the DLQ: %v", err)
	}

	// A failure recorded again within the duplicate window is not stored twice.
	put("j1", "billing", contract.ReasonMailboxNotFound, 0)
	if _, err := d.Get(b.ctx, "", "j1"); !errors.Is(err, ErrNotInDLQ) {
		t.Errorf("re-put of generation 0 stored a record: %v", err)
	}
	// Replay with a fixed body.
	fixed := []byte(`{"from":"billing@contoso.com","to":["fixed@x.com"],"text":"t"}`)
	if _, err := d.Replay(b.ctx, "", "j2", ReplayOptions{Body: []byte(`{"from":"x"}`)}); err == nil {
		t.Error("replay accepted an invalid fixed body")
	}
	if _, err := d.Replay(b.ctx, "", "j2", ReplayOptions{Body: []byte(`{"id":"other","from":"a@x.com","to":["b@x.com"],"text":"t"}`)}); err == nil {
		t.Error("replay accepted a fixed body with another id")
	}
	if _, err := d.Replay(b.ctx, "", "j2", ReplayOptions{Body: fixed}); err != nil {
		t.Fatal(err)
	}
	m, _ = jobs.GetLastMsgForSubject(b.ctx, contract.JobSubject("billing"))
	if string(m.Data) != string(fixed) || m.Header.Get(contract.HeaderJobID) != "j2" {
		t.Errorf("fixed replay %q %v", m.Data, m.Header)
	}
	if id := contract.ResolveJobID(mustDecode(t, m.Data), m.Header.Get, m.Sequence); id != "j2" {
		t.Errorf("replayed job resolves to id %q", id)
	}

	// ReplayAll and Purge.
	for i := 0; i < 3; i++ {
		put("r"+strconv.Itoa(i), "ops", contract.ReasonAttemptsExhausted, 0)
	}
	put("p1", "ops", contract.ReasonExpired, 0)
	n, err := d.ReplayAll(b.ctx, DLQQuery{Profile: "ops", Reason: contract.ReasonAttemptsExhausted})
	if err != nil || n != 3 {
		t.Fatalf("ReplayAll = %d, %v", n, err)
	}
	if left, _ := d.List(b.ctx, DLQQuery{Profile: "ops"}); len(left) != 1 || left[0].JobID != "p1" {
		t.Errorf("after ReplayAll: %+v", left)
	}
	n, err = d.Purge(b.ctx, DLQQuery{Reason: contract.ReasonExpired})
	if err != nil || n != 1 {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	n, err = d.Purge(b.ctx, DLQQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := d.List(b.ctx, DLQQuery{}); len(left) != 0 {
		t.Errorf("after Purge(all) = %d removed, %d left", n, len(left))
	}
}

func mustDecode(t *testing.T, b []byte) *contract.Job {
	t.Helper()
	j, err := contract.DecodeJob(b)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestDLQReplayCrashSafe re-runs a replay after a crash at each step.
func TestDLQReplayCrashSafe(t *testing.T) {
	b := setup(t)
	d := b.q.DLQ
	jobs, _ := b.js.Stream(b.ctx, contract.JobsStream("billing"))
	msgs := func() uint64 {
		info, err := jobs.Info(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	deadLetter := func(id string) {
		t.Helper()
		if err := d.Put(b.ctx, contract.DeadLetter{JobID: id, Profile: "billing", Reason: contract.ReasonInternal, Body: deadJob(id)}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.q.States.Create(b.ctx, contract.JobState{JobID: id, Profile: "billing", State: contract.StateDeadLettered, Attempts: 8}); err != nil {
			t.Fatal(err)
		}
	}
	// advance moves a job's state on as a worker would: a compare-and-set
	// on the revision it read.
	advance := func(st contract.JobState) {
		t.Helper()
		_, rev, err := b.q.States.Latest(b.ctx, st.Profile, st.JobID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.q.States.Update(b.ctx, st, rev); err != nil {
			t.Fatal(err)
		}
	}
	republish := func(id string) {
		t.Helper()
		m := nats.NewMsg(contract.JobSubject("billing"))
		m.Data = deadJob(id)
		m.Header.Set(contract.HeaderJobID, id)
		m.Header.Set(contract.HeaderReplay, "1")
		dl, err := d.Get(b.ctx, "billing", id)
		if err != nil {
			t.Fatal(err)
		}
		m.Header.Set(contract.HeaderMsgID, replayMsgID(dl, 1))
		if _, err := b.js.PublishMsg(b.ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("after state reset", func(t *testing.T) {
		deadLetter("c1")
		advance(contract.JobState{JobID: "c1", Profile: "billing", State: contract.StateReplayed, Generation: 1})
		n := msgs()
		if _, err := d.Replay(b.ctx, "", "c1", ReplayOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := msgs(); got != n+1 {
			t.Errorf("jobs %d -> %d, want one publish", n, got)
		}
	})
	t.Run("after publish", func(t *testing.T) {
		deadLetter("c2")
		advance(contract.JobState{JobID: "c2", Profile: "billing", State: contract.StateReplayed, Generation: 1})
		republish("c2")
		n := msgs()
		if _, err := d.Replay(b.ctx, "", "c2", ReplayOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := msgs(); got != n {
			t.Errorf("jobs %d -> %d, want the re-publish dropped as a duplicate", n, got)
		}
		if _, err := d.Get(b.ctx, "", "c2"); !errors.Is(err, ErrNotInDLQ) {
			t.Errorf("record left: %v", err)
		}
		if h, _ := b.q.Events.History(b.ctx, "billing", "c2"); len(h) != 1 {
			t.Errorf("%d replayed events, want 1", len(h))
		}
	})
	t.Run("after the worker took the replayed job", func(t *testing.T) {
		deadLetter("c3")
		republish("c3")
		advance(contract.JobState{JobID: "c3", Profile: "billing", State: contract.StateSending, Attempts: 1, Generation: 1})
		n := msgs()
		if _, err := d.Replay(b.ctx, "", "c3", ReplayOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := msgs(); got != n {
			t.Errorf("jobs %d -> %d, want no publish", n, got)
		}
		if st, _, _ := b.q.States.Get(b.ctx, "billing", "c3"); st.State != contract.StateSending || st.Attempts != 1 {
			t.Errorf("state overwritten: %+v", st)
		}
		if _, err := d.Get(b.ctx, "", "c3"); !errors.Is(err, ErrNotInDLQ) {
			t.Errorf("record left: %v", err)
		}
	})
	t.Run("dead-lettered again after a replay", func(t *testing.T) {
		deadLetter("c4")
		if _, err := d.Replay(b.ctx, "", "c4", ReplayOptions{}); err != nil {
			t.Fatal(err)
		}
		// The worker fails it again at generation 1.
		if err := d.Put(b.ctx, contract.DeadLetter{JobID: "c4", Profile: "billing", Reason: contract.ReasonInternal, Generation: 1, Body: deadJob("c4")}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Replay(b.ctx, "", "c4", ReplayOptions{}); err != nil {
			t.Fatal(err)
		}
		st, _, _ := b.q.States.Get(b.ctx, "billing", "c4")
		if st.Generation != 2 || st.State != contract.StateReplayed {
			t.Errorf("state %+v, want generation 2", st)
		}
		m, _ := jobs.GetLastMsgForSubject(b.ctx, contract.JobSubject("billing"))
		if !strings.HasPrefix(m.Header.Get(contract.HeaderMsgID), "replay.billing.c4.") {
			t.Errorf("Nats-Msg-Id %q", m.Header.Get(contract.HeaderMsgID))
		}
	})
}
