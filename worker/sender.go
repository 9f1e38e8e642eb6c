package worker

import (
	"context"

	"github.com/mailworker/mailworker/queue/contract"
)

// Sender sends one job's mail (graphmail.Jobs). A failure is a
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
