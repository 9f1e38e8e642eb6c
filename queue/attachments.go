package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

// AttachmentsBucket is the object store that holds profile's attachments by
// reference: "MAIL_ATTACHMENTS_<profile>" (stream OBJ_MAIL_ATTACHMENTS_<profile>,
// subjects $O.MAIL_ATTACHMENTS_<profile>.>). Objects belong to a profile: a
// job's objectRef is looked up only in its own profile's bucket, and NATS
// permissions can grant a producer its own bucket and nothing else (an
// object store's subjects carry no owner below the bucket, so one shared
// bucket could not be split by permissions).
func AttachmentsBucket(profile string) string { return contract.BucketAttachments + "_" + profile }

// Attachments stores attachment content by reference, one object store per
// profile (AttachmentsBucket): a job's attachment objectRef is an object name
// in its profile's bucket.
type Attachments struct {
	js jetstream.JetStream

	mu     sync.Mutex
	stores map[string]jetstream.ObjectStore
}

// ErrNoAttachmentStore is returned (wrapped) when a profile has no
// attachment bucket: it was not provisioned (`mailworker provision` with the
// profile in its config).
var ErrNoAttachmentStore = errors.New("queue: no attachment store for this profile")

func (a *Attachments) store(ctx context.Context, profile string) (jetstream.ObjectStore, error) {
	if !validProfile(profile) || strings.ContainsAny(profile, "/=") {
		return nil, fmt.Errorf("queue: attachments: invalid profile %s", contract.Quote(profile))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if obs := a.stores[profile]; obs != nil {
		return obs, nil
	}
	obs, err := a.js.ObjectStore(ctx, AttachmentsBucket(profile))
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("%w %s (object store %s: run `mailworker provision` with the profile configured)", ErrNoAttachmentStore, profile, AttachmentsBucket(profile))
	}
	if err != nil {
		return nil, fmt.Errorf("queue: object store %s: %w", AttachmentsBucket(profile), err)
	}
	if a.stores == nil {
		a.stores = map[string]jetstream.ObjectStore{}
	}
	a.stores[profile] = obs
	return obs, nil
}

// Put stores data in profile's bucket under a new unique name derived from
// name and returns that name, to use as an attachment's objectRef.
func (a *Attachments) Put(ctx context.Context, profile, name string, data []byte) (string, error) {
	obs, err := a.store(ctx, profile)
	if err != nil {
		return "", err
	}
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
	if _, err := obs.PutBytes(ctx, ref, data); err != nil {
		return "", fmt.Errorf("queue: store attachment %s: %w", contract.Quote(name), err)
	}
	return ref, nil
}

// Get returns the content of ref in profile's bucket, or an error wrapping
// ErrNoAttachment (also when the profile has no bucket).
func (a *Attachments) Get(ctx context.Context, profile, ref string) ([]byte, error) {
	obs, err := a.store(ctx, profile)
	if errors.Is(err, ErrNoAttachmentStore) {
		return nil, fmt.Errorf("%w: %s (%v)", contract.ErrNoAttachment, contract.Quote(ref), err)
	}
	if err != nil {
		return nil, err
	}
	b, err := obs.GetBytes(ctx, ref)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: %s", contract.ErrNoAttachment, contract.Quote(ref))
	}
	if err != nil {
		return nil, fmt.Errorf("queue: get attachment %s: %w", contract.Quote(ref), err)
	}
	return b, nil
}

// Delete removes ref from profile's bucket; deleting a missing ref is not an
// error.
func (a *Attachments) Delete(ctx context.Context, profile, ref string) error {
	obs, err := a.store(ctx, profile)
	if errors.Is(err, ErrNoAttachmentStore) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := obs.Delete(ctx, ref); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("queue: delete attachment %s: %w", contract.Quote(ref), err)
	}
	return nil
}

// Size returns the size in bytes of ref's content in profile's bucket, or an
// error wrapping contract.ErrNoAttachment for an unknown ref. It reads the object's
// metadata only.
func (a *Attachments) Size(ctx context.Context, profile, ref string) (int, error) {
	obs, err := a.store(ctx, profile)
	if errors.Is(err, ErrNoAttachmentStore) {
		return 0, fmt.Errorf("%w: %s (%v)", contract.ErrNoAttachment, contract.Quote(ref), err)
	}
	if err != nil {
		return 0, err
	}
	info, err := obs.GetInfo(ctx, ref)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return 0, fmt.Errorf("%w: %s", contract.ErrNoAttachment, contract.Quote(ref))
	}
	if err != nil {
		return 0, fmt.Errorf("queue: attachment %s: %w", contract.Quote(ref), err)
	}
	return int(info.Size), nil
}

// NewAttachments returns the attachment stores on js, for a producer that
// uploads objects without binding the whole queue: its NATS user may reach
// its own profile's bucket only.
func NewAttachments(js jetstream.JetStream) *Attachments { return &Attachments{js: js} }
