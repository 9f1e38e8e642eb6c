// Package support is the back office's one service: replay (one job, a
// selection, everything matching a query), edit and replay, purge and
// reveal of dead letters, and removal of an address from a profile's
// suppression list (delivery tracking), each recorded in MAIL_AUDIT before
// it acts, and the bounded dead-letter scans behind the console's search. The CLI
// (through the worker's admin service, cmd/mailworker/admin.go) and the web
// console call the same Service: an action is written once, and so is its
// audit record.
package support

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/tracking"
)

// Who is the person acting and the door they came through.
type Who struct {
	Actor string // the NATS user (CLI) or the signed-in UPN (console)
	Via   string // ViaCLI or ViaConsole
}

// Doors a support action comes through.
const (
	ViaCLI     = "cli"
	ViaConsole = "console"
)

// Ref names one dead-letter record: a selection in the console list.
type Ref struct {
	Seq     uint64
	Profile string
	JobID   string
}

// Service is what support can do to dead letters. Every method that
// changes something or shows content appends its MAIL_AUDIT record first:
// no record, no action (the error is returned and nothing else happens).
type Service interface {
	// Find returns the newest dead letter of profile's job id ("" = any
	// profile), or an error wrapping queue.ErrNotInDLQ.
	Find(ctx context.Context, profile, id string) (contract.DeadLetter, error)
	// Replay replays the newest dead letter of profile's job id ("" =
	// any profile; queue.ErrAmbiguousJob when two have it).
	Replay(ctx context.Context, who Who, profile, id, detail string) (contract.DeadLetter, error)
	// ReplayEdited replays it with body instead (a fixed job, same id),
	// after contract.DecodeJob accepts it (else the *contract.InvalidError,
	// nothing recorded). The audit record keeps what changed, masked.
	ReplayEdited(ctx context.Context, who Who, profile, id string, body []byte) ([]queue.AuditChange, error)
	// ReplaySelected replays the records refs name that are still there
	// (a record replayed or purged meanwhile, or whose profile or job id is
	// not the one named, is skipped) and returns how many it replayed.
	ReplaySelected(ctx context.Context, who Who, refs []Ref) (int, error)
	// ReplayMatching replays every record matching q; Warn counts what it
	// would replay first. It returns how many records it replayed.
	ReplayMatching(ctx context.Context, who Who, q queue.DLQQuery, detail string) (int, error)
	// Purge deletes every record matching q (and the state of a job left
	// dead-lettered) and returns how many.
	Purge(ctx context.Context, who Who, q queue.DLQQuery, detail string) (int, error)
	// Reveal records that who was shown the recipients and content of
	// profile's job id.
	Reveal(ctx context.Context, who Who, profile, id, detail string) error
	// Preview is what a bulk action on q would touch, newest record per
	// job, with the warnings support must see first (Preview.Warning).
	Preview(ctx context.Context, q queue.DLQQuery) (Preview, error)
	// Scan calls fn with every dead letter matching q, bodies included,
	// oldest first, until fn returns false. At most Options.Scans scans run
	// at once: beyond, it returns ErrBusy at once.
	Scan(ctx context.Context, q queue.DLQQuery, fn func(contract.DeadLetter) bool) error
	// Suppressions lists profile's suppression list ("" = every profile),
	// expired entries included (their ExpiresAt says so).
	Suppressions(ctx context.Context, profile string) ([]tracking.Suppression, error)
	// Unsuppress takes the address whose key is key (queue.RecipientKey)
	// off profile's suppression list, after recording it in MAIL_AUDIT
	// (action unsuppress, the key, never the address). It returns an error
	// wrapping ErrNotSuppressed when there is no such entry (nothing is
	// recorded).
	Unsuppress(ctx context.Context, who Who, profile, key, detail string) error
}

// ErrNotSuppressed: the address is not on the profile's suppression list.
var ErrNotSuppressed = errors.New("support: not on the profile's suppression list")

