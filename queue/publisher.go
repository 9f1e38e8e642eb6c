package queue

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NewJobID returns a random job id (22 URL-safe base64 characters, 128 bits),
// valid for ValidJobID.
func NewJobID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

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

func (p *Publisher) jobMsg(profile string, job *Job) (*nats.Msg, error) {
	if !validProfile(profile) {
		return nil, fmt.Errorf("queue: publish: invalid profile %s: want one subject token", quote(profile))
	}
	if job.ID == "" {
		job.ID = NewJobID()
	}
	if err := job.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("queue: encode job: %w", err)
	}
	return &nats.Msg{Subject: JobSubject(profile), Data: b, Header: nats.Header{HeaderMsgID: []string{job.ID}}}, nil
}

// Publish validates job, sets job.ID to a random id if it is empty, and
// publishes it on JobSubject(profile) with Nats-Msg-Id = id, so that
// JetStream drops a duplicate publish within its window (a duplicate is not
// an error). It returns the id. A validation failure is an *InvalidError.
func (p *Publisher) Publish(ctx context.Context, profile string, job *Job) (string, error) {
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
func (p *Publisher) PublishAsync(profile string, job *Job) (jetstream.PubAckFuture, string, error) {
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
		return fmt.Errorf("queue: publish: invalid profile %s: want one subject token", quote(profile))
	}
	m := &nats.Msg{Subject: JobSubject(profile), Data: data}
	if id != "" {
		if !ValidJobID(id) {
			return fmt.Errorf("queue: publish: invalid job id %s", quote(id))
		}
		m.Header = nats.Header{HeaderMsgID: []string{id}}
	}
	if _, err := p.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("queue: publish raw job: %w", err)
	}
	return nil
}
