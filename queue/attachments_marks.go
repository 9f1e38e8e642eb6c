package queue

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// Marks are small records kept in a profile's attachment object store (the
// only bucket a producer such as the SMTP ingress may write): an empty object
// under a name of the caller's choice whose metadata carries one value. The
// SMTP ingress records there the job id of a submission whose answer the
// client may not have seen, so that the client's retry, on any replica, is
// the same job (README, "SMTP retries").

// markPrefix keeps marks apart from attachments (whose names start with a
// random job id).
const markPrefix = "mark/"

// A mark's value and removal are also headers of its metadata message, so
// that WatchMarks reads them without decoding the object info's JSON (the
// watch sees every mark written, the watcher's own included).
const (
	markValueHeader   = "Mailworker-Mark-Value"
	markDeletedHeader = "Mailworker-Mark-Deleted"
	markCountHeader   = "Mailworker-Mark-Count" // a counter's (CountUnder)
)

// Mark records value under key in profile's bucket (replacing an earlier
// mark of that key): one publish of the object's metadata (a mark has no
// content), so that it costs one round trip to the broker.
// It returns the mark's revision (its stream sequence), for Unmark.
func (a *Attachments) Mark(ctx context.Context, profile, key, value string) (uint64, error) {
	return a.putMark(ctx, profile, key, map[string]string{"value": value}, false, 0)
}

func (a *Attachments) putMark(ctx context.Context, profile, key string, md map[string]string, deleted bool, expect uint64) (uint64, error) {
	msg, opts, err := a.markMsg(ctx, profile, key, md, deleted, expect)
	if err != nil {
		return 0, err
	}
	ack, err := a.js.PublishMsg(ctx, msg, opts...)
	if err != nil {
		return 0, fmt.Errorf("queue: mark: %w", err)
	}
	return ack.Sequence, nil
}

// MarkAsync is Mark without waiting for the broker's answer: the write is
// sent at once (it leaves with the connection's next flush, in one write
// with whatever else is sent at the same moment, such as a job: Publisher.
// PublishJobAsync) and wait returns Mark's result, or ctx's error if the
// answer does not come before ctx is done. On a JetStream context without
// jetstream.WithPublishAsyncTimeout, a write whose answer never comes is
// forgotten only when the connection reconnects.
func (a *Attachments) MarkAsync(ctx context.Context, profile, key, value string) (wait func(context.Context) (uint64, error), err error) {
	return a.putMarkAsync(ctx, profile, key, map[string]string{"value": value}, false, 0)
}

// UnmarkAsync is Unmark without waiting for the broker's answer (MarkAsync).
func (a *Attachments) UnmarkAsync(ctx context.Context, profile, key, value string, rev uint64) (wait func(context.Context) error, err error) {
	w, err := a.putMarkAsync(ctx, profile, key, map[string]string{"value": value}, true, rev)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error { _, err := w(ctx); return unmarkErr(err) }, nil
}

func (a *Attachments) putMarkAsync(ctx context.Context, profile, key string, md map[string]string, deleted bool, expect uint64) (func(context.Context) (uint64, error), error) {
	msg, opts, err := a.markMsg(ctx, profile, key, md, deleted, expect)
	if err != nil {
		return nil, err
	}
	f, err := a.js.PublishMsgAsync(msg, opts...)
	if err != nil {
		return nil, fmt.Errorf("queue: mark: %w", err)
	}
	return func(ctx context.Context) (uint64, error) {
		ack, err := awaitAck(ctx, f)
		if err != nil {
			return 0, fmt.Errorf("queue: mark: %w", err)
		}
		return ack.Sequence, nil
	}, nil
}

// awaitAck waits for an asynchronous publish's answer until ctx is done.
func awaitAck(ctx context.Context, f jetstream.PubAckFuture) (*jetstream.PubAck, error) {
	select {
	case ack := <-f.Ok():
		return ack, nil
	case err := <-f.Err():
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// markMsg is the metadata message of a mark, with its publish options.
func (a *Attachments) markMsg(ctx context.Context, profile, key string, md map[string]string, deleted bool, expect uint64) (*nats.Msg, []jetstream.PublishOpt, error) {
	if _, err := a.store(ctx, profile); err != nil {
		return nil, nil, err
	}
	bucket := AttachmentsBucket(profile)
	name := markPrefix + key
	data, err := json.Marshal(jetstream.ObjectInfo{Bucket: bucket, NUID: contract.NewJobID(), Deleted: deleted,
		ModTime: time.Now().UTC(), ObjectMeta: jetstream.ObjectMeta{Name: name, Metadata: md}})
	if err != nil {
		return nil, nil, err
	}
	msg := &nats.Msg{Subject: metaSubject(bucket, name), Data: data, Header: nats.Header{"Nats-Rollup": []string{"sub"},
		markValueHeader: []string{md["value"]}}}
	if deleted {
		msg.Header[markDeletedHeader] = []string{"true"}
	}
	var opts []jetstream.PublishOpt
	if expect > 0 {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(expect))
	}
	return msg, opts, nil
}

// Marked returns the value of key's mark and when it was written; found is
// false when there is none.
func (a *Attachments) Marked(ctx context.Context, profile, key string) (value string, at time.Time, found bool, err error) {
	obs, err := a.store(ctx, profile)
	if err != nil {
		return "", time.Time{}, false, err
	}
	info, err := obs.GetInfo(ctx, markPrefix+key)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return "", time.Time{}, false, nil
	}
	if err != nil {
		return "", time.Time{}, false, fmt.Errorf("queue: mark: %w", err)
	}
	return info.Metadata["value"], info.ModTime, true, nil
}

