package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HeaderGeneration carries a dead letter's replay generation (MAIL_DLQ).
const HeaderGeneration = "Mail-Generation"

// maxErrorHeader caps the Mail-Error header.
const maxErrorHeader = 1024

// HeaderTruncated is set on a dead letter whose job was too large to be
// stored whole next to the failure headers (the server's max_payload): its
// value is the original size in bytes, and Body holds only the first bytes.
// Such a record cannot be replayed as is (replay it with a fixed body).
const HeaderTruncated = "Mail-Body-Truncated"

// ErrAmbiguousJob is returned when a job id without a profile matches jobs
// of more than one profile: give the profile.
var ErrAmbiguousJob = errors.New("queue: the job id exists in more than one profile")

// ErrTruncated is returned when replaying a truncated dead letter without a
// replacement body.
var ErrTruncated = errors.New("queue: the dead letter holds only part of the job")

// ErrNotInDLQ is returned when a job has no dead-letter record.
var ErrNotInDLQ = errors.New("queue: job is not in the dead-letter queue")

// subject is the subject filter of q's profile (every profile when empty).
func (q DLQQuery) subject() (string, error) {
	if q.Profile == "" {
		return contract.DLQSubjectPrefix + ">", nil
	}
	if !validProfile(q.Profile) {
		return "", fmt.Errorf("queue: dlq query: invalid profile %s", contract.Quote(q.Profile))
	}
	return contract.DLQSubject(q.Profile), nil
}

// match reports whether dl (read with its body when q.From is set) matches
// q's reason, job id, sender and time bounds; the profile is matched by the
// subject, the paging cursor by the caller.
func (q DLQQuery) match(dl *contract.DeadLetter, stored time.Time) bool {
	switch {
	case q.Reason != "" && dl.Reason != q.Reason,
		q.JobID != "" && dl.JobID != q.JobID,
		!q.Since.IsZero() && stored.Before(q.Since),
		!q.Until.IsZero() && stored.After(q.Until):
		return false
	}
	from := strings.ToLower(strings.TrimSpace(q.From))
	return from == "" || strings.ToLower(strings.TrimSpace(senderAddress(dl.From))) == from
}

// ReplayOptions tune a replay.
type ReplayOptions struct {
	// Body replaces the job body when set (a fixed job); it must DecodeJob
	// cleanly and its id, if any, must be the replayed job's id.
	Body []byte
}

// DLQ is the dead-letter store (stream MAIL_DLQ, records on mail.dlq.<profile>).
type DLQ struct {
	js     jetstream.JetStream
	states *States
	events *Events
}

func oneLine(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, s)
	if len(s) > max {
		s = s[:max]
	}
	return s
}

