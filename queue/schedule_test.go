package queue

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestSchedules: a scheduled job waits as one message on its schedule
// subject, outside the job subjects the consumer reads; moved earlier, it is
// delivered on mail.send.<profile> at the new time with its job id and
// replay headers, and the schedule is gone.
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
	s, err := b.js.Stream(b.ctx, contract.StreamJobs)
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
	c, err := b.q.Consumer(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := c.Next(jetstream.FetchMaxWait(15 * time.Second))
	if err != nil {
		t.Fatalf("the rescheduled job did not come: %v", err)
	}
	if msg.Subject() != contract.JobSubject("billing") || string(msg.Data()) != string(body) ||
		msg.Headers().Get(contract.HeaderJobID) != "s1" || msg.Headers().Get(contract.HeaderReplay) != "2" ||
		msg.Headers().Get(contract.HeaderOriginSeq) != "7" {
		t.Fatalf("delivered %s %q %v", msg.Subject(), msg.Data(), msg.Headers())
	}
	_ = msg.Ack()
	// Fired: nothing left to move.
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
