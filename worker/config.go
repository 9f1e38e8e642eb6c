package worker

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailworker/mailworker/queue/contract"
)

// AmbiguousPolicy is what a worker does with a job whose earlier attempt may
// have delivered the mail (profiles.<name>.onAmbiguous).
type AmbiguousPolicy string

// The ambiguous-outcome policies.
const (
	// OnAmbiguousRetry sends again and marks the job possible_duplicate.
	OnAmbiguousRetry AmbiguousPolicy = "retry"
	// OnAmbiguousDeadLetter dead-letters the job for a person to check
	// message trace before replaying it.
	OnAmbiguousDeadLetter AmbiguousPolicy = "deadletter"
)

// Unlimited switches a per-mailbox limit of Config off.
const Unlimited = -1

// limit maps a configured limit to the pacer's: Unlimited (any negative) is
// 0, unchecked.
func limit(v int) int { return max(v, 0) }

// Production limits of Exchange Online and Outlook, the defaults of Config.
const (
	DefaultPerMailboxPerMinute              = 30
	DefaultPerMailboxRecipientsPerDay       = 10_000
	DefaultPerMailboxUploadBytes      int64 = 150_000_000
)

// Profile is what the worker needs to know about one sending profile.
type Profile struct {
	Name string
	// AllowedSenders are the approved shared mailboxes (case-insensitive).
	AllowedSenders []string
	// OnAmbiguous is OnAmbiguousRetry (default) or OnAmbiguousDeadLetter.
	OnAmbiguous AmbiguousPolicy
	// MaxMessageBytes is the sending mailboxes' maximum message size
	// (Exchange's MaxSendSize; profiles.<name>.maxMessageSize): a job whose
	// message, as Exchange counts it (contract.MessageSize), is larger is
	// dead-lettered message_too_large before any Graph call. 0 =
	// contract.DefaultMaxMessageBytes (35 MB); at most
	// contract.MaxMessageBytesLimit (150 MB).
	MaxMessageBytes int64
}

// Config tunes a Pool. Zero values take the defaults of WithDefaults.
type Config struct {
	// Concurrency bounds Graph requests in flight.
	Concurrency int
	// MaxInFlight bounds jobs held (fetched, not yet acked).
	MaxInFlight int
	// PerMailboxConcurrency bounds requests in flight per sending mailbox.
	PerMailboxConcurrency int
	// PerMailboxPerMinute paces each mailbox: default 30 (Exchange Online's
	// message rate limit, 30 messages a minute: "Exchange Online limits",
	// https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#sending-limits-1);
	// Unlimited leaves mailboxes unpaced.
	PerMailboxPerMinute int
	// PerMailboxRecipientsPerDay caps recipients per mailbox in any rolling
	// 24 hours: default 10,000 (Exchange Online's recipient rate limit, same
	// page; past it Exchange accepts the request and bounces the mail);
	// Unlimited leaves it unchecked.
	PerMailboxRecipientsPerDay int
	// PerMailboxUploadBytes caps the request bytes (the message with its
	// attachments, base64-encoded) per mailbox in any rolling 5 minutes:
	// default 150 MB (Outlook service limits, "Microsoft Graph throttling
	// limits", https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits);
	// Unlimited leaves it unchecked.
	PerMailboxUploadBytes int64
	// MaxAttempts is how many sends a job gets before it is dead-lettered.
	MaxAttempts int
	// MaxStops is how many times a job may be found in hand of a worker
	// that stopped (killed, out of memory, crashed) before it is
	// dead-lettered worker_crashed (default 3).
	MaxStops int
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
	// DraftTransitWait is draft mode's transit window: after a send that may
	// have gone out, how long the look-up may say "not known yet" before the
	// worker decides (still a draft: not accepted, sent again; gone from
	// Drafts: taken as sent). Default DefaultDraftTransitWait (see it for
	// the sources).
	DraftTransitWait time.Duration
	// DraftLookupEvery is the wait between two such look-ups: default
	// DefaultDraftLookupEvery.
	DraftLookupEvery time.Duration
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
	def(&c.PerMailboxPerMinute, DefaultPerMailboxPerMinute)
	def(&c.PerMailboxRecipientsPerDay, DefaultPerMailboxRecipientsPerDay)
	if c.PerMailboxUploadBytes == 0 {
		c.PerMailboxUploadBytes = DefaultPerMailboxUploadBytes
	}
	def(&c.MaxAttempts, 8)
	def(&c.MaxStops, 3)
	defDur(&c.BackoffInitial, 5*time.Second)
	defDur(&c.BackoffMax, 10*time.Minute)
	defDur(&c.AckWait, 60*time.Second)
	defDur(&c.SendTimeout, 60*time.Second)
	defDur(&c.DrainTimeout, 25*time.Second)
	defDur(&c.MaxHold, 5*time.Second)
	defDur(&c.DraftTransitWait, DefaultDraftTransitWait)
	defDur(&c.DraftLookupEvery, DefaultDraftLookupEvery)
	return c
}

