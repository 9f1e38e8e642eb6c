package contract

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

const goodJob = `{"from":"billing@contoso.com","to":["a@x.com"],"subject":"hi","text":"body"}`

// with returns goodJob with fields set (or removed when the value is nil).
func with(t testing.TB, fields map[string]any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(goodJob), &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range fields {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func addrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("u%d@x.com", i)
	}
	return out
}

func b64(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }

// mimeB64 is a MIME message of goodJob's sender and recipient, n bytes long,
// in base64.
func mimeB64(n int) string {
	msg := []byte("From: billing@contoso.com\r\nTo: a@x.com\r\nSubject: hi\r\n\r\n")
	return base64.StdEncoding.EncodeToString(append(msg, make([]byte, n-len(msg))...))
}

func TestDecodeJobValid(t *testing.T) {
	body := `{
		"id": "order-42_A",
		"from": "Billing <billing@contoso.com>",
		"to": ["a@x.com", "Bob Smith <bob@y.org>"], "cc": ["\"Doe, Jane\" <jane@x.com>"], "bcc": ["audit@x.com"],
		"replyTo": ["help@contoso.com"],
		"subject": "Invoice ✓", "text": "t", "html": "<p>h</p>",
		"attachments": [
			{"name": "a.pdf", "contentType": "application/pdf", "contentBase64": "` + b64(10) + `"},
			{"name": "logo.png", "objectRef": "abc/logo.png", "inline": true, "contentId": "logo"}
		],
		"headers": {"X-Order": "42", "x-lower": ""},
		"importance": "high", "saveToSentItems": true,
		"notBefore": "2026-01-02T15:04:05Z", "expiresAt": "2026-01-03T15:04:05+01:00",
		"metadata": {"order": "42"}
	}`
	j, err := DecodeJob([]byte(body))
	if err != nil {
		t.Fatalf("DecodeJob: %v", err)
	}
	if j.ID != "order-42_A" || len(j.To) != 2 || j.NotBefore == nil || j.ExpiresAt == nil || !*j.SaveToSentItems {
		t.Fatalf("decoded %+v", j)
	}
	if !j.NotBefore.Equal(time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)) {
		t.Errorf("notBefore = %v", j.NotBefore)
	}
	// Exactly at the limits.
	for name, b := range map[string][]byte{
		"1000 recipients":        with(t, map[string]any{"to": addrs(600), "cc": addrs(200), "bcc": addrs(200)}),
		"3 MiB inline":           with(t, map[string]any{"attachments": []any{map[string]any{"name": "a", "contentBase64": b64(MaxInlineAttachmentBytes)}}}),
		"2048-character subject": with(t, map[string]any{"subject": strings.Repeat("s", 2048)}),
		"html only":              with(t, map[string]any{"text": nil, "html": "<p>x</p>"}),
		"bcc only":               with(t, map[string]any{"to": nil, "bcc": []string{"a@x.com"}}),
		"128-char id":            with(t, map[string]any{"id": strings.Repeat("a", 128)}),
		"32 metadata keys":       with(t, map[string]any{"metadata": metadata(32, 64, 1024)}),
		"8 KiB headers":          with(t, map[string]any{"headers": map[string]string{"X-A": strings.Repeat("v", 8192-3)}}),
		"null optional field":    []byte(`{"from":"a@x.com","to":["b@x.com"],"text":"t","cc":null,"notBefore":null}`),
	} {
		if _, err := DecodeJob(b); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func metadata(n, klen, vlen int) map[string]string {
	m := map[string]string{}
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("%03d", i) + strings.Repeat("k", klen-3)
		m[k] = strings.Repeat("v", vlen)
	}
	return m
}

