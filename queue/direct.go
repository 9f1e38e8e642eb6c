package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// Reading a stream without a consumer: batch direct gets.
//
// Support and the console read MAIL_DLQ, MAIL_STATUS, MAIL_AUDIT and KV
// buckets from accounts of their own. A consumer create names its push
// deliver subject in the request body, a subject of MAIL that no service
// import remaps, so they are given no consumer create at all and read
// through direct gets instead: $JS.API.DIRECT.GET.<stream> with the body
// {"batch":N,"seq":S,"next_by_subj":F,"max_bytes":B} (or "start_time"
// instead of "seq"). nats-server (v2.15.2 stream.go getDirectRequest)
// answers with up to N messages matching F from S on, each with headers
// Nats-Stream, Nats-Subject, Nats-Sequence, Nats-Time-Stamp and
// Nats-Num-Pending, then one message with status 204 (EOB) whose
// Nats-Num-Pending is what matches F after the batch; or a single 404 when
// nothing matches from S on. It stops a batch once B bytes are sent (at
// least one message goes out), so no batch holds more than B plus one
// record. The stream needs allow_direct (Provision sets it). Direct gets
// have no headers-only mode: BrowseDirect reads bodies too, bounded by
// max_bytes per batch.

// directBatchBytes is the max_bytes of one batch.
const directBatchBytes = browseBatchBytes

// directBatch is how many messages one batch asks for.
const directBatch = browseBatch

// directIdle is how long BrowseDirect waits for the next message of a batch
// (or ctx's deadline when earlier) before it asks again from where it
// stopped.
const directIdle = 5 * time.Second

// directTries is how many requests in a row BrowseDirect makes without
// reading anything new before it gives up.
const directTries = 4

// wholeStream is the filter that matches every subject of a stream read by
// BrowseDirect.
var wholeStream = map[string]string{
	contract.StreamDLQ:    contract.DLQSubjectPrefix + ">",
	contract.StreamStatus: contract.StatusSubjectPrefix + ">",
	contract.StreamAudit:  contract.AuditSubjectPrefix + ">",
}

// directGetRequest is JSApiMsgGetRequest (nats-server jetstream_api.go).
type directGetRequest struct {
	Seq       uint64     `json:"seq,omitempty"`
	NextFor   string     `json:"next_by_subj,omitempty"`
	Batch     int        `json:"batch,omitempty"`
	MaxBytes  int        `json:"max_bytes,omitempty"`
	StartTime *time.Time `json:"start_time,omitempty"`
}

// directMsg is one message of a batch direct get. It is a jetstream.Msg so
// BrowseDirect's callers read it as Browse's; it cannot be acknowledged.
type directMsg struct {
	subject string
	header  nats.Header
	data    []byte
	md      jetstream.MsgMetadata
}

var errDirectNoAck = errors.New("queue: a message read by direct get cannot be acknowledged")

func (m *directMsg) Metadata() (*jetstream.MsgMetadata, error) { md := m.md; return &md, nil }
func (m *directMsg) Data() []byte                              { return m.data }
func (m *directMsg) Headers() nats.Header                      { return m.header }
func (m *directMsg) Subject() string                           { return m.subject }
func (m *directMsg) Reply() string                             { return "" }
func (m *directMsg) Ack() error                                { return errDirectNoAck }
func (m *directMsg) DoubleAck(context.Context) error           { return errDirectNoAck }
func (m *directMsg) Nak() error                                { return errDirectNoAck }
func (m *directMsg) NakWithDelay(time.Duration) error          { return errDirectNoAck }
func (m *directMsg) InProgress() error                         { return errDirectNoAck }
func (m *directMsg) Term() error                               { return errDirectNoAck }
func (m *directMsg) TermWithReason(string) error               { return errDirectNoAck }