// Validate reports every invalid field, by its Go name.
func (c Config) Validate() error {
	var errs []error
	positive := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("worker: Config.%s must be > 0, got %d", name, v))
		}
	}
	positive("Concurrency", c.Concurrency)
	positive("MaxInFlight", c.MaxInFlight)
	positive("PerMailboxConcurrency", c.PerMailboxConcurrency)
	positive("MaxAttempts", c.MaxAttempts)
	positive("MaxStops", c.MaxStops)
	for name, v := range map[string]int64{"PerMailboxPerMinute": int64(c.PerMailboxPerMinute),
		"PerMailboxRecipientsPerDay": int64(c.PerMailboxRecipientsPerDay), "PerMailboxUploadBytes": c.PerMailboxUploadBytes} {
		if v < Unlimited {
			errs = append(errs, fmt.Errorf("worker: Config.%s must be > 0 or Unlimited, got %d", name, v))
		}
	}
	if c.BackoffMax < c.BackoffInitial {
		errs = append(errs, fmt.Errorf("worker: Config.BackoffMax %s is below BackoffInitial %s", c.BackoffMax, c.BackoffInitial))
	}
	if c.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("worker: Config.AckWait %s is below 1s", c.AckWait))
	}
	if len(c.Profiles) == 0 {
		errs = append(errs, errors.New("worker: Config.Profiles: at least one profile is required"))
	}
	for name, p := range c.Profiles {
		if len(p.AllowedSenders) == 0 {
			errs = append(errs, fmt.Errorf("worker: profile %s: AllowedSenders: at least one approved mailbox is required", name))
		}
		if p.MaxMessageBytes < 0 || p.MaxMessageBytes > contract.MaxMessageBytesLimit {
			errs = append(errs, fmt.Errorf("worker: profile %s: MaxMessageBytes %d is not between 0 and %d (150 MB, Exchange Online's maximum)", name, p.MaxMessageBytes, contract.MaxMessageBytesLimit))
		}
		switch p.OnAmbiguous {
		case "", OnAmbiguousRetry, OnAmbiguousDeadLetter:
		default:
			errs = append(errs, fmt.Errorf("worker: profile %s: OnAmbiguous %q is not %q or %q", name, p.OnAmbiguous, OnAmbiguousRetry, OnAmbiguousDeadLetter))
		}
	}
	return errors.Join(errs...)
}

// profileState is a profile with its allowlist lower-cased for lookups,
// and the metric series every sent job touches, looked up once (hot).
type profileState struct {
	Profile
	allowed map[string]struct{}
	hot     hotMetrics
}

// hotMetrics are a profile's series of the happy path (a job sent with a
// 202), resolved from their vectors once instead of by label values per job.
type hotMetrics struct {
	sendDuration prometheus.Observer
	jobLatency   prometheus.Observer
	sent         prometheus.Counter
	accepted     prometheus.Counter // graph_requests_total{status="202"}
}

func newHotMetrics(m *Metrics, profile string) hotMetrics {
	return hotMetrics{
		sendDuration: m.SendDuration.WithLabelValues(profile),
		jobLatency:   m.JobLatency.WithLabelValues(profile),
		sent:         m.Jobs.WithLabelValues(profile, string(contract.EventSent), ""),
		accepted:     m.GraphRequests.WithLabelValues(profile, "202"),
	}
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
