package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// Sender sends one job's mail. Implementations translate their failures into
// *SendError; any other error is treated as a retryable internal failure.
type Sender interface {
	Send(ctx context.Context, profile, jobID string, job *contract.Job) (SendResult, error)
}

// SenderFunc adapts a function to Sender.
type SenderFunc func(ctx context.Context, profile, jobID string, job *contract.Job) (SendResult, error)

// Send calls f.
func (f SenderFunc) Send(ctx context.Context, profile, jobID string, job *contract.Job) (SendResult, error) {
	return f(ctx, profile, jobID, job)
}

// SendResult is a successful send.
type SendResult struct {
	Status          int
	RequestID       string
	ClientRequestID string
	Duration        time.Duration
}

// Kind is the class of a failed send, which decides the queue action.
type Kind int

// Failure classes.
const (
	// Retryable failures spend an attempt and are retried after a delay.
	Retryable Kind = iota
	// Permanent failures are dead-lettered at once.
	Permanent
	// Throttled failures wait out Retry-After without spending an attempt.
	Throttled
	// Unavailable: a service the send depends on could not be reached
	// (Entra's token endpoint) and nothing was sent: wait RetryAfter without
	// spending an attempt, for as long as it lasts.
	Unavailable
)

func (k Kind) String() string {
	switch k {
	case Permanent:
		return "permanent"
	case Throttled:
		return "throttled"
	case Unavailable:
		return "unavailable"
	default:
		return "retryable"
	}
}

// SendError is a failed send in the worker's vocabulary.
type SendError struct {
	Kind   Kind
	Reason contract.Reason // "" when the class alone says enough (plain retryable)
	// Status is the HTTP status, 0 when there was no response.
	Status  int
	Code    string
	Message string
	// RetryAfter is the server's requested wait; 0 when absent.
	RetryAfter time.Duration
	// Ambiguous: the mail may have been delivered despite the failure.
	Ambiguous       bool
	RequestID       string
	ClientRequestID string
	Err             error
}

func (e *SendError) Error() string {
	msg := e.Message
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	if e.Status == 0 {
		return fmt.Sprintf("%s send failure: %s", e.Kind, msg)
	}
	if e.Code != "" {
		return fmt.Sprintf("graph %d %s: %s", e.Status, e.Code, msg)
	}
	return fmt.Sprintf("graph %d: %s", e.Status, msg)
}

func (e *SendError) Unwrap() error { return e.Err }
