package graphmail_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// memStore is an AttachmentStore in memory.
type memStore map[string][]byte

func (m memStore) Get(_ context.Context, _, ref string) ([]byte, error) {
	if b, ok := m[ref]; ok {
		return b, nil
	}
	return nil, contract.ErrNoAttachment
}

func (m memStore) Size(_ context.Context, _, ref string) (int, error) {
	if b, ok := m[ref]; ok {
		return len(b), nil
	}
	return 0, contract.ErrNoAttachment
}

func (m memStore) Open(_ context.Context, _, ref string, off int64) (io.ReadCloser, int64, error) {
	b, ok := m[ref]
	if !ok {
		return nil, 0, contract.ErrNoAttachment
	}
	return io.NopCloser(bytes.NewReader(b[off:])), int64(len(b)), nil
}

func draftJobs(t *testing.T, mode graphmail.Mode, store memStore) (*graphmail.Sender, *graphtest.Server) {
	t.Helper()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	j := graphmail.NewSender(store)
	j.Add("p", draftClient(t, s), false)
	j.SetMode("p", mode)
	return j, s
}

func smallJob() *contract.Job {
	return &contract.Job{From: itSender, To: []string{"a@example.com"}, Subject: "s", Text: "t",
		Attachments: []contract.Attachment{{Name: "a.txt", ContentBase64: base64.StdEncoding.EncodeToString([]byte("hi"))}}}
}

func largeJob() *contract.Job {
	j := smallJob()
	j.Attachments = append(j.Attachments, contract.Attachment{Name: "scan.pdf", ContentType: "application/pdf", ObjectRef: "big"})
	return j
}

// TestJobsDeliveryModes: sendMail mode dead-letters a job over one request with a message that
// names the setting; draft mode sends large jobs (draftWhen large) or all (always) as drafts,
// other jobs by sendMail; the delivered attachments are byte for byte.
func TestJobsDeliveryModes(t *testing.T) {
	ctx := context.Background()
	big := rnd(t, graphmail.UploadSessionMin+10)
	store := memStore{"big": big}

	j, _ := draftJobs(t, graphmail.Mode{}, store)
	_, err := j.Send(ctx, "p", "j1", largeJob())
	e := asSendError(t, err)
	if e.Reason != contract.ReasonMessageTooLarge || !strings.Contains(e.Message, "profiles.p.deliveryMode: draft") {
		t.Errorf("sendMail mode, large job: %v", err)
	}

	j, s := draftJobs(t, graphmail.Mode{Via: graphmail.ModeDraft}, store)
	if _, err := j.Send(ctx, "p", "small", smallJob()); err != nil {
		t.Fatal(err)
	}
	res, err := j.Send(ctx, "p", "large", largeJob())
	if err != nil || res.InternetMessageID == "" {
		t.Fatalf("draft mode, large job: %+v %v", res, err)
	}
	msgs := s.Messages()
	if len(msgs) != 2 || msgs[0].Draft || !msgs[1].Draft || msgs[1].JobID != "large" {
		t.Fatalf("draftWhen large: %+v", msgs)
	}
	if a := msgs[1].Attachments; len(a) != 2 || a[1].SHA256 != hash(big) || a[0].SHA256 != hash([]byte("hi")) {
		t.Errorf("attachments %+v", a)
	}

	j, s = draftJobs(t, graphmail.Mode{Via: graphmail.ModeDraft, When: graphmail.DraftAlways}, store)
	if _, err := j.Send(ctx, "p", "small", smallJob()); err != nil {
		t.Fatal(err)
	}
	if msgs := s.Messages(); len(msgs) != 1 || !msgs[0].Draft {
		t.Fatalf("draftWhen always: %+v", msgs)
	}
}

