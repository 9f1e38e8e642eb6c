package graphtest_test

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// postMIME sends a MIME-form sendMail: Content-Type text/plain, body as given.
func postMIME(t *testing.T, s *graphtest.Server, tok, from string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.GraphURL()+"/v1.0/users/"+url.PathEscape(from)+"/sendMail", bytes.NewReader(body))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestSendMailMIME: the MIME form as Microsoft documents it (README.md of
// this package): base64 body, recipients from the headers, the 4 MB cap on
// the whole body, and a delivered copy without Bcc.
func TestSendMailMIME(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	msg := "From: box@contoso.com\r\nTo: a@example.com\r\nBcc: Hidden <hidden@example.com>,\r\n other@example.com\r\n" +
		"X-Mailworker-Job-Id: job-m1\r\nSubject: hi\r\n\r\nbody\r\n"
	if code, body := postMIME(t, s, tok, "box@contoso.com", []byte(base64.StdEncoding.EncodeToString([]byte(msg)))); code != http.StatusAccepted {
		t.Fatalf("MIME send: %d %s", code, body)
	}
	m := s.Messages()[0]
	want := "From: box@contoso.com\r\nTo: a@example.com\r\nX-Mailworker-Job-Id: job-m1\r\nSubject: hi\r\n\r\nbody\r\n"
	if !m.MIME || m.JobID != "job-m1" || string(m.Delivered) != want || strings.Join(m.Bcc, ",") != "hidden@example.com,other@example.com" {
		t.Fatalf("recorded %+v\ndelivered %q", m, m.Delivered)
	}
	for name, tc := range map[string]struct {
		body   []byte
		status int
		code   string
	}{
		"not base64":    {[]byte("From: x\r\n\r\nplain MIME, not encoded"), 400, "ErrorMimeContentInvalidBase64String"},
		"no recipients": {[]byte(base64.StdEncoding.EncodeToString([]byte("From: box@contoso.com\r\nSubject: x\r\n\r\nb\r\n"))), 400, "ErrorInvalidRecipients"},
		"over 4 MB":     {bytes.Repeat([]byte("QUFB"), graphtest.MaxRequestBytes/4+1), 413, "RequestEntityTooLarge"},
	} {
		code, body := postMIME(t, s, tok, "box@contoso.com", tc.body)
		if code != tc.status || !strings.Contains(body, tc.code) {
			t.Errorf("%s: %d %s, want %d %s", name, code, body, tc.status, tc.code)
		}
	}
	if n := len(s.Messages()); n != 1 {
		t.Fatalf("%d messages recorded, want 1", n)
	}
}

// TestSendMailMIMECharsetsAndObsoleteSyntax: names and subjects in other
// charsets decode, obsolete address syntax and every To: field count
// (issue 20 items 2 and 4); Reply-To <> is refused as Graph refuses an
// invalid recipient.
func TestSendMailMIMECharsetsAndObsoleteSyntax(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	msg := "From: =?Shift_JIS?B?jlKTY5G+mFk=?= <box@contoso.com>\r\nTo: Ann (sales) <ann @ example.com>\r\nTo: \"john doe\"@example.com\r\n" +
		"Subject: =?koi8-r?B?6dfBziDwxdTSz9c=?=\r\nX-Mailworker-Job-Id: job-cs\r\n\r\nbody\r\n"
	if code, body := postMIME(t, s, tok, "box@contoso.com", []byte(base64.StdEncoding.EncodeToString([]byte(msg)))); code != http.StatusAccepted {
		t.Fatalf("MIME send: %d %s", code, body)
	}
	m := s.Messages()[0]
	if m.FromName != "山田太郎" || m.Subject != "Иван Петров" || strings.Join(m.To, ",") != `ann@example.com,"john doe"@example.com` {
		t.Fatalf("recorded from name %q, subject %q, to %q", m.FromName, m.Subject, m.To)
	}
	bad := "From: box@contoso.com\r\nTo: a@example.com\r\nReply-To: \"Nobody\" <>\r\n\r\nb\r\n"
	if code, body := postMIME(t, s, tok, "box@contoso.com", []byte(base64.StdEncoding.EncodeToString([]byte(bad)))); code != 400 || !strings.Contains(body, "ErrorInvalidRecipients") {
		t.Fatalf("Reply-To <>: %d %s", code, body)
	}
}
