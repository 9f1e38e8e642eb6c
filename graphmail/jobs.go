package graphmail

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"sort"
	"strings"

	"github.com/mailworker/mailworker/queue/contract"
)

// AttachmentStore reads the attachments that jobs name by objectRef
// (queue.Attachments is the JetStream object store implementation). Objects
// belong to a profile: each method looks ref up in profile's objects only,
// and returns an error wrapping contract.ErrNoAttachment for a ref that is
// not there. Open streams the content from offset on (draft mode: never
// whole in memory).
type AttachmentStore interface {
	Get(ctx context.Context, profile, ref string) ([]byte, error)
	Size(ctx context.Context, profile, ref string) (int, error)
	Open(ctx context.Context, profile, ref string, offset int64) (io.ReadCloser, int64, error)
}

// SendMode is how a profile's jobs reach Graph.
type SendMode string

// The delivery modes.
const (
	// ModeSendMail: one sendMail request per job (needs Mail.Send only); a
	// job over Graph's 4 MB request limit is dead-lettered message_too_large.
	ModeSendMail SendMode = "sendMail"
	// ModeDraft: jobs go through a draft (DraftWhen says which): large
	// attachments by upload session, and a send that can be looked up after
	// an ambiguous outcome (needs the "Application Mail.ReadWrite" role too).
	ModeDraft SendMode = "draft"
)

// DraftWhen says which jobs of a draft-mode profile go through a draft.
type DraftWhen string

// The draftWhen choices.
const (
	DraftLarge  DraftWhen = "large"  // only jobs that do not fit one sendMail request
	DraftAlways DraftWhen = "always" // every job (exactly-once for all)
)

// Mode is a profile's delivery mode.
type Mode struct {
	Via  SendMode  // "" = ModeSendMail
	When DraftWhen // "" = DraftLarge
}

// Sender sends mail jobs: it maps a validated contract.Job onto Graph's
// message (the X-Mailworker-Job-Id stamp, objectRef attachments fetched from
// the store) and sends it with the profile's Client. It is the worker's
// Sender (worker.Sender, Checker, ResumableSender, DraftDeleter); every
// error it returns is a *contract.SendError. (Named Jobs before: that is
// queue.Jobs, the consumer of MAIL_JOBS.)
type Sender struct {
	clients     map[string]*Client
	saveDefault map[string]bool
	modes       map[string]Mode
	attachments AttachmentStore
}

// NewSender returns a Sender over store (nil: jobs with objectRef attachments
// are dead-lettered invalid_job); Add registers each profile's client.
func NewSender(store AttachmentStore) *Sender {
	return &Sender{clients: map[string]*Client{}, saveDefault: map[string]bool{}, modes: map[string]Mode{}, attachments: store}
}

// Add sends profile's jobs with c; saveToSentItems is the profile's default
// for jobs that do not say.
func (s *Sender) Add(profile string, c *Client, saveToSentItems bool) {
	s.clients[profile] = c
	s.saveDefault[profile] = saveToSentItems
}

// UsesDraft reports whether job, with no draft yet, goes through a draft:
// the profile is in draft mode and draftWhen is always or the job is too
// large for sendMail. It is false when a size cannot be read.
func (s *Sender) UsesDraft(ctx context.Context, profile string, job *contract.Job) bool {
	ok, err := s.usesDraft(ctx, profile, job)
	return ok && err == nil
}

func (s *Sender) usesDraft(ctx context.Context, profile string, job *contract.Job) (bool, error) {
	mode := s.modes[profile]
	switch {
	case mode.Via != ModeDraft:
		return false, nil
	case job.MIME != nil:
		// A MIME job goes out as its message through sendMail's MIME form
		// while it fits one request; a larger one through a draft created
		// from its MIME, its large parts by upload session (mimedraft.go).
		return s.mimeNeedsDraft(ctx, profile, job)
	case mode.When == DraftAlways:
		return true, nil
	}
	return s.tooLarge(ctx, profile, job)
}

