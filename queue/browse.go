package queue

import (
	"context"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// BrowseOptions say what Browse reads.
type BrowseOptions struct {
	// Filter is the subject filter ("" = every subject of the stream).
	Filter string
	// StartSeq is the first stream sequence to read; 0 = from Since, or
	// from the start of the stream when Since is zero too.
	StartSeq uint64
	// Since starts at the first message stored at or after it (when
	// StartSeq is 0).
	Since time.Time
	// WorkQueue reads a work-queue stream, whose consumers must ack
	// explicitly: the consumer acks nothing (so nothing is removed), with no
	// limit of unacknowledged messages and an ack wait longer than the scan.
	// Its filter must not overlap another consumer's.
	WorkQueue bool
	// HeadersOnly reads headers without bodies (the server adds
	// Nats-Msg-Size): counting and filtering on headers stays cheap
	// whatever the bodies weigh.
	HeadersOnly bool
}

// browseBatchBytes bounds what one pull of bodies holds in memory: a batch
// of 500 records of 1 MB each would otherwise be half a gigabyte per scan.
const browseBatchBytes = 4 << 20

// browseBatch is how many messages one pull asks for (headers only: more).
const (
	browseBatch        = 500
	browseBatchHeaders = 2000
)

// Browse calls fn with the messages of s matching o, in stream order, until
// fn returns false or an error, or the messages stored when Browse started
// are all read. It reads through an ephemeral consumer (no acks, memory
// state, deleted on return): one request per batch instead of one per
// message, so a scan of 100,000 records is a few hundred round trips.
// It returns fn's error, or an error when the consumer cannot be created or
// a pull fails.
func Browse(ctx context.Context, s jetstream.Stream, o BrowseOptions, fn func(jetstream.Msg) (bool, error)) error {
	cfg := jetstream.ConsumerConfig{
		AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: 30 * time.Second,
		HeadersOnly: o.HeadersOnly, FilterSubject: o.Filter, DeliverPolicy: jetstream.DeliverAllPolicy,
		Replicas: 1,
	}
	if o.WorkQueue {
		cfg.AckPolicy, cfg.MaxAckPending, cfg.AckWait = jetstream.AckExplicitPolicy, -1, 10*time.Minute
	}
	switch {
	case o.StartSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, o.StartSeq
	case !o.Since.IsZero():
		t := o.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	c, err := s.CreateConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("browse: create consumer: %w", err)
	}
	name := c.CachedInfo().Name
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.DeleteConsumer(dctx, name)
	}()
	pending := c.CachedInfo().NumPending
	oversized := false
	for pending > 0 {
		n := browseBatch
		if o.HeadersOnly {
			n = browseBatchHeaders
		}
		if pending < uint64(n) {
			n = int(pending)
		}
		wait := 5 * time.Second
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			wait = max(time.Until(dl), 10*time.Millisecond)
		}
		opts := []jetstream.FetchOpt{jetstream.FetchMaxWait(wait)}
		switch {
		case oversized:
			// The next record alone is over browseBatchBytes: take it
			// by itself.
			n, oversized = 1, false
		case !o.HeadersOnly:
			// Bodies: at most browseBatchBytes a pull.
			opts = append(opts, jetstream.FetchMaxBytes(browseBatchBytes))
		}
		batch, err := c.Fetch(n, opts...)
		if err != nil {
			return fmt.Errorf("browse: fetch: %w", err)
		}
		got := 0
		stop := false
		var fnErr error
		for m := range batch.Messages() {
			if stop {
				continue // drain what already arrived
			}
			got++
			md, err := m.Metadata()
			if err == nil {
				pending = md.NumPending
			}
			more, err := fn(m)
			if err != nil || !more {
				stop, fnErr = true, err
			}
		}
		if stop {
			return fnErr
		}
		err = batch.Error()
		if errors.Is(err, jetstream.ErrMaxBytesExceeded) && got == 0 {
			oversized = true
			continue
		}
		if err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return fmt.Errorf("browse: fetch: %w", err)
		}
		if got == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			return nil // the rest was deleted meanwhile
		}
	}
	return nil
}

