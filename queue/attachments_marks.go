package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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

// Mark records value under key in profile's bucket (replacing an earlier
// mark of that key).
func (a *Attachments) Mark(ctx context.Context, profile, key, value string) error {
	obs, err := a.store(ctx, profile)
	if err != nil {
		return err
	}
	if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: markPrefix + key, Metadata: map[string]string{"value": value}}, strings.NewReader("")); err != nil {
		return fmt.Errorf("queue: mark: %w", err)
	}
	return nil
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

// Unmark removes key's mark; removing a missing mark is not an error.
func (a *Attachments) Unmark(ctx context.Context, profile, key string) error {
	return a.Delete(ctx, profile, markPrefix+key)
}

// MarkUpdate is one change of a mark seen by WatchMarks: key as given to
// Mark, its value and the time it was written; Deleted when it was removed.
type MarkUpdate struct {
	Key, Value string
	At         time.Time
	Deleted    bool
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
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		var info jetstream.ObjectInfo
		if json.Unmarshal(m.Data(), &info) == nil && strings.HasPrefix(info.Name, markPrefix) {
			fn(MarkUpdate{Key: strings.TrimPrefix(info.Name, markPrefix), Value: info.Metadata["value"],
				At: md.Timestamp, Deleted: info.Deleted})
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
