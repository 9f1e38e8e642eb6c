package queue

import (
	"bytes"
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

// Schedules puts deferred jobs back to the worker at a later time with
// JetStream's message schedules (nats-server 2.12+, ADR-51), in MAIL_DEFER, a
// stream only the worker writes: the job's bytes wait as a schedule message
// on mail.schedule.<profile>.<job-id>, holding no delivery of any consumer,
// and the server publishes them to mail.due.<profile> (same stream) when the
// time comes, where the profile's due consumer hands them to the worker. One
// schedule per job: a newer one replaces the older (the server rolls the
// subject up).
//
// A job whose bytes do not fit a schedule message next to its headers
// (max_payload) waits by reference: its bytes go once into the worker-only
// object store MAIL_DEFERRED and the schedule carries the object's name
// (contract.HeaderDeferredRef). The delivery of the due message carries the
// bytes again (Jobs loads them), and the object is deleted when that delivery
// is acked or terminated. So any job that intake accepts can wait without
// holding a delivery.
type Schedules struct {
	js jetstream.JetStream

	mu       sync.Mutex
	maxAge   time.Duration // MAIL_DEFER max age, read once; 0 = unlimited
	read     bool
	deferred jetstream.ObjectStore
}

// scheduleHeadroom is what a schedule message's headers may take beside the
// job's bytes: Nats-Schedule, Nats-Schedule-Target, Mail-Job-Id (128),
// Mail-Replay, Mail-Origin-Seq and what the server adds when it fires
// (Nats-Scheduler, Nats-Schedule-Next), well under 1 KiB; 4 KiB leaves room.
const scheduleHeadroom = 4 << 10

// Schedule stores data, the job's original bytes, for redelivery to the
// worker as profile's job at at, with the Mail-Job-Id header (so an id-less
// job keeps the id it was given) and Mail-Replay when replay is not empty. The
// delivery that asked may be acked once it returns nil. at is rounded up to
// the second (the schedule's resolution). When MAIL_DEFER has a max age, a
// schedule further out than half of it is made for that half instead: the job
// comes back early and is deferred again, rather than aged out of the stream.
// Bytes too large for a schedule message wait in MAIL_DEFERRED (see
// Schedules).
func (s *Schedules) Schedule(ctx context.Context, profile, jobID string, data []byte, replay string, origin uint64, at time.Time) error {
	ref := ""
	if len(data)+scheduleHeadroom > s.maxPayload() {
		var err error
		if ref, err = s.storeBody(ctx, profile, jobID, data); err != nil {
			return fmt.Errorf("queue: schedule job %s: %w", jobID, err)
		}
		data = nil
	}
	return s.schedule(ctx, profile, jobID, data, ref, replay, origin, at)
}

func (s *Schedules) schedule(ctx context.Context, profile, jobID string, data []byte, ref, replay string, origin uint64, at time.Time) error {
	if r := at.Truncate(time.Second); r.Before(at) {
		at = r.Add(time.Second)
	}
	if maxAge := s.deferMaxAge(ctx); maxAge > 0 {
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
	if ref != "" {
		h.Set(contract.HeaderDeferredRef, ref)
	}
	m := &nats.Msg{Subject: contract.ScheduleSubject(profile, jobID), Header: h, Data: data}
	if _, err := s.js.PublishMsg(ctx, m, jetstream.WithScheduleAt(at), jetstream.WithScheduleTarget(contract.DueSubject(profile))); err != nil {
		return fmt.Errorf("queue: schedule job %s: %w", jobID, err)
	}
	return nil
}

// Reschedule moves jobID's schedule to at: it reads the waiting schedule
// message and stores it again with the new time (the newer replaces the
// older; a body waiting by reference keeps its object). A schedule that has
// already fired is not there: nil. Should it fire between the read and the
// write, the job comes twice, and its job state suppresses the second.
func (s *Schedules) Reschedule(ctx context.Context, profile, jobID string, at time.Time) error {
	st, err := s.js.Stream(ctx, contract.StreamDefer)
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
	return s.schedule(ctx, profile, jobID, m.Data, m.Header.Get(contract.HeaderDeferredRef), m.Header.Get(contract.HeaderReplay), origin, at)
}

// maxPayload is the connection's max_payload (the server's).
func (s *Schedules) maxPayload() int {
	if nc := s.js.Conn(); nc != nil {
		if n := nc.MaxPayload(); n > 0 {
			return int(n)
		}
	}
	return 1 << 20
}

// deferMaxAge reads MAIL_DEFER's max age once; an error counts as unlimited
// until it can be read.
func (s *Schedules) deferMaxAge(ctx context.Context) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.read {
		st, err := s.js.Stream(ctx, contract.StreamDefer)
		if err != nil {
			return 0
		}
		s.maxAge, s.read = st.CachedInfo().Config.MaxAge, true
	}
	return s.maxAge
}

// store binds MAIL_DEFERRED once.
func (s *Schedules) store(ctx context.Context) (jetstream.ObjectStore, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deferred != nil {
		return s.deferred, nil
	}
	obs, err := s.js.ObjectStore(ctx, contract.BucketDeferred)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w (run `mailworker provision`)", contract.BucketDeferred, err)
	}
	s.deferred = obs
	return obs, nil
}

// storeBody puts a deferred job's bytes into MAIL_DEFERRED under a fresh name
// and returns it.
func (s *Schedules) storeBody(ctx context.Context, profile, jobID string, data []byte) (string, error) {
	obs, err := s.store(ctx)
	if err != nil {
		return "", err
	}
	name := profile + "/" + jobID + "/" + contract.NewJobID()
	if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: name}, bytes.NewReader(data)); err != nil {
		return "", fmt.Errorf("store the body by reference: %w", err)
	}
	return name, nil
}

// errDeferredGone: the object a due message names is not there (expired or
// deleted): the job's bytes are lost and the delivery is handed out without
// them, so that the worker records it rather than dropping it.
var errDeferredGone = errors.New("queue: the deferred job's body is gone from " + contract.BucketDeferred)

// loadBody reads a deferred job's bytes back.
func (s *Schedules) loadBody(ctx context.Context, ref string) ([]byte, error) {
	obs, err := s.store(ctx)
	if err != nil {
		return nil, err
	}
	b, err := obs.GetBytes(ctx, ref)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, errDeferredGone
	}
	return b, err
}

// deleteBody removes a deferred job's bytes once its delivery is done;
// failures are left to the bucket's TTL.
func (s *Schedules) deleteBody(ref string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if obs, err := s.store(ctx); err == nil {
		_ = obs.Delete(ctx, ref)
	}
}