// SetMode sets profile's delivery mode (default: sendMail).
func (s *Sender) SetMode(profile string, m Mode) { s.modes[profile] = m }

// Send sends job for profile, stamped with jobID, from scratch: a draft-mode
// job cannot resume (see SendResumable).
func (s *Sender) Send(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
	return s.SendResumable(ctx, profile, jobID, job, nil, nil)
}

// SendResumable sends job for profile, stamped with jobID. A job that goes
// through a draft (the profile's Mode) resumes from draft, the progress an
// earlier attempt saved (nil: none), and save is called with the progress
// after every step (nil: not kept). Errors are *contract.SendError.
func (s *Sender) SendResumable(ctx context.Context, profile, jobID string, job *contract.Job,
	draft *contract.Draft, save func(context.Context, *contract.Draft) error) (contract.SendResult, error) {
	c := s.clients[profile]
	if c == nil {
		return contract.SendResult{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInternal,
			Profile: profile, Message: fmt.Sprintf("no Graph client for profile %s", profile)}
	}
	// A job with a draft goes on with it whatever the mode says now: the
	// draft may have been sent.
	useDraft := draft != nil
	if !useDraft {
		var err error
		if useDraft, err = s.usesDraft(ctx, profile, job); err != nil {
			return contract.SendResult{}, err
		}
	}
	if useDraft && job.MIME != nil {
		return s.sendMIMEDraft(ctx, c, profile, jobID, job, draft, save)
	}
	if useDraft {
		return s.sendDraft(ctx, c, profile, jobID, job, draft, save)
	}
	msg, err := s.Message(ctx, profile, jobID, job)
	if err != nil {
		return contract.SendResult{}, err
	}
	res, err := c.Send(ctx, msg)
	if err != nil {
		return contract.SendResult{}, err
	}
	return contract.SendResult{Status: res.Status, RequestID: res.RequestID, ClientRequestID: res.ClientRequestID,
		Date: res.Date, RetryAfter: res.RetryAfter, Duration: res.Duration, EarlierCalls: earlier(res.Calls)}, nil
}

// Message maps a validated job onto Graph's message. Attachments given by
// objectRef are fetched from the store. The errors are *contract.SendError:
// permanent invalid_job for an objectRef that is not there, message_too_large
// past the inline limit, retryable internal when the store fails.
func (s *Sender) Message(ctx context.Context, profile, jobID string, job *contract.Job) (*Message, error) {
	_, from, _ := contract.ParseAddress(job.From)
	if job.MIME != nil {
		return s.mimeMessage(ctx, profile, from, jobID, job)
	}
	m := &Message{
		From: from, Subject: job.Subject, Text: job.Text, HTML: job.HTML,
		To: addresses(job.To), Cc: addresses(job.Cc), Bcc: addresses(job.Bcc), ReplyTo: addresses(job.ReplyTo),
		Importance: job.Importance, SaveToSentItems: s.saveDefault[profile],
	}
	if job.SaveToSentItems != nil {
		m.SaveToSentItems = *job.SaveToSentItems
	}
	m.Headers = make([]Header, 0, len(job.Headers)+1)
	m.Headers = append(m.Headers, Header{Name: contract.HeaderStampJobID, Value: jobID})
	if len(job.Headers) > 0 {
		names := make([]string, 0, len(job.Headers))
		for k := range job.Headers {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			m.Headers = append(m.Headers, Header{Name: k, Value: job.Headers[k]})
		}
	}
	fail := func(class contract.Class, reason contract.Reason, msg string, err error) error {
		return &contract.SendError{Class: class, Reason: reason, Profile: profile, Message: msg, Err: err}
	}
	// The sizes first, from the objects' metadata: nothing is loaded that
	// the request could not carry (a producer's 150 MB object must not take
	// the worker's memory).
	var total int
	for i, a := range job.Attachments {
		n := decodedLen(a.ContentBase64)
		if a.ObjectRef != "" {
			var err error
			if n, err = s.size(ctx, profile, i, a.ObjectRef); err != nil {
				return nil, err
			}
		}
		if total += n; total > contract.MaxInlineAttachmentBytes {
			return nil, tooLargeForSendMail(profile, total)
		}
	}
	// The request carries the body and the attachments in base64: less
	// than their sum never fits (Send checks the exact size).
	if est := len(job.Subject) + len(job.Text) + len(job.HTML) + base64.StdEncoding.EncodedLen(total); est > MaxRequestBytes {
		return nil, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
			Message: fmt.Sprintf("the request would be over %d bytes (the body, and the attachments base64-encoded): Graph caps one request at 4 MB", MaxRequestBytes)}
	}
	total = 0
	for i, a := range job.Attachments {
		var content []byte
		var err error
		if a.ObjectRef != "" {
			field := fmt.Sprintf("attachments[%d].objectRef", i)
			if content, err = s.load(ctx, profile, field, a.ObjectRef, contract.MaxInlineAttachmentBytes-total); err != nil {
				return nil, err
			}
		} else if content, err = base64.StdEncoding.DecodeString(a.ContentBase64); err != nil {
			// Validation has already checked it; this is belt and braces.
			return nil, fail(contract.ClassPermanent, contract.ReasonInvalidJob,
				fmt.Sprintf("attachments[%d].contentBase64: not valid base64", i), nil)
		}
		total += len(content)
		if total > contract.MaxInlineAttachmentBytes {
			return nil, tooLargeForSendMail(profile, total)
		}
		m.Attachments = append(m.Attachments, Attachment{Name: a.Name, ContentType: a.ContentType,
			Content: content, Inline: a.Inline, ContentID: a.ContentID})
	}
	return m, nil
}

