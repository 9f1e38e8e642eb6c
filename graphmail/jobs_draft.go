package graphmail

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/mailworker/mailworker/queue/contract"
)

// tooLarge reports whether job is more than one sendMail request carries:
// its attachments over contract.MaxInlineAttachmentBytes decoded, or the
// request — attachments in base64 with their JSON, the body, subject,
// recipients and headers — over Graph's 4 MB (MaxRequestBytes; the route
// follows the request, not the raw size). objectRef sizes come from the
// store's metadata only.
func (s *Sender) tooLarge(ctx context.Context, profile string, job *contract.Job) (bool, error) {
	total := 0
	request := 512 + len(job.Subject) + (len(job.Text)+len(job.HTML))*11/10
	for _, list := range [][]string{job.To, job.Cc, job.Bcc, job.ReplyTo} {
		for _, r := range list {
			request += 64 + 2*len(r)
		}
	}
	for k, v := range job.Headers {
		request += 32 + 2*(len(k)+len(v))
	}
	for i, a := range job.Attachments {
		n := 0
		if a.ObjectRef == "" {
			n = base64.StdEncoding.DecodedLen(len(a.ContentBase64))
		} else {
			var err error
			if n, err = s.size(ctx, profile, i, a.ObjectRef); err != nil {
				return false, err
			}
		}
		total += n
		request += int(requestSize(&DraftAttachment{Name: a.Name, ContentType: a.ContentType, ContentID: a.ContentID, Size: int64(n)}))
	}
	return total > contract.MaxInlineAttachmentBytes || request > MaxRequestBytes, nil
}

func (s *Sender) size(ctx context.Context, profile string, i int, ref string) (int, error) {
	if s.attachments == nil {
		return 0, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob, Profile: profile,
			Message: fmt.Sprintf("attachments[%d].objectRef: no attachment store", i)}
	}
	n, err := s.attachments.Size(ctx, profile, ref)
	if errors.Is(err, contract.ErrNoAttachment) {
		return 0, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob, Profile: profile,
			Message: fmt.Sprintf("attachments[%d].objectRef: %q is not in the %s object store", i, ref, contract.BucketAttachments), Err: err}
	}
	if err != nil {
		return 0, &contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonInternal, Profile: profile,
			Message: fmt.Sprintf("attachments[%d].objectRef: %v", i, err), Err: err}
	}
	return n, nil
}

// sendDraft sends job through a draft, resuming from draft (nil: a new
// one). Attachments whose POST request fits Graph's 4 MB (PostFits) are read
// whole (they go in one request); larger objectRef attachments are streamed
// from the store chunk by chunk into an upload session.
func (s *Sender) sendDraft(ctx context.Context, c *Client, profile, jobID string, job *contract.Job,
	draft *contract.Draft, save func(context.Context, *contract.Draft) error) (contract.SendResult, error) {
	bare := *job
	bare.Attachments = nil
	msg, err := s.Message(ctx, profile, jobID, &bare)
	if err != nil {
		return contract.SendResult{}, err
	}
	mail := DraftMail{Message: msg, Attachments: make([]DraftAttachment, 0, len(job.Attachments))}
	// Small objectRef attachments are read whole while they fit the create
	// request (plan puts them there); the rest are read when they are added,
	// one at a time, so memory stays bounded by one request whatever the
	// number of attachments. total bounds the message.
	// The sizes first, from the objects' metadata: nothing is loaded for a
	// job that cannot be sent.
	sizes := make([]int64, len(job.Attachments))
	var total int64
	for i, a := range job.Attachments {
		n := int64(decodedLen(a.ContentBase64))
		if a.ObjectRef != "" {
			size, err := s.size(ctx, profile, i, a.ObjectRef)
			if err != nil {
				return contract.SendResult{}, err
			}
			n = int64(size)
		}
		if n > MaxAttachmentBytes {
			return contract.SendResult{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
				Message: fmt.Sprintf("attachments[%d] is %d bytes: Graph attaches files up to 150 MB (%d bytes)", i, n, MaxAttachmentBytes)}
		}
		if total += n; total > MaxAttachmentBytes {
			return contract.SendResult{}, draftTooLarge(profile, total)
		}
		sizes[i] = n
	}
	whole := int64(maxRequest)
	for i, a := range job.Attachments {
		da := DraftAttachment{Name: a.Name, ContentType: a.ContentType, Inline: a.Inline, ContentID: a.ContentID}
		if a.ObjectRef == "" {
			if da.Content, err = base64.StdEncoding.DecodeString(a.ContentBase64); err != nil {
				return contract.SendResult{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob,
					Profile: profile, Message: fmt.Sprintf("attachments[%d].contentBase64: not valid base64", i)}
			}
			da.Size = int64(len(da.Content))
			mail.Attachments = append(mail.Attachments, da)
			continue
		}
		da.Size = sizes[i]
		switch {
		case da.postFits() && da.Size <= whole:
			b, err := s.load(ctx, profile, fmt.Sprintf("attachments[%d].objectRef", i), a.ObjectRef, int(da.Size))
			if err != nil {
				return contract.SendResult{}, err
			}
			da.Content, da.Size = b, int64(len(b))
			whole -= da.Size
		default:
			ref, store := a.ObjectRef, s.attachments
			da.Open = func(ctx context.Context, off int64) (io.ReadCloser, error) {
				rc, _, err := store.Open(ctx, profile, ref, off)
				return rc, err
			}
		}
		mail.Attachments = append(mail.Attachments, da)
	}
	p := draft
	if p == nil {
		p = &contract.Draft{}
	}
	var saveFn func(context.Context) error
	if save != nil {
		saveFn = func(ctx context.Context) error { return save(ctx, p) }
	}
	return c.SendViaDraft(ctx, mail, p, saveFn)
}

