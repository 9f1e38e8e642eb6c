package queue

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Config sizes the JetStream assets. The zero value plus WithDefaults is usable.
type Config struct {
	Replicas      int           // 1 or 3 (default 1)
	JobsMaxAge    time.Duration // 0 = unlimited
	StatusMaxAge  time.Duration // default 7*24h
	DLQMaxAge     time.Duration // 0 = unlimited
	StateTTL      time.Duration // default 7*24h
	AckWait       time.Duration // consumer, default 60s
	MaxAckPending int           // consumer, default 1000
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.StatusMaxAge == 0 {
		c.StatusMaxAge = 7 * 24 * time.Hour
	}
	if c.StateTTL == 0 {
		c.StateTTL = 7 * 24 * time.Hour
	}
	if c.AckWait == 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 1000
	}
	return c
}

// ErrIncompatible is returned (wrapped, naming the asset and field) when an
// existing asset's config cannot be brought in line without recreating it.
var ErrIncompatible = errors.New("queue: existing asset has an incompatible config")

// Provision creates or updates every JetStream asset mailworker uses.
func Provision(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	return errors.New("not implemented")
}

// Queue is a handle on the provisioned assets.
type Queue struct {
	States      *States
	Events      *Events
	DLQ         *DLQ
	Attachments *Attachments

	js jetstream.JetStream
}

// Open binds to the existing assets; it creates nothing.
func Open(ctx context.Context, js jetstream.JetStream) (*Queue, error) {
	return nil, errors.New("not implemented")
}

// Consumer returns the shared durable pull consumer on MAIL_JOBS.
func (q *Queue) Consumer(ctx context.Context) (jetstream.Consumer, error) {
	return q.js.Consumer(ctx, StreamJobs, ConsumerName)
}
