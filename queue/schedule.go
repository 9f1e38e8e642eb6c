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
//
// Each profile's deferred jobs (their waiting schedules, fired ones not yet
// taken, and bodies waiting by reference) are bounded by a byte budget: the
// max_bytes of the profile's own job stream MAIL_JOBS_<profile>. A job that
// would take the profile over it is not deferred (ErrDeferBudget): the
// worker keeps it in its own stream instead (a nak with a delay), so that
// deferring cannot move more of a profile's bytes into the shared MAIL_DEFER
// than its own stream may hold.
type Schedules struct {
	js jetstream.JetStream

	mu       sync.Mutex
	maxAge   time.Duration // MAIL_DEFER max age, read once; 0 = unlimited
	read     bool
	deferred jetstream.ObjectStore
	usage    map[string]*deferUsage // per profile
}

// ErrDeferBudget is returned (wrapped) by Schedule when the job would take
// its profile's deferred bytes over the profile's budget (the max_bytes of
// its job stream).
var ErrDeferBudget = errors.New("queue: the profile's deferred jobs would exceed its budget (the max_bytes of its job stream)")

// deferUsage is what one profile's deferred jobs take in MAIL_DEFER and
// MAIL_DEFERRED as last counted (at), plus what this process deferred since.
// Other replicas' deferrals since the count are not in it: the budget holds
// within what the replicas defer in deferUsageRefresh.
type deferUsage struct {
	budget int64 // <= 0: unlimited
	bytes  int64
	at     time.Time
}

// deferUsageRefresh is how long a count of a profile's deferred bytes is
// used before it is counted again (a headers-only scan of its schedules).
const deferUsageRefresh = 10 * time.Second

// headerDeferredSize carries the size of a body waiting by reference on its
// schedule, for the budget count.
const headerDeferredSize = "Mail-Deferred-Size"

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
// A job that would take its profile's deferred bytes over the profile's
// budget is not stored: ErrDeferBudget (see Schedules).
func (s *Schedules) Schedule(ctx context.Context, profile, jobID string, data []byte, replay string, origin uint64, at time.Time) error {
	if err := s.reserve(ctx, profile, int64(len(data))); err != nil {
		return fmt.Errorf("queue: schedule job %s: %w", jobID, err)
	}
	ref, size := "", len(data)
	if len(data)+scheduleHeadroom > s.maxPayload() {
		var err error
		if ref, err = s.storeBody(ctx, profile, jobID, data); err != nil {
			s.release(profile, int64(size))
			return fmt.Errorf("queue: schedule job %s: %w", jobID, err)
		}
		data = nil
	}
	if err := s.schedule(ctx, profile, jobID, data, ref, size, replay, origin, at); err != nil {
		s.release(profile, int64(size))
		return err
	}
	return nil
}

// reserve counts n more bytes against profile's budget, or returns
// ErrDeferBudget when they do not fit. The count is renewed when older than
// deferUsageRefresh; a count that fails is an error (nothing is deferred
// blind).
func (s *Schedules) reserve(ctx context.Context, profile string, n int64) error {
	s.mu.Lock()
	u := s.usage[profile]
	s.mu.Unlock()
	if u == nil {
		st, err := s.js.Stream(ctx, contract.JobsStream(profile))
		if err != nil {
			return fmt.Errorf("budget of %s: %w", profile, err)
		}
		s.mu.Lock()
		if s.usage == nil {
			s.usage = map[string]*deferUsage{}
		}
		if u = s.usage[profile]; u == nil {
			u = &deferUsage{budget: st.CachedInfo().Config.MaxBytes}
			s.usage[profile] = u
		}
		s.mu.Unlock()
	}
	if u.budget <= 0 {
		return nil
	}
	s.mu.Lock()
	stale := time.Since(u.at) > deferUsageRefresh
	s.mu.Unlock()
	if stale {
		used, err := s.countWithRetry(ctx, profile)
		s.mu.Lock()
		switch {
		case err == nil:
			u.bytes, u.at = used, time.Now()
		case u.at.IsZero():
			s.mu.Unlock()
			return fmt.Errorf("budget of %s: %w", profile, err)
		}
		// A count that failed after an earlier one: the earlier one (with
		// this process's deferrals since) stands until the next try.
		s.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if u.bytes+n > u.budget {
		return fmt.Errorf("%w: %s has %d bytes deferred, %d more would exceed %d", ErrDeferBudget, profile, u.bytes, n, u.budget)
	}
	u.bytes += n
	return nil
}

// countWithRetry is DeferredBytes, tried again for a moment when another
// replica's count of the same profile is under way (a work-queue stream
// takes one consumer per filter at a time).
func (s *Schedules) countWithRetry(ctx context.Context, profile string) (int64, error) {
	var apiErr *jetstream.APIError
	for wait := 20 * time.Millisecond; ; wait *= 2 {
		n, err := s.DeferredBytes(ctx, profile)
		if err == nil || !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeWorkQueueNotUnique || wait > time.Second {
			return n, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// errCodeWorkQueueNotUnique is nats-server's "filtered consumer not unique on
// workqueue stream" (server/errors.json, 10100).
const errCodeWorkQueueNotUnique jetstream.ErrorCode = 10100

// release gives back n bytes reserved for a deferral that was not stored.
func (s *Schedules) release(profile string, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.usage[profile]; u != nil && u.budget > 0 {
		u.bytes = max(u.bytes-n, 0)
	}
}

// DeferredBytes counts what profile's deferred jobs take: the bodies of its
// waiting schedules (mail.schedule.<profile>.>) and the bodies waiting by
// reference in MAIL_DEFERRED, read from their schedules' headers. It scans
// headers only (Browse), one request per 2,000 schedules. Fired schedules
// not yet taken (mail.due.<profile>, the profile's due consumer's filter,
// which no other consumer of the work-queue stream may overlap) are not
// counted: the worker takes them as they fire.
func (s *Schedules) DeferredBytes(ctx context.Context, profile string) (int64, error) {
	st, err := s.js.Stream(ctx, contract.StreamDefer)
	if err != nil {
		return 0, err
	}
	var total int64
	err = Browse(ctx, st, BrowseOptions{Filter: contract.ScheduleSubjectPrefix + profile + ".>", HeadersOnly: true, WorkQueue: true},
		func(m jetstream.Msg) (bool, error) {
			h := m.Headers()
			n, _ := strconv.ParseInt(h.Get("Nats-Msg-Size"), 10, 64)
			r, _ := strconv.ParseInt(h.Get(headerDeferredSize), 10, 64)
			total += n + r
			return true, nil
		})
	if err != nil {
		return 0, fmt.Errorf("count the deferred bytes of %s: %w", profile, err)
	}
	return total, nil
}

func (s *Schedules) schedule(ctx context.Context, profile, jobID string, data []byte, ref string, size int, replay string, origin uint64, at time.Time) error {
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
		h.Set(headerDeferredSize, strconv.Itoa(size))
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
	size, _ := strconv.Atoi(m.Header.Get(headerDeferredSize))
	return s.schedule(ctx, profile, jobID, m.Data, m.Header.Get(contract.HeaderDeferredRef), size, m.Header.Get(contract.HeaderReplay), origin, at)
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