// Put stores dl: Body unchanged as the message body, the facts as headers,
// Nats-Msg-Id "dlq.<profile>.<jobid>.g<generation>" so that a failure
// recorded twice (a redelivery) within the duplicate window is stored once.
// JobID, Profile and a valid Reason are required; a zero FailedAt is set to
// now.
//
// A record whose body and headers would exceed the connection's max payload
// (a job published just under the limit) is stored with the body cut to fit
// and HeaderTruncated set: a job must always reach its outcome, and a record
// that cannot be written would leave it looping for ever.
func (d *DLQ) Put(ctx context.Context, dl contract.DeadLetter) error {
	switch {
	case !contract.ValidJobID(dl.JobID):
		return fmt.Errorf("queue: dead letter: invalid job id %s", contract.Quote(dl.JobID))
	case !validProfile(dl.Profile):
		return fmt.Errorf("queue: dead letter %s: invalid profile %s", dl.JobID, contract.Quote(dl.Profile))
	case !dl.Reason.Valid():
		return fmt.Errorf("queue: dead letter %s: unknown reason %s", dl.JobID, contract.Quote(string(dl.Reason)))
	}
	if dl.FailedAt.IsZero() {
		dl.FailedAt = time.Now()
	}
	h := nats.Header{}
	h.Set(contract.HeaderMsgID, "dlq."+dl.Profile+"."+dl.JobID+".g"+strconv.Itoa(dl.Generation))
	h.Set(contract.HeaderJobID, dl.JobID)
	h.Set(contract.HeaderProfile, dl.Profile)
	h.Set(contract.HeaderReason, string(dl.Reason))
	h.Set(contract.HeaderError, oneLine(dl.Error, maxErrorHeader))
	h.Set(contract.HeaderAttempts, strconv.Itoa(dl.Attempts))
	h.Set(contract.HeaderFailedAt, dl.FailedAt.UTC().Format(time.RFC3339Nano))
	h.Set(HeaderGeneration, strconv.Itoa(dl.Generation))
	if dl.GraphRequestID != "" {
		h.Set(contract.HeaderGraphRequestID, oneLine(dl.GraphRequestID, 128))
	}
	if calls := formatCalls(dl.GraphCalls); calls != "" {
		h.Set(contract.HeaderGraphCalls, oneLine(calls, 1024))
	}
	if dl.Ambiguous {
		h.Set(contract.HeaderAmbiguous, "true")
	}
	body := dl.Body
	if limit := d.maxPayload(); limit > 0 {
		room := limit - headerSize(h) - len(HeaderTruncated) - 32
		if len(body) > room {
			h.Set(HeaderTruncated, strconv.Itoa(len(body)))
			body = body[:max(room, 0)]
		}
	}
	m := &nats.Msg{Subject: contract.DLQSubject(dl.Profile), Header: h, Data: body}
	if _, err := d.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("queue: store dead letter %s: %w", dl.JobID, err)
	}
	return nil
}

// maxPayload is the server's max_payload as the connection learnt it (0 when
// unknown).
func (d *DLQ) maxPayload() int {
	if nc := d.js.Conn(); nc != nil {
		return int(nc.MaxPayload())
	}
	return 0
}

// headerSize is the encoded size of h on the wire ("NATS/1.0\r\n", one
// "Key: value\r\n" per value, "\r\n").
func headerSize(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(": \r\n") + len(v)
		}
	}
	return n
}

func deadLetterOf(m *jetstream.RawStreamMsg) contract.DeadLetter {
	h := m.Header
	dl := contract.DeadLetter{
		JobID:          h.Get(contract.HeaderJobID),
		Profile:        h.Get(contract.HeaderProfile),
		Reason:         contract.Reason(h.Get(contract.HeaderReason)),
		Error:          h.Get(contract.HeaderError),
		GraphRequestID: h.Get(contract.HeaderGraphRequestID),
		GraphCalls:     parseCalls(h.Get(contract.HeaderGraphCalls)),
		Ambiguous:      h.Get(contract.HeaderAmbiguous) == "true",
		Body:           m.Data,
		Seq:            m.Sequence,
	}
	if dl.Profile == "" {
		dl.Profile = strings.TrimPrefix(m.Subject, contract.DLQSubjectPrefix)
	}
	dl.Attempts, _ = strconv.Atoi(h.Get(contract.HeaderAttempts))
	dl.Generation, _ = strconv.Atoi(h.Get(HeaderGeneration))
	dl.Truncated, _ = strconv.Atoi(h.Get(HeaderTruncated))
	dl.FailedAt, _ = time.Parse(time.RFC3339Nano, h.Get(contract.HeaderFailedAt))
	var head struct {
		From    string `json:"from"`
		Subject string `json:"subject"`
	}
	if json.Unmarshal(m.Data, &head) == nil {
		dl.From, dl.Subject = head.From, head.Subject
	}
	return dl
}

func (d *DLQ) stream(ctx context.Context) (jetstream.Stream, error) {
	s, err := lookupStream(ctx, d.js, contract.StreamDLQ)
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", contract.StreamDLQ, err)
	}
	return s, nil
}