// tooLargeForSendMail is the refusal of attachments over what one sendMail
// request carries.
func tooLargeForSendMail(profile string, total int) error {
	return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
		Message: fmt.Sprintf("attachments total %d bytes or more, over the %d one sendMail request carries (Graph caps a request at 4 MB); "+
			"set profiles.%s.deliveryMode: draft to send it as a draft with upload sessions (needs the Exchange role \"Application Mail.ReadWrite\")",
			total, contract.MaxInlineAttachmentBytes, profile)}
}

// load reads ref of profile's store whole, at most max bytes: the store
// refuses a larger object by its metadata before reading a chunk. Errors are
// *contract.SendError: invalid_job for a missing or corrupt object,
// message_too_large over max, retryable internal when the store fails.
func (s *Sender) load(ctx context.Context, profile, field, ref string, max int) ([]byte, error) {
	if s.attachments == nil {
		return nil, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob, Profile: profile,
			Message: field + ": no attachment store"}
	}
	b, err := s.attachments.Get(ctx, profile, ref)
	if err == nil && len(b) > max {
		err = fmt.Errorf("%w: %d bytes, over %d", contract.ErrAttachmentTooLarge, len(b), max)
	}
	if err == nil {
		return b, nil
	}
	se := sourceError(profile, err).(*contract.SendError)
	switch {
	case errors.Is(err, contract.ErrNoAttachment):
		se.Message = fmt.Sprintf("%s: %s is not in profile %s's object store %s_%s (a job can attach only its own profile's objects)",
			field, contract.Quote(ref), profile, contract.BucketAttachments, profile)
	default:
		se.Message = field + ": " + err.Error()
	}
	return nil, se
}

