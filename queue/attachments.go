package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

// Attachments stores attachment content by reference (object store
// MAIL_ATTACHMENTS): a job's attachment objectRef is an object name there.
type Attachments struct {
	obs jetstream.ObjectStore
}

// Put stores data under a new unique name derived from name and returns that
// name, to use as an attachment's objectRef.
func (a *Attachments) Put(ctx context.Context, name string, data []byte) (string, error) {
	clean := strings.Map(func(r rune) rune {
		if r < 32 || r == 127 {
			return '_'
		}
		return r
	}, name)
	if len(clean) > 128 {
		clean = clean[:128]
	}
	ref := contract.NewJobID() + "/" + clean
	if _, err := a.obs.PutBytes(ctx, ref, data); err != nil {
		return "", fmt.Errorf("queue: store attachment %s: %w", contract.Quote(name), err)
	}
	return ref, nil
}

// Get returns the content of ref, or an error wrapping contract.ErrNoAttachment.
func (a *Attachments) Get(ctx context.Context, ref string) ([]byte, error) {
	b, err := a.obs.GetBytes(ctx, ref)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: %s", contract.ErrNoAttachment, contract.Quote(ref))
	}
	if err != nil {
		return nil, fmt.Errorf("queue: get attachment %s: %w", contract.Quote(ref), err)
	}
	return b, nil
}

// Delete removes ref; deleting a missing ref is not an error.
func (a *Attachments) Delete(ctx context.Context, ref string) error {
	if err := a.obs.Delete(ctx, ref); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("queue: delete attachment %s: %w", contract.Quote(ref), err)
	}
	return nil
}

// Size returns the size in bytes of ref's content, or an error wrapping
// contract.ErrNoAttachment for an unknown ref. It reads the object's metadata only.
func (a *Attachments) Size(ctx context.Context, ref string) (int, error) {
	info, err := a.obs.GetInfo(ctx, ref)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return 0, fmt.Errorf("%w: %s", contract.ErrNoAttachment, contract.Quote(ref))
	}
	if err != nil {
		return 0, fmt.Errorf("queue: attachment %s: %w", contract.Quote(ref), err)
	}
	return int(info.Size), nil
}