// ErrBusy is returned by Scan when Options.Scans scans are running already:
// try again in a few seconds (the console answers 503 with Retry-After).
var ErrBusy = errors.New("support: as many dead-letter scans as allowed are running; try again in a few seconds")

// Options tune a Desk.
type Options struct {
	// Scans is how many body-reading scans (searches) may run at once
	// (default 2). Each holds at most a few megabytes of records in
	// memory (queue.Browse reads bodies in batches of a bounded size).
	Scans int
	// Tracking is the delivery tracker's store (the suppression list);
	// default: bound from the queue's JetStream on first use.
	Tracking *tracking.Store
}

// Desk is the Service over a queue.
type Desk struct {
	q     *queue.Queue
	scans chan struct{}

	trMu sync.Mutex
	tr   *tracking.Store // bound on first use (Options.Tracking)
}

var _ Service = (*Desk)(nil)

// New returns the Service over q.
func New(q *queue.Queue, o Options) *Desk {
	if o.Scans <= 0 {
		o.Scans = 2
	}
	return &Desk{q: q, scans: make(chan struct{}, o.Scans), tr: o.Tracking}
}

// tracking binds the tracker's buckets (created by provision whether
// tracking is on or not) once.
func (d *Desk) tracking(ctx context.Context) (*tracking.Store, error) {
	d.trMu.Lock()
	defer d.trMu.Unlock()
	if d.tr != nil {
		return d.tr, nil
	}
	st, err := tracking.Bind(ctx, d.q.States.JetStream())
	if err != nil {
		return nil, err
	}
	d.tr = st
	return st, nil
}

// Suppressions implements Service.
func (d *Desk) Suppressions(ctx context.Context, profile string) ([]tracking.Suppression, error) {
	st, err := d.tracking(ctx)
	if err != nil {
		return nil, err
	}
	return st.Suppressions(ctx, profile)
}

// Unsuppress implements Service: the entry is read first (no record for an
// address that is not listed), then the audit record is stored, then the
// entry removed.
func (d *Desk) Unsuppress(ctx context.Context, who Who, profile, key, detail string) error {
	st, err := d.tracking(ctx)
	if err != nil {
		return err
	}
	sup, err := st.SuppressionByKey(ctx, profile, key)
	if err != nil {
		return err
	}
	if sup == nil {
		return fmt.Errorf("%w (profile %s)", ErrNotSuppressed, contract.Quote(profile))
	}
	det := "recipient " + key
	if detail != "" {
		det += ": " + detail
	}
	if err := d.audit(ctx, who, queue.AuditRecord{Action: queue.AuditUnsuppress, Profile: profile, JobID: sup.JobID, Count: 1, Detail: det}); err != nil {
		return err
	}
	if _, err := st.UnsuppressKey(ctx, profile, key); err != nil {
		return fmt.Errorf("support: recorded, but the entry was not removed: %w", err)
	}
	return nil
}

func (d *Desk) audit(ctx context.Context, who Who, rec queue.AuditRecord) error {
	if who.Actor == "" {
		return errors.New("support: no actor: an action must name who takes it")
	}
	rec.Actor, rec.Via = who.Actor, who.Via
	if err := d.q.Audit.Append(ctx, rec); err != nil {
		return fmt.Errorf("support: audit record not stored, nothing done: %w", err)
	}
	return nil
}

// Find implements Service: through the job state when it says when the job
// was dead-lettered (FindNear reads from there), else a scan of the
// profile's records.
func (d *Desk) Find(ctx context.Context, profile, id string) (contract.DeadLetter, error) {
	if profile != "" {
		if st, _, err := d.q.States.Get(ctx, profile, id); err == nil && st.State == contract.StateDeadLettered {
			return d.q.DLQ.FindNear(ctx, st.Profile, id, st.UpdatedAt)
		}
		return d.q.DLQ.Find(ctx, profile, id)
	}
	return d.q.DLQ.Get(ctx, "", id)
}

