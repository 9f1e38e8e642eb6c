package graphmail

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"strings"
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
	s := NewSender(nil)
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
		s := NewSender(storeFunc(func(context.Context, string) ([]byte, error) { return nil, tc.err }))
		_, err := s.Message(context.Background(), "p", "j1", job)
		var se *contract.SendError
		if !errors.As(err, &se) || se.Class != tc.class || se.Reason != tc.reason || !errors.Is(err, tc.err) {
			t.Errorf("store error %v: got %v", tc.err, err)
		}
	}
}

type storeFunc func(ctx context.Context, ref string) ([]byte, error)

func (f storeFunc) Get(ctx context.Context, _, ref string) ([]byte, error) { return f(ctx, ref) }

// A MIME job goes out as its message, stamped first, by value or by
// reference; a missing object is invalid_job, one over what a request
// carries message_too_large.
func TestJobsMapsMIMEJobs(t *testing.T) {
	raw := "From: a@contoso.com\r\nTo: b@example.com\r\nX-Mailworker-Job-Id: forged\r\n\r\nbody\r\n"
	want := "X-Mailworker-Job-Id: j1\r\nFrom: a@contoso.com\r\nTo: b@example.com\r\n\r\nbody\r\n"
	store := storeFunc(func(_ context.Context, ref string) ([]byte, error) {
		switch ref {
		case "m.eml":
			return []byte(raw), nil
		case "big.eml":
			return make([]byte, contract.MaxMIMEBytes), nil
		}
		return nil, contract.ErrNoAttachment
	})
	s := NewSender(store)
	base := contract.Job{From: "A <a@contoso.com>", To: []string{"b@example.com"}}
	for name, m := range map[string]*contract.MIME{
		"inline":    {ContentBase64: base64.StdEncoding.EncodeToString([]byte(raw))},
		"objectRef": {ObjectRef: "m.eml"},
	} {
		job := base
		job.MIME = m
		msg, err := s.Message(context.Background(), "p", "j1", &job)
		if err != nil || string(msg.MIME) != want || msg.From != "a@contoso.com" {
			t.Errorf("%s: %+v %v", name, msg, err)
		}
	}
	for ref, reason := range map[string]contract.Reason{"gone.eml": contract.ReasonInvalidJob, "big.eml": contract.ReasonMessageTooLarge} {
		job := base
		job.MIME = &contract.MIME{ObjectRef: ref}
		_, err := s.Message(context.Background(), "p", "j1", &job)
		var se *contract.SendError
		if !errors.As(err, &se) || se.Class != contract.ClassPermanent || se.Reason != reason {
			t.Errorf("%s: %v, want permanent %s", ref, err, reason)
		}
	}
}

// The X- fields of a MIME message are listed for the profile's
// allowedHeaders check (they are not sent separately).
func TestJobsMIMEListsXHeaders(t *testing.T) {
	raw := "From: a@contoso.com\r\nX-Mailer: scanner 2.1\r\nTo: b@example.com\r\nx-tenant: 42\r\n\r\nX-Not-A-Header: body\r\n"
	job := &contract.Job{From: "a@contoso.com", To: []string{"b@example.com"},
		MIME: &contract.MIME{ContentBase64: base64.StdEncoding.EncodeToString([]byte(raw))}}
	m, err := NewSender(nil).Message(context.Background(), "p", "j1", job)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, h := range m.Headers {
		names = append(names, h.Name)
	}
	if got := strings.Join(names, ","); got != "X-Mailer,X-Mailworker-Job-Id,X-Tenant" {
		t.Fatalf("X- headers %q", got)
	}
}

func (f storeFunc) Size(ctx context.Context, _, ref string) (int, error) {
	b, err := f(ctx, ref)
	return len(b), err
}

func (f storeFunc) Open(ctx context.Context, _, ref string, off int64) (io.ReadCloser, int64, error) {
	b, err := f(ctx, ref)
	if err != nil {
		return nil, 0, err
	}
	return io.NopCloser(bytes.NewReader(b[off:])), int64(len(b)), nil
}

// TestJobsMIMEObjectRefChecked: a MIME message by objectRef is checked
// against its job when it is read, as an inline one is at intake (issue 17
// item 6): another profile's From, header recipients beyond the job's and
// Exchange's own fields never reach Graph.
func TestJobsMIMEObjectRefChecked(t *testing.T) {
	msgs := map[string]string{
		"from.eml":     "From: ops@contoso.com\r\nTo: b@example.com\r\n\r\nx\r\n",
		"sender.eml":   "From: a@contoso.com\r\nSender: ops@contoso.com\r\nTo: b@example.com\r\n\r\nx\r\n",
		"to.eml":       "From: a@contoso.com\r\nTo: b@example.com\r\nTo: c@example.com, d@example.com\r\n\r\nx\r\n",
		"reserved.eml": "From: a@contoso.com\r\nTo: b@example.com\r\nX-MS-Exchange-Organization-SCL: -1\r\n\r\nx\r\n",
	}
	store := storeFunc(func(_ context.Context, ref string) ([]byte, error) { return []byte(msgs[ref]), nil })
	s := NewSender(store)
	for ref, reason := range map[string]contract.Reason{"from.eml": contract.ReasonSenderNotAllowed, "sender.eml": contract.ReasonSenderNotAllowed,
		"to.eml": contract.ReasonInvalidJob, "reserved.eml": contract.ReasonInvalidJob} {
		job := &contract.Job{From: "a@contoso.com", To: []string{"b@example.com"}, MIME: &contract.MIME{ObjectRef: ref}}
		_, err := s.Message(context.Background(), "p", "j1", job)
		var se *contract.SendError
		if !errors.As(err, &se) || se.Class != contract.ClassPermanent || se.Reason != reason {
			t.Errorf("%s: %v, want permanent %s", ref, err, reason)
		}
		if err != nil && (strings.Contains(err.Error(), "ops@") || strings.Contains(err.Error(), "example.com")) {
			t.Errorf("%s: the error names an address: %v", ref, err)
		}
	}
}
