package worker

import (
	"context"

	"github.com/mailworker/mailworker/queue/contract"
)

// Sender sends one job's mail (graphmail.Sender). A failure is a
// *contract.SendError, whose Class decides what happens next; any other
// error counts as a retryable internal failure.
type Sender interface {
	Send(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error)
}

// SenderFunc adapts a function to Sender.
type SenderFunc func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error)

// Send calls f.
func (f SenderFunc) Send(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
	return f(ctx, profile, jobID, job)
}

// Checker is a Sender that can refuse a job before anything is spent on
// it (graphmail.Sender): Check returns a permanent *contract.SendError for
// what the job's path cannot send (the profile's recipient and header
// limits, content sizes by the store's metadata), without loading content
// or calling Graph; any other error or nil lets the send go ahead. The
// worker calls it before the mailbox's recipient budget is charged.
type Checker interface {
	Check(ctx context.Context, profile string, job *contract.Job) error
}

// ResumableSender is a Sender that can send a job through a draft
// (graphmail.Sender in draft delivery mode). The worker hands it the job's
// draft progress from the job state (nil: none yet) and save, which stores
// new progress in the job state (compare-and-set: it fails when another
// delivery took the job over, and the send must then stop). With a draft,
// an ambiguous send is resolved by a look-up on the next attempt instead of
// guessed (see decide).
type ResumableSender interface {
	Sender
	// UsesDraft reports whether job will go through a draft, so that the
	// state that claims it for sending already says so (a worker killed
	// before the draft's first progress is saved then leaves a job whose
	// outcome can be looked up, not an ambiguous one).
	UsesDraft(ctx context.Context, profile string, job *contract.Job) bool
	SendResumable(ctx context.Context, profile, jobID string, job *contract.Job,
		draft *contract.Draft, save func(context.Context, *contract.Draft) error) (contract.SendResult, error)
}

// DraftDeleter deletes a job's draft that was never sent (graphmail.Sender):
// the worker calls it when a job with such a draft is dead-lettered or
// expires, so that no draft is left behind in the shared mailbox.
type DraftDeleter interface {
	DeleteDraft(ctx context.Context, profile, jobID string, d *contract.Draft) error
}
