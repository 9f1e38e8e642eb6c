package graphmail_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

const testMIME = "From: Billing <billing@contoso.com>\r\n" +
	"To: a@example.com\r\n" +
	"Bcc: hidden@example.com\r\n" +
	"X-Mailworker-Job-Id: forged\r\n" +
	"Subject: =?utf-8?q?caf=C3=A9?=\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=b1\r\n" +
	"\r\n" +
	"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n" +
	"--b1\r\nContent-Type: application/pdf; name=r.pdf\r\nContent-Disposition: attachment; filename=r.pdf\r\n" +
	"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b1--\r\n"

// TestSendMIME: a Message with MIME goes out in Graph's MIME form; the fake
// records what recipients get (the submitted bytes with the job id stamp
// first and no Bcc field) and keeps the Bcc recipient apart.
func TestSendMIME(t *testing.T) {
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	stamped := graphmail.StampMIME([]byte(testMIME), "X-Mailworker-Job-Id", "job-mime")
	if _, err := c.Send(context.Background(), &graphmail.Message{From: itSender, MIME: stamped}); err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	want := "X-Mailworker-Job-Id: job-mime\r\n" + strings.Replace(
		strings.Replace(testMIME, "X-Mailworker-Job-Id: forged\r\n", "", 1), "Bcc: hidden@example.com\r\n", "", 1)
	if !m.MIME || string(m.Delivered) != want {
		t.Fatalf("delivered copy:\n%q\nwant\n%q", m.Delivered, want)
	}
	if bytes.Contains(bytes.ToLower(m.Delivered), []byte("hidden@")) {
		t.Fatal("the Bcc recipient shows in the delivered copy")
	}
	if strings.Join(m.To, ",") != "a@example.com" || strings.Join(m.Bcc, ",") != "hidden@example.com" ||
		m.Subject != "café" || m.Headers["X-Mailworker-Job-Id"] != "job-mime" ||
		len(m.Attachments) != 1 || m.Attachments[0].Name != "r.pdf" || m.Attachments[0].Size != 5 {
		t.Fatalf("recorded %+v", m)
	}
}

// TestSendMIMEErrors: Graph's documented answers to bad MIME requests.
func TestSendMIMEErrors(t *testing.T) {
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	for name, tc := range map[string]struct {
		mime   []byte
		status int
		code   string
	}{
		"no recipients": {[]byte("From: billing@contoso.com\r\nSubject: x\r\n\r\nbody\r\n"), http.StatusBadRequest, "ErrorInvalidRecipients"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := c.Send(context.Background(), &graphmail.Message{From: itSender, MIME: tc.mime})
			var ge *contract.SendError
			if !errors.As(err, &ge) || ge.Status != tc.status || ge.Code != tc.code || ge.Class != contract.ClassPermanent {
				t.Fatalf("err = %#v, want %d %s permanent", err, tc.status, tc.code)
			}
		})
	}
	// Over 4 MB in base64: refused before any request (graphtest's 413 is tested there).
	big := append([]byte("To: a@example.com\r\n\r\n"), bytes.Repeat([]byte("x"), 3<<20)...)
	_, err := c.Send(context.Background(), &graphmail.Message{From: itSender, MIME: big})
	var se *contract.SendError
	if !errors.As(err, &se) || se.Reason != contract.ReasonMessageTooLarge || se.Class != contract.ClassPermanent {
		t.Fatalf("over 4 MB: %v, want permanent message_too_large", err)
	}
	if n := len(s.Messages()); n != 0 {
		t.Fatalf("%d messages accepted", n)
	}
}

func TestStampMIME(t *testing.T) {
	for in, want := range map[string]string{
		"A: 1\nx-mailworker-job-id: old\n\tcontinued\nB: 2\n\nX-Mailworker-Job-Id: body\n": "X-Mailworker-Job-Id: n\r\nA: 1\nB: 2\n\nX-Mailworker-Job-Id: body\n",
		"A: 1\r\n":          "X-Mailworker-Job-Id: n\r\nA: 1\r\n",
		"\r\nbody only\r\n": "X-Mailworker-Job-Id: n\r\n\r\nbody only\r\n",
	} {
		if got := string(graphmail.StampMIME([]byte(in), "X-Mailworker-Job-Id", "n")); got != want {
			t.Errorf("StampMIME(%q) = %q, want %q", in, got, want)
		}
	}
}

// A profile's allowedHeaders applies to the X- fields of a MIME message
// too (each distinct name costs the mailbox a named property): an unlisted
// one is refused before any request.
func TestSendMIMEAllowedHeaders(t *testing.T) {
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c, err := graphmail.New(graphmail.Config{Name: "billing", TenantID: s.TenantID(), ClientID: s.ClientID(),
		AuthorityHost: s.URL(), GraphURL: s.GraphURL(), Credential: graphmail.Credential{ClientSecret: itSecret},
		HTTPClient: s.Client(), Timeout: 2 * time.Minute, AllowedHeaders: []string{"X-Mailer"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	jobs := graphmail.NewSender(nil)
	jobs.Add("billing", c, false)
	send := func(extra string) error {
		raw := "From: " + itSender + "\r\nTo: a@example.com\r\nX-Mailer: scanner\r\n" + extra + "Subject: s\r\n\r\nbody\r\n"
		_, err := jobs.Send(context.Background(), "billing", "job-h", &contract.Job{From: itSender, To: []string{"a@example.com"},
			MIME: &contract.MIME{ContentBase64: base64.StdEncoding.EncodeToString([]byte(raw))}})
		return err
	}
	if err := send(""); err != nil {
		t.Fatalf("allowed X-Mailer: %v", err)
	}
	var se *contract.SendError
	if err := send("X-Order-12345: 1\r\n"); !errors.As(err, &se) || se.Reason != contract.ReasonInvalidJob || se.Status != 0 {
		t.Fatalf("unlisted X- header: %v, want invalid_job before the call", err)
	}
	if n := len(s.Messages()); n != 1 {
		t.Fatalf("%d messages at the fake, want 1", n)
	}
}