// directHeaders are the headers nats-server adds to a direct get's answer.
var directHeaders = []string{jetstream.StreamHeader, jetstream.SubjectHeader, jetstream.SequenceHeader,
	jetstream.TimeStampHeaer, "Nats-Num-Pending", "Nats-Last-Sequence"}

// directGetSubject is $JS.API.DIRECT.GET.<stream> under js's API prefix.
func directGetSubject(js jetstream.JetStream, stream string) string {
	return apiPrefix(js) + "DIRECT.GET." + stream
}

// errDirectIdle is a batch whose next message did not come within
// directIdle: its responder stopped (a node frozen or killed mid-batch).
var errDirectIdle = errors.New("no answer")

// BrowseDirect is Browse through batch direct gets: it calls fn with the
// messages of stream matching o (o.WorkQueue and o.HeadersOnly are ignored:
// a direct get consumes nothing and always carries the body), in stream
// order, until fn returns false or an error, or no message matching o is
// left. It creates no consumer, so a user whose permissions allow no
// consumer create can read: support's and the console's accounts.
//
// In a replicated stream a direct get is answered by any replica that
// nats-server has let into the direct-get queue group: the leader, and every
// follower once it was current (or 90 % caught up) after it started
// (jetstream_cluster.go monitorStream, "enabling direct gets at %.0f%%
// synchronized"); a follower is never taken out again when it falls behind,
// and a frozen one keeps its subscription until its routes close. So:
//   - a batch whose answer stops (nothing within directIdle) is asked again
//     from the message after the last one received, on a new inbox, up to
//     directTries times in a row without progress;
//   - a follower holds a prefix of the leader's messages, so an answer can
//     miss only what comes after its end. When an answer says nothing more
//     matches, BrowseDirect asks the stream leader ($JS.API.STREAM.MSG.GET,
//     answered by the leader only: jetstream_api.go jsMsgGetRequest) for the
//     next matching message; only the leader's "none" ends the scan. What
//     was stored before BrowseDirect began is therefore always read, during
//     and after node faults.
//
// A record deleted just before the scan may still be read from a follower
// that has not applied the delete yet; callers that act on a record (replay,
// purge) read it again from the leader first (LeaderGet).
//
// It returns fn's error, ctx's error, or an error naming the stream when the
// stream cannot be read.
func BrowseDirect(ctx context.Context, js jetstream.JetStream, stream string, o BrowseOptions, fn func(jetstream.Msg) (bool, error)) error {
	nc := js.Conn()
	subj := directGetSubject(js, stream)
	filter := o.Filter
	if filter == "" || filter == wholeStream[stream] || filter == "$KV."+strings.TrimPrefix(stream, "KV_")+".>" {
		// The whole stream: nats-server counts what is pending for ">"
		// from its stream state, for any other filter by walking the
		// message blocks after the batch's start (filestore.go
		// NumPending), which every batch does once.
		filter = ">"
	}
	cur := directCursor{seq: o.StartSeq}
	if cur.seq == 0 && !o.Since.IsZero() {
		t := o.Since.UTC()
		cur.since = &t
	}
	idle := 0
	for {
		got, more, err := directBatchRead(ctx, nc, subj, stream, filter, &cur, fn)
		switch {
		case errors.Is(err, errDirectIdle):
			if got > 0 {
				idle = 0
			}
			if idle++; idle >= directTries {
				return fmt.Errorf("browse %s: direct get: %w %d times in a row (allow_direct on, and the direct get allowed?)", stream, err, idle)
			}
			continue
		case err != nil:
			return err
		case !more:
			return nil
		case got > 0:
			idle = 0
			continue
		}
		// The answer says nothing more matches: only the leader may say so.
		m, err := leaderNextAt(ctx, js, stream, filter, cur)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("browse %s: the leader's next message: %w", stream, err)
		}
		cur.seq, cur.since = m.md.Sequence.Stream+1, nil
		if more, err := fn(m); err != nil || !more {
			return err
		}
		idle = 0
	}
}