// Unmark removes key's mark (one publish of its metadata, marked deleted,
// carrying value for watchers); removing a missing mark is not an error.
// With rev > 0 (Mark's result) the mark is removed only if it is still that
// revision: a mark written since under the same key stays.
func (a *Attachments) Unmark(ctx context.Context, profile, key, value string, rev uint64) error {
	_, err := a.putMark(ctx, profile, key, map[string]string{"value": value}, true, rev)
	return unmarkErr(err)
}

// unmarkErr is nil for a removal refused because the mark was rewritten
// since (not this revision's to remove).
func unmarkErr(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return nil // rewritten since: not this revision's to remove
	}
	return err
}

// MarkUpdate is one change of a mark seen by WatchMarks: key as given to
// Mark, its value and the time it was written; Deleted when it was removed.
type MarkUpdate struct {
	Key, Value string
	At         time.Time
	Deleted    bool
	Rev        uint64 // the stream sequence (Mark's result)
}

// WatchMarks keeps fn informed of profile's marks until ctx is done: first
// every mark that exists, then each change as the broker stores it (an
// ordered consumer on the bucket's metadata subjects, last message per
// subject). ready is called once, when the marks written before the call
// have all been given to fn. fn and ready run on one goroutine. It returns
// when the watch is set up; the watch ends, and done is closed, when ctx is
// done.
//
// The caller's NATS user needs to create consumers on
// OBJ_MAIL_ATTACHMENTS_<profile> filtered to $O.MAIL_ATTACHMENTS_<profile>.M.>
// and to pull from them (deploy/nats/accounts.conf, user smtp).
func (a *Attachments) WatchMarks(ctx context.Context, profile string, fn func(MarkUpdate), ready func()) (done <-chan struct{}, err error) {
	if _, err := a.store(ctx, profile); err != nil {
		return nil, err
	}
	bucket := AttachmentsBucket(profile)
	stream, allMeta := "OBJ_"+bucket, "$O."+bucket+".M.>"
	s, err := a.js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("queue: watch marks of %s: %w", profile, err)
	}
	var once sync.Once
	_, err = s.GetLastMsgForSubject(ctx, allMeta)
	empty := errors.Is(err, jetstream.ErrMsgNotFound) // nothing was ever written: nothing to wait for
	if err != nil && !empty {
		return nil, fmt.Errorf("queue: watch marks of %s: %w", profile, err)
	}
	cons, err := a.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{allMeta}, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy})
	if err != nil {
		return nil, fmt.Errorf("queue: watch marks of %s: %w", profile, err)
	}
	metaPrefix := "$O." + bucket + ".M."
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		h := m.Headers()
		v, ok := h[markValueHeader]
		if _, counter := h[markCountHeader]; counter {
			v, ok = []string{""}, true // a counter: no value
		}
		if ok && len(v) == 1 {
			// A mark of Mark or Unmark: its name is the subject's last
			// token, its value and removal headers.
			name, err := base64.URLEncoding.DecodeString(strings.TrimPrefix(m.Subject(), metaPrefix))
			if k, ok := strings.CutPrefix(string(name), markPrefix); err == nil && ok {
				fn(MarkUpdate{Key: k, Value: v[0], At: md.Timestamp, Deleted: h.Get(markDeletedHeader) == "true", Rev: md.Sequence.Stream})
			}
		} else if info := (jetstream.ObjectInfo{}); json.Unmarshal(m.Data(), &info) == nil && strings.HasPrefix(info.Name, markPrefix) {
			fn(MarkUpdate{Key: strings.TrimPrefix(info.Name, markPrefix), Value: info.Metadata["value"],
				At: md.Timestamp, Deleted: info.Deleted, Rev: md.Sequence.Stream})
		}
		if md.NumPending == 0 {
			once.Do(ready)
		}
	}, jetstream.ConsumeErrHandler(func(jetstream.ConsumeContext, error) {}))
	if err != nil {
		return nil, fmt.Errorf("queue: watch marks of %s: %w", profile, err)
	}
	if empty {
		once.Do(ready)
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		<-ctx.Done()
		cc.Stop()
		<-cc.Closed()
	}()
	return ch, nil
}

