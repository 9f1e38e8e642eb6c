package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

func TestProvisionIdempotent(t *testing.T) {
	js, _ := startJS(t)
	ctx := context.Background()
	if _, err := Open(ctx, js); err == nil || !strings.Contains(err.Error(), "mailworker provision") {
		t.Fatalf("Open before provision = %v, want a hint to run provision", err)
	}
	cfg := Config{AckWait: 30 * time.Second, Profiles: []string{"billing"}}
	for i := 0; i < 2; i++ {
		if err := Provision(ctx, js, cfg); err != nil {
			t.Fatalf("Provision #%d: %v", i+1, err)
		}
	}
	s, err := js.Stream(ctx, contract.JobsStream("billing"))
	if err != nil {
		t.Fatal(err)
	}
	sc := s.CachedInfo().Config
	if sc.Retention != jetstream.WorkQueuePolicy || sc.Storage != jetstream.FileStorage || sc.Duplicates != 2*time.Minute ||
		!slices.Equal(sc.Subjects, []string{"mail.send.billing"}) {
		t.Errorf("MAIL_JOBS_billing config %+v", sc)
	}
	// Nothing a producer's header could switch on is on; its limits hold.
	if sc.AllowMsgSchedules || sc.AllowRollup || sc.AllowMsgTTL || sc.AllowMsgCounter || sc.AllowAtomicPublish || sc.AllowBatchPublish ||
		!sc.DenyDelete || !sc.DenyPurge || sc.Discard != jetstream.DiscardNew || sc.MaxMsgs != DefaultJobsMaxMsgs || sc.MaxBytes != DefaultJobsMaxBytes {
		t.Errorf("MAIL_JOBS_billing trust settings %+v", sc)
	}
	ds, err := js.Stream(ctx, contract.StreamDefer)
	if err != nil {
		t.Fatal(err)
	}
	if dc := ds.CachedInfo().Config; !dc.AllowMsgSchedules || !slices.Equal(dc.Subjects, []string{"mail.schedule.>", "mail.due.>"}) {
		t.Errorf("MAIL_DEFER config %+v", dc)
	}
	for _, sc := range [][2]string{{contract.JobsStream("billing"), contract.ConsumerName}, {contract.StreamDefer, contract.DueConsumer("billing")}} {
		c, err := js.Consumer(ctx, sc[0], sc[1])
		if err != nil {
			t.Fatal(err)
		}
		cc := c.CachedInfo().Config
		if cc.AckWait != 30*time.Second || cc.MaxDeliver != -1 || cc.MaxAckPending != 1000 || cc.AckPolicy != jetstream.AckExplicitPolicy {
			t.Errorf("consumer %s/%s config %+v", sc[0], sc[1], cc)
		}
	}
	attachmentsTTL := func() time.Duration {
		t.Helper()
		obs, err := js.ObjectStore(ctx, AttachmentsBucket("billing"))
		if err != nil {
			t.Fatal(err)
		}
		ost, err := obs.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ost.TTL()
	}
	if got := attachmentsTTL(); got != 30*24*time.Hour {
		t.Errorf("attachments kept for %v, want 30 days by default (nothing else deletes them)", got)
	}

	// Updatable fields are updated in place.
	cfg2 := Config{AckWait: 90 * time.Second, MaxAckPending: 50, StatusMaxAge: time.Hour, StateTTL: 2 * time.Hour,
		AttachmentsMaxAge: 3 * time.Hour, Profiles: []string{"billing"},
		ProfileJobs: map[string]JobsLimits{"billing": {MaxMsgs: 7, MaxBytes: 1 << 20, MaxMsgSize: 4096, MaxAckPending: 5}}}
	if err := Provision(ctx, js, cfg2); err != nil {
		t.Fatalf("Provision with new limits: %v", err)
	}
	for _, sc := range [][2]string{{contract.JobsStream("billing"), contract.ConsumerName}, {contract.StreamDefer, contract.DueConsumer("billing")}} {
		c, _ := js.Consumer(ctx, sc[0], sc[1])
		if cc := c.CachedInfo().Config; cc.AckWait != 90*time.Second || cc.MaxAckPending != 5 {
			t.Errorf("consumer %s/%s not updated: %+v", sc[0], sc[1], cc)
		}
	}
	s, _ = js.Stream(ctx, contract.JobsStream("billing"))
	if sc := s.CachedInfo().Config; sc.MaxMsgs != 7 || sc.MaxBytes != 1<<20 || sc.MaxMsgSize != 4096 {
		t.Errorf("MAIL_JOBS_billing limits not updated: %+v", sc)
	}
	st, _ := js.Stream(ctx, contract.StreamStatus)
	if got := st.CachedInfo().Config.MaxAge; got != time.Hour {
		t.Errorf("MAIL_STATUS MaxAge = %v", got)
	}
	kv, _ := js.KeyValue(ctx, contract.BucketState)
	kst, _ := kv.Status(ctx)
	if kst.TTL() != 2*time.Hour || kst.History() != 1 {
		t.Errorf("KV TTL %v history %d", kst.TTL(), kst.History())
	}
	if got := attachmentsTTL(); got != 3*time.Hour {
		t.Errorf("attachments TTL not updated: %v", got)
	}
	if _, err := Open(ctx, js); err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := Provision(ctx, js, Config{Replicas: 2}); err == nil {
		t.Error("Provision accepted replicas 2")
	}
}

