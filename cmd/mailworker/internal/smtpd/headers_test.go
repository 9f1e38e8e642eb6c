package smtpd

import (
	"encoding/base64"
	"errors"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
)

// TestHeaderRulesEveryField: the door runs the worker's own check of the
// message at DATA (issue 20 items 5 and 8): every From:, Sender:, To: and Cc:
// field is checked, not the first; what the worker would refuse is refused
// here with a 5xx naming the problem, never an address.
func TestHeaderRulesEveryField(t *testing.T) {
	b := setup(t, Config{})
	c, err := b.dial(testPassword)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		rcpts []string
		msg   string
		want  string
	}{
		{"second From, foreign mailbox", []string{"ann@example.com"},
			"From: billing@contoso.com\nTo: ann@example.com\nFrom: other@contoso.com\n\nx\n", "550 5.7.1 The From: header"},
		{"Sender of another profile", []string{"ann@example.com"},
			"From: billing@contoso.com\nSender: other@contoso.com\nTo: ann@example.com\n\nx\n", `550 5.7.1 The From: header (and any Sender:) must be the MAIL FROM mailbox, and only it: mime: the "Sender" header`},
		{"Resent-To beyond the envelope", []string{"ann@example.com"},
			"From: billing@contoso.com\nTo: ann@example.com\nResent-To: eve@evil.example\n\nx\n", "550 5.7.1 Every Resent-To/Cc/Bcc address must also be a RCPT TO"},
		{"Reply-To <> (250 then dead-lettered before)", []string{"ann@example.com"},
			"From: billing@contoso.com\nTo: ann@example.com\nReply-To: \"Nobody\" <>\n\nx\n", `554 5.6.0 Message refused: mime: the "Reply-To" header is not a list of RFC 5322 addresses`},
		{"X-MS-Exchange-Organization-SCL", []string{"ann@example.com"},
			"From: billing@contoso.com\nTo: ann@example.com\nX-MS-Exchange-Organization-SCL: -1\n\nx\n", `554 5.6.0 Message refused: mime: header "X-MS-Exchange-Organization-SCL" is reserved`},
		{"X-Forefront-Antispam-Report", []string{"ann@example.com"},
			"From: billing@contoso.com\nTo: ann@example.com\nX-Forefront-Antispam-Report: SFV:SKN\n\nx\n", `554 5.6.0 Message refused: mime: header "X-Forefront-Antispam-Report" is reserved`},
		{"x-microsoft-antispam", []string{"ann@example.com"},
			"From: billing@contoso.com\nTo: ann@example.com\nx-microsoft-antispam: BCL:0;\n\nx\n", `554 5.6.0 Message refused: mime: header "x-microsoft-antispam" is reserved`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, text, err := send(c, testSender, tc.rcpts, crlf(tc.msg))
			got := strconv.Itoa(code) + " " + text
			var te *textproto.Error
			if errors.As(err, &te) {
				got = strconv.Itoa(te.Code) + " " + te.Msg
			} else if err != nil {
				got = err.Error()
			}
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("reply %q, want %q", got, tc.want)
			}
			for _, pd := range []string{"other@", "eve@", "ann@", "Nobody"} {
				if strings.Contains(got, pd) {
					t.Fatalf("reply names %q", pd)
				}
			}
			_ = c.Reset()
		})
	}
	for _, pd := range []string{"other@", "eve@", "ann@", "Nobody"} {
		if strings.Contains(b.logs.String(), pd) {
			t.Errorf("logs contain %q", pd)
		}
	}
}