func TestDecodeJobInvalid(t *testing.T) {
	att := func(a map[string]any) obj { return obj{"attachments": []any{a}} }
	tests := []struct {
		name   string
		body   []byte
		field  string
		reason Reason // default invalid_job
		msg    string // substring of the message
	}{
		{"malformed JSON", []byte(`{"from":`), "", "", "malformed JSON"},
		{"malformed JSON syntax", []byte(`{"from" "a"}`), "", "", "malformed JSON"},
		{"empty body", []byte(``), "", "", "empty body"},
		{"not an object", []byte(`["a"]`), "", "", "JSON object"},
		{"trailing data", []byte(goodJob + `{}`), "", "", "trailing data"},
		{"trailing garbage", []byte(goodJob + ` x`), "", "", "trailing data"},
		{"unknown field", with(t, map[string]any{"fromm": "a@x.com"}), "fromm", "", "unknown field"},
		{"unknown attachment field", att(map[string]any{"name": "a", "objectRef": "r", "size": 3}).bytes(t), "size", "", "unknown field"},
		{"wrong type to", with(t, map[string]any{"to": "a@x.com"}), "to", "", "want array"},
		{"wrong type from", with(t, map[string]any{"from": 7}), "from", "", "want string"},
		{"wrong type inline", att(map[string]any{"name": "a", "objectRef": "r", "inline": "yes"}).bytes(t), "attachments.inline", "", "want boolean"},
		{"wrong type headers", with(t, map[string]any{"headers": []string{"X-A"}}), "headers", "", "want object"},
		{"wrong type notBefore", with(t, map[string]any{"notBefore": 17}), "notBefore", "", "RFC 3339"},
		{"bad time expiresAt", with(t, map[string]any{"expiresAt": "tomorrow"}), "expiresAt", "", "RFC 3339"},
		{"illegal id chars", with(t, map[string]any{"id": "a.b"}), "id", "", "not a valid job id"},
		{"id too long", with(t, map[string]any{"id": strings.Repeat("a", 129)}), "id", "", "not a valid job id"},
		{"from missing", with(t, map[string]any{"from": nil}), "from", "", "required"},
		{"from not a mailbox", with(t, map[string]any{"from": "billing"}), "from", "", "RFC 5322"},
		{"two from mailboxes", with(t, map[string]any{"from": "a@x.com, b@x.com"}), "from", "", "RFC 5322"},
		{"no recipients", with(t, map[string]any{"to": nil}), "to", "", "at least one recipient"},
		{"empty recipients", with(t, map[string]any{"to": []string{}}), "to", "", "at least one recipient"},
		{"bad to", with(t, map[string]any{"to": []string{"a@x.com", "b@x.com", "bob@@x"}}), "to[2]", "", "to[2]: not an RFC 5322 mailbox"},
		{"bad cc", with(t, map[string]any{"cc": []string{"nope"}}), "cc[0]", "", "RFC 5322"},
		{"bad bcc", with(t, map[string]any{"bcc": []string{"<>"}}), "bcc[0]", "", "RFC 5322"},
		{"bad replyTo", with(t, map[string]any{"replyTo": []string{"x"}}), "replyTo[0]", "", "RFC 5322"},
		{"1001 recipients", with(t, map[string]any{"to": addrs(600), "cc": addrs(400), "bcc": addrs(1)}), "to", "", "1001 recipients"},
		{"10000 recipients", with(t, map[string]any{"to": addrs(10000)}), "to", "", "10000 recipients"},
		{"CRLF in subject", with(t, map[string]any{"subject": "hi\r\nBcc: evil@x.com"}), "subject", "", "CR, LF"},
		{"LF in subject", with(t, map[string]any{"subject": "hi\nthere"}), "subject", "", "CR, LF"},
		{"NUL in subject", with(t, map[string]any{"subject": "hi\x00"}), "subject", "", "control character"},
		{"subject too long", with(t, map[string]any{"subject": strings.Repeat("s", 2049)}), "subject", "", "2049 characters"},
		{"CRLF in display name", with(t, map[string]any{"to": []string{"Eve\r\nBcc: x@y.com <eve@x.com>"}}), "to[0]", "", "CR, LF"},
		{"CRLF in quoted display name", with(t, map[string]any{"to": []string{"\"Eve\r\nBcc: x@y.com\" <eve@x.com>"}}), "to[0]", "", "CR, LF"},
		{"encoded CRLF in display name", with(t, map[string]any{"to": []string{"=?utf-8?q?Eve=0D=0ABcc:_x@y.com?= <eve@x.com>"}}), "to[0]", "", "RFC 5322"},
		{"LF in address", with(t, map[string]any{"to": []string{"eve@x.com\nBcc: y@z.com"}}), "to[0]", "", "CR, LF"},
		{"CRLF in from", with(t, map[string]any{"from": "a@x.com\r\n"}), "from", "", "CR, LF"},
		{"no body", with(t, map[string]any{"text": nil}), "text", "", "body is required"},
		{"non-X header", with(t, map[string]any{"headers": map[string]string{"Bcc": "evil@x.com"}}), `headers["Bcc"]`, "", "only X- headers"},
		{"bare X- header", with(t, map[string]any{"headers": map[string]string{"X-": "v"}}), `headers["X-"]`, "", "only X- headers"},
		{"CRLF in header name", with(t, map[string]any{"headers": map[string]string{"X-A\r\nBcc": "v"}}), `headers["X-A\r\nBcc"]`, "", "header name"},
		{"colon in header name", with(t, map[string]any{"headers": map[string]string{"X-A:b": "v"}}), `headers["X-A:b"]`, "", "header name"},
		{"space in header name", with(t, map[string]any{"headers": map[string]string{"X-A b": "v"}}), `headers["X-A b"]`, "", "header name"},
		{"CRLF in header value", with(t, map[string]any{"headers": map[string]string{"X-A": "v\r\nBcc: evil@x.com"}}), `headers["X-A"]`, "", "value contains a control character"},
		{"reserved header", with(t, map[string]any{"headers": map[string]string{"x-mailworker-job-id": "v"}}), `headers["x-mailworker-job-id"]`, "", "reserved"},
		{"headers too big", with(t, map[string]any{"headers": map[string]string{"X-A": strings.Repeat("v", 8190)}}), "headers", "", "8193 bytes"},
		{"attachment name missing", att(map[string]any{"objectRef": "r"}).bytes(t), "attachments[0].name", "", "required"},
		{"CRLF in attachment name", att(map[string]any{"name": "a\r\n.pdf", "objectRef": "r"}).bytes(t), "attachments[0].name", "", "CR, LF"},
		{"CRLF in contentId", att(map[string]any{"name": "a", "objectRef": "r", "contentId": "c\nd"}).bytes(t), "attachments[0].contentId", "", "CR, LF"},
		{"CRLF in contentType", att(map[string]any{"name": "a", "objectRef": "r", "contentType": "text/plain\r\nX: y"}).bytes(t), "attachments[0].contentType", "", "CR, LF"},
		{"no content", att(map[string]any{"name": "a"}).bytes(t), "attachments[0].contentBase64", "", "exactly one of"},
		{"both contents", att(map[string]any{"name": "a", "objectRef": "r", "contentBase64": "QQ=="}).bytes(t), "attachments[0].contentBase64", "", "exactly one of"},
		{"invalid base64", att(map[string]any{"name": "a", "contentBase64": "not base64!"}).bytes(t), "attachments[0].contentBase64", "", "base64"},
		{"invalid base64 chars", att(map[string]any{"name": "a", "contentBase64": "QQ$="}).bytes(t), "attachments[0].contentBase64", "", "base64"},
		{"unpadded base64", att(map[string]any{"name": "a", "contentBase64": "QQ"}).bytes(t), "attachments[0].contentBase64", "", "base64"},
		{"base64 with line breaks", att(map[string]any{"name": "a", "contentBase64": "QUFB\nQUFB"}).bytes(t), "attachments[0].contentBase64", "", "base64"},
		{"base64 padding inside", att(map[string]any{"name": "a", "contentBase64": "QQ==" + b64(6000)}).bytes(t), "attachments[0].contentBase64", "", "base64"},
		{"base64url", att(map[string]any{"name": "a", "contentBase64": "_-_-"}).bytes(t), "attachments[0].contentBase64", "", "base64"},
		{"inline without contentId", att(map[string]any{"name": "a", "objectRef": "r", "inline": true}).bytes(t), "attachments[0].contentId", "", "required when inline"},
		{"oversized attachment", att(map[string]any{"name": "a", "contentBase64": b64(MaxInlineAttachmentBytes + 1)}).bytes(t), "attachments", ReasonMessageTooLarge, "upload session"},
		{"oversized attachments total", with(t, map[string]any{"attachments": []any{
			map[string]any{"name": "a", "contentBase64": b64(2 << 20)},
			map[string]any{"name": "b", "contentBase64": b64(1<<20 + 1)},
		}}), "attachments", ReasonMessageTooLarge, "by objectRef"},
		{"importance", with(t, map[string]any{"importance": "urgent"}), "importance", "", "not one of"},
		{"importance case", with(t, map[string]any{"importance": "High"}), "importance", "", "not one of"},
		{"expiresAt before notBefore", with(t, map[string]any{"notBefore": "2026-01-02T00:00:00Z", "expiresAt": "2026-01-01T00:00:00Z"}), "expiresAt", "", "after notBefore"},
		{"expiresAt equals notBefore", with(t, map[string]any{"notBefore": "2026-01-02T00:00:00Z", "expiresAt": "2026-01-02T00:00:00Z"}), "expiresAt", "", "after notBefore"},
		{"ESC in subject", with(t, map[string]any{"subject": "\x1b]0;pwned\x07"}), "subject", "", "control character"},
		{"C1 in subject", with(t, map[string]any{"subject": "a\u009b2J"}), "subject", "", "control character"},
		{"DEL in header value", with(t, map[string]any{"headers": map[string]string{"X-A": "a\x7f"}}), `headers["X-A"]`, "", "control character"},
		{"ESC in display name", with(t, map[string]any{"to": []string{"a@x.com", "Eve\x1b[2J <eve@x.com>"}}), "to[1]", "", "to[1]: contains a control character"},
		{"C1 in display name", with(t, map[string]any{"cc": []string{"Eve\u0085 <eve@x.com>"}}), "cc[0]", "", "control character"},
		{"five headers", with(t, map[string]any{"headers": map[string]string{"X-A": "1", "X-B": "2", "X-C": "3", "X-D": "4", "X-E": "5"}}), "headers", "", "5 headers, over the limit of 4"},
		{"X-MS-Exchange header", with(t, map[string]any{"headers": map[string]string{"X-MS-Exchange-Organization-SCL": "-1"}}), `headers["X-MS-Exchange-Organization-SCL"]`, "", "reserved"},
		{"x-ms-exchange header", with(t, map[string]any{"headers": map[string]string{"x-ms-exchange-foo": "1"}}), `headers["x-ms-exchange-foo"]`, "", "reserved"},
		{"null header value", []byte(`{"from":"a@x.com","to":["b@x.com"],"text":"t","headers":{"X-A":null}}`), `headers["X-A"]`, "", "null"},
		{"null metadata value", []byte(`{"from":"a@x.com","to":["b@x.com"],"text":"t","metadata":{"k":null}}`), `metadata["k"]`, "", "null"},
		{"empty id", with(t, map[string]any{"id": ""}), "id", "", "is empty"},
		{"field name case", with(t, map[string]any{"Subject": "s"}), "Subject", "", "did you mean subject?"},
		{"attachment field name case", att(map[string]any{"name": "a", "objectref": "r"}).bytes(t), "attachments[0].objectref", "", "did you mean objectRef?"},
		{"lower-case timestamp", with(t, map[string]any{"notBefore": "2026-11-30t04:00:00z"}), "notBefore", "", "RFC 3339"},
		{"space in timestamp", with(t, map[string]any{"expiresAt": "2026-11-30 04:00:00Z"}), "expiresAt", "", "RFC 3339"},
		{"too many metadata keys", with(t, map[string]any{"metadata": metadata(33, 4, 1)}), "metadata", "", "33 keys"},
		{"metadata key too long", with(t, map[string]any{"metadata": metadata(1, 65, 1)}), "metadata[", "", "key is 65 characters"},
		{"metadata value too long", with(t, map[string]any{"metadata": metadata(1, 4, 1025)}), `metadata["000k"]`, "", "value is 1025 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := DecodeJob(tt.body)
			if err == nil {
				t.Fatalf("DecodeJob accepted %+v", j)
			}
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("error %T %v, want *InvalidError", err, err)
			}
			if !strings.HasPrefix(ie.Field, tt.field) || (tt.field != "metadata[" && ie.Field != tt.field) {
				t.Errorf("Field = %q, want %q (%v)", ie.Field, tt.field, err)
			}
			want := tt.reason
			if want == "" {
				want = ReasonInvalidJob
			}
			if ie.Reason != want {
				t.Errorf("Reason = %q, want %q", ie.Reason, want)
			}
			msg := err.Error()
			if tt.field != "" && !strings.HasPrefix(msg, ie.Field+": ") {
				t.Errorf("message %q does not name the field %q", msg, ie.Field)
			}
			if !strings.Contains(msg, tt.msg) {
				t.Errorf("message %q does not contain %q", msg, tt.msg)
			}
			if len(msg) > 400 {
				t.Errorf("message is %d bytes: %.100s…", len(msg), msg)
			}
			if strings.ContainsAny(msg, "\r\n\x00") {
				t.Errorf("message carries raw control characters: %q", msg)
			}
		})
	}
}

