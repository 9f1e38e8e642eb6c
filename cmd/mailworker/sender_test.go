package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/worker"
)

func TestGraphSenderMapsTheJob(t *testing.T) {
	no := false
	job := &contract.Job{ID: "j1", From: "Billing <Billing@Contoso.com>", To: []string{"Ann <ann@example.com>", "bob@example.com"},
		Cc: []string{"cc@example.com"}, Bcc: []string{"bcc@example.com"}, ReplyTo: []string{"reply@contoso.com"},
		Subject: "Invoice", Text: "plain", HTML: "<p>html</p>", Importance: "high", SaveToSentItems: &no,
		Headers:     map[string]string{"X-Tenant": "42", "X-A": "first"},
		Attachments: []contract.Attachment{{Name: "a.txt", ContentType: "text/plain", ContentBase64: "aGk=", Inline: true, ContentID: "cid1"}}}
	s := &graphSender{saveDefault: map[string]bool{"p": true}}
	m, err := s.message(context.Background(), "p", "j1", job)
	if err != nil {
		t.Fatal(err)
	}
	if m.From != "Billing@Contoso.com" || m.Subject != "Invoice" || m.HTML != "<p>html</p>" || m.Text != "plain" ||
		m.Importance != "high" || m.SaveToSentItems {
		t.Fatalf("message = %+v", m)
	}
	if len(m.To) != 2 || m.To[0] != (graphmail.Address{Name: "Ann", Address: "ann@example.com"}) || m.To[1].Address != "bob@example.com" ||
		m.Cc[0].Address != "cc@example.com" || m.Bcc[0].Address != "bcc@example.com" || m.ReplyTo[0].Address != "reply@contoso.com" {
		t.Fatalf("recipients = %+v %+v %+v %+v", m.To, m.Cc, m.Bcc, m.ReplyTo)
	}
	wantHeaders := []graphmail.Header{{Name: "X-Mailworker-Job-Id", Value: "j1"}, {Name: "X-A", Value: "first"}, {Name: "X-Tenant", Value: "42"}}
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
	if m, _ := s.message(context.Background(), "p", "j1", job); !m.SaveToSentItems {
		t.Fatal("the profile's saveToSentItems default was not applied")
	}
}

func TestTranslate(t *testing.T) {
	cause := errors.New("cause")
	for _, tc := range []struct {
		in   *graphmail.Error
		kind worker.Kind
	}{
		{&graphmail.Error{Class: graphmail.ClassPermanent, Reason: "recipient_invalid", Status: 400, Code: "ErrorInvalidRecipients"}, worker.Permanent},
		{&graphmail.Error{Class: graphmail.ClassThrottled, Status: 429, RetryAfter: 7 * time.Second}, worker.Throttled},
		{&graphmail.Error{Class: graphmail.ClassRetryable, Reason: "access_denied", Status: 403}, worker.Retryable},
		{&graphmail.Error{Class: graphmail.ClassUnavailable, Reason: "auth_failed", RetryAfter: 2 * time.Second}, worker.Unavailable},
		{&graphmail.Error{Class: graphmail.ClassRetryable, Status: 504, Ambiguous: true, RequestID: "r", Err: cause}, worker.Retryable},
	} {
		var se *worker.SendError
		if !errors.As(translate(tc.in), &se) {
			t.Fatalf("translate(%v) is not a SendError", tc.in)
		}
		if se.Kind != tc.kind || string(se.Reason) != tc.in.Reason || se.Status != tc.in.Status || se.Code != tc.in.Code ||
			se.RetryAfter != tc.in.RetryAfter || se.Ambiguous != tc.in.Ambiguous || se.RequestID != tc.in.RequestID {
			t.Errorf("translate(%+v) = %+v", tc.in, se)
		}
		if !errors.Is(se, tc.in) {
			t.Errorf("translated error does not wrap the graphmail error")
		}
	}
	var se *worker.SendError
	if !errors.As(translate(cause), &se) || se.Kind != worker.Retryable || se.Reason != contract.ReasonInternal {
		t.Fatalf("untyped error: %+v", se)
	}
}
