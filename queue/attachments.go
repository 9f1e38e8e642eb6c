package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync"
	"time"

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

	mu      sync.Mutex
	stores  map[string]jetstream.ObjectStore
	streams map[string]jetstream.Stream // OBJ_<bucket>, for marks
	counts  map[string]counterState     // CountUnder's last known state, by subject
	// countMu serialises CountUnder's counts of one subject in this process
	// (striped by subject): goroutines of one process do not race each
	// other's compare-and-set.
	countMu [64]sync.Mutex
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
	obs := a.stores[profile]
	a.mu.Unlock()
	if obs != nil {
		return obs, nil
	}
	// Not under a.mu: a profile whose store does not answer must not hold
	// up the others.
	obs, err := a.js.ObjectStore(ctx, AttachmentsBucket(profile))
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("%w %s (object store %s: run `mailworker provision` with the profile configured)", ErrNoAttachmentStore, profile, AttachmentsBucket(profile))
	}
	if err != nil {
		return nil, fmt.Errorf("queue: object store %s: %w", AttachmentsBucket(profile), err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stores == nil {
		a.stores = map[string]jetstream.ObjectStore{}
	}
	a.stores[profile] = obs
	return obs, nil
}

// Put stores data in profile's bucket under a new unique name derived from
// name and returns that name, to use as an attachment's objectRef.
func (a *Attachments) Put(ctx context.Context, profile, name string, data []byte) (string, error) {
	return a.PutReader(ctx, profile, name, bytes.NewReader(data))
}

// MaxGetBytes is the most Get loads into memory: what one Graph request
// (4 MB) can carry. Larger objects are streamed with Open.
const MaxGetBytes = 4 << 20

// maxChunkBytes is the largest object chunk the readers accept: the object
// store writes 128 KiB chunks (nats.go's default); a producer that wrote
// larger ones, up to the server's max_payload, would make each chunk a
// large allocation (docs/reliability.md, "One job cannot take the workers
// down").
const maxChunkBytes = 1 << 20

// chunkWait bounds the wait for one chunk of an object being read.
const chunkWait = 30 * time.Second

// Get returns the content of ref in profile's bucket, or an error wrapping
// ErrNoAttachment (also when the profile has no bucket). It reads at most
// MaxGetBytes: a larger object (by its metadata) is refused with an error
// wrapping contract.ErrAttachmentTooLarge before any chunk is read, and one
// whose chunks do not match its metadata with contract.ErrAttachmentCorrupt.
func (a *Attachments) Get(ctx context.Context, profile, ref string) ([]byte, error) {
	rc, size, err := a.open(ctx, profile, ref, MaxGetBytes)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	// The reader fails on a byte past the metadata's size: b never grows.
	b := bytes.NewBuffer(make([]byte, 0, size+bytes.MinRead))
	if _, err := b.ReadFrom(io.LimitReader(rc, size+1)); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
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

// PutReader stores what r yields in profile's bucket under a new unique
// name derived from name and returns that name, as Put does, without holding
// the content in memory.
func (a *Attachments) PutReader(ctx context.Context, profile, name string, r io.Reader) (string, error) {
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
	if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: ref}, r); err != nil {
		return "", fmt.Errorf("queue: store attachment %s: %w", contract.Quote(name), err)
	}
	return ref, nil
}

// Open streams the content of ref in profile's bucket from byte offset on,
// without holding it in memory: the object's chunks are pulled a few at a
// time as the reader is read (jetstream's ObjectStore.Get would have the
// server push the whole object into the client's buffers as fast as it can,
// whatever the reader's pace: a 150 MB object uploaded slowly would sit in
// memory). The bytes before offset are read and dropped. At the end the
// content is checked against the object's SHA-256 digest. size is the whole
// object's. An unknown ref (or a profile without a bucket) is an error
// wrapping contract.ErrNoAttachment. The caller closes the reader.
func (a *Attachments) Open(ctx context.Context, profile, ref string, offset int64) (rc io.ReadCloser, size int64, err error) {
	rc, size, err = a.open(ctx, profile, ref, -1)
	if err != nil || offset <= 0 {
		return rc, size, err
	}
	if _, err := io.CopyN(io.Discard, rc, offset); err != nil {
		rc.Close()
		return nil, 0, fmt.Errorf("queue: attachment %s: skipping to byte %d: %w", contract.Quote(ref), offset, err)
	}
	return rc, size, nil
}