// deadLetterOfMsg is deadLetterOf for a consumed message (possibly headers
// only: Body and the fields parsed from it are then empty).
func deadLetterOfMsg(m jetstream.Msg, headersOnly bool) contract.DeadLetter {
	raw := &jetstream.RawStreamMsg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}
	if md, err := m.Metadata(); err == nil {
		raw.Sequence, raw.Time = md.Sequence.Stream, md.Timestamp
	}
	if headersOnly {
		raw.Data = nil
	}
	return deadLetterOf(raw)
}

// DLQQuery selects dead letters: one page of them (Page), or all (List,
// Purge, ReplayMatching). Zero fields match everything.
type DLQQuery struct {
	Profile string
	Reason  contract.Reason
	// JobID is one job's records.
	JobID string
	// From is the sender mailbox (case-insensitive); filtering on it reads
	// bodies, the other filters read headers only.
	From string
	// Since and Until bound the time the record was stored.
	Since, Until time.Time
	// After is the paging cursor: only records with a greater stream
	// sequence. Limit caps the page (default 50).
	After uint64
	Limit int
}

// DLQPage is one page of dead letters, oldest first. Next is the cursor of
// the following page (DLQQuery.After), 0 when this is the last one.
type DLQPage struct {
	Items []contract.DeadLetter
	Next  uint64
	// Scanned counts the records read to fill the page.
	Scanned int
}

// Page returns the dead letters matching q after q.After, oldest first, at
// most q.Limit. It reads from the cursor (or q.Since) onwards and stops as
// soon as the page is full, so its cost depends on how many records a page
// skips, not on the size of the stream. Items carry their bodies.
func (d *DLQ) Page(ctx context.Context, q DLQQuery) (DLQPage, error) {
	if q.Limit <= 0 {
		q.Limit = 50
	}
	subj, err := q.subject()
	if err != nil {
		return DLQPage{}, err
	}
	if _, err := d.stream(ctx); err != nil {
		return DLQPage{}, err
	}
	// A direct get carries bodies: the page is filled from what the scan read.
	const headersOnly = false
	o := BrowseOptions{Filter: subj, StartSeq: q.After + 1}
	if q.After == 0 {
		o.StartSeq, o.Since = 0, q.Since
	}
	var page DLQPage
	err = BrowseDirect(ctx, d.js, contract.StreamDLQ, o, func(m jetstream.Msg) (bool, error) {
		page.Scanned++
		md, err := m.Metadata()
		if err != nil {
			return false, err
		}
		if !q.Since.IsZero() && md.Timestamp.Before(q.Since) {
			return true, nil
		}
		if !q.Until.IsZero() && md.Timestamp.After(q.Until) {
			return false, nil
		}
		dl := deadLetterOfMsg(m, headersOnly)
		if !q.match(&dl, md.Timestamp) {
			return true, nil
		}
		if len(page.Items) == q.Limit {
			page.Next = page.Items[len(page.Items)-1].Seq
			return false, nil
		}
		page.Items = append(page.Items, dl)
		return true, nil
	})
	if err != nil {
		return DLQPage{}, fmt.Errorf("queue: page %s: %w", contract.StreamDLQ, err)
	}
	return page, nil
}

func senderAddress(from string) string {
	if _, addr, err := contract.ParseAddress(from); err == nil {
		return addr
	}
	return from
}

// DLQCounts is how many dead letters each profile holds, per reason.
type DLQCounts struct {
	ByProfile map[string]map[contract.Reason]int
	Total     int
	// LastSeq is the last stream sequence counted.
	LastSeq uint64
}

// Counts counts the dead letters per profile and reason from their headers
// (no bodies are read).
func (d *DLQ) Counts(ctx context.Context) (DLQCounts, error) {
	return d.Recount(ctx, nil)
}

