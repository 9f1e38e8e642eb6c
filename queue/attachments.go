package queue

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// Attachments stores attachment content by reference (object store MAIL_ATTACHMENTS).
type Attachments struct {
	obs jetstream.ObjectStore
}

// Put stores data and returns the objectRef to put in a job.
func (a *Attachments) Put(ctx context.Context, name string, data []byte) (string, error) {
	return "", nil
}

// Get returns the content of ref.
func (a *Attachments) Get(ctx context.Context, ref string) ([]byte, error) { return nil, nil }
