package worker

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Ambiguous-outcome policies: what a worker does with a job whose earlier
// attempt may have delivered the mail.
const (
	// OnAmbiguousRetry sends again and marks the job possible_duplicate.
	OnAmbiguousRetry = "retry"
	// OnAmbiguousDeadLetter dead-letters the job for a person to check
	// message trace before replaying it.
	OnAmbiguousDeadLetter = "deadletter"
)

// Profile is what the worker needs to know about one sending profile.
type Profile struct {
	Name string
	// AllowedSenders are the approved shared mailboxes (case-insensitive).
	AllowedSenders []string
	// OnAmbiguous is OnAmbiguousRetry (default) or OnAmbiguousDeadLetter.
	OnAmbiguous string
}

// Config tunes a Pool. Zero values take the defaults of WithDefaults.
type Config struct {
	// Concurrency bounds Graph requests in flight.
	Concurrency int
	// MaxInFlight bounds jobs held (fetched, not yet acked).
	MaxInFlight int
	// PerMailboxConcurrency bounds requests in flight per sending mailbox.
	PerMailboxConcurrency int
	// PerMailboxPerMinute paces each mailbox (Exchange allows 30 messages a
	// minute); 0 leaves mailboxes unpaced.
	PerMailboxPerMinute int
	// PerMailboxRecipientsPerDay caps recipients per mailbox in any rolling
	// 24 hours (Exchange allows 10,000 and bounces mail past it after
	// accepting it); 0 leaves it unchecked.
	PerMailboxRecipientsPerDay int
	// PerMailboxUploadBytes caps the request bytes (the message with its
	// attachments, base64-encoded) per mailbox in any rolling 5 minutes
	// (Outlook allows 150 MB and answers 429 past it); 0 leaves it unchecked.
	PerMailboxUploadBytes int64
	// MaxAttempts is how many sends a job gets before it is dead-lettered.
	MaxAttempts int
	// BackoffInitial and BackoffMax bound the exponential retry delay used
	// when the server gives no Retry-After.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// AckWait is the consumer's ack wait; long waits send InProgress every third of it.
	AckWait time.Duration
	// SendTimeout bounds one send.
	SendTimeout time.Duration
	// DrainTimeout is how long in-flight sends may finish after shutdown starts.
	DrainTimeout time.Duration
	// MaxHold is the longest a job is held in memory waiting for its mailbox's
	// pace; longer waits put it back on the queue with a delay.
	MaxHold time.Duration
	// Profiles by name. A job for a profile not listed is dead-lettered.
	Profiles map[string]Profile
	// LogRecipients logs recipient addresses (personal data) in outcome logs.
	LogRecipients bool
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Concurrency, 64)
	def(&c.MaxInFlight, 512)
	def(&c.PerMailboxConcurrency, 4)
	def(&c.MaxAttempts, 8)
	defDur(&c.BackoffInitial, 5*time.Second)
	defDur(&c.BackoffMax, 10*time.Minute)
	defDur(&c.AckWait, 60*time.Second)
	defDur(&c.SendTimeout, 60*time.Second)
	defDur(&c.DrainTimeout, 25*time.Second)
	defDur(&c.MaxHold, 5*time.Second)
	return c
}

// Validate reports the first invalid field, by name.
func (c Config) Validate() error {
	var errs []error
	positive := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("worker.%s: must be > 0, got %d", name, v))
		}
	}
	positive("concurrency", c.Concurrency)
	positive("maxInFlight", c.MaxInFlight)
	positive("perMailboxConcurrency", c.PerMailboxConcurrency)
	positive("maxAttempts", c.MaxAttempts)
	if c.PerMailboxRecipientsPerDay < 0 {
		errs = append(errs, fmt.Errorf("worker.perMailboxRecipientsPerDay: must be >= 0, got %d", c.PerMailboxRecipientsPerDay))
	}
	if c.PerMailboxUploadBytes < 0 {
		errs = append(errs, fmt.Errorf("worker.perMailboxUploadMBPer5Min: must be >= 0, got %d bytes", c.PerMailboxUploadBytes))
	}
	if c.PerMailboxPerMinute < 0 {
		errs = append(errs, fmt.Errorf("worker.perMailboxPerMinute: must be >= 0, got %d", c.PerMailboxPerMinute))
	}
	if c.BackoffMax < c.BackoffInitial {
		errs = append(errs, fmt.Errorf("worker.backoffMax: %s is below backoffInitial %s", c.BackoffMax, c.BackoffInitial))
	}
	if c.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("worker.ackWait: %s is below 1s", c.AckWait))
	}
	if len(c.Profiles) == 0 {
		errs = append(errs, errors.New("profiles: at least one profile is required"))
	}
	for name, p := range c.Profiles {
		if len(p.AllowedSenders) == 0 {
			errs = append(errs, fmt.Errorf("profiles.%s.allowedSenders: at least one approved mailbox is required", name))
		}
		switch p.OnAmbiguous {
		case "", OnAmbiguousRetry, OnAmbiguousDeadLetter:
		default:
			errs = append(errs, fmt.Errorf("profiles.%s.onAmbiguous: %q is not retry or deadletter", name, p.OnAmbiguous))
		}
	}
	return errors.Join(errs...)
}

// profileState is a profile with its allowlist lower-cased for lookups.
type profileState struct {
	Profile
	allowed map[string]struct{}
}

func newProfileState(p Profile) *profileState {
	ps := &profileState{Profile: p, allowed: make(map[string]struct{}, len(p.AllowedSenders))}
	for _, s := range p.AllowedSenders {
		ps.allowed[strings.ToLower(strings.TrimSpace(s))] = struct{}{}
	}
	return ps
}

func (p *profileState) allows(addr string) bool {
	_, ok := p.allowed[strings.ToLower(addr)]
	return ok
}
