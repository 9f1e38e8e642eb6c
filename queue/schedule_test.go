package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// next takes the next delivery of m within 20s.
func next(t *testing.T, m *Messages) *Delivery {
	t.Helper()
	type res struct {
		d   *Delivery
		err error
	}
	ch := make(chan res, 1)
	go func() { d, err := m.Next(); ch <- res{d, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Next: %v", r.err)
		}
		return r.d
	case <-time.After(60 * time.Second): // an upper bound (CI shares two cores under -race)
		t.Fatal("no delivery within 60s")
	}
	return nil
}

// TestSchedules: a scheduled job waits as one message on its schedule
// subject in MAIL_DEFER, outside every ingress stream; moved earlier, it is
// delivered on mail.due.<profile> at the new time with its job id and replay
// headers, and the schedule is gone.
func TestSchedules(t *testing.T) {
	b := setup(t)
	body := []byte(`{"from":"billing@contoso.com","to":["a@x.com"],"subject":"later","text":"t"}`)
	far := time.Now().Add(time.Hour)
	if err := b.q.Schedules.Schedule(b.ctx, "billing", "s1", body, "2", 7, far); err != nil {
		t.Fatal(err)
	}
	// A second schedule of the same job replaces the first.
	if err := b.q.Schedules.Schedule(b.ctx, "billing", "s1", body, "2", 7, far.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	s, err := b.js.Stream(b.ctx, contract.StreamDefer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(b.ctx, jetstream.WithSubjectFilter(contract.ScheduleSubjectPrefix+">"))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[contract.ScheduleSubject("billing", "s1")]; n != 1 || info.State.Msgs != 1 {
		t.Fatalf("schedules %v (%d messages), want one for s1", info.State.Subjects, info.State.Msgs)
	}
	if err := b.q.Schedules.Reschedule(b.ctx, "billing", "s1", time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	jobs, err := b.q.Jobs(b.ctx, []string{"billing", "ops"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := jobs.Messages(8)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Drain()
	d := next(t, m)
	if d.Subject() != contract.DueSubject("billing") || string(d.Data()) != string(body) ||
		d.Header(contract.HeaderJobID) != "s1" || d.Header(contract.HeaderReplay) != "2" ||
		d.Header(contract.HeaderOriginSeq) != "7" {
		t.Fatalf("delivered %s %q job id %q replay %q origin %q", d.Subject(), d.Data(), d.Header(contract.HeaderJobID), d.Header(contract.HeaderReplay), d.Header(contract.HeaderOriginSeq))
	}
	if p, ok := contract.ProfileFromSubject(d.Subject()); !ok || p != "billing" {
		t.Fatalf("profile of %s = %q, %v", d.Subject(), p, ok)
	}
	_ = d.Ack()
	// Fired: the server removes the schedule message once it has fired (it
	// may deliver the due message first); then there is nothing left to move.
	waitFor(t, 10*time.Second, "the fired schedule removed", func() bool {
		in, err := s.Info(b.ctx, jetstream.WithSubjectFilter(contract.ScheduleSubjectPrefix+">"))
		return err == nil && in.State.Msgs == 0
	})
	if err := b.q.Schedules.Reschedule(b.ctx, "billing", "s1", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	info, err = s.Info(b.ctx, jetstream.WithSubjectFilter(contract.ScheduleSubjectPrefix+">"))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Fatalf("%d schedule messages left after it fired", info.State.Msgs)
	}
}

// TestScheduleByReference: a job whose bytes leave no room for a schedule's
// headers under max_payload waits by reference: the schedule holds no body,
// MAIL_DEFERRED holds it once, the due delivery carries the bytes again (also
// after a reschedule), and the object is gone once the delivery is acked.
func TestScheduleByReference(t *testing.T) {
	b := setup(t)
	limit := int(b.nc.MaxPayload())
	body := bytes.Repeat([]byte("x"), limit-100)
	if err := b.q.Schedules.Schedule(b.ctx, "ops", "big", body, "", 3, time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("Schedule of a %d-byte job (max_payload %d): %v", len(body), limit, err)
	}
	s, _ := b.js.Stream(b.ctx, contract.StreamDefer)
	sm, err := s.GetLastMsgForSubject(b.ctx, contract.ScheduleSubject("ops", "big"))
	if err != nil {
		t.Fatal(err)
	}
	ref := sm.Header.Get(contract.HeaderDeferredRef)
	if len(sm.Data) != 0 || !strings.HasPrefix(ref, "ops/big/") {
		t.Fatalf("schedule message: %d bytes, ref %q; want an empty body and a reference", len(sm.Data), ref)
	}
	obs, err := b.js.ObjectStore(b.ctx, contract.BucketDeferred)
	if err != nil {
		t.Fatal(err)
	}
	if oi, err := obs.GetInfo(b.ctx, ref); err != nil || oi.Size != uint64(len(body)) {
		t.Fatalf("deferred object %q: %+v, %v", ref, oi, err)
	}
	if err := b.q.Schedules.Reschedule(b.ctx, "ops", "big", time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	jobs, err := b.q.Jobs(b.ctx, []string{"ops"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := jobs.Messages(4)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Drain()
	d := next(t, m)
	if !bytes.Equal(d.Data(), body) || d.Header(contract.HeaderJobID) != "big" || d.Header(contract.HeaderOriginSeq) != "3" {
		t.Fatalf("due delivery: %d bytes, job id %q, origin %q", len(d.Data()), d.Header(contract.HeaderJobID), d.Header(contract.HeaderOriginSeq))
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	if _, err := obs.GetInfo(b.ctx, ref); err == nil {
		t.Fatalf("deferred object %q still there after the ack", ref)
	}
}

// TestJobsTakesProfilesInTurn: with a backlog in billing's stream, ops' one
// job is among the first handed out, not behind the backlog.
func TestJobsTakesProfilesInTurn(t *testing.T) {
	b := setup(t)
	p := NewPublisher(b.js)
	for range 200 {
		if _, err := p.Publish(b.ctx, "billing", &contract.Job{From: "billing@contoso.com", To: []string{"a@x.com"}, Text: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Publish(b.ctx, "ops", &contract.Job{ID: "ops1", From: "ops@contoso.com", To: []string{"a@x.com"}, Text: "t"}); err != nil {
		t.Fatal(err)
	}
	jobs, err := b.q.Jobs(b.ctx, []string{"billing", "ops"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := jobs.Messages(64)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Drain()
	// Ops' job is fetched and waiting in this process (not only sent by the
	// server: it may still be on its way) before any is taken: then the
	// order is Next's alone.
	ops := -1
	for i, src := range jobs.sources {
		if strings.HasPrefix(src.name, contract.JobsStream("ops")+"/") {
			ops = i
		}
	}
	if ops < 0 {
		t.Fatalf("no source for ops among %v", jobs.sources)
	}
	deadline := time.Now().Add(60 * time.Second) // an upper bound (CI shares two cores under -race)
	for len(m.chans[ops]) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("ops' job was never fetched")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; ; i++ {
		d := next(t, m)
		_ = d.Ack()
		if d.Subject() == contract.JobSubject("ops") {
			if i > 4 {
				t.Fatalf("ops' job came %dth, behind billing's backlog", i+1)
			}
			return
		}
		if i > 200 {
			t.Fatal("ops' job never came")
		}
	}
}

// TestScheduleByReferenceBodyGone: should the deferred body be gone when the
// job is due (expired, deleted by hand), the delivery is still handed out,
// without bytes, for the worker to dead-letter: nothing vanishes silently.
func TestScheduleByReferenceBodyGone(t *testing.T) {
	b := setup(t)
	body := bytes.Repeat([]byte("y"), int(b.nc.MaxPayload())-100)
	if err := b.q.Schedules.Schedule(b.ctx, "billing", "gone", body, "", 0, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s, _ := b.js.Stream(b.ctx, contract.StreamDefer)
	sm, err := s.GetLastMsgForSubject(b.ctx, contract.ScheduleSubject("billing", "gone"))
	if err != nil {
		t.Fatal(err)
	}
	obs, err := b.js.ObjectStore(b.ctx, contract.BucketDeferred)
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.Delete(b.ctx, sm.Header.Get(contract.HeaderDeferredRef)); err != nil {
		t.Fatal(err)
	}
	if err := b.q.Schedules.Reschedule(b.ctx, "billing", "gone", time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	jobs, err := b.q.Jobs(b.ctx, []string{"billing"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := jobs.Messages(4)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Drain()
	d := next(t, m)
	if len(d.Data()) != 0 || d.Header(contract.HeaderJobID) != "gone" || d.Subject() != contract.DueSubject("billing") {
		t.Fatalf("due delivery of a job whose body is gone: %d bytes, id %q, subject %s", len(d.Data()), d.Header(contract.HeaderJobID), d.Subject())
	}
	_ = d.Term()
}

// TestDeferBudget: a profile's deferred jobs are bounded by its job stream's
// max_bytes. billing (64 KiB) defers three jobs of 20,000 bytes and is refused
// the fourth (ErrDeferBudget) while ops defers as before; a fresh Schedules
// (another replica) counts what is deferred from the schedules themselves
// and refuses it too, a smaller job still fits. Bodies waiting by reference
// (over max_payload) count with their full size.
func TestDeferBudget(t *testing.T) {
	js, _ := startJS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := Provision(ctx, js, Config{Profiles: []string{"billing", "ops", "big"},
		ProfileJobs: map[string]JobsLimits{"billing": {MaxBytes: 64 << 10}, "big": {MaxBytes: 3 << 20}}}); err != nil {
		t.Fatal(err)
	}
	q, err := Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	far := time.Now().Add(time.Hour)
	job := bytes.Repeat([]byte("x"), 20_000)
	for i := range 3 {
		if err := q.Schedules.Schedule(ctx, "billing", fmt.Sprintf("b%d", i), job, "", 0, far); err != nil {
			t.Fatalf("billing's deferral %d within its budget: %v", i, err)
		}
	}
	if err := q.Schedules.Schedule(ctx, "billing", "b3", job, "", 0, far); !errors.Is(err, ErrDeferBudget) {
		t.Fatalf("billing's fourth deferral of 20,000 bytes over its 64 KiB: %v, want ErrDeferBudget", err)
	}
	for i := range 5 {
		if err := q.Schedules.Schedule(ctx, "ops", fmt.Sprintf("o%d", i), job, "", 0, far); err != nil {
			t.Fatalf("ops' deferral %d: %v", i, err)
		}
	}
	other := &Schedules{js: js}
	if n, err := other.DeferredBytes(ctx, "billing"); err != nil || n != 60_000 {
		t.Fatalf("billing's deferred bytes counted %d (%v), want 60000", n, err)
	}
	if err := other.Schedule(ctx, "billing", "b4", job, "", 0, far); !errors.Is(err, ErrDeferBudget) {
		t.Fatalf("another replica's deferral over billing's budget: %v, want ErrDeferBudget", err)
	}
	if err := other.Schedule(ctx, "billing", "b5", job[:4000], "", 0, far); err != nil {
		t.Fatalf("a deferral that fits what is left: %v", err)
	}

	// Replicas counting the same profile at once (a work-queue stream takes
	// one consumer per filter at a time): each waits for the other.
	errs := make(chan error, 8)
	for i := range 8 {
		go func() {
			errs <- (&Schedules{js: js}).Schedule(ctx, "ops", fmt.Sprintf("c%d", i), job[:100], "", 0, far)
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatalf("a replica's deferral while others count: %v", err)
		}
	}

	// By reference: 1,200,000 bytes do not fit a schedule message here.
	large := bytes.Repeat([]byte("y"), 1_200_000)
	for i := range 2 {
		if err := q.Schedules.Schedule(ctx, "big", fmt.Sprintf("l%d", i), large, "", 0, far); err != nil {
			t.Fatalf("big's deferral %d: %v", i, err)
		}
	}
	if n, err := (&Schedules{js: js}).DeferredBytes(ctx, "big"); err != nil || n != 2_400_000 {
		t.Fatalf("big's deferred bytes (by reference) counted %d (%v), want 2400000", n, err)
	}
	if err := (&Schedules{js: js}).Schedule(ctx, "big", "l2", large, "", 0, far); !errors.Is(err, ErrDeferBudget) {
		t.Fatalf("big's third large deferral over its 3 MiB: %v, want ErrDeferBudget", err)
	}
}

// TestProducerCannotSendWorkerHeaders: Mail-Deferred-Ref and Mail-Origin-Seq
// are the worker's own, written only on its schedules in MAIL_DEFER. On a
// producer's publish (mail.send.<profile>) they are not honoured: billing
// naming ops' deferred body (a name it should never learn, but the class is
// closed whatever it knows) gets its own bytes, ops' body is neither handed
// to billing nor deleted by billing's ack, and ops' job still arrives whole.
func TestProducerCannotSendWorkerHeaders(t *testing.T) {
	b := setup(t)
	limit := int(b.nc.MaxPayload())
	opsBody := bytes.Repeat([]byte("o"), limit-100)
	if err := b.q.Schedules.Schedule(b.ctx, "ops", "ops-big", opsBody, "", 3, time.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	s, _ := b.js.Stream(b.ctx, contract.StreamDefer)
	sm, err := s.GetLastMsgForSubject(b.ctx, contract.ScheduleSubject("ops", "ops-big"))
	if err != nil {
		t.Fatal(err)
	}
	ref := sm.Header.Get(contract.HeaderDeferredRef)
	if ref == "" {
		t.Fatal("ops' job is not deferred by reference")
	}
	mine := []byte(`{"id":"b1","from":"billing@contoso.com","to":["a@x.com"],"subject":"s","text":"t"}`)
	pm := nats.NewMsg(contract.JobSubject("billing"))
	pm.Data = mine
	pm.Header.Set(contract.HeaderDeferredRef, ref)
	pm.Header.Set(contract.HeaderOriginSeq, "1")
	if _, err := b.js.PublishMsg(b.ctx, pm); err != nil {
		t.Fatal(err)
	}
	jobs, err := b.q.Jobs(b.ctx, []string{"billing", "ops"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := jobs.Messages(4)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Drain()
	d := next(t, m)
	if d.Subject() != contract.JobSubject("billing") {
		t.Fatalf("first delivery on %s, want billing's publish", d.Subject())
	}
	if !bytes.Equal(d.Data(), mine) || d.Header(contract.HeaderDeferredRef) != "" || d.Header(contract.HeaderOriginSeq) != "" {
		t.Fatalf("billing's delivery: %d bytes (its own are %d), ref %q, origin %q: a producer's worker-only headers were honoured",
			len(d.Data()), len(mine), d.Header(contract.HeaderDeferredRef), d.Header(contract.HeaderOriginSeq))
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	d = next(t, m)
	if d.Subject() != contract.DueSubject("ops") || !bytes.Equal(d.Data(), opsBody) || d.Header(contract.HeaderOriginSeq) != "3" {
		t.Fatalf("ops' due delivery on %s: %d bytes (want %d), origin %q", d.Subject(), len(d.Data()), len(opsBody), d.Header(contract.HeaderOriginSeq))
	}
	_ = d.Ack()
}
