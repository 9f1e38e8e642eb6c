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
	Action  string    `json:"action"` // replay, replay_edited, purge, reveal, unsuppress
	Profile string    `json:"profile"`
	JobID   string    `json:"jobId,omitempty"`
	Count   int       `json:"count,omitempty"`
	Detail  string    `json:"detail,omitempty"`
	// Changes are what an edited replay changed, field by field, masked
	// as the console's job page masks a job (support.Diff): where the
	// mail went is on record without the addresses in clear.
	Changes []AuditChange `json:"changes,omitempty"`
}

// AuditChange is one field an edited replay changed: its masked value
// before and after ("" = absent).
type AuditChange struct {
	Field  string `json:"field"`
	Before string `json:"before,omitempty"`
	After  string `json:"after,omitempty"`
}

// maxAuditChanges caps the changes one record keeps (a job has fewer
// top-level fields; an edit cannot make the record grow without bound).
const maxAuditChanges = 32

// Audit actions.
const (
	AuditReplay       = "replay"
	AuditReplayEdited = "replay_edited"
	AuditPurge        = "purge"
	AuditReveal       = "reveal"
	// AuditUnsuppress: an address taken off a profile's suppression list
	// (delivery tracking); the record's detail names the address's key
	// (RecipientKey), never the address.
	AuditUnsuppress = "unsuppress"
)

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
	r.Detail = oneLine(r.Detail, 512)
	if len(r.Changes) > maxAuditChanges {
		r.Changes = r.Changes[:maxAuditChanges]
	}
	for i, c := range r.Changes {
		r.Changes[i] = AuditChange{Field: oneLine(c.Field, 64), Before: oneLine(c.Before, 256), After: oneLine(c.After, 256)}
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("queue: encode audit record: %w", err)
	}
	m := &nats.Msg{Subject: AuditSubject(r.Profile), Data: b, Header: nats.Header{}}
	if r.JobID != "" {
		// ForJobSince finds a job's records by this header, reading no body.
		m.Header.Set(contract.HeaderJobID, r.JobID)
	}
	if _, err := a.js.PublishMsg(ctx, m); err != nil {
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

// ForJobSince returns the audit records of jobID in any profile stored since
// since (all when zero; a job's records are never older than the job),
// oldest first. It reads the audit stream from since on by batch direct
// gets (BrowseDirect: no consumer) and keeps the job's records (their
// Mail-Job-Id header).
func (a *Audit) ForJobSince(ctx context.Context, jobID string, since time.Time) ([]AuditRecord, error) {
	if !contract.ValidJobID(jobID) {
		return nil, fmt.Errorf("queue: audit: invalid job id %s", contract.Quote(jobID))
	}
	if _, err := lookupStream(ctx, a.js, contract.StreamAudit); err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", contract.StreamAudit, err)
	}
	var out []AuditRecord
	err := BrowseDirect(ctx, a.js, contract.StreamAudit, BrowseOptions{Filter: contract.AuditSubjectPrefix + ">", Since: since}, func(m jetstream.Msg) (bool, error) {
		if m.Headers().Get(contract.HeaderJobID) != jobID {
			return true, nil
		}
		var r AuditRecord
		if json.Unmarshal(m.Data(), &r) == nil && r.JobID == jobID {
			out = append(out, r)
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue: read %s: %w", contract.StreamAudit, err)
	}
	return out, nil
}
