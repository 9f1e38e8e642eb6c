package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// validProfile reports whether p can be one subject token.
func validProfile(p string) bool {
	return p != "" && !strings.ContainsAny(p, ".*> \t\r\n\x00")
}

// Publisher publishes jobs for Go producers.
type Publisher struct {
	js jetstream.JetStream
}

// NewPublisher returns a Publisher on js.
func NewPublisher(js jetstream.JetStream) *Publisher { return &Publisher{js: js} }

func (p *Publisher) jobMsg(profile string, job *contract.Job) (*nats.Msg, error) {
	if !validProfile(profile) {
		return nil, fmt.Errorf("queue: publish: invalid profile %s: want one subject token", contract.Quote(profile))
	}
	if job.ID == "" {
		job.ID = contract.NewJobID()
	}
	if err := job.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("queue: encode job: %w", err)
	}
	return &nats.Msg{Subject: contract.JobSubject(profile), Data: b, Header: nats.Header{contract.HeaderMsgID: []string{job.ID}}}, nil
}

// Publish validates job, sets job.ID to a random id if it is empty, and
// publishes it on JobSubject(profile) with Nats-Msg-Id = id, so that
// JetStream drops a duplicate publish within its window (a duplicate is not
// an error). It returns the id. A validation failure is an *InvalidError.
func (p *Publisher) Publish(ctx context.Context, profile string, job *contract.Job) (string, error) {
	m, err := p.jobMsg(profile, job)
	if err != nil {
		return "", err
	}
	if _, err := p.js.PublishMsg(ctx, m); err != nil {
		return "", fmt.Errorf("queue: publish job %s: %w", job.ID, err)
	}
	return job.ID, nil
}

// PublishAsync is Publish without waiting for the ack (bulk path): the
// caller checks the future or waits on js.PublishAsyncComplete().
func (p *Publisher) PublishAsync(profile string, job *contract.Job) (jetstream.PubAckFuture, string, error) {
	m, err := p.jobMsg(profile, job)
	if err != nil {
		return nil, "", err
	}
	f, err := p.js.PublishMsgAsync(m)
	if err != nil {
		return nil, "", fmt.Errorf("queue: publish job %s: %w", job.ID, err)
	}
	return f, job.ID, nil
}

// PublishRaw publishes pre-encoded job bytes unchanged on JobSubject(profile);
// a non-empty id (which must be a valid job id) becomes Nats-Msg-Id. It does
// not validate data: the worker does (call DecodeJob first to fail early).
func (p *Publisher) PublishRaw(ctx context.Context, profile string, data []byte, id string) error {
	if !validProfile(profile) {
		return fmt.Errorf("queue: publish: invalid profile %s: want one subject token", contract.Quote(profile))
	}
	m := &nats.Msg{Subject: contract.JobSubject(profile), Data: data}
	if id != "" {
		if !contract.ValidJobID(id) {
			return fmt.Errorf("queue: publish: invalid job id %s", contract.Quote(id))
		}
		m.Header = nats.Header{contract.HeaderMsgID: []string{id}}
	}
	if _, err := p.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("queue: publish raw job: %w", err)
	}
	return nil
}
