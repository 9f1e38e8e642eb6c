package queue

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

func TestDLQPageCountsFind(t *testing.T) {
	b := setup(t)
	d := b.q.DLQ
	reasons := []contract.Reason{contract.ReasonMailboxNotFound, contract.ReasonAccessDenied, contract.ReasonInvalidJob}
	for i := range 30 {
		id := fmt.Sprintf("p%02d", i)
		body := deadJob(id)
		if i%10 == 0 {
			body = []byte(`{"id":"` + id + `","from":"Other <Other@contoso.com>","to":["a@x.com"]}`)
		}
		err := d.Put(b.ctx, contract.DeadLetter{JobID: id, Profile: []string{"billing", "ops"}[i%2], Reason: reasons[i%3], Body: body})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Run("paging walks every record once", func(t *testing.T) {
		seen := map[string]bool{}
		var after uint64
		pages := 0
		for {
			p, err := d.Page(b.ctx, DLQQuery{After: after, Limit: 7})
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, dl := range p.Items {
				if seen[dl.JobID] || len(dl.Body) == 0 {
					t.Fatalf("record %s seen twice or without body", dl.JobID)
				}
				seen[dl.JobID] = true
			}
			if p.Next == 0 {
				break
			}
			after = p.Next
		}
		if len(seen) != 30 || pages != 5 {
			t.Errorf("saw %d records in %d pages, want 30 in 5", len(seen), pages)
		}
	})
	t.Run("filters", func(t *testing.T) {
		for _, tt := range []struct {
			q    DLQQuery
			want int
		}{
			{DLQQuery{Profile: "billing"}, 15},
			{DLQQuery{Reason: contract.ReasonAccessDenied}, 10},
			{DLQQuery{Profile: "ops", Reason: contract.ReasonAccessDenied}, 5},
			{DLQQuery{From: "other@CONTOSO.com"}, 3},
			{DLQQuery{Since: time.Now().Add(time.Hour)}, 0},
			{DLQQuery{Until: time.Now().Add(-time.Hour)}, 0},
		} {
			p, err := d.Page(b.ctx, DLQQuery{Profile: tt.q.Profile, Reason: tt.q.Reason, From: tt.q.From, Since: tt.q.Since, Until: tt.q.Until, Limit: 100})
			if err != nil || len(p.Items) != tt.want {
				t.Errorf("Page(%+v) = %d, %v; want %d", tt.q, len(p.Items), err, tt.want)
			}
		}
	})
	t.Run("counts", func(t *testing.T) {
		c, err := d.Counts(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c.Total != 30 || c.ByProfile["billing"][contract.ReasonMailboxNotFound] != 5 || c.ByProfile["ops"][contract.ReasonAccessDenied] != 5 {
			t.Errorf("counts %+v", c)
		}
		// Appended records are added to the previous counts; a deletion
		// makes a full recount.
		for _, id := range []string{"n1", "n2"} {
			if err := d.Put(b.ctx, contract.DeadLetter{JobID: id, Profile: "ops", Reason: contract.ReasonExpired, Body: deadJob(id)}); err != nil {
				t.Fatal(err)
			}
		}
		up, err := d.Recount(b.ctx, &c)
		if err != nil || up.Total != 32 || up.ByProfile["ops"][contract.ReasonExpired] != 2 || c.Total != 30 {
			t.Fatalf("recount after appends: %+v, %v (prev %d)", up, err, c.Total)
		}
		n1, err := d.Find(b.ctx, "ops", "n1")
		if err != nil {
			t.Fatal(err)
		}
		if err := d.PurgeRecord(b.ctx, n1.Seq); err != nil {
			t.Fatal(err)
		}
		up2, err := d.Recount(b.ctx, &up)
		if err != nil || up2.Total != 31 || up2.ByProfile["ops"][contract.ReasonExpired] != 1 {
			t.Fatalf("recount after a delete: %+v, %v", up2, err)
		}
		if err := d.PurgeRecord(b.ctx, up2.LastSeq); err != nil { // n2: back to the 30 the other subtests expect
			t.Fatal(err)
		}
	})
	t.Run("find near a time", func(t *testing.T) {
		dl, err := d.FindNear(b.ctx, "billing", "p04", time.Now())
		if err != nil || dl.JobID != "p04" {
			t.Fatalf("FindNear = %+v, %v", dl, err)
		}
		if _, err := d.FindNear(b.ctx, "billing", "nobody", time.Now()); !errors.Is(err, ErrNotInDLQ) {
			t.Fatalf("FindNear(nobody) = %v", err)
		}
	})
	t.Run("find and replay a record", func(t *testing.T) {
		dl, err := d.Find(b.ctx, "", "p07")
		if err != nil || dl.JobID != "p07" || dl.Profile != "ops" || len(dl.Body) == 0 {
			t.Fatalf("Find = %+v, %v", dl, err)
		}
		if err := d.ReplayRecord(b.ctx, dl, ReplayOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Find(b.ctx, "ops", "p07"); err == nil {
			t.Error("the replayed record is still there")
		}
	})
}

func TestAudit(t *testing.T) {
	b := setup(t)
	a := b.q.Audit
	for _, r := range []AuditRecord{
		{Actor: "ann@contoso.com", Via: "console", Action: AuditReveal, Profile: "billing", JobID: "j1"},
		{Actor: "bob", Via: "cli", Action: AuditReplay, Profile: "billing", JobID: "j2"},
		{Actor: "ann@contoso.com", Via: "console", Action: AuditReplay, Profile: "billing", JobID: "j1", Detail: "line1\nline2"},
		{Actor: "ann@contoso.com", Via: "console", Action: AuditPurge, Profile: "hr", Count: 4, Detail: "reason=expired"},
	} {
		if err := a.Append(b.ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := a.ForJobSince(b.ctx, "j1", time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Action != AuditReveal || got[1].Action != AuditReplay || got[1].Detail != "line1 line2" || got[0].At.IsZero() {
		t.Errorf("ForJob(j1) = %+v", got)
	}
	for _, bad := range []AuditRecord{
		{Actor: "a", Action: AuditReplay, Profile: "bad.profile"},
		{Actor: "a", Action: AuditReplay, Profile: "p", JobID: "bad id"},
		{Action: AuditReplay, Profile: "p"},
	} {
		if err := a.Append(b.ctx, bad); err == nil {
			t.Errorf("Append(%+v) accepted", bad)
		}
	}
}

func TestReplayMatching(t *testing.T) {
	b := setup(t)
	d := b.q.DLQ
	put := func(id string, reason contract.Reason, gen int) {
		t.Helper()
		if err := d.Put(b.ctx, contract.DeadLetter{JobID: id, Profile: "billing", Reason: reason, Generation: gen, Body: deadJob(id)}); err != nil {
			t.Fatal(err)
		}
	}
	put("r1", contract.ReasonAccessDenied, 0)
	put("keep", contract.ReasonExpired, 0)
	put("r2", contract.ReasonAccessDenied, 0)
	put("r1", contract.ReasonAuthFailed, 1) // a later failure of r1, another reason
	var audited []string
	n, err := d.ReplayMatching(b.ctx, DLQQuery{Profile: "billing", Reason: contract.ReasonAccessDenied}, func(dl contract.DeadLetter) error {
		audited = append(audited, dl.JobID)
		return nil
	})
	if err != nil || n != 2 || len(audited) != 2 {
		t.Fatalf("ReplayMatching = %d, %v (audited %v)", n, err, audited)
	}
	left, err := d.List(b.ctx, DLQQuery{})
	if err != nil {
		t.Fatal(err)
	}
	// r1's newer record (auth_failed, seq after the replayed one) stays; r2
	// and r1's replayed record are gone; keep stays.
	got := map[string]contract.Reason{}
	for _, dl := range left {
		got[dl.JobID] = dl.Reason
	}
	if len(left) != 2 || got["keep"] != contract.ReasonExpired || got["r1"] != contract.ReasonAuthFailed {
		t.Fatalf("left %v", got)
	}
	for _, id := range []string{"r1", "r2"} {
		st, _, err := b.q.States.Get(b.ctx, "billing", id)
		if err != nil || st.State != contract.StateReplayed {
			t.Errorf("state of %s = %+v, %v", id, st, err)
		}
	}
	// The callback's error stops the replay before the record.
	put("r3", contract.ReasonAccessDenied, 0)
	n, err = d.ReplayMatching(b.ctx, DLQQuery{Reason: contract.ReasonAccessDenied}, func(contract.DeadLetter) error { return errors.New("audit down") })
	if err == nil || n != 0 {
		t.Fatalf("with a failing callback: %d, %v", n, err)
	}
	if _, err := d.Find(b.ctx, "billing", "r3"); err != nil {
		t.Fatalf("r3 was touched: %v", err)
	}
}
