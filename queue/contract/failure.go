package contract

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// Class says what kind of failure a send met. graphmail classifies every
// failure into one (graphmail.Classify), the worker's decide turns it into an
// action; the set is closed and is the same on both sides.
type Class int

// The closed set of failure classes.
const (
	// ClassPermanent: retrying cannot help (a bad recipient, a mailbox that
	// does not exist, a message Graph refuses): dead-letter now.
	ClassPermanent Class = iota + 1
	// ClassRetryable: it may work later (5xx, network, a 401 after the
	// refresh, RBAC that has not applied yet): retry after a backoff,
	// spending an attempt.
	ClassRetryable
	// ClassThrottled: Graph said to wait (429): wait Retry-After, spending
	// no attempt.
	ClassThrottled
	// ClassUnavailable: a service the send depends on could not be reached
	// (Entra's token endpoint down or failing) and nothing was sent: wait,
	// spending no attempt, for as long as it lasts.
	ClassUnavailable
)

// Classes lists every class in a stable order (metric labels, docs).
var Classes = []Class{ClassPermanent, ClassRetryable, ClassThrottled, ClassUnavailable}

func (c Class) String() string {
	switch c {
	case ClassPermanent:
		return "permanent"
	case ClassRetryable:
		return "retryable"
	case ClassThrottled:
		return "throttled"
	case ClassUnavailable:
		return "unavailable"
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// SendError is a failed send: the one failure type graphmail returns and the
// worker decides on. Its text never contains a token, a secret, an assertion,
// a private key, a recipient or a body.
type SendError struct {
	Class  Class
	Reason Reason // closed set; "" when the class alone says enough and the worker decides
	// Status is the HTTP status, 0 when there was no response.
	Status  int
	Code    string // Graph (or Entra) error code
	Message string // Graph's error message (redacted)
	// RetryAfter is the server's requested wait (Retry-After: delta-seconds
	// or HTTP-date); 0 when absent.
	RetryAfter time.Duration
	// Ambiguous is set when the request body may have reached Graph and the
	// mail may have been sent (5xx, timeouts and connection errors after the
	// request was written).
	Ambiguous bool
	// RequestID, ClientRequestID and Date identify the failed Graph call as
	// Microsoft support and message trace know it: Graph's request-id, the GUID
	// sent as client-request-id (fresh for every request) and the response's
	// Date header (zero when there was no response).
	RequestID       string
	ClientRequestID string
	Date            time.Time
	// EarlierCalls are the calls of this attempt before the failed one (a
	// 401 before the token was refreshed).
	EarlierCalls []GraphCall
	Profile      string // the sending profile, when known
	// Op names the call that failed in the sender's own terms (graphmail's
	// Op constants: createDraft, upload, send, …); "" for sendMail. It is
	// shown in the error's text.
	Op string
	// SendsNothing: the call that failed cannot deliver mail whatever its
	// answer (a draft's create, attach, upload or look-up, as opposed to
	// sendMail or a draft's send): its failure never counts against the
	// mailbox's recipient budget.
	SendsNothing bool
	Err          error // wrapped cause (never an MSAL error carrying the token request)
}

func (e *SendError) Error() string {
	var b strings.Builder
	b.WriteString("graphmail")
	if e.Profile != "" {
		b.WriteString("[")
		b.WriteString(e.Profile)
		b.WriteString("]")
	}
	b.WriteString(": ")
	if e.Status != 0 {
		if e.Op != "" {
			b.WriteString(e.Op)
			b.WriteString(" ")
		} else {
			b.WriteString("sendMail ")
		}
		b.WriteString(strconv.Itoa(e.Status))
		if e.Code != "" {
			b.WriteString(" ")
			b.WriteString(e.Code)
		}
		if e.Message != "" {
			b.WriteString(": ")
			b.WriteString(e.Message)
		}
	} else if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString(e.Message)
	}
	b.WriteString(" (")
	b.WriteString(e.Class.String())
	if e.Reason != "" {
		b.WriteString(", reason=")
		b.WriteString(string(e.Reason))
	}
	if e.Ambiguous {
		b.WriteString(", ambiguous")
	}
	if e.RetryAfter > 0 {
		b.WriteString(", retry-after=")
		b.WriteString(e.RetryAfter.String())
	}
	if e.RequestID != "" {
		b.WriteString(", request-id=")
		b.WriteString(e.RequestID)
	}
	if e.ClientRequestID != "" {
		b.WriteString(", client-request-id=")
		b.WriteString(e.ClientRequestID)
	}
	if !e.Date.IsZero() {
		b.WriteString(", date=")
		b.WriteString(e.Date.UTC().Format(time.RFC3339))
	}
	b.WriteString(")")
	return b.String()
}

// PendingError is not a failure: an earlier attempt's send of the job's
// draft may have gone out, and the look-up could not prove it either way,
// so the answer is "not known yet, look again later" (the model is river's
// rivertype.JobSnoozeError). It has no class: the worker's decide turns it
// into a wait, spending no attempt, and after the transit window into the
// one decision left (see worker.decide). Graph only moves a sent draft out of
// Drafts once transport has taken it, and may or may not keep its immutable
// id when it does, so neither "still a draft" nor "not found" settles
// anything while transport may still be at work.
type PendingError struct {
	Profile string
	// SentAt is when the send that may have gone out was attempted (Draft.SendAt).
	SentAt time.Time
	// InDrafts: the message is still a draft (isDraft true) under its id.
	// Otherwise it was found neither by its id nor, by its
	// internetMessageId, in Sent Items: it left Drafts, and its copy is not
	// there yet (or the id changed on the send).
	InDrafts          bool
	InternetMessageID string
}

func (e *PendingError) Error() string {
	where := "neither under its id nor in Sent Items yet"
	if e.InDrafts {
		where = "still a draft in Drafts"
	}
	return "graphmail[" + e.Profile + "]: the draft's send at " + e.SentAt.UTC().Format(time.RFC3339) +
		" may have gone out; the message is " + where + ": not known yet"
}

// Draft look-up outcomes (SendResult.Lookup).
const (
	// LookupSent: found sent (no longer a draft under its id, or its copy
	// in Sent Items by internetMessageId); nothing was sent again. Not the
	// deferral cause of the same wire value (worker.CauseAwaitingSentCopy:
	// still looking).
	LookupSent = "sent_items"
	// LookupGone: the draft left Drafts after the send and no copy turned
	// up within the transit window: taken as sent, nothing sent again.
	LookupGone = "gone"
)

// Unwrap returns the cause.
func (e *SendError) Unwrap() error { return e.Err }

// AsSendError returns err as a *SendError. An error of any other type is a
// retryable internal failure: something the sender did not classify.
func AsSendError(err error) *SendError {
	var se *SendError
	if errors.As(err, &se) {
		return se
	}
	return &SendError{Class: ClassRetryable, Reason: ReasonInternal, Message: err.Error(), Err: err}
}

// SendResult describes a send Graph accepted.
type SendResult struct {
	Status          int
	RequestID       string
	ClientRequestID string
	Date            time.Time // the response's Date header; zero when none
	// RetryAfter is a Retry-After on the 2xx: the mail was accepted (never send
	// it again) and the mailbox should wait that long.
	RetryAfter time.Duration
	Duration   time.Duration
	// EarlierCalls are the calls made before the last (a 401, then the
	// call again with a fresh token).
	EarlierCalls []GraphCall
	// InternetMessageID is the sent message's Message-ID (draft mode only).
	InternetMessageID string
	// Lookup is set when nothing was sent because a look-up after an
	// earlier attempt that may have sent the mail decided it (draft mode
	// only): "sent_items" (its Sent Items copy was found) or "gone" (neither
	// the draft nor the copy was there long after the send).
	Lookup string
}

// ErrNoAttachment is returned for an objectRef that is not in the
// attachment store.
var ErrNoAttachment = errors.New("attachment not found")

// ErrAttachmentCorrupt is returned (wrapped) for an objectRef whose content
// does not match its metadata: more bytes than its size, a chunk larger than
// the store writes, or a SHA-256 digest that differs. The producer wrote the
// object: retrying reads the same bytes again.
var ErrAttachmentCorrupt = errors.New("attachment content does not match its metadata")

// ErrAttachmentTooLarge is returned (wrapped) when an object is larger than
// the reader was allowed to load into memory.
var ErrAttachmentTooLarge = errors.New("attachment larger than this read allows")
