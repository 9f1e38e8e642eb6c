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
// when ctx has no earlier deadline.
const directIdle = 5 * time.Second

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
	prefix := js.Options().APIPrefix
	if prefix == "" {
		prefix = jetstream.DefaultAPIPrefix
	}
	return strings.TrimSuffix(prefix, ".") + ".DIRECT.GET." + stream
}

// BrowseDirect is Browse through batch direct gets: it calls fn with the
// messages of stream matching o (o.WorkQueue and o.HeadersOnly are ignored:
// a direct get consumes nothing and always carries the body), in stream
// order, until fn returns false or an error, or no message matching o is
// left. It creates no consumer, so a user whose permissions allow no
// consumer create can read: support's and the console's accounts.
func BrowseDirect(ctx context.Context, js jetstream.JetStream, stream string, o BrowseOptions, fn func(jetstream.Msg) (bool, error)) error {
	nc := js.Conn()
	subj := directGetSubject(js, stream)
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return fmt.Errorf("browse %s: subscribe: %w", stream, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	filter := o.Filter
	if filter == "" || filter == wholeStream[stream] || filter == "$KV."+strings.TrimPrefix(stream, "KV_")+".>" {
		// The whole stream: nats-server counts what is pending for ">"
		// from its stream state, for any other filter by walking the
		// message blocks after the batch's start (filestore.go
		// NumPending), which every batch does once.
		filter = ">"
	}
	seq := o.StartSeq
	var since *time.Time
	if seq == 0 && !o.Since.IsZero() {
		t := o.Since.UTC()
		since = &t
	}
next:
	for {
		req := directGetRequest{NextFor: filter, Batch: directBatch, MaxBytes: directBatchBytes}
		if since != nil {
			req.StartTime, since = since, nil
		} else {
			req.Seq = seq
		}
		body, err := json.Marshal(req)
		if err != nil {
			return err
		}
		if err := nc.PublishRequest(subj, inbox, body); err != nil {
			return fmt.Errorf("browse %s: direct get: %w", stream, err)
		}
		got := 0
		for {
			wait := directIdle
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
				wait = max(time.Until(dl), time.Millisecond)
			}
			m, err := sub.NextMsg(wait)
			if err != nil {
				if cerr := ctx.Err(); cerr != nil {
					return cerr
				}
				return fmt.Errorf("browse %s: direct get (allow_direct on, and the direct get allowed?): %w", stream, err)
			}
			if status := m.Header.Get("Status"); status != "" {
				switch status {
				case "204": // end of batch
					np, _ := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
					if np == 0 || got == 0 {
						return nil
					}
					continue next
				case "404": // nothing (more) matches
					return nil
				default:
					return fmt.Errorf("browse %s: direct get: %s %s", stream, status, m.Header.Get("Description"))
				}
			}
			dm, err := directMsgOf(m, stream)
			if err != nil {
				return fmt.Errorf("browse %s: %w", stream, err)
			}
			got++
			seq = dm.md.Sequence.Stream + 1
			more, err := fn(dm)
			if err != nil || !more {
				return err
			}
		}
	}
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
