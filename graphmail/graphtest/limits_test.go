package graphtest_test

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// TestMailboxMaxMessageSize: sendMail counts the message as Exchange does
// (attachments base64-encoded) against the mailbox's maximum message size,
// set per mailbox as Set-Mailbox -MaxSendSize does, and answers
// ErrorMessageSizeExceeded over it (microsoft-graph-docs-contrib#2561).
func TestMailboxMaxMessageSize(t *testing.T) {
	t.Parallel()
	small := "small@contoso.com"
	s := newServer(t, graphtest.Options{MailboxMaxMessageSize: map[string]int64{"Small@Contoso.com": 1 << 20}})
	tok := token(t, s)
	mail := simpleMail("a@example.com")
	// 800,000 bytes are 1,066,668 in base64: over 1 MB (1,048,576), under it as raw bytes.
	mail["message"].(map[string]any)["attachments"] = []map[string]any{{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": "f.bin",
		"contentBytes": base64.StdEncoding.EncodeToString(make([]byte, 800_000)),
	}}
	if r := send(t, s, tok, small, "j1", mail); r.status != http.StatusBadRequest || r.code != "ErrorMessageSizeExceeded" ||
		!strings.Contains(string(r.body), "The message exceeds the maximum supported size.") {
		t.Errorf("over the mailbox's 1 MB: %d %s %s", r.status, r.code, r.body)
	}
	if r := send(t, s, tok, mailbox, "j2", mail); r.status != http.StatusAccepted {
		t.Errorf("the default 35 MB mailbox: %d %s %s", r.status, r.code, r.body)
	}
	for _, o := range []graphtest.Options{{MaxMessageSize: 151 << 20}, {MailboxMaxMessageSize: map[string]int64{small: 0}}, {Cloud: "azure"}} {
		if _, err := graphtest.New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}
