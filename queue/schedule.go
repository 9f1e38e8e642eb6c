package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// Schedules puts deferred jobs back on MAIL_JOBS at a later time with
// JetStream's message schedules (nats-server 2.12+, ADR-51): the job's bytes
// wait as a schedule message on mail.schedule.<profile>.<job-id>, holding no
// delivery of the shared consumer, and the server publishes them to
// mail.send.<profile> when the time comes, as a new message. One schedule
// per job: a newer one replaces the older (the server rolls the subject up).
type Schedules struct {
	js jetstream.JetStream

	mu     sync.Mutex
	maxAge time.Duration // MAIL_JOBS max age, read once; 0 = unlimited
	read   bool
}

// Schedule stores data, the job's original bytes, for redelivery to
// JobSubject(profile) at at, with the Mail-Job-Id header (so an id-less job
// keeps the id it was given) and Mail-Replay when replay is not empty. The
// delivery that asked may be acked once it returns nil. at is rounded up to
// the second (the schedule's resolution). When MAIL_JOBS has a max age, a
// schedule further out than half of it is made for that half instead: the job
// comes back early and is deferred again, rather than aged out of the stream.
func (s *Schedules) Schedule(ctx context.Context, profile, jobID string, data []byte, replay string, origin uint64, at time.Time) error {
	if r := at.Truncate(time.Second); r.Before(at) {
		at = r.Add(time.Second)
	}
	if maxAge := s.jobsMaxAge(ctx); maxAge > 0 {
		if limit := time.Now().Add(maxAge / 2); at.After(limit) {
			at = limit.Truncate(time.Second)
		}
	}
	h := nats.Header{}
	h.Set(contract.HeaderJobID, jobID)
	if replay != "" {
		h.Set(contract.HeaderReplay, replay)
	}
	if origin != 0 {
		h.Set(contract.HeaderOriginSeq, strconv.FormatUint(origin, 10))
	}
	m := &nats.Msg{Subject: contract.ScheduleSubject(profile, jobID), Header: h, Data: data}
	if _, err := s.js.PublishMsg(ctx, m, jetstream.WithScheduleAt(at), jetstream.WithScheduleTarget(contract.JobSubject(profile))); err != nil {
		return fmt.Errorf("queue: schedule job %s: %w", jobID, err)
	}
	return nil
}

// Reschedule moves jobID's schedule to at: it reads the waiting schedule
// message and stores it again with the new time (the newer replaces the
// older). A schedule that has already fired is not there: nil. Should it fire
// between the read and the write, the job comes twice, and its job state
// suppresses the second.
func (s *Schedules) Reschedule(ctx context.Context, profile, jobID string, at time.Time) error {
	st, err := s.js.Stream(ctx, contract.StreamJobs)
	if err != nil {
		return fmt.Errorf("queue: reschedule job %s: %w", jobID, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, contract.ScheduleSubject(profile, jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: reschedule job %s: %w", jobID, err)
	}
	origin, _ := strconv.ParseUint(m.Header.Get(contract.HeaderOriginSeq), 10, 64)
	return s.Schedule(ctx, profile, jobID, m.Data, m.Header.Get(contract.HeaderReplay), origin, at)
}

// jobsMaxAge reads MAIL_JOBS' max age once; an error counts as unlimited
// until it can be read.
func (s *Schedules) jobsMaxAge(ctx context.Context) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.read {
		st, err := s.js.Stream(ctx, contract.StreamJobs)
		if err != nil {
			return 0
		}
		s.maxAge, s.read = st.CachedInfo().Config.MaxAge, true
	}
	return s.maxAge
}