// Recount brings prev (a result of Counts or Recount) up to date: when no
// record was deleted since (none replayed, purged or aged out: the stream's
// message count is prev's total plus what was appended), it counts only the
// records appended after prev.LastSeq; otherwise it counts them all again.
// A nil prev counts everything.
func (d *DLQ) Recount(ctx context.Context, prev *DLQCounts) (DLQCounts, error) {
	s, err := d.stream(ctx)
	if err != nil {
		return DLQCounts{}, err
	}
	c := DLQCounts{ByProfile: map[string]map[contract.Reason]int{}}
	o := BrowseOptions{Filter: contract.DLQSubjectPrefix + ">", HeadersOnly: true}
	if prev != nil {
		info, err := s.Info(ctx)
		if err != nil {
			return DLQCounts{}, fmt.Errorf("queue: stream %s: %w", contract.StreamDLQ, err)
		}
		st := info.State
		if st.LastSeq >= prev.LastSeq && st.Msgs == uint64(prev.Total)+(st.LastSeq-prev.LastSeq) {
			c.Total, c.LastSeq = prev.Total, prev.LastSeq
			for p, byReason := range prev.ByProfile {
				c.ByProfile[p] = map[contract.Reason]int{}
				for r, n := range byReason {
					c.ByProfile[p][r] = n
				}
			}
			if st.LastSeq == prev.LastSeq {
				return c, nil
			}
			o.StartSeq = prev.LastSeq + 1
		}
	}
	err = BrowseDirect(ctx, d.js, contract.StreamDLQ, o, func(m jetstream.Msg) (bool, error) {
		profile := strings.TrimPrefix(m.Subject(), contract.DLQSubjectPrefix)
		r := contract.Reason(m.Headers().Get(contract.HeaderReason))
		if c.ByProfile[profile] == nil {
			c.ByProfile[profile] = map[contract.Reason]int{}
		}
		c.ByProfile[profile][r]++
		c.Total++
		if md, err := m.Metadata(); err == nil {
			c.LastSeq = md.Sequence.Stream
		}
		return true, nil
	})
	if err != nil {
		return DLQCounts{}, fmt.Errorf("queue: count %s: %w", contract.StreamDLQ, err)
	}
	return c, nil
}

// Find returns the newest dead letter of jobID, reading headers only until
// it has found it (then its body), or ErrNotInDLQ. profile narrows the
// scan when known ("" = every profile).
func (d *DLQ) Find(ctx context.Context, profile, jobID string) (contract.DeadLetter, error) {
	if !contract.ValidJobID(jobID) {
		return contract.DeadLetter{}, fmt.Errorf("queue: dlq: invalid job id %s", contract.Quote(jobID))
	}
	subj, err := DLQQuery{Profile: profile}.subject()
	if err != nil {
		return contract.DeadLetter{}, err
	}
	if _, err := d.stream(ctx); err != nil {
		return contract.DeadLetter{}, err
	}
	var seq uint64
	err = BrowseDirect(ctx, d.js, contract.StreamDLQ, BrowseOptions{Filter: subj}, func(m jetstream.Msg) (bool, error) {
		if m.Headers().Get(contract.HeaderJobID) == jobID {
			if md, err := m.Metadata(); err == nil {
				seq = md.Sequence.Stream
			}
		}
		return true, nil
	})
	if err != nil {
		return contract.DeadLetter{}, fmt.Errorf("queue: find dead letter of %s: %w", jobID, err)
	}
	if seq == 0 {
		return contract.DeadLetter{}, fmt.Errorf("%w: %s", ErrNotInDLQ, jobID)
	}
	// From the leader: the scan may have been answered by a follower that
	// has not applied the record's delete (a replay) yet.
	raw, err := LeaderGet(ctx, d.js, contract.StreamDLQ, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return contract.DeadLetter{}, fmt.Errorf("%w: %s", ErrNotInDLQ, jobID)
	}
	if err != nil {
		return contract.DeadLetter{}, fmt.Errorf("queue: read dead letter %d: %w", seq, err)
	}
	return deadLetterOf(raw), nil
}