// decodedLen is the decoded size of padded standard base64 b64.
func decodedLen(b64 string) int {
	return len(b64)/4*3 - (len(b64) - len(strings.TrimRight(b64, "=")))
}

// draftTooLarge is the refusal of attachments totalling more than any
// mailbox takes.
func draftTooLarge(profile string, total int64) error {
	return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
		Message: fmt.Sprintf("attachments total %d bytes or more, over the 150 MB that an Exchange Online mailbox takes at most "+
			"(https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#message-limits)", total)}
}

// DeleteDraft deletes a job's draft that was never sent (a job that is
// dead-lettered or expired after its draft exists). A draft whose send was
// attempted is left alone: it may be the Sent Items copy of a sent mail.
// Errors are *contract.SendError.
func (s *Sender) DeleteDraft(ctx context.Context, profile, jobID string, d *contract.Draft) error {
	c := s.clients[profile]
	if c == nil || d == nil || d.ID == "" || d.SendAt != nil {
		return nil
	}
	return c.DeleteMessage(ctx, d.Mailbox, d.ID)
}

// Check refuses, before any Graph call, before the mailbox's recipient
// budget is charged and without loading any content, what job's path cannot
// send: more recipients than the profile's maxRecipientsPerMessage, a header
// outside its allowedHeaders, an objectRef that is not in the profile's
// store (invalid_job), and content over what the path carries, by the
// objects' metadata (message_too_large): a MIME message over one sendMail
// request, attachments over one sendMail request in sendMail mode, an
// attachment or a total over 150 MB in draft mode. It returns a permanent
// *contract.SendError, or nil, also when the store cannot be read now (the
// send meets that again and retries).
func (s *Sender) Check(ctx context.Context, profile string, job *contract.Job) error {
	c := s.clients[profile]
	if c == nil {
		return nil
	}
	// Counts and names only: nothing proportional to the job is built.
	probe := &Message{To: make([]Address, len(job.To)), Cc: make([]Address, len(job.Cc)), Bcc: make([]Address, len(job.Bcc))}
	for k, v := range job.Headers {
		probe.Headers = append(probe.Headers, Header{Name: k, Value: v})
	}
	if e := c.checkLimits(probe); e != nil {
		return e
	}
	permanent := func(err error) error {
		if se := contract.AsSendError(err); se.Class == contract.ClassPermanent {
			return se
		}
		return nil
	}
	if m := job.MIME; m != nil {
		if m.ObjectRef == "" {
			return nil // validation bounds contentBase64
		}
		if s.attachments == nil {
			return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob, Profile: profile,
				Message: "mime.objectRef: no attachment store"}
		}
		n, err := s.attachments.Size(ctx, profile, m.ObjectRef)
		switch {
		case errors.Is(err, contract.ErrNoAttachment):
			return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob, Profile: profile,
				Message: fmt.Sprintf("mime.objectRef: %s is not in profile %s's object store", contract.Quote(m.ObjectRef), profile), Err: err}
		case err == nil && n > contract.MaxMIMEBytes && s.modes[profile].Via != ModeDraft:
			return mimeTooLarge(profile, n)
		case err == nil && int64(n)+mimeStampRoom > contract.MaxMessageBytesLimit:
			// In draft mode a larger message goes through a draft
			// (mimedraft.go), held to the mailbox's maximum message size
			// by the worker (profiles.<name>.maxMessageSize); no mailbox
			// takes more than 150 MB.
			return mimeOverAnyMailbox(profile, int64(n))
		}
		return nil
	}
	// The body goes out in one request whatever the path (sendMail, or a
	// draft's create): the sum of its parts is less than that request.
	body := int64(len(job.Subject) + len(job.Text) + len(job.HTML))
	if body > MaxRequestBytes {
		return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
			Message: fmt.Sprintf("subject, text and html are %d bytes, over the %d that one Graph request carries (sendMail, or a draft's create)", body, MaxRequestBytes)}
	}
	draft := s.modes[profile].Via == ModeDraft
	var total int64
	for i, a := range job.Attachments {
		var n int64
		if a.ObjectRef == "" {
			n = int64(decodedLen(a.ContentBase64))
		} else {
			size, err := s.size(ctx, profile, i, a.ObjectRef)
			if err != nil {
				return permanent(err)
			}
			n = int64(size)
		}
		total += n
		switch {
		case !draft && total > contract.MaxInlineAttachmentBytes:
			return tooLargeForSendMail(profile, int(total))
		case !draft && body+int64(base64.StdEncoding.EncodedLen(int(total))) > MaxRequestBytes:
			return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
				Message: fmt.Sprintf("the sendMail request would be over %d bytes (the body, and the attachments base64-encoded): Graph caps one request at 4 MB; "+
					"set profiles.%s.deliveryMode: draft to send it as a draft with upload sessions", MaxRequestBytes, profile)}
		case draft && n > MaxAttachmentBytes:
			return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
				Message: fmt.Sprintf("attachments[%d] is %d bytes: Graph attaches files up to 150 MB", i, n)}
		case draft && total > MaxAttachmentBytes:
			return draftTooLarge(profile, total)
		}
	}
	return nil
}
