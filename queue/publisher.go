package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
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
	return &nats.Msg{Subject: contract.JobSubject(profile), Data: b, Header: nats.Header{contract.HeaderMsgID: []string{PublishMsgID(job.ID, b)}}}, nil
}

// PublishMsgID is the Nats-Msg-Id Publish and PublishRaw set:
// "<job id>.<first 64 bits of the SHA-256 of the bytes, hex>". Each profile's
// ingress stream has its own duplicate window that only the profile's
// producers write, so an id is safe from other applications, and JetStream's
// idiom (Nats-Msg-Id = the job id) works for any client. The hash makes a
// retry of the same publish, or the same job published twice, one message,
// while a corrected job under the same id (after support purged the failed
// one) is stored, not dropped for two minutes.
func PublishMsgID(id string, data []byte) string {
	sum := sha256.Sum256(data)
	return id + "." + hex.EncodeToString(sum[:8])
}

// ErrDuplicatePublish is returned (wrapped) by Publish and PublishRaw when
// JetStream reports a publish as a duplicate of a message already in the
// profile's duplicate window: the same job (id and bytes) was published
// moments ago, by a retry of the same publish or by another publish, and the
// stream holds it once, at the sequence the error names (PublishMsgID;
// README, "Job identity").
var ErrDuplicatePublish = errors.New("queue: the job id is already in the profile's stream (duplicate publish)")

// Published is the outcome of one publish: the job id and the
// MAIL_JOBS_<profile> stream sequence that holds the job (the job state's Seq
// once the worker has finished this very message).
type Published struct {
	ID  string
	Seq uint64
}

// Publish validates job, sets job.ID to a random id if it is empty, and
// publishes it on JobSubject(profile) with Nats-Msg-Id PublishMsgID. It
// returns the id. A validation failure is an *InvalidError; a publish the
// stream drops as a duplicate is ErrDuplicatePublish (wrapped).
func (p *Publisher) Publish(ctx context.Context, profile string, job *contract.Job) (string, error) {
	pub, err := p.PublishJob(ctx, profile, job)
	return pub.ID, err
}

// PublishJob is Publish that also returns the stream sequence of the stored
// job, so that a caller waiting for the outcome can tell its own job from
// another publish of the same id.
func (p *Publisher) PublishJob(ctx context.Context, profile string, job *contract.Job) (Published, error) {
	m, err := p.jobMsg(profile, job)
	if err != nil {
		return Published{}, err
	}
	ack, err := p.js.PublishMsg(ctx, m)
	if err != nil {
		return Published{}, fmt.Errorf("queue: publish job %s: %w", job.ID, err)
	}
	if ack.Duplicate {
		return Published{}, fmt.Errorf("%w: job %s (stream sequence %d holds the message with Nats-Msg-Id %s)", ErrDuplicatePublish, job.ID, ack.Sequence, m.Header.Get(contract.HeaderMsgID))
	}
	return Published{ID: job.ID, Seq: ack.Sequence}, nil
}

// PublishJobAsync is PublishJob without waiting for the ack: the job is
// validated and sent at once (it leaves with the connection's next flush, in
// one write with whatever else is sent at the same moment: Attachments.
// MarkAsync), and wait returns PublishJob's result, or ctx's error if the
// ack does not come before ctx is done (the job may then be stored).
func (p *Publisher) PublishJobAsync(profile string, job *contract.Job) (wait func(context.Context) (Published, error), err error) {
	m, err := p.jobMsg(profile, job)
	if err != nil {
		return nil, err
	}
	f, err := p.js.PublishMsgAsync(m)
	if err != nil {
		return nil, fmt.Errorf("queue: publish job %s: %w", job.ID, err)
	}
	return func(ctx context.Context) (Published, error) {
		ack, err := awaitAck(ctx, f)
		if err != nil {
			return Published{}, fmt.Errorf("queue: publish job %s: %w", job.ID, err)
		}
		if ack.Duplicate {
			return Published{}, fmt.Errorf("%w: job %s (stream sequence %d holds the message with Nats-Msg-Id %s)", ErrDuplicatePublish, job.ID, ack.Sequence, m.Header.Get(contract.HeaderMsgID))
		}
		return Published{ID: job.ID, Seq: ack.Sequence}, nil
	}, nil
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

// PublishRaw publishes pre-encoded job bytes unchanged on JobSubject(profile).
// It does not validate data: the worker does (call DecodeJob first to fail
// early). A non-empty id is sent as Mail-Job-Id, the job's id when the body
// has none, and makes the Nats-Msg-Id (PublishMsgID). It returns the stream
// sequence of the stored job.
func (p *Publisher) PublishRaw(ctx context.Context, profile string, data []byte, id string) (uint64, error) {
	if !validProfile(profile) {
		return 0, fmt.Errorf("queue: publish: invalid profile %s: want one subject token", contract.Quote(profile))
	}
	if id != "" && !contract.ValidJobID(id) {
		return 0, fmt.Errorf("queue: publish: invalid job id %s", contract.Quote(id))
	}
	h := nats.Header{}
	if id != "" {
		h.Set(contract.HeaderJobID, id)
		h.Set(contract.HeaderMsgID, PublishMsgID(id, data))
	}
	m := &nats.Msg{Subject: contract.JobSubject(profile), Data: data, Header: h}
	ack, err := p.js.PublishMsg(ctx, m)
	if err != nil {
		return 0, fmt.Errorf("queue: publish raw job: %w", err)
	}
	if ack.Duplicate {
		return 0, fmt.Errorf("%w: stream sequence %d", ErrDuplicatePublish, ack.Sequence)
	}
	return ack.Sequence, nil
}
