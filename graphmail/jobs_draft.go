package graphmail

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"

	"github.com/mailworker/mailworker/queue/contract"
)

// tooLarge reports whether job is more than one sendMail request carries:
// its attachments over contract.MaxInlineAttachmentBytes decoded, or the
// request — attachments in base64 with their JSON, the body, subject,
// recipients and headers — over Graph's 4 MB (MaxRequestBytes; the route
// follows the request, not the raw size). objectRef sizes come from the
// store's metadata only.
func (s *Jobs) tooLarge(ctx context.Context, profile string, job *contract.Job) (bool, error) {
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

func (s *Jobs) size(ctx context.Context, profile string, i int, ref string) (int, error) {
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
func (s *Jobs) sendDraft(ctx context.Context, c *Client, profile, jobID string, job *contract.Job,
	draft *contract.Draft, save func(context.Context, *contract.Draft) error) (contract.SendResult, error) {
	bare := *job
	bare.Attachments = nil
	msg, err := s.Message(ctx, profile, jobID, &bare)
	if err != nil {
		return contract.SendResult{}, err
	}
	mail := DraftMail{Message: msg, Attachments: make([]DraftAttachment, 0, len(job.Attachments))}
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
		n, err := s.size(ctx, profile, i, a.ObjectRef)
		if err != nil {
			return contract.SendResult{}, err
		}
		da.Size = int64(n)
		switch {
		case da.Size > MaxAttachmentBytes:
			return contract.SendResult{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
				Message: fmt.Sprintf("attachments[%d] is %d bytes: Graph attaches files up to 150 MB (%d bytes)", i, n, MaxAttachmentBytes)}
		case da.postFits():
			b, err := s.attachments.Get(ctx, profile, a.ObjectRef)
			if err != nil {
				return contract.SendResult{}, sourceError(profile, err)
			}
			da.Content, da.Size = b, int64(len(b))
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

// DeleteDraft deletes a job's draft that was never sent (a job that is
// dead-lettered or expired after its draft exists). A draft whose send was
// attempted is left alone: it may be the Sent Items copy of a sent mail.
// Errors are *contract.SendError.
func (s *Jobs) DeleteDraft(ctx context.Context, profile, jobID string, d *contract.Draft) error {
	c := s.clients[profile]
	if c == nil || d == nil || d.ID == "" || d.SendAt != nil {
		return nil
	}
	return c.DeleteMessage(ctx, d.Mailbox, d.ID)
}