// open opens ref for reading from its start; an object over max bytes (by
// its metadata; max < 0: any size) is refused before anything is read.
func (a *Attachments) open(ctx context.Context, profile, ref string, max int64) (rc io.ReadCloser, size int64, err error) {
	obs, err := a.store(ctx, profile)
	if errors.Is(err, ErrNoAttachmentStore) {
		return nil, 0, fmt.Errorf("%w: %s (%v)", contract.ErrNoAttachment, contract.Quote(ref), err)
	}
	if err != nil {
		return nil, 0, err
	}
	info, err := obs.GetInfo(ctx, ref)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, 0, fmt.Errorf("%w: %s", contract.ErrNoAttachment, contract.Quote(ref))
	}
	if err != nil {
		return nil, 0, fmt.Errorf("queue: open attachment %s: %w", contract.Quote(ref), err)
	}
	if max >= 0 && int64(info.Size) > max {
		return nil, 0, fmt.Errorf("%w: %s is %d bytes, over the %d read whole", contract.ErrAttachmentTooLarge, contract.Quote(ref), info.Size, max)
	}
	r := &objectReader{ctx: ctx, ref: ref, left: int64(info.Size), digest: sha256.New(), want: info.Digest}
	if info.Size > 0 {
		bucket := AttachmentsBucket(profile)
		cons, err := a.js.OrderedConsumer(ctx, "OBJ_"+bucket, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{"$O." + bucket + ".C." + info.NUID}})
		if err != nil {
			return nil, 0, fmt.Errorf("queue: open attachment %s: %w", contract.Quote(ref), err)
		}
		// At most 4 chunks (128 KiB each by default) wait in memory.
		if r.it, err = cons.Messages(jetstream.PullMaxMessages(4)); err != nil {
			return nil, 0, fmt.Errorf("queue: open attachment %s: %w", contract.Quote(ref), err)
		}
	}
	return r, int64(info.Size), nil
}

// objectReader reads an object's chunks from a pull consumer.
type objectReader struct {
	ctx    context.Context // of the open: ends the wait for a chunk
	ref    string
	it     jetstream.MessagesContext
	buf    []byte
	left   int64 // bytes not yet returned
	digest hash.Hash
	want   string
	err    error
}

func (r *objectReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for len(r.buf) == 0 {
		if r.left == 0 {
			if got := jetstream.GetObjectDigestValue(r.digest); r.want != "" && got != r.want {
				r.err = fmt.Errorf("%w: %s: SHA-256 digest mismatch", contract.ErrAttachmentCorrupt, contract.Quote(r.ref))
				return 0, r.err
			}
			r.err = io.EOF
			return 0, io.EOF
		}
		// A chunk the metadata promises but the stream does not hold must
		// not keep the job in hand for ever.
		wctx, cancel := context.WithTimeout(r.ctx, chunkWait)
		m, err := r.it.Next(jetstream.NextContext(wctx))
		cancel()
		if err != nil {
			r.err = fmt.Errorf("queue: read attachment %s: %w", contract.Quote(r.ref), err)
			return 0, r.err
		}
		r.buf = m.Data()
		if len(r.buf) > maxChunkBytes || int64(len(r.buf)) > r.left {
			r.buf = nil
			r.err = fmt.Errorf("%w: %s: a chunk of %d bytes (at most %d, and %d of the object's size left)",
				contract.ErrAttachmentCorrupt, contract.Quote(r.ref), len(m.Data()), maxChunkBytes, r.left)
			return 0, r.err
		}
		r.digest.Write(r.buf)
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.left -= int64(n)
	return n, nil
}

func (r *objectReader) Close() error {
	if r.it != nil {
		r.it.Stop()
	}
	if r.err == nil {
		r.err = errors.New("queue: attachment reader closed")
	}
	return nil
}