// lookupStream is js.Stream, asked again as leaderRetry asks: a request
// sent on a connection to a node that then froze is never answered (the
// connection fails over to another node meanwhile), and a node that has
// just come back answers 503.
func lookupStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	for try := 1; ; try++ {
		rctx, cancel := context.WithTimeout(ctx, leaderTimeout)
		s, err := js.Stream(rctx, name)
		cancel()
		if err == nil || try >= directTries || !transient(err) || !retryPause(ctx, try) {
			return s, err
		}
	}
}

// each calls fn with every dead letter matching q (q.After and q.Limit
// ignored), oldest first, read through BrowseDirect (a batch per request, not a
// request per record); with headersOnly their Body (and the fields parsed
// from it) are empty, unless q.From needs the body to match.
func (d *DLQ) each(ctx context.Context, q DLQQuery, headersOnly bool, fn func(contract.DeadLetter) error) error {
	subj, err := q.subject()
	if err != nil {
		return err
	}
	if _, err := d.stream(ctx); err != nil {
		return err
	}
	headersOnly = headersOnly && strings.TrimSpace(q.From) == ""
	err = BrowseDirect(ctx, d.js, contract.StreamDLQ, BrowseOptions{Filter: subj, HeadersOnly: headersOnly, Since: q.Since}, func(m jetstream.Msg) (bool, error) {
		dl := deadLetterOfMsg(m, headersOnly)
		var stored time.Time
		if md, err := m.Metadata(); err == nil {
			stored = md.Timestamp
		}
		if !q.match(&dl, stored) {
			return true, nil
		}
		return true, fn(dl)
	})
	if err != nil {
		return fmt.Errorf("queue: read %s: %w", contract.StreamDLQ, err)
	}
	return nil
}

// Each calls fn with every dead letter matching q (q.After and q.Limit
// ignored), bodies included, oldest first, until fn returns an error (which
// Each returns, wrapped). Bodies are read in batches of a bounded size
// (Browse), so a scan's memory does not grow with the records' size.
func (d *DLQ) Each(ctx context.Context, q DLQQuery, fn func(contract.DeadLetter) error) error {
	return d.each(ctx, q, false, fn)
}

// List returns the dead letters matching q (all of them: q.After and
// q.Limit are ignored; Page reads one page), oldest first.
func (d *DLQ) List(ctx context.Context, q DLQQuery) ([]contract.DeadLetter, error) {
	var out []contract.DeadLetter
	err := d.each(ctx, q, false, func(dl contract.DeadLetter) error {
		out = append(out, dl)
		return nil
	})
	return out, err
}

// Get returns the newest dead letter of profile's job jobID, or ErrNotInDLQ.
// An empty profile looks in every profile and returns ErrAmbiguousJob
// (wrapped, naming the profiles) when more than one has the id.
func (d *DLQ) Get(ctx context.Context, profile, jobID string) (contract.DeadLetter, error) {
	if !contract.ValidJobID(jobID) {
		return contract.DeadLetter{}, fmt.Errorf("queue: dlq: invalid job id %s", contract.Quote(jobID))
	}
	all, err := d.List(ctx, DLQQuery{Profile: profile, JobID: jobID})
	if err != nil {
		return contract.DeadLetter{}, err
	}
	if len(all) == 0 {
		return contract.DeadLetter{}, fmt.Errorf("%w: %s", ErrNotInDLQ, jobID)
	}
	var profiles []string
	for _, dl := range all {
		if !slices.Contains(profiles, dl.Profile) {
			profiles = append(profiles, dl.Profile)
		}
	}
	if len(profiles) > 1 {
		return contract.DeadLetter{}, fmt.Errorf("%w: job %s is dead-lettered in profiles %s: give the profile", ErrAmbiguousJob, jobID, strings.Join(profiles, ", "))
	}
	// The newest record as the leader holds it: the listing may come from
	// a follower that has not applied a replay's delete yet (a replay
	// deletes the job's older records too, so none is left then).
	dl, err := d.At(ctx, all[len(all)-1].Seq)
	if errors.Is(err, ErrNotInDLQ) {
		return contract.DeadLetter{}, fmt.Errorf("%w: %s", ErrNotInDLQ, jobID)
	}
	return dl, err
}

