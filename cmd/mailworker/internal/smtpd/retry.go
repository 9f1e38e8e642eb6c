package smtpd

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// Retry records (README, "SMTP retries"). A submission whose answer the
// client may not have seen has a record, in the profile's store, of its
// submission key and job id, so that the client's retry, on any replica, is
// the same job. Records have one of two names:
//
//   - a session's record, "smtp-unanswered/c/<replica>-<random>": written
//     before each 250 of the session, each submission's record replacing
//     the one before it (whose answer the client has read, since it sent
//     another transaction): one broker write per message, and one removal
//     when the session ends after its last answer was read. A session whose
//     record must stay (an answer that may be lost: a 451 after a publish
//     that may have landed) goes on under a new name. Only a replica that
//     watches the records (MarkWatcher) finds a submission in them: its
//     value carries the submission key.
//   - a submission's record, "smtp-unanswered/<submission key>": written
//     when the answer is known to be at risk without a record before it
//     (smtp.recordBeforeAnswer false, a failed record write) and by a
//     replica that does not watch the records; a direct look-up finds it.
const (
	markSubmission = "smtp-unanswered/"
	markSession    = "smtp-unanswered/c/"
)

func retryMark(key string) string { return markSubmission + key }

// A record's value is "<writer>/<job id>" (a submission's record) or
// "<writer>/<job id>/<submission key>" (a session's record); writer is the
// replica that wrote it (Server.self), whose own copy is kept by its
// writes, not by the broker's echo of them (which may arrive after a later
// removal).
func parseMark(v string) (writer, id, key string) {
	writer, rest, ok := strings.Cut(v, "/")
	if !ok {
		return "", v, ""
	}
	id, key, _ = strings.Cut(rest, "/")
	return writer, id, key
}

// pendingAnswer is an accepted submission whose 250 the client has not been
// seen to read yet.
type pendingAnswer struct {
	key, id string
	marked  bool   // a record of it exists
	rec     string // the record's name, when marked
	rev     uint64 // the record's revision when known (0: remove whatever is there)
}

// BeforeCommand (go-smtp CommandObserver): a client that sends a command
// after our answer to DATA has read it.
func (ss *session) BeforeCommand(string) { ss.answered() }

// answered drops the pending answer: the client read it.
func (ss *session) answered() {
	if ss.pending == nil {
		return
	}
	p := ss.pending
	ss.pending = nil
	if p.marked {
		// This replica forgets it now; the store's record goes with the
		// next submission's writes (replaced by its record, or removed) or
		// at the end of the session, off the path of the client's next
		// command.
		ss.s.marks[ss.cred.Profile].delRev(p.rec, p.rev)
		ss.unmarkDue = p
	}
}

// sessionRecord is the name of the session's record.
func (ss *session) sessionRecord() string {
	if ss.recName == "" {
		ss.recName = markSession + ss.s.self + "-" + contract.NewJobID()[:16]
	}
	return ss.recName
}

// answerRecord is what goes with the publish of one submission: its job id
// (a recorded submission's when this is its retry), the writing of its
// record and the removal of the record of the submission answered before.
type answerRecord struct {
	ss       *session
	ctx      context.Context
	key, id  string
	matched  bool           // the retry of a recorded submission: its record is kept
	write    bool           // a record is to be written before the answer
	due      *pendingAnswer // the previous submission's record, to be removed
	rec      string         // the record's name
	rev      uint64
	err      error // of the record's write
	written  bool  // a record was written (err nil)
	replaced *pendingAnswer
	wg       sync.WaitGroup
	waits    []func() // of the asynchronous writes (AsyncMarker)
}

