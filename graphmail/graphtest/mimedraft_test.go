package graphtest_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// TestCreateDraftMIME: POST /users/{id}/messages in MIME form (text/plain,
// base64) creates a draft from the message: its attachment parts become
// the draft's attachments, its Message-ID the internetMessageId; more
// attachments can be added; the send delivers the MIME as created (without
// Bcc) with every attachment listed. Over 4 MB: 413; not base64: 400.
func TestCreateDraftMIME(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	msg := "From: " + mailbox + "\r\nTo: a@example.com\r\nBcc: b@example.com\r\nMessage-ID: <m1@example.com>\r\n" +
		"X-Mailworker-Job-Id: job-md\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n" +
		"--b\r\nContent-Type: image/png\r\nContent-ID: <img@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		base64.StdEncoding.EncodeToString([]byte("PNGDATA")) + "\r\n--b--\r\n"
	hdr := map[string]string{"Prefer": `IdType="ImmutableId"`, "Content-Type": "text/plain"}
	u := s.GraphURL() + "/v1.0/users/" + url.PathEscape(mailbox) + "/messages"
	r := do(t, s, http.MethodPost, u, tok, hdr, []byte(base64.StdEncoding.EncodeToString([]byte(msg))))
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var v struct {
		ID                string `json:"id"`
		InternetMessageID string `json:"internetMessageId"`
		IsDraft           bool   `json:"isDraft"`
		HasAttachments    bool   `json:"hasAttachments"`
	}
	if err := json.Unmarshal(r.body, &v); err != nil || v.InternetMessageID != "<m1@example.com>" || !v.IsDraft || !v.HasAttachments {
		t.Fatalf("created %s (%v)", r.body, err)
	}
	add := `{"@odata.type":"#microsoft.graph.fileAttachment","name":"a.txt","contentBytes":"` + base64.StdEncoding.EncodeToString([]byte("added")) + `"}`
	if r := do(t, s, http.MethodPost, msgURL(s, v.ID)+"/attachments", tok, immutable, []byte(add)); r.status != http.StatusCreated {
		t.Fatalf("attach: %d %s", r.status, r.body)
	}
	if r := do(t, s, http.MethodPost, msgURL(s, v.ID)+"/send", tok, nil, nil); r.status != http.StatusAccepted {
		t.Fatalf("send: %d %s", r.status, r.body)
	}
	m := s.Messages()
	if len(m) != 1 || !m[0].MIME || !m[0].Draft || m[0].JobID != "job-md" || len(m[0].Attachments) != 2 ||
		m[0].Attachments[0].ContentID != "img@x" || !m[0].Attachments[0].IsInline || m[0].Attachments[1].Name != "a.txt" ||
		strings.Join(m[0].Bcc, ",") != "b@example.com" || bytes.Contains(m[0].Delivered, []byte("Bcc:")) {
		t.Fatalf("delivered %+v", m)
	}
	for name, tc := range map[string]struct {
		body   []byte
		status int
		code   string
	}{
		"over 4 MB":  {bytes.Repeat([]byte("QUFB"), graphtest.MaxRequestBytes/4+1), 413, "RequestEntityTooLarge"},
		"not base64": {[]byte("From: x\r\n\r\nplain"), 400, "ErrorMimeContentInvalidBase64String"},
	} {
		r := do(t, s, http.MethodPost, u, tok, hdr, tc.body)
		if r.status != tc.status || r.code(t) != tc.code {
			t.Errorf("%s: %d %s", name, r.status, r.body)
		}
	}
}
