package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// AuditRecord is one recorded support action (stream MAIL_AUDIT, subject
// mail.audit.<profile>): who did what, when, to which job.
type AuditRecord struct {
	At      time.Time `json:"at"`
	Actor   string    `json:"actor"`
	Via     string    `json:"via"`    // "cli" | "console"
	Action  string    `json:"action"` // replay, replay_edited, purge, reveal
	Profile string    `json:"profile"`
	JobID   string    `json:"jobId,omitempty"`
	Count   int       `json:"count,omitempty"`
	Detail  string    `json:"detail,omitempty"`
}

// AuditSubject is the subject audit records of profile are stored on.
func AuditSubject(profile string) string { return contract.AuditSubjectPrefix + profile }

// Audit appends to and reads the audit stream MAIL_AUDIT.
type Audit struct {
	js jetstream.JetStream
}

// Append stores r and waits for the stream's ack. A zero At is set to now.
// It fails on an invalid profile, a missing actor or action.
func (a *Audit) Append(ctx context.Context, r AuditRecord) error {
	switch {
	case !validProfile(r.Profile):
		return fmt.Errorf("queue: audit: invalid profile %s", contract.Quote(r.Profile))
	case r.Actor == "" || r.Action == "":
		return fmt.Errorf("queue: audit: actor and action are required")
	case r.JobID != "" && !contract.ValidJobID(r.JobID):
		return fmt.Errorf("queue: audit: invalid job id %s", contract.Quote(r.JobID))
	}
	if r.At.IsZero() {
		r.At = time.Now().UTC()
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("queue: encode audit record: %w", err)
	}
	if _, err := a.js.PublishMsg(ctx, &nats.Msg{Subject: AuditSubject(r.Profile), Data: b}); err != nil {
		return fmt.Errorf("queue: store audit record (%s %s): %w", r.Action, r.JobID, err)
	}
	return nil
}

// ForJob returns the audit records of profile's job jobID, oldest first.
func (a *Audit) ForJob(ctx context.Context, profile, jobID string) ([]AuditRecord, error) {
	if !validProfile(profile) || !contract.ValidJobID(jobID) {
		return nil, fmt.Errorf("queue: audit: invalid profile %s or job id %s", contract.Quote(profile), contract.Quote(jobID))
	}
	s, err := a.js.Stream(ctx, contract.StreamAudit)
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", contract.StreamAudit, err)
	}
	var out []AuditRecord
	err = scan(ctx, s, AuditSubject(profile), func(m *jetstream.RawStreamMsg) error {
		var r AuditRecord
		if json.Unmarshal(m.Data, &r) == nil && r.JobID == jobID {
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue: read %s: %w", contract.StreamAudit, err)
	}
	return out, nil
}