// ReplayRecord replays dl, a record returned by Page or Find, as Replay
// does, without looking it up again.
func (d *DLQ) ReplayRecord(ctx context.Context, dl contract.DeadLetter, opts ReplayOptions) error {
	return d.replay(ctx, dl, opts)
}

// PurgeRecord deletes the record at seq (a record returned by Page or Find).
// A record already gone is not an error.
func (d *DLQ) PurgeRecord(ctx context.Context, seq uint64) error {
	s, err := d.stream(ctx)
	if err != nil {
		return err
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("queue: purge dead letter %d: %w", seq, err)
	}
	return nil
}

// EventsSince calls fn with every status event stored since since, oldest
// first, until fn returns false (the console's overview).
func (e *Events) EventsSince(ctx context.Context, since time.Time, fn func(contract.Event) bool) error {
	if _, err := lookupStream(ctx, e.js, contract.StreamStatus); err != nil {
		return fmt.Errorf("queue: stream %s: %w", contract.StreamStatus, err)
	}
	err := BrowseDirect(ctx, e.js, contract.StreamStatus, BrowseOptions{Filter: contract.StatusSubjectPrefix + ">", Since: since}, func(m jetstream.Msg) (bool, error) {
		var ev contract.Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			return true, nil
		}
		return fn(ev), nil
	})
	if err != nil {
		return fmt.Errorf("queue: read %s: %w", contract.StreamStatus, err)
	}
	return nil
}

// MailboxUsage is one sending mailbox's recipients counted in the last
// RecipientWindow (the MAIL_PACING ledger).
type MailboxUsage struct {
	Mailbox    string
	Recipients int
}

// Mailboxes returns the recipients counted for every mailbox in the ledger.
func (p *Pacing) Mailboxes(ctx context.Context, now time.Time) ([]MailboxUsage, error) {
	entries, err := KVScan(ctx, p.js, contract.BucketPacing, "")
	if err != nil {
		return nil, fmt.Errorf("queue: list recipient ledger: %w", err)
	}
	keys := make([]string, 0, len(entries))
	for _, e := range entries {
		keys = append(keys, e.Key)
	}
	var out []MailboxUsage
	for _, k := range keys {
		b, err := pacingKeyDecode(k)
		if err != nil {
			continue
		}
		n, err := p.Used(ctx, b, now)
		if err != nil {
			return nil, err
		}
		out = append(out, MailboxUsage{Mailbox: b, Recipients: n})
	}
	return out, nil
}