type obj map[string]any

func (o obj) bytes(t testing.TB) []byte { return with(t, o) }

func TestErrorMessagesDoNotEchoLongInput(t *testing.T) {
	long := strings.Repeat("x", 5000)
	for _, b := range [][]byte{
		with(t, map[string]any{"to": []string{long}}),
		with(t, map[string]any{"id": long}),
		with(t, map[string]any{"importance": long}),
		with(t, map[string]any{"headers": map[string]string{long: "v"}}),
		with(t, map[string]any{long: 1}),
	} {
		_, err := DecodeJob(b)
		if err == nil {
			t.Fatal("accepted")
		}
		if n := strings.Count(err.Error(), "x"); n > 100+len("x") && !strings.HasPrefix(err.Error(), long) {
			t.Errorf("message echoes %d bytes of input: %.120s", n, err.Error())
		}
	}
}

// TestErrorMessagesCarryNoPersonalData: a validation error names the field
// that failed, never the address, display name or other value in it. These
// messages reach logs, status events and dead-letter records.
func TestErrorMessagesCarryNoPersonalData(t *testing.T) {
	const secret = "Ann Secretname"
	const addr = "ann.secret@private.example"
	for name, b := range map[string][]byte{
		"bad to":           with(t, map[string]any{"to": []string{"x@y.com", "x@y.com", secret + " <" + addr + ">>"}}),
		"bad cc":           with(t, map[string]any{"cc": []string{addr + "@"}}),
		"CRLF bcc":         with(t, map[string]any{"bcc": []string{secret + "\r\n <" + addr + ">"}}),
		"ESC from":         with(t, map[string]any{"from": secret + "\x1b <" + addr + ">"}),
		"encoded CRLF":     with(t, map[string]any{"to": []string{"=?utf-8?q?" + strings.ReplaceAll(secret, " ", "_") + "=0D=0A?= <" + addr + ">"}}),
		"bad replyTo":      with(t, map[string]any{"replyTo": []string{secret}}),
		"id is an address": with(t, map[string]any{"id": addr}),
		"importance":       with(t, map[string]any{"importance": secret}),
		"subject":          with(t, map[string]any{"subject": secret + "\n" + addr}),
		"header value":     with(t, map[string]any{"headers": map[string]string{"X-A": addr + "\r\n"}}),
	} {
		_, err := DecodeJob(b)
		if err == nil {
			t.Fatalf("%s: accepted", name)
		}
		for _, pii := range []string{"Secretname", "ann.secret", "private.example"} {
			if strings.Contains(err.Error(), pii) {
				t.Errorf("%s: message %q carries %q", name, err, pii)
			}
		}
	}
}