// Replay puts the newest dead letter of profile's job jobID (profile "" as in
// Get) back on its profile's MAIL_JOBS_<profile>, in this order:
//  1. reset the job state: state replayed, Attempts 0, Ambiguous false,
//     AmbiguousBefore when the record (or the state) says a send may have
//     delivered, Generation = the record's generation + 1;
//  2. publish the body (opts.Body if set) to JobSubject(profile) with headers
//     Mail-Job-Id, Mail-Replay=<generation>, and a Nats-Msg-Id derived from
//     the record (replayMsgID: stable, but not guessable by a producer);
//  3. publish a replayed event;
//  4. delete the record (and any older records of the job).
//
// Re-running after a crash at any step is safe: the generation comes from the
// record, so the re-publish carries the same Nats-Msg-Id and JetStream drops
// it within the duplicate window; if the state shows the worker already took
// the replayed job (same generation, state no longer replayed), steps 1-3 are
// skipped. It returns ErrNotInDLQ (wrapped) when there is no record, and an
// *InvalidError when opts.Body is not a valid job.
func (d *DLQ) Replay(ctx context.Context, profile, jobID string, opts ReplayOptions) (contract.DeadLetter, error) {
	dl, err := d.Get(ctx, profile, jobID)
	if err != nil {
		return dl, err
	}
	return dl, d.replay(ctx, dl, opts)
}

// replayMsgID is the Nats-Msg-Id of a replay's publish: the same for a re-run
// of the same replay (so JetStream drops the second publish), but derived
// from facts only the worker and support can read (the record's stream
// sequence and failure time), so that no producer can publish it first and
// have the replay dropped as a duplicate.
func replayMsgID(dl contract.DeadLetter, gen int) string {
	sum := sha256.Sum256([]byte(dl.Profile + "\x00" + dl.JobID + "\x00" + strconv.Itoa(gen) + "\x00" +
		strconv.FormatUint(dl.Seq, 10) + "\x00" + strconv.FormatInt(dl.FailedAt.UnixNano(), 10)))
	return "replay." + dl.Profile + "." + dl.JobID + "." + hex.EncodeToString(sum[:16])
}

