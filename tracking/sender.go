package tracking

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

// Sender is the worker's sender interface (worker.Sender), repeated here so
// that this package needs no import of the engine.
type Sender interface {
	Send(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error)
}

type resumable interface {
	Sender
	UsesDraft(ctx context.Context, profile string, job *contract.Job) bool
	SendResumable(ctx context.Context, profile, jobID string, job *contract.Job,
		draft *contract.Draft, save func(context.Context, *contract.Draft) error) (contract.SendResult, error)
	DeleteDraft(ctx context.Context, profile, jobID string, d *contract.Draft) error
}

// Wrap returns inner with two steps before every send: recipients on the
// profile's suppression list are dropped (a job left with none is refused
// with reason recipient_invalid, without a Graph call), and a tracking record
// is written so that the tracker finds the mail in message trace. A record
// that cannot be written fails the attempt as retryable before any Graph
// call: nothing is sent untracked. profiles limits tracking to those
// profiles (nil: all). The result implements the draft methods exactly when
// inner does.
func Wrap(inner Sender, st *Store, now func() time.Time) Sender {
	if now == nil {
		now = time.Now
	}
	w := &wrapped{inner: inner, st: st, now: now}
	if r, ok := inner.(resumable); ok {
		return &wrappedResumable{wrapped: w, r: r}
	}
	return w
}

type wrapped struct {
	inner Sender
	st    *Store
	now   func() time.Time
}

// mimeMessageID is the Message-ID field of an inline MIME message ("" when
// there is none, the message is by reference, or its header cannot be read).
func mimeMessageID(m *contract.MIME) string {
	if m == nil || m.ContentBase64 == "" {
		return ""
	}
	// The header section is at the start: decode at most 96 KB of it.
	b64 := m.ContentBase64[:min(len(m.ContentBase64), 128<<10)]
	b64 = b64[:len(b64)/4*4]
	msg, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return ""
	}
	fields, err := contract.ParseHeaderSection(contract.HeaderSection(msg))
	if err != nil {
		return ""
	}
	for _, f := range fields {
		if strings.EqualFold(f.Name, "Message-ID") {
			id := strings.TrimSpace(f.Value)
			if strings.HasPrefix(id, "<") && strings.HasSuffix(id, ">") && len(id) <= 998 && !strings.ContainsAny(id, " \t") {
				return id
			}
			return ""
		}
	}
	return ""
}

func addr(s string) string {
	if a, err := mail.ParseAddress(s); err == nil {
		return strings.ToLower(a.Address)
	}
	return strings.ToLower(strings.TrimSpace(s))
}

// prepare filters job and writes its tracking record; it returns the job to
// send (a copy when recipients were dropped).
func (w *wrapped) prepare(ctx context.Context, profile, jobID string, job *contract.Job) (*contract.Job, error) {
	now := w.now()
	rec := &Record{JobID: jobID, Profile: profile, From: strings.ToLower(job.From), Metadata: job.Metadata, Attempted: now,
		MessageIDHint: mimeMessageID(job.MIME)}
	suppressed := map[string]bool{}
	for _, r := range slices.Concat(job.To, job.Cc, job.Bcc) {
		a := addr(r)
		if slices.ContainsFunc(rec.Recipients, func(x Recipient) bool { return x.Address == a }) {
			continue
		}
		sup, err := w.st.Suppressed(ctx, profile, a, now)
		if err != nil {
			return nil, &contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonInternal, Profile: profile,
				Message: "the suppression list cannot be read", Err: err}
		}
		if sup != nil {
			suppressed[a] = true
		}
		rec.Recipients = append(rec.Recipients, Recipient{Address: a, Suppressed: sup != nil})
	}
	out := job
	if len(suppressed) > 0 {
		kept := 0
		for _, r := range rec.Recipients {
			if !r.Suppressed {
				kept++
			}
		}
		switch {
		case kept == 0:
			return nil, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonRecipientInvalid, Profile: profile,
				Message: fmt.Sprintf("every recipient (%d) is on the profile's suppression list after a hard bounce; nothing was sent (mailworker suppressions list)", len(suppressed))}
		case job.MIME != nil:
			// A MIME message goes to the recipients in its own headers: a
			// recipient cannot be dropped without rewriting the message.
			return nil, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonRecipientInvalid, Profile: profile,
				Message: fmt.Sprintf("%d recipient(s) of this MIME message are on the profile's suppression list; a MIME message cannot be sent without them, so nothing was sent", len(suppressed))}
		}
		cp := *job
		drop := func(list []string) []string {
			return slices.DeleteFunc(slices.Clone(list), func(r string) bool { return suppressed[addr(r)] })
		}
		cp.To, cp.Cc, cp.Bcc = drop(job.To), drop(job.Cc), drop(job.Bcc)
		out = &cp
	}
	if err := w.record(ctx, rec); err != nil {
		return nil, &contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonInternal, Profile: profile,
			Message: "the tracking record cannot be written", Err: err}
	}
	return out, nil
}

// record writes rec. A record left by an earlier attempt of the job (a
// retry, or a replay with edited recipients before the tracker removed the
// dead-lettered attempt's record) is replaced while none of its events was
// published; once one was, the job was sent and the record is kept.
func (w *wrapped) record(ctx context.Context, rec *Record) error {
	for range 4 {
		_, err := w.st.put(ctx, rec, 0)
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return err
		}
		old, rev, err := w.st.get(ctx, recordKey(rec.Profile, rec.JobID))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		for _, r := range old.Recipients {
			if r.Outcome != "" {
				return nil
			}
		}
		if _, err := w.st.put(ctx, rec, rev); err == nil || !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return err
		}
	}
	return errors.New("tracking record: conflicting writes")
}

// noteMessageID stores the Message-ID a draft send returned (best effort:
// without it the tracker matches by sender, recipient and time).
func (w *wrapped) noteMessageID(ctx context.Context, profile, jobID, mid string) {
	if mid == "" {
		return
	}
	for range 3 {
		r, rev, err := w.st.get(ctx, recordKey(profile, jobID))
		if err != nil {
			return
		}
		r.MessageID = mid
		if _, err := w.st.put(ctx, r, rev); err == nil {
			return
		}
	}
}

func (w *wrapped) Send(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
	j, err := w.prepare(ctx, profile, jobID, job)
	if err != nil {
		return contract.SendResult{}, err
	}
	res, err := w.inner.Send(ctx, profile, jobID, j)
	if err == nil {
		w.noteMessageID(ctx, profile, jobID, res.InternetMessageID)
	}
	return res, err
}

type wrappedResumable struct {
	*wrapped
	r resumable
}

func (w *wrappedResumable) UsesDraft(ctx context.Context, profile string, job *contract.Job) bool {
	return w.r.UsesDraft(ctx, profile, job)
}

func (w *wrappedResumable) SendResumable(ctx context.Context, profile, jobID string, job *contract.Job,
	draft *contract.Draft, save func(context.Context, *contract.Draft) error) (contract.SendResult, error) {
	j, err := w.prepare(ctx, profile, jobID, job)
	if err != nil {
		return contract.SendResult{}, err
	}
	res, err := w.r.SendResumable(ctx, profile, jobID, j, draft, save)
	if err == nil {
		w.noteMessageID(ctx, profile, jobID, res.InternetMessageID)
	}
	return res, err
}

func (w *wrappedResumable) DeleteDraft(ctx context.Context, profile, jobID string, d *contract.Draft) error {
	return w.r.DeleteDraft(ctx, profile, jobID, d)
}