func TestProvisionIncompatible(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		setup func(js jetstream.JetStream) error
		field string
	}{
		{"jobs retention", func(js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_JOBS_billing", Subjects: []string{"mail.send.billing"}, Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage})
			return err
		}, "stream MAIL_JOBS_billing retention"},
		{"jobs storage", func(js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_JOBS_billing", Subjects: []string{"mail.send.billing"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.MemoryStorage})
			return err
		}, "stream MAIL_JOBS_billing storage"},
		// The server cannot switch these off again: a producer's headers
		// would be honoured, so provision refuses rather than run on it.
		{"jobs schedules", func(js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_JOBS_billing", Subjects: []string{"mail.send.billing"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, AllowMsgSchedules: true, AllowRollup: true})
			return err
		}, "stream MAIL_JOBS_billing allow_msg_schedules"},
		{"jobs ttl", func(js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_JOBS_billing", Subjects: []string{"mail.send.billing"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, AllowMsgTTL: true})
			return err
		}, "stream MAIL_JOBS_billing allow_msg_ttl"},
		{"jobs counter", func(js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_JOBS_billing", Subjects: []string{"mail.send.billing"}, Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage, AllowMsgCounter: true})
			return err
		}, "stream MAIL_JOBS_billing"},
		{"dlq subjects", func(js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: contract.StreamDLQ, Subjects: []string{"mail.dlq.billing"}, Storage: jetstream.FileStorage})
			return err
		}, "stream MAIL_DLQ subjects"},
		{"consumer filter", func(js jetstream.JetStream) error {
			if err := Provision(ctx, js, Config{Profiles: []string{"billing"}}); err != nil {
				return err
			}
			if err := js.DeleteConsumer(ctx, "MAIL_JOBS_billing", contract.ConsumerName); err != nil {
				return err
			}
			_, err := js.CreateConsumer(ctx, "MAIL_JOBS_billing", jetstream.ConsumerConfig{Durable: contract.ConsumerName, AckPolicy: jetstream.AckExplicitPolicy})
			return err
		}, "consumer MAIL_JOBS_billing/mailworker filter subject"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			js, _ := startJS(t)
			if err := tt.setup(js); err != nil {
				t.Fatal(err)
			}
			err := Provision(ctx, js, Config{Profiles: []string{"billing"}})
			if !errors.Is(err, ErrIncompatible) {
				t.Fatalf("Provision = %v, want ErrIncompatible", err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("error %q does not name %q", err, tt.field)
			}
		})
	}
}

// TestProvisionRefusesTheLegacyJobsStream: the single MAIL_JOBS of older
// releases (mail.send.>, schedules on) overlaps every ingress stream and is
// what producers could abuse: provision says to drain and delete it.
func TestProvisionRefusesTheLegacyJobsStream(t *testing.T) {
	js, _ := startJS(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_JOBS", Subjects: []string{"mail.send.>", "mail.schedule.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, AllowMsgSchedules: true, AllowRollup: true}); err != nil {
		t.Fatal(err)
	}
	err := Provision(ctx, js, Config{Profiles: []string{"billing"}})
	if !errors.Is(err, ErrLegacyJobsStream) || !strings.Contains(err.Error(), "Upgrading to per-profile streams") {
		t.Fatalf("Provision beside MAIL_JOBS = %v, want ErrLegacyJobsStream naming the runbook section", err)
	}
}