func TestValidateHeaderErrorIsStable(t *testing.T) {
	j := &Job{From: "a@x.com", To: []string{"b@x.com"}, Text: "t",
		Headers: map[string]string{"Bcc": "x", "Cc": "y", "Date": "z", "From": "w"}}
	for i := 0; i < 20; i++ {
		var ie *InvalidError
		if err := j.Validate(); !errors.As(err, &ie) || ie.Field != `headers["Bcc"]` {
			t.Fatalf("Validate = %v, want the first bad header by name", err)
		}
	}
}

func TestParseAddress(t *testing.T) {
	for _, tt := range []struct{ in, name, addr string }{
		{"a@x.com", "", "a@x.com"},
		{"Name <a@x.com>", "Name", "a@x.com"},
		{`"Doe, Jane" <j@x.com>`, "Doe, Jane", "j@x.com"},
		{"=?utf-8?q?J=C3=B6rg?= <j@x.com>", "Jörg", "j@x.com"},
	} {
		name, addr, err := ParseAddress(tt.in)
		if err != nil || name != tt.name || addr != tt.addr {
			t.Errorf("ParseAddress(%q) = %q, %q, %v", tt.in, name, addr, err)
		}
	}
	for _, in := range []string{"", "a", "a@x.com\r\n", "A\n <a@x.com>", "a@x.com, b@x.com", "a\x00@x.com", "=?utf-8?q?a=0Ab?= <a@x.com>"} {
		if _, _, err := ParseAddress(in); err == nil {
			t.Errorf("ParseAddress(%q) accepted", in)
		}
	}
}

