package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/worker"
)

// jobIDHeader is stamped on every message so that a mail found in Exchange
// message trace can be tied back to its job.
const jobIDHeader = "X-Mailworker-Job-Id"

// graphSender is the worker's Sender over one graphmail.Client per profile.
// It maps a queue.Job onto a graphmail.Message and graphmail's errors onto
// worker.SendError: the translation between the two edges lives here only.
type graphSender struct {
	clients     map[string]*graphmail.Client
	saveDefault map[string]bool
	attachments *queue.Attachments
}

func (s *graphSender) Send(ctx context.Context, profile, jobID string, job *contract.Job) (worker.SendResult, error) {
	c := s.clients[profile]
	if c == nil {
		return worker.SendResult{}, &worker.SendError{Kind: worker.Permanent, Reason: contract.ReasonInternal,
			Message: fmt.Sprintf("no Graph client for profile %s", profile)}
	}
	msg, err := s.message(ctx, profile, jobID, job)
	if err != nil {
		return worker.SendResult{}, err
	}
	res, err := c.Send(ctx, msg, jobID)
	if err != nil {
		return worker.SendResult{}, translate(err)
	}
	return worker.SendResult{Status: res.Status, RequestID: res.RequestID, ClientRequestID: res.ClientRequestID,
		Duration: res.Duration}, nil
}

// message maps a validated job onto Graph's message. Attachments given by
// objectRef are fetched from the object store here.
func (s *graphSender) message(ctx context.Context, profile, jobID string, job *contract.Job) (*graphmail.Message, error) {
	_, from, _ := contract.ParseAddress(job.From)
	m := &graphmail.Message{
		From: from, Subject: job.Subject, Text: job.Text, HTML: job.HTML,
		To: addresses(job.To), Cc: addresses(job.Cc), Bcc: addresses(job.Bcc), ReplyTo: addresses(job.ReplyTo),
		Importance: job.Importance, SaveToSentItems: s.saveDefault[profile],
	}
	if job.SaveToSentItems != nil {
		m.SaveToSentItems = *job.SaveToSentItems
	}
	m.Headers = make([]graphmail.Header, 0, len(job.Headers)+1)
	m.Headers = append(m.Headers, graphmail.Header{Name: jobIDHeader, Value: jobID})
	if len(job.Headers) > 0 {
		names := make([]string, 0, len(job.Headers))
		for k := range job.Headers {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			m.Headers = append(m.Headers, graphmail.Header{Name: k, Value: job.Headers[k]})
		}
	}
	var total int
	for i, a := range job.Attachments {
		var content []byte
		var err error
		if a.ObjectRef != "" {
			if s.attachments == nil {
				return nil, &worker.SendError{Kind: worker.Permanent, Reason: contract.ReasonInvalidJob,
					Message: fmt.Sprintf("attachments[%d].objectRef: no attachment store", i)}
			}
			content, err = s.attachments.Get(ctx, a.ObjectRef)
			if errors.Is(err, queue.ErrNoAttachment) {
				return nil, &worker.SendError{Kind: worker.Permanent, Reason: contract.ReasonInvalidJob,
					Message: fmt.Sprintf("attachments[%d].objectRef: %q is not in the %s object store", i, a.ObjectRef, contract.BucketAttachments), Err: err}
			}
			if err != nil {
				return nil, &worker.SendError{Kind: worker.Retryable, Reason: contract.ReasonInternal,
					Message: fmt.Sprintf("attachments[%d].objectRef: %v", i, err), Err: err}
			}
		} else if content, err = base64.StdEncoding.DecodeString(a.ContentBase64); err != nil {
			// Validation has already checked it; this is belt and braces.
			return nil, &worker.SendError{Kind: worker.Permanent, Reason: contract.ReasonInvalidJob,
				Message: fmt.Sprintf("attachments[%d].contentBase64: not valid base64", i)}
		}
		total += len(content)
		if total > contract.MaxInlineAttachmentBytes {
			return nil, &worker.SendError{Kind: worker.Permanent, Reason: contract.ReasonMessageTooLarge,
				Message: fmt.Sprintf("attachments total more than %d bytes: Graph caps one sendMail request at 4 MB (upload sessions are not supported yet)", contract.MaxInlineAttachmentBytes)}
		}
		m.Attachments = append(m.Attachments, graphmail.Attachment{Name: a.Name, ContentType: a.ContentType,
			Content: content, Inline: a.Inline, ContentID: a.ContentID})
	}
	return m, nil
}

func addresses(list []string) []graphmail.Address {
	if len(list) == 0 {
		return nil
	}
	out := make([]graphmail.Address, 0, len(list))
	for _, s := range list {
		name, addr, err := contract.ParseAddress(s)
		if err != nil {
			addr = strings.TrimSpace(s) // validated already; keep what we were given
		}
		out = append(out, graphmail.Address{Name: name, Address: addr})
	}
	return out
}

// translate maps graphmail's error classes onto the worker's.
func translate(err error) error {
	var ge *graphmail.Error
	if !errors.As(err, &ge) {
		return &worker.SendError{Kind: worker.Retryable, Reason: contract.ReasonInternal, Message: err.Error(), Err: err}
	}
	kind := worker.Retryable
	switch ge.Class {
	case graphmail.ClassPermanent:
		kind = worker.Permanent
	case graphmail.ClassThrottled:
		kind = worker.Throttled
	case graphmail.ClassUnavailable:
		kind = worker.Unavailable
	}
	return &worker.SendError{Kind: kind, Reason: contract.Reason(ge.Reason), Status: ge.Status, Code: ge.Code,
		Message: ge.Message, RetryAfter: ge.RetryAfter, Ambiguous: ge.Ambiguous, RequestID: ge.RequestID,
		ClientRequestID: ge.ClientRequestID, Err: err}
}