func TestPublisher(t *testing.T) {
	b := setup(t)
	p := NewPublisher(b.js)
	job := &contract.Job{From: "billing@contoso.com", To: []string{"a@x.com"}, Subject: "hi", Text: "t"}
	id, err := p.Publish(b.ctx, "billing", job)
	if err != nil {
		t.Fatal(err)
	}
	if !contract.ValidJobID(id) || job.ID != id {
		t.Fatalf("id %q, job.ID %q", id, job.ID)
	}
	// Nats-Msg-Id is the job id and a hash of its bytes (safe now that each
	// profile has its own stream and window): the same job again, by Publish
	// or PublishRaw, is dropped by the stream and reported as a duplicate;
	// a corrected job under the same id is stored.
	if _, err := p.Publish(b.ctx, "billing", job); !errors.Is(err, ErrDuplicatePublish) {
		t.Fatalf("second Publish of id %s = %v, want ErrDuplicatePublish", id, err)
	}
	stored, _ := json.Marshal(job)
	if _, err := p.PublishRaw(b.ctx, "billing", stored, id); !errors.Is(err, ErrDuplicatePublish) {
		t.Fatalf("PublishRaw of the same job %s = %v, want ErrDuplicatePublish", id, err)
	}
	if _, err := p.PublishRaw(b.ctx, "billing", []byte(`{"id":"`+id+`"}`), id); err != nil {
		t.Fatalf("PublishRaw of other bytes under id %s = %v, want it stored", id, err)
	}
	// Another profile's job of the same id is another job, in another window.
	if _, err := p.Publish(b.ctx, "ops", &contract.Job{ID: id, From: "ops@contoso.com", To: []string{"a@x.com"}, Text: "t"}); err != nil {
		t.Fatalf("ops' job with billing's id: %v", err)
	}
	s, _ := b.js.Stream(b.ctx, contract.JobsStream("billing"))
	info, _ := s.Info(b.ctx)
	if info.State.Msgs != 2 {
		t.Fatalf("MAIL_JOBS_billing holds %d messages, want 2", info.State.Msgs)
	}
	m, err := s.GetMsg(b.ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "mail.send.billing" || m.Header.Get(contract.HeaderMsgID) != PublishMsgID(id, m.Data) || !strings.HasPrefix(m.Header.Get(contract.HeaderMsgID), id+".") {
		t.Errorf("subject %q Nats-Msg-Id %q, want %s.<hash>", m.Subject, m.Header.Get(contract.HeaderMsgID), id)
	}
	got, err := contract.DecodeJob(m.Data)
	if err != nil || got.ID != id || got.Subject != "hi" {
		t.Errorf("stored job %+v, %v", got, err)
	}

	// Async path, and a raw publish without an id.
	var ids []string
	for i := 0; i < 10; i++ {
		_, id, err := p.PublishAsync("billing", &contract.Job{From: "billing@contoso.com", To: []string{"a@x.com"}, Text: "t"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	select {
	case <-b.js.PublishAsyncComplete():
	case <-time.After(60 * time.Second): // an upper bound (CI shares two cores under -race)
		t.Fatal("async publishes not acked")
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if !contract.ValidJobID(id) || seen[id] {
			t.Errorf("async publish returned id %q: want a fresh valid job id each time (all: %v)", id, ids)
		}
		seen[id] = true
	}
	if _, err := p.PublishRaw(b.ctx, "billing", []byte(`not even json`), ""); err != nil {
		t.Fatal(err)
	}
	info, _ = s.Info(b.ctx)
	if info.State.Msgs != 13 {
		t.Errorf("MAIL_JOBS_billing holds %d messages, want 13", info.State.Msgs)
	}

	// Rejections.
	var ie *contract.InvalidError
	if _, err := p.Publish(b.ctx, "billing", &contract.Job{From: "x"}); !errors.As(err, &ie) {
		t.Errorf("invalid job: %v", err)
	}
	for _, prof := range []string{"", "a.b", "*", ">", "a b"} {
		if _, err := p.Publish(b.ctx, prof, &contract.Job{From: "a@x.com", To: []string{"b@x.com"}, Text: "t"}); err == nil {
			t.Errorf("profile %q accepted", prof)
		}
	}
}

func TestStates(t *testing.T) {
	b := setup(t)
	s := b.q.States
	if _, _, err := s.Get(b.ctx, "billing", "j1"); !errors.Is(err, contract.ErrNoState) {
		t.Fatalf("Get missing = %v", err)
	}
	rev, err := s.Create(b.ctx, contract.JobState{JobID: "j1", Profile: "billing", State: contract.StateSending, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(b.ctx, contract.JobState{JobID: "j1", Profile: "billing", State: contract.StateSending}); !errors.Is(err, contract.ErrStateExists) {
		t.Fatalf("second Create = %v, want ErrStateExists", err)
	}
	// Job identity is per profile: ops may use the same id.
	if _, err := s.Create(b.ctx, contract.JobState{JobID: "j1", Profile: "ops", State: contract.StateSent}); err != nil {
		t.Fatalf("Create of the same id for another profile = %v", err)
	}
	if ps, err := s.Profiles(b.ctx, "j1"); err != nil || len(ps) != 2 || ps[0] != "billing" || ps[1] != "ops" {
		t.Fatalf("Profiles = %v, %v", ps, err)
	}
	if _, err := s.Create(b.ctx, contract.JobState{JobID: "j1", State: contract.StateSending}); err == nil {
		t.Fatalf("second Create = %v, want ErrStateExists", err)
	}
	st, r, err := s.Get(b.ctx, "billing", "j1")
	if err != nil || r != rev || st.State != contract.StateSending || st.Attempts != 1 || st.UpdatedAt.IsZero() {
		t.Fatalf("Get = %+v rev %d (want %d), %v", st, r, rev, err)
	}
	st.State = contract.StateSent
	rev2, err := s.Update(b.ctx, st, rev)
	if err != nil {
		t.Fatal(err)
	}
	// A writer holding the old revision loses.
	st.State = contract.StateRetrying
	if _, err := s.Update(b.ctx, st, rev); !errors.Is(err, contract.ErrStateConflict) {
		t.Fatalf("stale Update = %v, want ErrStateConflict", err)
	}
	if _, err := s.Update(b.ctx, contract.JobState{JobID: "nope", Profile: "billing"}, 1); !errors.Is(err, contract.ErrStateConflict) {
		t.Fatalf("Update of missing = %v, want ErrStateConflict", err)
	}
	if _, err := s.Create(b.ctx, contract.JobState{JobID: "a.b", Profile: "billing"}); err == nil {
		t.Error("Create accepted an invalid job id")
	}
	// Latest reads the leader: the value and revision Update compares to.
	if st, r, err := s.Latest(b.ctx, "billing", "j1"); err != nil || r != rev2 || st.State != contract.StateSent {
		t.Fatalf("Latest = %+v rev %d (want %d), %v", st, r, rev2, err)
	}
	if _, _, err := s.Latest(b.ctx, "billing", "nope"); !errors.Is(err, contract.ErrNoState) {
		t.Fatalf("Latest of missing = %v, want ErrNoState", err)
	}
	// Delete compares and sets too.
	if err := s.Delete(b.ctx, "billing", "j1", rev); !errors.Is(err, contract.ErrStateConflict) {
		t.Fatalf("Delete at a stale revision = %v, want ErrStateConflict", err)
	}
	if err := s.Delete(b.ctx, "billing", "j1", rev2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Latest(b.ctx, "billing", "j1"); !errors.Is(err, contract.ErrNoState) {
		t.Fatalf("Latest after Delete = %v, want ErrNoState", err)
	}
}

func TestEvents(t *testing.T) {
	b := setup(t)
	e := b.q.Events
	if h, err := e.History(b.ctx, "billing", "j1"); err != nil || len(h) != 0 {
		t.Fatalf("empty History = %v, %v", h, err)
	}
	at := time.Now().UTC().Truncate(time.Millisecond)
	if err := e.Publish(b.ctx, contract.Event{JobID: "j1", Profile: "billing", Event: contract.EventRetrying, Attempt: 1, At: at,
		Error: &contract.ErrorInfo{Reason: contract.ReasonInternal, Message: "boom"}, Metadata: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Publish(b.ctx, contract.Event{JobID: "j2", Profile: "billing", Event: contract.EventSent, At: at}); err != nil {
		t.Fatal(err)
	}
	if err := e.Publish(b.ctx, contract.Event{JobID: "j1-x", Profile: "billing", Event: contract.EventSent, At: at}); err != nil {
		t.Fatal(err)
	}
	wait, err := e.PublishAsync(contract.Event{JobID: "j1", Profile: "billing", Event: contract.EventSent, Attempt: 2, At: at,
		Graph: &contract.GraphInfo{Status: 202, RequestID: "r1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(time.Minute); err != nil { // an upper bound: returns with the ack
		t.Fatal(err)
	}
	h, err := e.History(b.ctx, "billing", "j1")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].Event != contract.EventRetrying || h[1].Event != contract.EventSent || h[1].Graph.RequestID != "r1" ||
		h[0].Metadata["k"] != "v" || !h[0].At.Equal(at) {
		t.Fatalf("History = %+v", h)
	}
	s, _ := b.js.Stream(b.ctx, contract.StreamStatus)
	if m, _ := s.GetMsg(b.ctx, 1); m.Subject != "mail.status.billing.j1" {
		t.Errorf("subject %q", m.Subject)
	}
	if err := e.Publish(b.ctx, contract.Event{JobID: "a.*", Profile: "billing"}); err == nil {
		t.Error("Publish accepted a wildcard job id")
	}
	if _, err := e.History(b.ctx, "billing", ">"); err == nil {
		t.Error("History accepted a wildcard")
	}
}

func TestEventsPublishedTwiceAreStoredOnce(t *testing.T) {
	b := setup(t)
	at := time.Now()
	ev := contract.Event{JobID: "j1", Profile: "billing", Event: contract.EventSent, Attempt: 1, At: at}
	for range 2 { // a retry after a lost ack, or a final event re-published on redelivery
		if err := b.q.Events.Publish(b.ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	ev.At = at.Add(time.Millisecond) // a different event of the same kind is its own
	if err := b.q.Events.Publish(b.ctx, ev); err != nil {
		t.Fatal(err)
	}
	h, err := b.q.Events.History(b.ctx, "billing", "j1")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 {
		t.Fatalf("History has %d events, want 2: %+v", len(h), h)
	}
}

func TestAttachments(t *testing.T) {
	b := setup(t)
	a := b.q.Attachments
	data := bytes.Repeat([]byte("pdf!"), 300_000) // bigger than one object-store chunk
	ref, err := a.Put(b.ctx, "billing", "invoice\r\n.pdf", data)
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(ref, "\r\n") {
		t.Errorf("ref %q carries CR/LF", ref)
	}
	// The ref is usable as an objectRef in a valid job.
	j := contract.Job{From: "a@x.com", To: []string{"b@x.com"}, Text: "t", Attachments: []contract.Attachment{{Name: "invoice.pdf", ObjectRef: ref}}}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	got, err := a.Get(b.ctx, "billing", ref)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get: %d bytes, %v", len(got), err)
	}
	if n, err := a.Size(b.ctx, "billing", ref); err != nil || n != len(data) {
		t.Fatalf("Size = %d, %v; want %d", n, err, len(data))
	}
	for _, off := range []int64{0, 1, 128*1024 + 7, int64(len(data))} {
		rc, size, err := a.Open(b.ctx, "billing", ref, off)
		if err != nil {
			t.Fatalf("Open at %d: %v", off, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || size != int64(len(data)) || !bytes.Equal(got, data[off:]) {
			t.Fatalf("Open at %d: %d bytes of %d, %v", off, len(got), size, err)
		}
	}
	ref2, err := a.PutReader(b.ctx, "billing", "streamed.bin", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := a.Get(b.ctx, "billing", ref2); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("PutReader then Get: %d bytes, %v", len(got), err)
	}
	if err := a.Delete(b.ctx, "billing", ref); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Open(b.ctx, "billing", ref, 0); !errors.Is(err, contract.ErrNoAttachment) {
		t.Errorf("Open after delete = %v", err)
	}
	if _, err := a.Get(b.ctx, "billing", ref); !errors.Is(err, contract.ErrNoAttachment) {
		t.Errorf("Get after delete = %v", err)
	}
	if _, err := a.Size(b.ctx, "billing", ref); !errors.Is(err, contract.ErrNoAttachment) {
		t.Errorf("Size after delete = %v", err)
	}
}