func TestValidJobID(t *testing.T) {
	for _, id := range []string{"a", "A-z_09", strings.Repeat("x", 128), NewJobID()} {
		if !ValidJobID(id) {
			t.Errorf("ValidJobID(%q) = false", id)
		}
	}
	for _, id := range []string{"", "a.b", "a b", "a*", "a>", "ü", strings.Repeat("x", 129), "a/b"} {
		if ValidJobID(id) {
			t.Errorf("ValidJobID(%q) = true", id)
		}
	}
}

func TestResolveJobID(t *testing.T) {
	h := func(kv ...string) func(string) string {
		out := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return func(k string) string { return out[k] }
	}
	for _, tt := range []struct {
		name string
		job  *Job
		h    func(string) string
		want string
	}{
		{"body id wins", &Job{ID: "body"}, h(HeaderJobID, "hdr", HeaderMsgID, "msg"), "body"},
		{"Mail-Job-Id", &Job{}, h(HeaderJobID, "hdr", HeaderMsgID, "msg"), "hdr"},
		{"Nats-Msg-Id", &Job{}, h(HeaderMsgID, "msg"), "msg"},
		{"invalid Nats-Msg-Id", &Job{}, h(HeaderMsgID, "a.b"), "s42"},
		{"nothing", nil, nil, "s42"},
	} {
		if got := ResolveJobID(tt.job, tt.h, 42); got != tt.want {
			t.Errorf("%s: ResolveJobID = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func BenchmarkDecodeJob(b *testing.B) {
	body := []byte(`{"id":"order-42","from":"Billing <billing@contoso.com>","to":["a@x.com","Bob <bob@y.org>"],` +
		`"subject":"Your invoice","text":"Hello, please find your invoice attached.","html":"<p>Hello</p>",` +
		`"headers":{"X-Order":"42"},"metadata":{"order":"42","tenant":"t1"}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeJob(body); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMIMEJobTooLarge: an inline MIME message over what one Graph request
// carries (3 MiB decoded, 4 MiB in base64) is message_too_large, naming the field.
func TestMIMEJobTooLarge(t *testing.T) {
	big := mimeB64(MaxMIMEBytes + 1)
	_, err := DecodeJob(with(t, map[string]any{"text": nil, "subject": nil, "mime": map[string]any{"contentBase64": big}}))
	var ie *InvalidError
	if !errors.As(err, &ie) || ie.Reason != ReasonMessageTooLarge || ie.Field != "mime.contentBase64" {
		t.Fatalf("err = %v, want message_too_large on mime.contentBase64", err)
	}
	ok := mimeB64(MaxMIMEBytes)
	if _, err := DecodeJob(with(t, map[string]any{"text": nil, "subject": nil, "mime": map[string]any{"contentBase64": ok}})); err != nil {
		t.Fatalf("MaxMIMEBytes exactly: %v", err)
	}
}