// CountUnder adds one to the counter key of profile's bucket when it is
// under limit and reports whether it was: a compare-and-set on the counter's
// last revision (JetStream's expected last subject sequence), so that every
// replica counting the same key is counted once each, whatever their number.
// Far from the limit a process takes several counts in one write (an eighth
// of what is left, at most countBatch) and hands them out to its next calls
// for key without a broker round trip: the stored count may then run ahead
// of the calls that got true by what a process holds, never past limit (a
// login near its limit on several replicas may be refused a little early,
// never let over). One process's calls for one key take turns.
// A counter is a mark whose metadata holds the count; prev, when not empty,
// is the key of an earlier counter that the first count of key removes (a
// finished window). The caller's NATS user needs what Mark needs, and to
// purge its store's stream by subject.
func (a *Attachments) CountUnder(ctx context.Context, profile, key, prev string, limit int) (bool, error) {
	if _, err := a.store(ctx, profile); err != nil {
		return false, err
	}
	bucket := AttachmentsBucket(profile)
	s, err := a.objStream(ctx, bucket)
	if err != nil {
		return false, err
	}
	name := markPrefix + key
	subj := metaSubject(bucket, name)
	// The counter's state as this process last wrote or read it is tried
	// first (one publish: the compare-and-set fails if another process
	// counted since, and the counter is then read); a count only grows, so
	// a known count at the limit stays there.
	stripe := &a.countMu[crc32.ChecksumIEEE([]byte(subj))%uint32(len(a.countMu))]
	stripe.Lock()
	defer stripe.Unlock()
	a.mu.Lock()
	known, cached := a.counts[subj]
	if cached && known.left > 0 {
		known.left--
		a.counts[subj] = known
		a.mu.Unlock()
		return true, nil // taken by this process's last count
	}
	a.mu.Unlock()
	for range 20 {
		count, seq := known.count, known.seq
		if !cached {
			m, err := s.GetLastMsgForSubject(ctx, subj)
			switch {
			case errors.Is(err, jetstream.ErrMsgNotFound):
			case err != nil:
				return false, fmt.Errorf("queue: counter: %w", err)
			default:
				var info jetstream.ObjectInfo
				if err := json.Unmarshal(m.Data, &info); err != nil {
					return false, fmt.Errorf("queue: counter: %w", err)
				}
				count, _ = strconv.Atoi(info.Metadata["count"])
				seq = m.Sequence
			}
		}
		cached = false
		if count >= limit {
			a.setCount(subj, "", counterState{count, seq, 0})
			return false, nil
		}
		take := max(1, min(countBatch, (limit-count)/8))
		data, err := json.Marshal(jetstream.ObjectInfo{Bucket: bucket, NUID: contract.NewJobID(),
			ObjectMeta: jetstream.ObjectMeta{Name: name, Metadata: map[string]string{"count": strconv.Itoa(count + take)}}})
		if err != nil {
			return false, err
		}
		msg := &nats.Msg{Subject: subj, Data: data, Header: nats.Header{"Nats-Rollup": []string{"sub"}, markCountHeader: []string{strconv.Itoa(count + take)}}}
		ack, err := a.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(seq))
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			continue // another replica counted first: read again
		}
		if err != nil {
			a.setCount(subj, "", counterState{}) // unknown now
			return false, fmt.Errorf("queue: counter: %w", err)
		}
		prevSubj := ""
		if prev != "" {
			prevSubj = metaSubject(bucket, markPrefix+prev)
		}
		a.setCount(subj, prevSubj, counterState{count + take, ack.Sequence, take - 1})
		if seq == 0 && prev != "" {
			_ = s.Purge(ctx, jetstream.WithPurgeSubject(metaSubject(bucket, markPrefix+prev))) // best effort; the max age removes it otherwise
		}
		return true, nil
	}
	return false, errors.New("queue: counter: too many concurrent updates")
}

// counterState is a counter's count at its stream sequence, and how many
// of the counts this process added it has not handed out yet.
type counterState struct {
	count int
	seq   uint64
	left  int
}

// countBatch is the most counts CountUnder takes at once.
const countBatch = 16

// setCount keeps (a zero state: forgets) subj's counter state and forgets
// prev's (a finished window).
func (a *Attachments) setCount(subj, prev string, st counterState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.counts == nil || len(a.counts) >= 10_000 { // windows not followed by the next one are never forgotten otherwise
		a.counts = map[string]counterState{}
	}
	if prev != "" {
		delete(a.counts, prev)
	}
	if st.seq == 0 {
		delete(a.counts, subj)
		return
	}
	a.counts[subj] = st
}

// metaSubject is the subject of an object's metadata in an object store
// (nats.go's encoding of the name).
func metaSubject(bucket, name string) string {
	return "$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name))
}

func (a *Attachments) objStream(ctx context.Context, bucket string) (jetstream.Stream, error) {
	a.mu.Lock()
	s := a.streams[bucket]
	a.mu.Unlock()
	if s != nil {
		return s, nil
	}
	s, err := a.js.Stream(ctx, "OBJ_"+bucket) // not under a.mu (see store)
	if err != nil {
		return nil, fmt.Errorf("queue: object store %s: %w", bucket, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.streams == nil {
		a.streams = map[string]jetstream.Stream{}
	}
	a.streams[bucket] = s
	return s, nil
}