// prepareRecord looks submission key up (its job id) and decides which
// writes go with the submission's publish (start): the writing of its record
// before the answer (unless smtp.recordBeforeAnswer is false or it is the
// retry of a recorded submission) and the removal of the previous
// submission's record (a session's record is replaced by the write instead:
// one broker write). ctx bounds the writes (the publish's).
func (ss *session) prepareRecord(ctx context.Context, key string) *answerRecord {
	s := ss.s
	r := &answerRecord{ss: ss, ctx: ctx, key: key}
	var rev uint64
	r.id, r.rec, rev, r.matched = ss.jobID(key)
	if r.matched {
		r.rev = rev
	}
	r.due = ss.unmarkDue
	ss.unmarkDue = nil
	if !r.matched && !s.cfg.NoRecordBeforeAnswer {
		r.write = true
		r.rec = retryMark(key)
		if s.marks[ss.cred.Profile].isReady() {
			r.rec = ss.sessionRecord()
		}
		if r.due != nil && r.due.rec == r.rec {
			r.replaced, r.due = r.due, nil // the write replaces it
		}
	}
	return r
}

// writes reports whether start has any write to send.
func (r *answerRecord) writes() bool { return r.write || r.due != nil }

// start sends the writes prepareRecord decided on, in parallel with the
// caller's publish: without waiting when the store can (AsyncMarker; they
// then leave in one write with a job sent just before), else each on its
// own goroutine.
func (r *answerRecord) start() {
	ss := r.ss
	am, async := ss.s.store.(AsyncMarker)
	if r.write {
		if async {
			w, err := am.MarkAsync(r.ctx, ss.cred.Profile, r.rec, ss.recordValue(r.rec, r.key, r.id))
			r.err = err
			if err == nil {
				r.waits = append(r.waits, func() {
					r.rev, r.err = w(r.ctx)
					ss.recorded(r.rec, r.key, r.id, r.rev, r.err)
					r.written = r.err == nil
				})
			}
		} else {
			r.wg.Go(func() {
				r.rev, r.err = ss.record(r.ctx, r.rec, r.key, r.id)
				r.written = r.err == nil
			})
		}
	}
	if due := r.due; due != nil {
		if async {
			w, err := am.UnmarkAsync(r.ctx, ss.cred.Profile, due.rec, ss.s.self+"/", due.rev)
			if err != nil {
				ss.unmarked(due.rec, due.rev, err)
			} else {
				r.waits = append(r.waits, func() { ss.unmarked(due.rec, due.rev, w(r.ctx)) })
			}
		} else {
			r.wg.Go(func() { ss.unmark(due.rec, due.rev) })
		}
	}
}

// wait waits for the writes of start and reports whether the submission
// has a record (its own or, for a retry, the earlier one's).
func (r *answerRecord) wait() (marked bool) {
	r.wg.Wait()
	for _, w := range r.waits {
		w()
	}
	ss := r.ss
	if r.err != nil {
		ss.s.m.RetryRecordFailures.Inc()
		ss.log(zerolog.ErrorLevel).Err(r.err).Str("job", r.id).Msg("smtp retry record not written before the answer: if the answer is lost, the retry may be sent twice")
		if p := r.replaced; p != nil {
			r.replaced = nil
			ss.unmark(p.rec, p.rev) // at its revision: a write that landed after all stays
		}
	}
	return r.matched || r.written
}

// keep is called when the submission's answer may be lost (a 451 after a
// publish that may have landed): its record stays, and the session's
// next submissions write theirs under another name.
func (r *answerRecord) keep() {
	if r.written && r.rec == r.ss.recName {
		r.ss.recName = ""
	}
}

// drop removes the record of a submission certainly not stored.
func (r *answerRecord) drop() {
	if r.written {
		r.ss.unmark(r.rec, r.rev)
	}
}

// pending is the submission's pending answer after its 250.
func (r *answerRecord) pending(marked bool) *pendingAnswer {
	return &pendingAnswer{key: r.key, id: r.id, marked: marked, rec: r.rec, rev: r.rev}
}