func pacingKeyDecode(k string) (string, error) {
	b, err := pacingEncoding.DecodeString(k)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

var pacingEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// At returns the dead letter stored at seq, as the stream leader holds it
// (not a follower that may lag behind a replay's delete), or ErrNotInDLQ.
func (d *DLQ) At(ctx context.Context, seq uint64) (contract.DeadLetter, error) {
	if _, err := d.stream(ctx); err != nil {
		return contract.DeadLetter{}, err
	}
	raw, err := LeaderGet(ctx, d.js, contract.StreamDLQ, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return contract.DeadLetter{}, fmt.Errorf("%w: record %d", ErrNotInDLQ, seq)
	}
	if err != nil {
		return contract.DeadLetter{}, fmt.Errorf("queue: read dead letter %d: %w", seq, err)
	}
	return deadLetterOf(raw), nil
}

// DLQStream returns the MAIL_DLQ stream, for Browse.
func (q *Queue) DLQStream(ctx context.Context) (jetstream.Stream, error) {
	return q.DLQ.stream(ctx)
}

// findMargin is how far before a job state's UpdatedAt FindNear starts: the
// worker stores the dead letter and the state one after the other.
// A redelivered failure can write the state again up to DuplicateWindow
// after the record it did not store twice; a minute more covers clock skew.
const findMargin = DuplicateWindow + time.Minute

// FindNear is Find for a job whose dead-lettering time is known (its
// state's UpdatedAt): it reads from a little before near and stops at the
// first record of the job, so its cost does not grow with the records
// stored before it. (Replay deletes a job's older records, so the first one
// from there is the newest.) It falls back to Find when that finds nothing.
func (d *DLQ) FindNear(ctx context.Context, profile, jobID string, near time.Time) (contract.DeadLetter, error) {
	if near.IsZero() || !contract.ValidJobID(jobID) {
		return d.Find(ctx, profile, jobID)
	}
	subj, err := DLQQuery{Profile: profile}.subject()
	if err != nil {
		return contract.DeadLetter{}, err
	}
	if _, err := d.stream(ctx); err != nil {
		return contract.DeadLetter{}, err
	}
	var seq uint64
	err = BrowseDirect(ctx, d.js, contract.StreamDLQ, BrowseOptions{Filter: subj, Since: near.Add(-findMargin)}, func(m jetstream.Msg) (bool, error) {
		if m.Headers().Get(contract.HeaderJobID) != jobID {
			return true, nil
		}
		if md, err := m.Metadata(); err == nil {
			seq = md.Sequence.Stream
		}
		return false, nil
	})
	if err != nil {
		return contract.DeadLetter{}, fmt.Errorf("queue: find dead letter of %s: %w", jobID, err)
	}
	if seq != 0 {
		if dl, err := d.At(ctx, seq); err == nil {
			return dl, nil
		}
	}
	return d.Find(ctx, profile, jobID)
}

// ReplayMatching replays every dead letter matching q (q.After and q.Limit
// are ignored), as Replay does each one, calling before first for each
// record (the caller's audit: an error stops the replay before that
// record). Unlike Replay, which reads the profile's records again for each
// job to delete older ones, it deletes each replayed record at once and
// makes one pass at the end for older records of the replayed jobs, so
// replaying N records of a profile reads its records about twice, not N
// times. It returns how many records it replayed.
func (d *DLQ) ReplayMatching(ctx context.Context, q DLQQuery, before func(contract.DeadLetter) error) (int, error) {
	s, err := d.stream(ctx)
	if err != nil {
		return 0, err
	}
	newest := map[string]uint64{} // job id -> seq of the record replayed
	profiles := map[string]bool{}
	n := 0
	q.After, q.Limit = 0, 200
	for {
		page, err := d.Page(ctx, q)
		if err != nil {
			return n, err
		}
		for _, dl := range page.Items {
			if len(dl.Body) == 0 {
				continue // replayed or purged meanwhile
			}
			// The page may come from a follower behind a delete: act
			// only on what the leader still holds.
			raw, err := LeaderGet(ctx, d.js, contract.StreamDLQ, dl.Seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				return n, fmt.Errorf("queue: replay: read dead letter %d: %w", dl.Seq, err)
			}
			dl = deadLetterOf(raw)
			if err := before(dl); err != nil {
				return n, err
			}
			if err := d.replayOnly(ctx, dl, ReplayOptions{}); err != nil {
				return n, err
			}
			if err := s.DeleteMsg(ctx, dl.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return n, fmt.Errorf("queue: replay %s: delete dead letter %d: %w", dl.JobID, dl.Seq, err)
			}
			newest[dl.JobID], profiles[dl.Profile] = dl.Seq, true
			n++
		}
		if page.Next == 0 {
			break
		}
		q.After = page.Next
	}
	for p := range profiles {
		err := d.each(ctx, DLQQuery{Profile: p}, true, func(o contract.DeadLetter) error {
			if seq, ok := newest[o.JobID]; ok && o.Seq < seq {
				if err := s.DeleteMsg(ctx, o.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("queue: replay: delete older dead letters: %w", err)
		}
	}
	return n, nil
}