// TestSecondToCcBeyondTheEnvelope: a second To: or Cc: field is read too;
// an address in it that is not an envelope recipient is not sent (a split
// transaction's other recipients are left out the same way), and the job
// lists exactly what the message goes to.
func TestSecondToCcBeyondTheEnvelope(t *testing.T) {
	b := setup(t, Config{})
	c, err := b.dial(testPassword)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{
		"From: billing@contoso.com\nTo: ann@example.com\nTo: eve@evil.example\n\nx\n",
		"From: billing@contoso.com\nTo: ann@example.com\nCc: ann@example.com\ncc: Eve <eve@evil.example>\n\nx\n",
	} {
		code, text, err := send(c, testSender, []string{"ann@example.com"}, crlf(msg))
		if err != nil || code != 250 {
			t.Fatalf("DATA: %d %s %v", code, text, err)
		}
		j := b.lastJob(testProfile)
		mime, _ := base64.StdEncoding.DecodeString(j.MIME.ContentBase64)
		if strings.Contains(string(mime), "eve@") || strings.Join(append(append(j.To, j.Cc...), j.Bcc...), ",") != "ann@example.com" {
			t.Fatalf("job to %v cc %v bcc %v, message:\n%s", j.To, j.Cc, j.Bcc, mime)
		}
		if err := j.Validate(); err != nil {
			t.Fatalf("the stored job does not pass the worker's check: %v", err)
		}
	}
}

// TestAcceptedSyntax: names in other charsets (issue 20 item 2), obsolete
// address syntax, an unquoted "@" in a display name and quoted local parts
// (item 4) are accepted, and the message is stored as it came.
func TestAcceptedSyntax(t *testing.T) {
	b := setup(t, Config{})
	c, err := b.dial(testPassword)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		rcpts []string
		msg   string
		to    string // the job's to, joined
	}{
		{"Shift_JIS name", []string{"ann@example.com"}, "From: =?Shift_JIS?B?jlKTY5G+mFk=?= <billing@contoso.com>\nTo: ann@example.com\n\nx\n", "ann@example.com"},
		{"windows-1252 name", []string{"ann@example.com"}, "From: =?windows-1252?B?Wm/rIE38bGxlcg==?= <billing@contoso.com>\nTo: ann@example.com\n\nx\n", "ann@example.com"},
		{"ISO-2022-JP name", []string{"ann@example.com"}, "From: =?ISO-2022-JP?B?GyRCOzNFREJATzobKEI=?= <billing@contoso.com>\nTo: ann@example.com\n\nx\n", "ann@example.com"},
		{"koi8-r name", []string{"ann@example.com"}, "From: =?koi8-r?B?6dfBziDwxdTSz9c=?= <billing@contoso.com>\nTo: ann@example.com\n\nx\n", "ann@example.com"},
		{"gb2312 name", []string{"ann@example.com"}, "From: =?gb2312?B?zfXQocP3?= <billing@contoso.com>\nTo: ann@example.com\n\nx\n", "ann@example.com"},
		{"unquoted @ in display names", []string{"ann@example.com"}, "From: billing@contoso.com <billing@contoso.com>\nTo: ann@example.com <ann@example.com>\n\nx\n", "ann@example.com"},
		{"obsolete syntax", []string{"ann@example.com", "bob@example.com"},
			"From: Billing Dept. <billing (dept) @ contoso . com>\nTo: <@relay.example:ann@example.com>, Bob (the boss) <bob @ example.com>\n\nx\n",
			"ann@example.com,bob@example.com"},
		{"quoted local part", []string{`"john doe"@example.com`}, "From: billing@contoso.com\nTo: \"john doe\"@example.com\n\nx\n", `"john doe"@example.com`},
		{"group", []string{"ann@example.com"}, "From: billing@contoso.com\nTo: Team: ann@example.com;\nCc: undisclosed-recipients:;\n\nx\n", "ann@example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, text, err := send(c, testSender, tc.rcpts, crlf(tc.msg))
			if err != nil || code != 250 {
				t.Fatalf("DATA: %d %s %v", code, text, err)
			}
			j := b.lastJob(testProfile)
			if got := strings.Join(j.To, ","); got != tc.to {
				t.Fatalf("job to %q, want %q", got, tc.to)
			}
			if mime, _ := base64.StdEncoding.DecodeString(j.MIME.ContentBase64); string(mime) != crlf(tc.msg) {
				t.Fatalf("stored message differs:\n%q", mime)
			}
			if err := j.Validate(); err != nil {
				t.Fatalf("the stored job does not validate: %v", err)
			}
		})
	}
}