// jobID is the job id of a submission: the id of the earlier transaction of
// the same submission whose answer the client may not have seen, if one was
// recorded within RetryWindow (the client's retry is then the same job, which
// the worker sends once), with its record's name and revision, else a new
// one. A submission repeated after its answer was read is a new mail
// (Microsoft 365 delivers both).
func (ss *session) jobID(key string) (id, rec string, rev uint64, matched bool) {
	s := ss.s
	x := s.marks[ss.cred.Profile]
	x.waitReady(s.cfg.PublishTimeout)
	e, found, known := x.get(key)
	var err error
	if !known {
		s.m.RetryLookups.Inc()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
		defer cancel()
		var v string
		v, e.at, found, err = s.store.Marked(ctx, ss.cred.Profile, retryMark(key))
		_, e.id, _ = parseMark(v)
		e.rec = retryMark(key)
	}
	switch {
	case err != nil:
		ss.log(zerolog.WarnLevel).Err(err).Msg("smtp retry record not readable; the submission is a new job")
	case found && s.now().Sub(e.at) <= s.cfg.RetryWindow && contract.ValidJobID(e.id):
		s.m.RetriesMatched.Inc()
		ss.log(zerolog.InfoLevel).Str("job", e.id).Msg("smtp submission is a retry of one whose answer may not have been seen")
		return e.id, e.rec, e.rev, true
	}
	return "smtp-" + key[:22] + "-" + contract.NewJobID(), "", 0, false
}

// unmark removes record rec if it is still revision rev (0: any); a record
// written since under that name stays.
func (ss *session) unmark(rec string, rev uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.PublishTimeout)
	defer cancel()
	ss.unmarked(rec, rev, ss.s.store.Unmark(ctx, ss.cred.Profile, rec, ss.s.self+"/", rev))
}

// unmarked is what follows the removal of record rec at revision rev.
func (ss *session) unmarked(rec string, rev uint64, err error) {
	if err != nil {
		ss.log(zerolog.WarnLevel).Err(err).Msg("smtp retry record not removed: a repeat of that submission within the retry window is taken for its retry")
	}
	ss.s.marks[ss.cred.Profile].delRev(rec, rev)
}

// record writes record rec of submission key and job id and returns its
// revision.
func (ss *session) record(ctx context.Context, rec, key, id string) (uint64, error) {
	rev, err := ss.s.store.Mark(ctx, ss.cred.Profile, rec, ss.recordValue(rec, key, id))
	ss.recorded(rec, key, id, rev, err)
	return rev, err
}

// recordValue is the value of record rec of submission key and job id.
func (ss *session) recordValue(rec, key, id string) string {
	v := ss.s.self + "/" + id
	if rec != retryMark(key) {
		v += "/" + key
	}
	return v
}

// recorded keeps this replica's copy of a record written (err nil).
func (ss *session) recorded(rec, key, id string, rev uint64, err error) {
	if err == nil {
		ss.s.marks[ss.cred.Profile].put(rec, markEntry{key: key, id: id, at: ss.s.now(), rev: rev}, false)
	}
}

// remember records key's job id (a submission's record) so that the
// client's retry is the same job.
func (ss *session) remember(key, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.PublishTimeout)
	defer cancel()
	if _, err := ss.record(ctx, retryMark(key), key, id); err != nil {
		ss.s.m.RetryRecordFailures.Inc()
		ss.log(zerolog.ErrorLevel).Err(err).Str("job", id).Msg("smtp retry record not written: a retry of this submission may be sent twice")
		return
	}
	ss.log(zerolog.InfoLevel).Str("job", id).Msg("smtp submission recorded for the client's retry")
}

// markIndex is this replica's copy of one profile's retry records, kept
// current by the broker (MarkWatcher): a submission is looked up here, not
// in the store, once the copy holds every record written before it.
type markIndex struct {
	loaded   chan struct{} // closed when ready
	failed   chan struct{} // closed when the watch could not be set up, or did not load in time
	failOnce sync.Once
	mu       sync.Mutex
	ready    bool
	recs     map[string]markEntry           // by record name
	keys     map[string]map[string]struct{} // submission key -> names of its records
}

type markEntry struct {
	key, id string // submission key, job id
	rec     string // the record's name (set by get)
	at      time.Time
	rev     uint64
}

func newMarkIndex() *markIndex {
	return &markIndex{loaded: make(chan struct{}), failed: make(chan struct{}),
		recs: map[string]markEntry{}, keys: map[string]map[string]struct{}{}}
}