func (d *DLQ) replay(ctx context.Context, dl contract.DeadLetter, opts ReplayOptions) error {
	if err := d.replayOnly(ctx, dl, opts); err != nil {
		return err
	}
	s, err := d.stream(ctx)
	if err != nil {
		return err
	}
	// Delete this record and any older record of the same job.
	var seqs []uint64
	err = d.each(ctx, DLQQuery{Profile: dl.Profile, JobID: dl.JobID}, true, func(o contract.DeadLetter) error {
		if o.Seq <= dl.Seq {
			seqs = append(seqs, o.Seq)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, seq := range seqs {
		if err := s.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("queue: replay %s: delete dead letter %d: %w", dl.JobID, seq, err)
		}
	}
	return nil
}

// replayOnly is steps 1-3 of Replay: state, job, event; no record deleted.
func (d *DLQ) replayOnly(ctx context.Context, dl contract.DeadLetter, opts ReplayOptions) error {
	body := dl.Body
	if dl.Truncated > 0 && opts.Body == nil {
		return fmt.Errorf("%w: job %s: %d of %d bytes kept (it was near the server's max_payload): replay it with a fixed body (--file)", ErrTruncated, dl.JobID, len(dl.Body), dl.Truncated)
	}
	if opts.Body != nil {
		j, err := contract.DecodeJob(opts.Body)
		if err != nil {
			return err
		}
		if j.ID != "" && j.ID != dl.JobID {
			return &contract.InvalidError{Field: "id", Rule: fmt.Sprintf("the fixed job's id %s is not the replayed job's id %s", contract.Quote(j.ID), contract.Quote(dl.JobID)), Reason: contract.ReasonInvalidJob}
		}
		body = opts.Body
	}
	gen := dl.Generation + 1
	taken, err := d.replayState(ctx, dl, gen, opts.Body != nil)
	if err != nil {
		return err
	}
	if !taken {
		h := nats.Header{}
		h.Set(contract.HeaderJobID, dl.JobID)
		h.Set(contract.HeaderReplay, strconv.Itoa(gen))
		h.Set(contract.HeaderMsgID, replayMsgID(dl, gen))
		m := &nats.Msg{Subject: contract.JobSubject(dl.Profile), Header: h, Data: body}
		// The event's time is taken before the job is out: a worker may
		// send it and record `sent` before the event below is stored, and
		// `replayed` must still come first in the job's history.
		ev := contract.Event{JobID: dl.JobID, Profile: dl.Profile, Event: contract.EventReplayed, At: time.Now().UTC()}
		if _, err := d.js.PublishMsg(ctx, m); err != nil {
			if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
				return fmt.Errorf("queue: replay %s: no stream %s takes profile %s's jobs (is the profile still configured? run `mailworker provision`): %w",
					dl.JobID, contract.JobsStream(dl.Profile), dl.Profile, err)
			}
			return fmt.Errorf("queue: replay %s: publish job: %w", dl.JobID, err)
		}
		var meta struct {
			Metadata map[string]string `json:"metadata"`
		}
		if json.Unmarshal(body, &meta) == nil {
			ev.Metadata = meta.Metadata
		}
		// The event's dedupe id is the replay's (one per record and
		// generation): a re-run of this replay stores it once, but a later
		// replay of a new record of the job at the same generation (a
		// job that failed again before the worker stored a state, as an
		// invalid job does) still records its own `replayed`.
		if err := d.events.publish(ctx, ev, "replayed."+strings.TrimPrefix(replayMsgID(dl, gen), "replay.")); err != nil {
			return fmt.Errorf("queue: replay %s: %w", dl.JobID, err)
		}
	}
	return nil
}

// replayState moves the job's state to `replayed` of generation gen with a
// compare-and-set against the revision it read; taken is true when that
// generation is already under way (a replay made twice). A conflict (a
// worker or another replay wrote meanwhile) is read again from the stream
// leader and decided again.
func (d *DLQ) replayState(ctx context.Context, dl contract.DeadLetter, gen int, newBody bool) (taken bool, err error) {
	get := d.states.Get
	for try := 0; try < 5; try++ {
		st, rev, err := get(ctx, dl.Profile, dl.JobID)
		if err != nil && !errors.Is(err, contract.ErrNoState) {
			return false, err
		}
		exists := err == nil
		if exists && (st.Generation > gen || st.Generation == gen && st.State != contract.StateReplayed) {
			return true, nil
		}
		// A send that may have delivered stays on record: the replay's
		// `sent` says possibleDuplicate.
		next := contract.JobState{
			JobID: dl.JobID, Profile: dl.Profile, State: contract.StateReplayed, Attempts: 0,
			Generation: gen, UpdatedAt: time.Now().UTC(), AmbiguousBefore: dl.Ambiguous || st.PossibleDuplicate(),
			Draft: replayDraft(st.Draft, newBody),
		}
		if err := contract.CheckTransition(st, next); err != nil {
			return false, fmt.Errorf("queue: replay %s: %w", dl.JobID, err)
		}
		if exists {
			_, err = d.states.Update(ctx, next, rev)
		} else {
			_, err = d.states.Create(ctx, next)
		}
		if errors.Is(err, contract.ErrStateConflict) || errors.Is(err, contract.ErrStateExists) {
			get = d.states.Latest
			continue
		}
		return false, err
	}
	return false, fmt.Errorf("queue: replay %s: its state keeps changing", dl.JobID)
}

// ReplayAll replays the newest dead letter of every job matching q and
// returns how many jobs it replayed. It stops at the first error.
func (d *DLQ) ReplayAll(ctx context.Context, q DLQQuery) (int, error) {
	all, err := d.List(ctx, q)
	if err != nil {
		return 0, err
	}
	newest := map[string]int{} // by StateKey(profile, job id)
	var order []string
	for i, dl := range all {
		k := StateKey(dl.Profile, dl.JobID)
		if _, ok := newest[k]; !ok {
			order = append(order, k)
		}
		newest[k] = i
	}
	n := 0
	for _, id := range order {
		if err := d.replay(ctx, all[newest[id]], ReplayOptions{}); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Purge deletes every dead letter matching q (q.After and q.Limit ignored)
// and returns how many, as PurgeDeadLetter does each one.
func (d *DLQ) Purge(ctx context.Context, q DLQQuery) (int, error) {
	n := 0
	err := d.each(ctx, q, true, func(dl contract.DeadLetter) error {
		if err := d.PurgeDeadLetter(ctx, dl); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("queue: purge dead letters: %w", err)
	}
	return n, nil
}

// forget deletes the state of a purged dead letter's job while it is still
// that dead letter's (dead_lettered, same generation), with a
// compare-and-set: a state a worker or a replay moved on meanwhile is kept.
func (d *DLQ) forget(ctx context.Context, dl contract.DeadLetter) error {
	get := d.states.Get
	for try := 0; try < 5; try++ {
		st, rev, err := get(ctx, dl.Profile, dl.JobID)
		if errors.Is(err, contract.ErrNoState) {
			return nil
		}
		if err != nil {
			return err
		}
		if st.State != contract.StateDeadLettered || st.Generation != dl.Generation {
			return nil
		}
		err = d.states.Delete(ctx, dl.Profile, dl.JobID, rev)
		if !errors.Is(err, contract.ErrStateConflict) {
			return err
		}
		get = d.states.Latest
	}
	return fmt.Errorf("queue: purge %s: its state keeps changing", dl.JobID)
}

// PurgeDeadLetter deletes the record dl (one returned by List, Page, Find or
// At; a record already gone is not an error), then the job's state while it
// is still that dead letter's (forget), so that the producer may publish the
// job id again at once (it would otherwise be suppressed as "already
// dead-lettered" until the state expires).
func (d *DLQ) PurgeDeadLetter(ctx context.Context, dl contract.DeadLetter) error {
	if err := d.PurgeRecord(ctx, dl.Seq); err != nil {
		return err
	}
	return d.forget(ctx, dl)
}

// formatCalls renders calls for the Mail-Graph-Calls header.
func formatCalls(calls []contract.GraphCall) string {
	parts := make([]string, 0, len(calls))
	for _, c := range calls {
		parts = append(parts, fmt.Sprintf("%d %s %s %s", c.Status, dash(c.RequestID), dash(c.ClientRequestID), dash(c.Date)))
	}
	return strings.Join(parts, "; ")
}

// parseCalls reads the Mail-Graph-Calls header.
func parseCalls(v string) []contract.GraphCall {
	var out []contract.GraphCall
	for _, part := range strings.Split(v, "; ") {
		f := strings.Fields(part)
		if len(f) != 4 {
			continue
		}
		status, _ := strconv.Atoi(f[0])
		out = append(out, contract.GraphCall{Status: status, RequestID: undash(f[1]), ClientRequestID: undash(f[2]), Date: undash(f[3])})
	}
	return out
}

func dash(s string) string {
	if s = strings.Join(strings.Fields(s), ""); s == "" {
		return "-"
	}
	return s
}

func undash(s string) string {
	if s == "-" {
		return ""
	}
	return s
}

// replayDraft is the draft (draft delivery mode) a replay goes on with. A
// draft whose send was attempted is kept whatever the body: the replay looks
// it up first and, if the mail went out, records it sent instead of sending
// it twice. A draft never sent is kept when the body is the original one
// (the replay resumes it rather than leaving it behind) and dropped when a
// fixed body replaces it (the fixed job gets a new draft; the old one was
// deleted when the job was dead-lettered, unless that failed, which
// mailworker_drafts_left_total counted).
func replayDraft(d *contract.Draft, newBody bool) *contract.Draft {
	if d == nil || d.ID == "" || (newBody && d.SendAt == nil) {
		return nil
	}
	return d
}
