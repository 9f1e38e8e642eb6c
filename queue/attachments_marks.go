package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
