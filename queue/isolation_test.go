package queue

import (
	"bytes"
	"errors"
	"strconv"
	"testing"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestAttachmentsBelongToAProfile: an object stored for ops is not found when
// looked up for billing, whatever the ref.
func TestAttachmentsBelongToAProfile(t *testing.T) {
	b := setup(t)
	a := b.q.Attachments
	ref, err := a.Put(b.ctx, "ops", "payroll.xlsx", []byte("salaries"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(b.ctx, "billing", ref); !errors.Is(err, contract.ErrNoAttachment) {
		t.Fatalf("billing Get of ops' object = %v, want contract.ErrNoAttachment", err)
	}
	if _, err := a.Size(b.ctx, "billing", ref); !errors.Is(err, contract.ErrNoAttachment) {
		t.Fatalf("billing Size of ops' object = %v, want contract.ErrNoAttachment", err)
	}
	if got, err := a.Get(b.ctx, "ops", ref); err != nil || string(got) != "salaries" {
		t.Fatalf("ops Get = %q, %v", got, err)
	}
	// A profile without a bucket has no objects at all.
	if _, err := a.Get(b.ctx, "nobody", ref); !errors.Is(err, contract.ErrNoAttachment) {
		t.Fatalf("Get for an unprovisioned profile = %v", err)
	}
}

// TestDLQRecordAlwaysFits: a job just under the server's max_payload is
// dead-lettered with its body cut to fit (and marked), not refused by the
// server; it cannot be replayed as is.
func TestDLQRecordAlwaysFits(t *testing.T) {
	b := setup(t)
	limit := int(b.nc.MaxPayload())
	body := bytes.Repeat([]byte("x"), limit-200)
	dl := contract.DeadLetter{JobID: "big", Profile: "billing", Reason: contract.ReasonInternal, Error: string(bytes.Repeat([]byte("e"), 2000)), Body: body}
	if err := b.q.DLQ.Put(b.ctx, dl); err != nil {
		t.Fatalf("Put of a record near max_payload: %v", err)
	}
	got, err := b.q.DLQ.Get(b.ctx, "billing", "big")
	if err != nil {
		t.Fatal(err)
	}
	if got.Truncated != len(body) || len(got.Body) >= len(body) || !bytes.HasPrefix(body, got.Body) {
		t.Fatalf("record: truncated %d, body %d bytes; want truncated %d and a prefix", got.Truncated, len(got.Body), len(body))
	}
	if _, err := b.q.DLQ.Replay(b.ctx, "billing", "big", ReplayOptions{}); !errors.Is(err, ErrTruncated) {
		t.Fatalf("Replay of a truncated record = %v, want ErrTruncated", err)
	}
	// A small one is kept whole.
	if err := b.q.DLQ.Put(b.ctx, contract.DeadLetter{JobID: "small", Profile: "billing", Reason: contract.ReasonInternal, Body: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.q.DLQ.Get(b.ctx, "billing", "small"); got.Truncated != 0 || string(got.Body) != `{}` {
		t.Fatalf("small record %+v", got)
	}
}

// TestDLQPurgeFreesTheJobID: after a purge the job state is gone, so the
// same id can be published again at once; another profile's state with the
// same id is untouched.
func TestDLQPurgeFreesTheJobID(t *testing.T) {
	b := setup(t)
	for _, p := range []string{"billing", "ops"} {
		if err := b.q.DLQ.Put(b.ctx, contract.DeadLetter{JobID: "p1", Profile: p, Reason: contract.ReasonInternal, Body: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.q.States.Create(b.ctx, contract.JobState{JobID: "p1", Profile: p, State: contract.StateDeadLettered}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.q.DLQ.Get(b.ctx, "", "p1"); !errors.Is(err, ErrAmbiguousJob) {
		t.Fatalf("Get without a profile of an id in two profiles = %v, want ErrAmbiguousJob", err)
	}
	n, err := b.q.DLQ.Purge(b.ctx, DLQQuery{Profile: "billing", JobID: "p1"})
	if err != nil || n != 1 {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	if _, _, err := b.q.States.Get(b.ctx, "billing", "p1"); !errors.Is(err, contract.ErrNoState) {
		t.Fatalf("billing state after purge: %v, want none", err)
	}
	if st, _, err := b.q.States.Get(b.ctx, "ops", "p1"); err != nil || st.State != contract.StateDeadLettered {
		t.Fatalf("ops state after billing's purge: %+v, %v", st, err)
	}
}

// TestDeadLetterDedupeIsPerProfile: the same job id dead-lettered by two
// profiles within the duplicate window is stored twice.
func TestDeadLetterDedupeIsPerProfile(t *testing.T) {
	b := setup(t)
	for i, p := range []string{"billing", "ops"} {
		if err := b.q.DLQ.Put(b.ctx, contract.DeadLetter{JobID: "same", Profile: p, Reason: contract.ReasonInternal, Body: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"billing", "ops"} {
		if _, err := b.q.DLQ.Get(b.ctx, p, "same"); err != nil {
			t.Errorf("%s's dead letter: %v", p, err)
		}
	}
}