// mimeMessage maps a MIME job: the message as the client wrote it, fetched
// from the store for an objectRef, stamped with the job id (first in the
// header; any X-Mailworker-Job-Id of the client's is replaced).
func (s *Sender) mimeMessage(ctx context.Context, profile, from, jobID string, job *contract.Job) (*Message, error) {
	m := job.MIME
	fail := func(class contract.Class, reason contract.Reason, msg string, err error) error {
		return &contract.SendError{Class: class, Reason: reason, Profile: profile, Message: msg, Err: err}
	}
	var content []byte
	var err error
	if m.ObjectRef != "" {
		// The size first, from the object's metadata: a MIME message goes
		// out in one sendMail request, so nothing larger is ever loaded.
		if s.attachments == nil {
			return nil, fail(contract.ClassPermanent, contract.ReasonInvalidJob, "mime.objectRef: no attachment store", nil)
		}
		n, err := s.attachments.Size(ctx, profile, m.ObjectRef)
		switch {
		case err == nil && n > contract.MaxMIMEBytes:
			return nil, mimeTooLarge(profile, n)
		case err != nil && !errors.Is(err, contract.ErrNoAttachment):
			return nil, fail(contract.ClassRetryable, contract.ReasonInternal, "mime.objectRef: "+err.Error(), err)
		}
		if content, err = s.load(ctx, profile, "mime.objectRef", m.ObjectRef, contract.MaxMIMEBytes); err != nil {
			return nil, err
		}
	} else if content, err = base64.StdEncoding.DecodeString(m.ContentBase64); err != nil {
		return nil, fail(contract.ClassPermanent, contract.ReasonInvalidJob, "mime.contentBase64: not valid base64", nil)
	}
	// The same check as at intake (contract.Job.Validate does it for an
	// inline message): an objectRef message is first read here.
	if err := job.CheckMIMEHeader(content); err != nil {
		reason := contract.ReasonInvalidJob
		var ie *contract.InvalidError
		if errors.As(err, &ie) && ie.Reason != "" {
			reason = ie.Reason
		}
		return nil, fail(contract.ClassPermanent, reason, err.Error(), nil)
	}
	content = StampMIME(content, contract.HeaderStampJobID, jobID)
	if len(content) > contract.MaxMIMEBytes {
		return nil, mimeTooLarge(profile, len(content))
	}
	// The recipients and X- headers are the message's own; the job's lists
	// and the X- header names are kept for the profile's limits
	// (maxRecipientsPerMessage, allowedHeaders), not sent.
	return &Message{From: from, MIME: content, To: addresses(job.To), Cc: addresses(job.Cc), Bcc: addresses(job.Bcc),
		Headers: mimeXHeaders(content)}, nil
}

// mimeTooLarge is the refusal of a MIME message of n bytes.
func mimeTooLarge(profile string, n int) error {
	return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
		Message: fmt.Sprintf("MIME message of %d bytes (with the job id stamp), over the %d that one Graph sendMail request carries "+
			"(4 MB in base64): it was not loaded; set profiles.%s.deliveryMode: draft to send larger MIME through a draft "+
			"(needs the Exchange role \"Application Mail.ReadWrite\")", n, contract.MaxMIMEBytes, profile)}
}

// mimeXHeaders lists the X- fields of a MIME message's header section
// (names and values as they are there), for the profile's allowedHeaders.
func mimeXHeaders(msg []byte) []Header {
	section := append(append([]byte(nil), msg[:HeaderEnd(msg)]...), "\r\n"...)
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(section))).ReadMIMEHeader()
	if err != nil && len(h) == 0 {
		return nil
	}
	var out []Header
	for k, vs := range h {
		if len(k) > 2 && strings.EqualFold(k[:2], "X-") {
			for _, v := range vs {
				out = append(out, Header{Name: k, Value: v})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func addresses(list []string) []Address {
	if len(list) == 0 {
		return nil
	}
	out := make([]Address, 0, len(list))
	for _, s := range list {
		name, addr, err := contract.ParseAddress(s)
		if err != nil {
			addr = strings.TrimSpace(s) // validated already; keep what we were given
		}
		out = append(out, Address{Name: name, Address: addr})
	}
	return out
}

// earlier is every call of a send but the last, in the contract's terms; nil
// for one call.
func earlier(calls []Call) []contract.GraphCall {
	if len(calls) < 2 {
		return nil
	}
	return graphCalls(calls[:len(calls)-1])
}