// get returns the newest record of submission key; known is false when the
// index cannot tell (no index, or not loaded yet): then the store has to be
// asked.
func (x *markIndex) get(key string) (e markEntry, found, known bool) {
	if x == nil {
		return e, false, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for rec := range x.keys[key] {
		if r := x.recs[rec]; !found || r.rev > e.rev {
			e, found = r, true
			e.rec = rec
		}
	}
	return e, found, x.ready
}

// put keeps (or, deleted, forgets) record rec, unless what is here is newer.
func (x *markIndex) put(rec string, e markEntry, deleted bool) {
	if x == nil {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	old, ok := x.recs[rec]
	if ok && e.rev != 0 && old.rev > e.rev {
		return // older than what is here
	}
	if ok {
		x.forget(rec, old.key)
	}
	if deleted {
		return
	}
	x.recs[rec] = e
	if x.keys[e.key] == nil {
		x.keys[e.key] = map[string]struct{}{}
	}
	x.keys[e.key][rec] = struct{}{}
}

// forget drops record rec of submission key (mu held).
func (x *markIndex) forget(rec, key string) {
	delete(x.recs, rec)
	delete(x.keys[key], rec)
	if len(x.keys[key]) == 0 {
		delete(x.keys, key)
	}
}

// update applies a change seen by the watch.
func (x *markIndex) update(u queue.MarkUpdate) {
	_, id, key := parseMark(u.Value)
	if !strings.HasPrefix(u.Key, markSession) {
		key = strings.TrimPrefix(u.Key, markSubmission)
	}
	x.put(u.Key, markEntry{key: key, id: id, at: u.At, rev: u.Rev}, u.Deleted || key == "")
}

// delRev forgets rec if it is revision rev (0: any revision).
func (x *markIndex) delRev(rec string, rev uint64) {
	if x == nil {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if e, ok := x.recs[rec]; ok && (rev == 0 || e.rev == rev) {
		x.forget(rec, e.key)
	}
}

func (x *markIndex) setReady() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.ready {
		x.ready = true
		close(x.loaded)
	}
}

func (x *markIndex) isReady() bool {
	if x == nil {
		return false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.ready
}

func (x *markIndex) fail() { x.failOnce.Do(func() { close(x.failed) }) }

// waitReady waits at most d for the index to be loaded (a replica that has
// just started then finds the records of the others' sessions, which no
// direct look-up finds), unless its watch could not be set up or an
// earlier wait timed out: then it does not wait.
func (x *markIndex) waitReady(d time.Duration) {
	if x == nil {
		return
	}
	select {
	case <-x.loaded:
		return
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-x.loaded:
	case <-x.failed:
	case <-t.C:
		x.fail()
	}
}

// watchMarks starts a watch of each profile's retry records when the store
// can (MarkWatcher); until one is loaded, and without one, each submission
// looks its record up in the store.
func (s *Server) watchMarks() {
	w, ok := s.store.(MarkWatcher)
	if !ok {
		return
	}
	for p := range s.cfg.Senders {
		x := newMarkIndex()
		s.marks[p] = x
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for delay := time.Second; ; delay = min(2*delay, time.Minute) {
				done, err := w.WatchMarks(s.ctx, p, func(u queue.MarkUpdate) {
					if !strings.HasPrefix(u.Key, markSubmission) {
						return // the message counters
					}
					if writer, _, _ := parseMark(u.Value); writer == s.self {
						return // this replica's own records
					}
					x.update(u)
				}, func() {
					x.setReady()
					s.m.RetryRecordsWatched.WithLabelValues(p).Set(1)
				})
				if err == nil {
					<-done
					return
				}
				x.fail()
				s.log.Warn().Err(err).Str("profile", p).Msg("smtp retry records not watched (NATS permissions?); each submission looks its record up, and the records of other replicas' sessions are not found")
				select {
				case <-s.ctx.Done():
					return
				case <-time.After(delay):
				}
			}
		}()
	}
}