// TestJobsResumableAndDeleteDraft: the progress is handed to save; a send
// Graph refused leaves an unsent draft, which DeleteDraft deletes; a draft
// whose send may have gone out is left alone.
func TestJobsResumableAndDeleteDraft(t *testing.T) {
	ctx := context.Background()
	j, s := draftJobs(t, graphmail.Mode{Via: graphmail.ModeDraft, When: graphmail.DraftAlways}, memStore{})
	var saved []contract.Draft
	s.ScriptDraft(graphtest.OpSend, graphtest.Fault{Status: 400, Code: "ErrorInvalidRequest"})
	_, err := j.SendResumable(ctx, "p", "j1", smallJob(), nil, func(_ context.Context, d *contract.Draft) error {
		saved = append(saved, *d)
		return nil
	})
	if asSendError(t, err).Class != contract.ClassPermanent || len(saved) < 3 {
		t.Fatalf("err %v, saved %+v", err, saved)
	}
	if saved[len(saved)-2].SendAt == nil {
		t.Errorf("the send was not marked before it was made: %+v", saved)
	}
	last := saved[len(saved)-1]
	if last.ID == "" || last.SendAt != nil {
		t.Fatalf("after a refused send the draft should be unsent again: %+v", last)
	}
	at := time.Now()
	maybeSent := last
	maybeSent.SendAt = &at
	if err := j.DeleteDraft(ctx, "p", "j1", &maybeSent); err != nil {
		t.Fatal(err)
	}
	if d := s.Drafts(); d[0].Deleted {
		t.Fatal("a draft whose send may have gone out was deleted")
	}
	if err := j.DeleteDraft(ctx, "p", "j1", &last); err != nil {
		t.Fatal(err)
	}
	if d := s.Drafts(); !d[0].Deleted {
		t.Fatalf("draft not deleted: %+v", d)
	}
	if err := j.DeleteDraft(ctx, "p", "j1", &last); err != nil {
		t.Fatalf("deleting it again: %v", err)
	}
}

// TestJobsMIMENeverDraft: a MIME job goes out through sendMail's MIME form
// even in draft mode (the draft flow builds messages from JSON fields).
func TestJobsMIMENeverDraft(t *testing.T) {
	j, _ := draftJobs(t, graphmail.Mode{Via: graphmail.ModeDraft, When: graphmail.DraftAlways}, memStore{})
	job := &contract.Job{From: itSender, To: []string{"a@example.com"},
		MIME: &contract.MIME{ContentBase64: base64.StdEncoding.EncodeToString([]byte("From: a@contoso.com\r\n\r\nhi\r\n"))}}
	if j.UsesDraft(context.Background(), "p", job) {
		t.Fatal("a MIME job would go through a draft")
	}
	if !j.UsesDraft(context.Background(), "p", smallJob()) {
		t.Fatal("draftWhen always: a JSON job does not go through a draft")
	}
}

// TestJobsDraftLargeRoutesByRequestSize: with draftWhen large, a job goes through a draft
// when its sendMail request would pass 4 MB, not only when its raw attachments pass 3 MiB:
// one attachment of 3,145,727 bytes (under 3 MiB) is 4,194,304 bytes in base64.
func TestJobsDraftLargeRoutesByRequestSize(t *testing.T) {
	j, _ := draftJobs(t, graphmail.Mode{Via: graphmail.ModeDraft, When: graphmail.DraftLarge}, memStore{})
	job := func(n int) *contract.Job {
		return &contract.Job{From: itSender, To: []string{"a@example.com"}, Subject: "s", Text: "x",
			Attachments: []contract.Attachment{{Name: "scan.pdf", ContentType: "application/pdf",
				ContentBase64: base64.StdEncoding.EncodeToString(make([]byte, n))}}}
	}
	if !j.UsesDraft(context.Background(), "p", job(3_145_727)) {
		t.Error("3,145,727 bytes: sendMail, whose request would pass 4 MB")
	}
	if j.UsesDraft(context.Background(), "p", job(2_000_000)) {
		t.Error("2,000,000 bytes: a draft, though one sendMail request carries it")
	}
}