// Replay implements Service.
func (d *Desk) Replay(ctx context.Context, who Who, profile, id, detail string) (contract.DeadLetter, error) {
	dl, err := d.Find(ctx, profile, id)
	if err != nil {
		return dl, err
	}
	if detail == "" {
		detail = string(dl.Reason)
	}
	if err := d.audit(ctx, who, queue.AuditRecord{Action: queue.AuditReplay, Profile: dl.Profile, JobID: dl.JobID, Count: 1, Detail: detail}); err != nil {
		return dl, err
	}
	return dl, d.q.DLQ.ReplayRecord(ctx, dl, queue.ReplayOptions{})
}

// ReplayEdited implements Service.
func (d *Desk) ReplayEdited(ctx context.Context, who Who, profile, id string, body []byte) ([]queue.AuditChange, error) {
	dl, err := d.Find(ctx, profile, id)
	if err != nil {
		return nil, err
	}
	j, err := contract.DecodeJob(body)
	if err != nil {
		return nil, err
	}
	if j.ID != "" && j.ID != dl.JobID {
		return nil, &contract.InvalidError{Field: "id", Rule: fmt.Sprintf("the fixed job's id %s is not the replayed job's id %s", contract.Quote(j.ID), contract.Quote(dl.JobID)), Reason: contract.ReasonInvalidJob}
	}
	changes := Diff(dl.Body, body, senderAddress(dl.From))
	names := make([]string, 0, len(changes))
	for _, c := range changes {
		names = append(names, c.Field)
	}
	rec := queue.AuditRecord{Action: queue.AuditReplayEdited, Profile: dl.Profile, JobID: dl.JobID, Count: 1,
		Detail: "changed: " + strings.Join(names, ", "), Changes: changes}
	if err := d.audit(ctx, who, rec); err != nil {
		return nil, err
	}
	return changes, d.q.DLQ.ReplayRecord(ctx, dl, queue.ReplayOptions{Body: body})
}

// ReplaySelected implements Service.
func (d *Desk) ReplaySelected(ctx context.Context, who Who, refs []Ref) (int, error) {
	n := 0
	for _, ref := range refs {
		dl, err := d.q.DLQ.At(ctx, ref.Seq)
		if errors.Is(err, queue.ErrNotInDLQ) || (err == nil && (dl.JobID != ref.JobID || dl.Profile != ref.Profile)) {
			continue // replayed or purged meanwhile (or not the record named)
		}
		if err == nil {
			err = d.audit(ctx, who, queue.AuditRecord{Action: queue.AuditReplay, Profile: dl.Profile, JobID: dl.JobID, Count: 1, Detail: "selected"})
		}
		if err == nil {
			err = d.q.DLQ.ReplayRecord(ctx, dl, queue.ReplayOptions{})
		}
		if err != nil {
			return n, fmt.Errorf("replayed %d, then: %w", n, err)
		}
		n++
	}
	return n, nil
}

// ReplayMatching implements Service: each record is audited just before it
// is replayed, so a crash halfway leaves a record of every job put back.
func (d *Desk) ReplayMatching(ctx context.Context, who Who, q queue.DLQQuery, detail string) (int, error) {
	if q.Reason != "" && !q.Reason.Valid() {
		return 0, fmt.Errorf("unknown reason %s (one of %v)", contract.Quote(string(q.Reason)), contract.Reasons)
	}
	return d.q.DLQ.ReplayMatching(ctx, q, func(dl contract.DeadLetter) error {
		return d.audit(ctx, who, queue.AuditRecord{Action: queue.AuditReplay, Profile: dl.Profile, JobID: dl.JobID, Count: 1, Detail: detail})
	})
}