// directCursor is where BrowseDirect reads next: seq, or the first message
// stored at or after since while seq is 0.
type directCursor struct {
	seq   uint64
	since *time.Time
}

// directBatchRead makes one batch direct get from cur, calls fn with each
// message and moves cur past it. It returns how many messages it read,
// whether the scan goes on (false once fn says stop or returns an error),
// and errDirectIdle when the answer stopped before its end. A batch that
// ends where the responder says nothing more matches returns more true and
// got 0 when it read nothing, or when its end-of-batch says nothing is
// pending: the caller asks the leader then. (A batch that read messages and
// says more are pending returns got > 0.)
func directBatchRead(ctx context.Context, nc *nats.Conn, subj, stream, filter string, cur *directCursor, fn func(jetstream.Msg) (bool, error)) (got int, more bool, err error) {
	// A new inbox per request: a late answer to an abandoned one cannot
	// mix into this one.
	sub, err := nc.SubscribeSync(nc.NewInbox())
	if err != nil {
		return 0, false, fmt.Errorf("browse: subscribe: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	req := directGetRequest{NextFor: filter, Batch: directBatch, MaxBytes: directBatchBytes, Seq: cur.seq, StartTime: cur.since}
	if req.StartTime != nil {
		req.Seq = 0
	}
	body, err := json.Marshal(req)
	if err != nil {
		return 0, false, err
	}
	if err := nc.PublishRequest(subj, sub.Subject, body); err != nil {
		return 0, false, fmt.Errorf("browse: direct get: %w", err)
	}
	for {
		wait := directIdle
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			wait = max(time.Until(dl), time.Millisecond)
		}
		m, err := sub.NextMsg(wait)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return got, false, cerr
			}
			if errors.Is(err, nats.ErrTimeout) {
				return got, true, errDirectIdle
			}
			return got, false, fmt.Errorf("browse %s: direct get: %w", stream, err)
		}
		if status := m.Header.Get("Status"); status != "" {
			switch status {
			case "204": // end of batch
				np, _ := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
				if np == 0 {
					return 0, true, nil // the responder has no more: ask the leader
				}
				return got, true, nil
			case "404": // nothing (more) matches on the responder
				return 0, true, nil
			case "503": // no responder (the stream's replicas are all away)
				return got, true, errDirectIdle
			default:
				return got, false, fmt.Errorf("browse %s: direct get: %s %s", stream, status, m.Header.Get("Description"))
			}
		}
		dm, err := directMsgOf(m, stream)
		if err != nil {
			return got, false, fmt.Errorf("browse %s: %w", stream, err)
		}
		if dm.md.Sequence.Stream < cur.seq {
			continue // not ours (cannot happen on a fresh inbox; cheap to check)
		}
		got++
		cur.seq, cur.since = dm.md.Sequence.Stream+1, nil
		more, err := fn(dm)
		if err != nil || !more {
			return got, false, err
		}
	}
}

// leaderTimeout bounds one request to a stream leader.
const leaderTimeout = 10 * time.Second

// leaderRetry is leaderGet, asked again (up to directTries times, while ctx
// lasts) when no answer came within leaderTimeout or the answer was "503
// JetStream system temporarily unavailable" (err 10008, from a node that
// has just come back): transient in a cluster with a node frozen, killed or
// restarting.
func leaderRetry(ctx context.Context, js jetstream.JetStream, stream string, req map[string]any) (*jetstream.RawStreamMsg, error) {
	for try := 1; ; try++ {
		rctx, cancel := context.WithTimeout(ctx, leaderTimeout)
		m, err := leaderGet(rctx, js, stream, req)
		cancel()
		if err == nil || errors.Is(err, jetstream.ErrMsgNotFound) || try >= directTries || !transient(err) || !retryPause(ctx, try) {
			return m, err
		}
	}
}

