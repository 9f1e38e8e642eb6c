package queue

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// Publisher publishes jobs for Go producers.
type Publisher struct {
	js jetstream.JetStream
}

// NewPublisher returns a Publisher on js.
func NewPublisher(js jetstream.JetStream) *Publisher { return &Publisher{js: js} }

// Publish validates job, sets its id if absent, and publishes it with
// Nats-Msg-Id = id. It returns the id.
func (p *Publisher) Publish(ctx context.Context, profile string, job *Job) (string, error) {
	return "", nil
}

// PublishAsync is Publish without waiting for the ack (bulk path); the caller
// waits on js.PublishAsyncComplete().
func (p *Publisher) PublishAsync(profile string, job *Job) (jetstream.PubAckFuture, string, error) {
	return nil, "", nil
}

// PublishRaw publishes pre-encoded job bytes; id (optional) becomes Nats-Msg-Id.
func (p *Publisher) PublishRaw(ctx context.Context, profile string, data []byte, id string) error {
	return nil
}
