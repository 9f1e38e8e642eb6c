package graphmail

import (
	"context"
	"errors"
	"testing"

	"github.com/mailworker/mailworker/queue/contract"
)

func TestJobsMapsTheJob(t *testing.T) {
	no := false
	job := &contract.Job{ID: "j1", From: "Billing <Billing@Contoso.com>", To: []string{"Ann <ann@example.com>", "bob@example.com"},
		Cc: []string{"cc@example.com"}, Bcc: []string{"bcc@example.com"}, ReplyTo: []string{"reply@contoso.com"},
		Subject: "Invoice", Text: "plain", HTML: "<p>html</p>", Importance: "high", SaveToSentItems: &no,
		Headers:     map[string]string{"X-Tenant": "42", "X-A": "first"},
		Attachments: []contract.Attachment{{Name: "a.txt", ContentType: "text/plain", ContentBase64: "aGk=", Inline: true, ContentID: "cid1"}}}
	s := NewJobs(nil)
	s.Add("p", nil, true)
	m, err := s.Message(context.Background(), "p", "j1", job)
	if err != nil {
		t.Fatal(err)
	}
	if m.From != "Billing@Contoso.com" || m.Subject != "Invoice" || m.HTML != "<p>html</p>" || m.Text != "plain" ||
		m.Importance != "high" || m.SaveToSentItems {
		t.Fatalf("message = %+v", m)
	}
	if len(m.To) != 2 || m.To[0] != (Address{Name: "Ann", Address: "ann@example.com"}) || m.To[1].Address != "bob@example.com" ||
		m.Cc[0].Address != "cc@example.com" || m.Bcc[0].Address != "bcc@example.com" || m.ReplyTo[0].Address != "reply@contoso.com" {
		t.Fatalf("recipients = %+v %+v %+v %+v", m.To, m.Cc, m.Bcc, m.ReplyTo)
	}
	wantHeaders := []Header{{Name: "X-Mailworker-Job-Id", Value: "j1"}, {Name: "X-A", Value: "first"}, {Name: "X-Tenant", Value: "42"}}
	if len(m.Headers) != len(wantHeaders) {
		t.Fatalf("headers = %+v", m.Headers)
	}
	for i, h := range wantHeaders {
		if m.Headers[i] != h {
			t.Fatalf("header %d = %+v, want %+v", i, m.Headers[i], h)
		}
	}
	if a := m.Attachments[0]; string(a.Content) != "hi" || !a.Inline || a.ContentID != "cid1" || a.Name != "a.txt" {
		t.Fatalf("attachment = %+v", a)
	}
	job.SaveToSentItems = nil
	if m, _ := s.Message(context.Background(), "p", "j1", job); !m.SaveToSentItems {
		t.Fatal("the profile's saveToSentItems default was not applied")
	}
}

// An objectRef that is not in the store is a permanent invalid_job; a store
// that fails is retryable: both as the one failure type.
func TestJobsObjectRefFailures(t *testing.T) {
	job := &contract.Job{From: "a@contoso.com", To: []string{"b@example.com"},
		Attachments: []contract.Attachment{{Name: "f.pdf", ObjectRef: "ref1"}}}
	for _, tc := range []struct {
		err    error
		class  contract.Class
		reason contract.Reason
	}{
		{contract.ErrNoAttachment, contract.ClassPermanent, contract.ReasonInvalidJob},
		{errors.New("nats: timeout"), contract.ClassRetryable, contract.ReasonInternal},
	} {
		s := NewJobs(storeFunc(func(context.Context, string) ([]byte, error) { return nil, tc.err }))
		_, err := s.Message(context.Background(), "p", "j1", job)
		var se *contract.SendError
		if !errors.As(err, &se) || se.Class != tc.class || se.Reason != tc.reason || !errors.Is(err, tc.err) {
			t.Errorf("store error %v: got %v", tc.err, err)
		}
	}
}

type storeFunc func(ctx context.Context, ref string) ([]byte, error)

func (f storeFunc) Get(ctx context.Context, _, ref string) ([]byte, error) { return f(ctx, ref) }