// Purge implements Service.
func (d *Desk) Purge(ctx context.Context, who Who, q queue.DLQQuery, detail string) (int, error) {
	if q.Reason != "" && !q.Reason.Valid() {
		return 0, fmt.Errorf("unknown reason %s (one of %v)", contract.Quote(string(q.Reason)), contract.Reasons)
	}
	if q.JobID != "" && !contract.ValidJobID(q.JobID) {
		return 0, fmt.Errorf("invalid job id %s", contract.Quote(q.JobID))
	}
	n := 0
	q.After, q.Limit = 0, 200
	for {
		page, err := d.q.DLQ.Page(ctx, q)
		if err != nil {
			return n, fmt.Errorf("purged %d, then: %w", n, err)
		}
		for _, dl := range page.Items {
			det := detail
			if det == "" {
				det = string(dl.Reason)
			}
			err := d.audit(ctx, who, queue.AuditRecord{Action: queue.AuditPurge, Profile: dl.Profile, JobID: dl.JobID, Count: 1, Detail: det})
			if err == nil {
				err = d.q.DLQ.PurgeDeadLetter(ctx, dl)
			}
			if err != nil {
				return n, fmt.Errorf("purged %d, then: %w", n, err)
			}
			n++
		}
		if page.Next == 0 {
			return n, nil
		}
		q.After = page.Next
	}
}

// Reveal implements Service.
func (d *Desk) Reveal(ctx context.Context, who Who, profile, id, detail string) error {
	return d.audit(ctx, who, queue.AuditRecord{Action: queue.AuditReveal, Profile: profile, JobID: id, Detail: detail})
}

// Preview is what a bulk action would touch.
type Preview struct {
	// Jobs are the newest record of each job matching, first seen first.
	Jobs []contract.DeadLetter
	// Invalid counts those dead-lettered invalid_job: replayed unchanged
	// they fail again.
	Invalid int
}

// Warning is what support must read before replaying p ("" = nothing).
func (p Preview) Warning() string {
	if p.Invalid == 0 {
		return ""
	}
	return fmt.Sprintf("%d of these job(s) were dead-lettered invalid_job: a replay sends the same body, which fails again. Fix each in the editor (console) or with `mailworker dlq replay <job-id> --file fixed.json`.", p.Invalid)
}

// Preview implements Service.
func (d *Desk) Preview(ctx context.Context, q queue.DLQQuery) (Preview, error) {
	var p Preview
	idx := map[string]int{}
	q.After, q.Limit = 0, 500
	for {
		page, err := d.q.DLQ.Page(ctx, q)
		if err != nil {
			return p, err
		}
		for _, dl := range page.Items {
			dl.Body = nil // a preview lists, it does not show content
			k := queue.StateKey(dl.Profile, dl.JobID)
			if i, ok := idx[k]; ok {
				p.Jobs[i] = dl
				continue
			}
			idx[k] = len(p.Jobs)
			p.Jobs = append(p.Jobs, dl)
		}
		if page.Next == 0 {
			break
		}
		q.After = page.Next
	}
	for _, dl := range p.Jobs {
		if dl.Reason == contract.ReasonInvalidJob {
			p.Invalid++
		}
	}
	return p, nil
}

// Scan implements Service.
func (d *Desk) Scan(ctx context.Context, q queue.DLQQuery, fn func(contract.DeadLetter) bool) error {
	select {
	case d.scans <- struct{}{}:
	default:
		return ErrBusy
	}
	defer func() { <-d.scans }()
	stop := errors.New("stop")
	err := d.q.DLQ.Each(ctx, q, func(dl contract.DeadLetter) error {
		if !fn(dl) {
			return stop
		}
		return nil
	})
	if errors.Is(err, stop) {
		return nil
	}
	return err
}

// RetryAfter is what a busy answer tells the client to wait.
const RetryAfter = 5 * time.Second

func senderAddress(from string) string {
	if _, addr, err := contract.ParseAddress(from); err == nil {
		return addr
	}
	return from
}