// transient reports whether err is a request that may succeed when made
// again: no answer in time, no responder, or JetStream's 503 (err 10008).
func transient(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.As(err, &apiErr) && apiErr.Code == 503
}

// retryPause waits 250 ms times try before a request is made again; false when
// ctx ended first.
func retryPause(ctx context.Context, try int) bool {
	t := time.NewTimer(time.Duration(try) * 250 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// leaderNextAt is the first message of stream matching filter at or after
// cur, read through the stream's leader.
func leaderNextAt(ctx context.Context, js jetstream.JetStream, stream, filter string, cur directCursor) (*directMsg, error) {
	req := map[string]any{"next_by_subj": filter}
	if cur.since != nil {
		req["start_time"] = cur.since
	} else {
		req["seq"] = max(cur.seq, 1)
	}
	raw, err := leaderRetry(ctx, js, stream, req)
	if err != nil {
		return nil, err
	}
	h := raw.Header
	if h == nil {
		h = nats.Header{}
	}
	return &directMsg{subject: raw.Subject, header: h, data: raw.Data,
		md: jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: raw.Sequence}, Timestamp: raw.Time, Stream: stream}}, nil
}

// LeaderGet returns the message at seq of stream as the stream's leader
// holds it, jetstream.ErrMsgNotFound when it is gone: for a record read by
// BrowseDirect (perhaps from a follower that has not applied its delete
// yet) that the caller is about to act on or show alone.
func LeaderGet(ctx context.Context, js jetstream.JetStream, stream string, seq uint64) (*jetstream.RawStreamMsg, error) {
	return leaderRetry(ctx, js, stream, map[string]any{"seq": seq})
}

func directMsgOf(m *nats.Msg, stream string) (*directMsg, error) {
	h := m.Header
	seq, err := strconv.ParseUint(h.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("direct get: bad %s header", jetstream.SequenceHeader)
	}
	ts, err := time.Parse(time.RFC3339Nano, h.Get(jetstream.TimeStampHeaer))
	if err != nil {
		return nil, fmt.Errorf("direct get: bad %s header", jetstream.TimeStampHeaer)
	}
	np, _ := strconv.ParseUint(h.Get("Nats-Num-Pending"), 10, 64)
	dm := &directMsg{subject: h.Get(jetstream.SubjectHeader), data: m.Data,
		md: jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: seq}, NumPending: np, Timestamp: ts, Stream: stream}}
	for _, k := range directHeaders {
		delete(h, k) // the message is ours: no copy
	}
	dm.header = h
	return dm, nil
}

// KVEntry is one live key of a bucket read by KVScan.
type KVEntry struct {
	Key      string
	Value    []byte
	Revision uint64
}

// KVScan returns the live keys of bucket (deleted and purged ones left
// out) whose key matches filter ("" = every key; a KV key filter such as
// "billing.>"), with their latest values, in key order. It reads the
// bucket's stream by batch direct gets, creating no consumer (the KV
// watchers behind ListKeys do): for support's and the console's accounts.
func KVScan(ctx context.Context, js jetstream.JetStream, bucket, filter string) ([]KVEntry, error) {
	if filter == "" {
		filter = ">"
	}
	prefix := "$KV." + bucket + "."
	live := map[string]KVEntry{}
	err := BrowseDirect(ctx, js, "KV_"+bucket, BrowseOptions{Filter: prefix + filter}, func(m jetstream.Msg) (bool, error) {
		key := strings.TrimPrefix(m.Subject(), prefix)
		switch m.Headers().Get("KV-Operation") {
		case "DEL", "PURGE":
			delete(live, key)
		default:
			md, _ := m.Metadata()
			live[key] = KVEntry{Key: key, Value: m.Data(), Revision: md.Sequence.Stream}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue: list bucket %s: %w", bucket, err)
	}
	out := make([]KVEntry, 0, len(live))
	for _, e := range live {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b KVEntry) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}
