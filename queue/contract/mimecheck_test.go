package contract

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestParseAddressList: RFC 5322 section 4.4 asks a parser to accept the
// obsolete syntax; Exchange also takes an unquoted "@" in a display name and
// quoted local parts (issue 20 item 4); encoded names in any charset decode
// (issue 20 item 2).
func TestParseAddressList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "name|addr" joined by ";"
	}{
		{`a@x.com`, `|a@x.com`},
		{`Ann <a@x.com>, b@y.org`, `Ann|a@x.com;|b@y.org`},
		{`John Q. Public <JQP@x.com>`, `John Q. Public|JQP@x.com`},
		{`joe@x.com <joe@x.com>`, `joe@x.com|joe@x.com`},
		{`"john doe"@example.com`, `|"john doe"@example.com`},
		{`"john"@example.com`, `|john@example.com`},
		{`<@relay1.example,@relay2.example:j@x.com>`, `|j@x.com`},
		{`Pete(A nice \) chap) <pete(his account)@silly.test(his host)>`, `Pete|pete@silly.test`},
		{"j (c) . doe @ x . com", `|j.doe@x.com`},
		{"Mary Smith <mary@x.test>,\r\n jdoe@example.org", `Mary Smith|mary@x.test;|jdoe@example.org`},
		{`undisclosed-recipients:;`, ``},
		{`A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;, z@x.com`, `Ed Jones|c@a.test;|joe@where.test;John|jdoe@one.test;|z@x.com`},
		{`a@x.com,, ,b@x.com`, `|a@x.com;|b@x.com`},
		{`a@[192.0.2.1]`, `|a@[192.0.2.1]`},
		{`Jörg <jörg@bücher.example>`, `Jörg|jörg@bücher.example`},
		{`=?Shift_JIS?B?jlKTY5G+mFk=?= <a@x.com>`, `山田太郎|a@x.com`},
		{`=?windows-1252?B?Wm/rIE38bGxlcg==?= <a@x.com>`, `Zoë Müller|a@x.com`},
		{`=?ISO-2022-JP?B?GyRCOzNFREJATzobKEI=?= <a@x.com>`, `山田太郎|a@x.com`},
		{`=?koi8-r?B?6dfBziDwxdTSz9c=?= <a@x.com>`, `Иван Петров|a@x.com`},
		{`=?gb2312?B?zfXQocP3?= <a@x.com>`, `王小明|a@x.com`},
		{`=?utf-8?q?a?= =?utf-8?q?b?= <a@x.com>`, `ab|a@x.com`},
		{`=?x-unknown?q?a?= <a@x.com>`, `=?x-unknown?q?a?=|a@x.com`},
	} {
		got, err := ParseAddressList(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		var parts []string
		for _, m := range got {
			parts = append(parts, m.Name+"|"+m.Addr)
		}
		if s := strings.Join(parts, ";"); s != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, s, tc.want)
		}
	}
	for _, in := range []string{`"" <>`, `<>`, `a@`, `@x.com`, `a.@x.com`, `"a@x.com`, `(a@x.com`, `<a@x.com`,
		`a@x.com>`, `Ann <a@x.com> trailing`, `a@x.com b@x.com`, "a\x00b@x.com", `a@x..com`} {
		if got, err := ParseAddressList(in); err == nil {
			t.Errorf("%q: accepted as %+v", in, got)
		}
	}
}

func TestCanonicalAddrSpec(t *testing.T) {
	for in, want := range map[string]string{
		"a@x.com": "a@x.com", "john doe@example.com": `"john doe"@example.com`, `a"b@x.com`: `"a\"b"@x.com`,
		"a@[192.0.2.1]": "a@[192.0.2.1]",
	} {
		if got, err := CanonicalAddrSpec(in); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "a", "@x.com", "a@", "a@x..com", "a@x com", "a\r\n@x.com"} {
		if got, err := CanonicalAddrSpec(in); err == nil {
			t.Errorf("%q: accepted as %q", in, got)
		}
	}
}

// mimeJob is a MIME job from billing@contoso.com to the given recipients
// with msg (LF line ends become CRLF) inline.
func mimeJob(t *testing.T, to []string, msg string) []byte {
	t.Helper()
	b64 := base64.StdEncoding.EncodeToString([]byte(strings.ReplaceAll(msg, "\n", "\r\n")))
	return with(t, map[string]any{"subject": nil, "text": nil, "to": to, "mime": map[string]any{"contentBase64": b64}})
}

// TestMIMEHeaderRules: one validation of a MIME message whatever door it
// came through (issue 17 item 6), every field checked, not the first (issue
// 20 item 8). Errors name the header, never an address.
func TestMIMEHeaderRules(t *testing.T) {
	var many []string
	for i := range 900 {
		many = append(many, fmt.Sprintf("victim%d@example.net", i))
	}
	for _, tc := range []struct {
		name   string
		to     []string
		msg    string
		reason Reason // "" = valid
		want   string
	}{
		{"plain", []string{"a@x.com"}, "From: Billing <billing@contoso.com>\nTo: a@x.com\nSubject: hi\n\nbody\n", "", ""},
		{"issue 17: 900 header recipients, 1 in the job, ops's From, SCL -1", []string{"victim0@example.net"},
			"From: ops@contoso.com\nTo: " + strings.Join(many, ", ") + "\nX-MS-Exchange-Organization-SCL: -1\n\nx\n",
			ReasonSenderNotAllowed, `the "From" header is not the job's from mailbox`},
		{"900 header recipients, 1 in the job", []string{"victim0@example.net"},
			"From: billing@contoso.com\nTo: " + strings.Join(many, ", ") + "\n\nx\n", ReasonInvalidJob, `the "To" header lists an address that is not among the job's`},
		{"From another profile's mailbox", []string{"a@x.com"}, "From: ops@contoso.com\nTo: a@x.com\n\nx\n", ReasonSenderNotAllowed, `the "From" header is not the job's from mailbox`},
		{"second From", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nFrom: ops@contoso.com\n\nx\n", ReasonSenderNotAllowed, "more than one From:"},
		{"second From, same mailbox", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nfrom: billing@contoso.com\n\nx\n", ReasonSenderNotAllowed, "more than one From:"},
		{"two mailboxes in From", []string{"a@x.com"}, "From: billing@contoso.com, ops@contoso.com\nTo: a@x.com\n\nx\n", ReasonSenderNotAllowed, "names 2 mailboxes"},
		{"Sender of another profile", []string{"a@x.com"}, "From: billing@contoso.com\nSender: ops@contoso.com\nTo: a@x.com\n\nx\n", ReasonSenderNotAllowed, `the "Sender" header`},
		{"second Sender", []string{"a@x.com"}, "From: billing@contoso.com\nSender: billing@contoso.com\nTo: a@x.com\nSENDER: ops@contoso.com\n\nx\n", ReasonSenderNotAllowed, `the "SENDER" header`},
		{"Resent-From of another profile", []string{"a@x.com"}, "From: billing@contoso.com\nResent-From: ops@contoso.com\nTo: a@x.com\n\nx\n", ReasonSenderNotAllowed, `"Resent-From"`},
		{"second To beyond the job", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nTo: other@evil.example\n\nx\n", ReasonInvalidJob, `the "To" header lists`},
		{"second Cc beyond the job", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nCc: a@x.com\nCc: other@evil.example\n\nx\n", ReasonInvalidJob, `the "Cc" header lists`},
		{"Bcc beyond the job", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nBcc: other@evil.example\n\nx\n", ReasonInvalidJob, `the "Bcc" header lists`},
		{"Resent-To beyond the job", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nResent-To: other@evil.example\n\nx\n", ReasonInvalidJob, `the "Resent-To" header lists`},
		{"folded To beyond the job", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com,\n other@evil.example\n\nx\n", ReasonInvalidJob, `the "To" header lists`},
		{"job recipient missing from the headers", []string{"a@x.com", "b@x.com"}, "From: billing@contoso.com\nTo: a@x.com\n\nx\n", ReasonInvalidJob, "to[1]: is not in the message's To, Cc or Bcc"},
		{"no From: sent as the mailbox", []string{"a@x.com"}, "To: a@x.com\n\nx\n", "", ""},
		{"Reply-To <>", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nReply-To: \"Nobody\" <>\n\nx\n", ReasonInvalidJob, `the "Reply-To" header is not a list`},
		{"X-Forefront-Antispam-Report", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nX-Forefront-Antispam-Report: SFV:SKN\n\nx\n", ReasonInvalidJob, "reserved"},
		{"x-microsoft-antispam", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nx-microsoft-antispam: BCL:0\n\nx\n", ReasonInvalidJob, "reserved"},
		{"Authentication-Results is cosmetic", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nAuthentication-Results: mx.example; dmarc=pass\n\nx\n", "", ""},
		{"lower-case x-ms-exchange-organization-", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\nx-ms-exchange-organization-authas: Internal\n\nx\n", ReasonInvalidJob, "reserved"},
		{"Received is kept", []string{"a@x.com"}, "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\nFrom: billing@contoso.com\nTo: a@x.com\n\nx\n", "", ""},
		{"Shift_JIS display name of the approved mailbox", []string{"a@x.com"}, "From: =?Shift_JIS?B?jlKTY5G+mFk=?= <billing@contoso.com>\nTo: a@x.com\n\nx\n", "", ""},
		{"obsolete syntax and a group", []string{"a@x.com", `"john doe"@x.com`}, "From: Billing Dept. <billing(dept)@contoso.com>\nTo: team: a @ x.com, \"john doe\"@x.com;\n\nx\n", "", ""},
		{"header recipients in another case", []string{"A@X.com"}, "From: BILLING@contoso.com\nTo: a@x.COM\n\nx\n", "", ""},
		{"bare CR hiding a From", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\rFrom: ops@contoso.com\n\nx\n", ReasonInvalidJob, "header line 2 holds a bare CR"},
		{"NUL in the header", []string{"a@x.com"}, "From: billing@contoso.com\nTo: a@x.com\x00\n\nx\n", ReasonInvalidJob, "header line 2 holds a bare CR or a NUL"},
		{"mbox From_ line", []string{"a@x.com"}, "From billing@contoso.com Mon Jan  1 00:00:00 2024\nFrom: billing@contoso.com\nTo: a@x.com\n\nx\n", ReasonInvalidJob, "header line 1 is not a field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeJob(mimeJob(t, tc.to, tc.msg))
			// The same job built from the message's bytes (InlineMIME, as
			// the SMTP door does), whose header is not decoded back: the
			// same verdict.
			j := &Job{ID: "x", From: "billing@contoso.com", To: tc.to, MIME: InlineMIME([]byte(strings.ReplaceAll(tc.msg, "\n", "\r\n")))}
			if ierr := j.Validate(); fmt.Sprint(ierr) != fmt.Sprint(err) {
				t.Fatalf("InlineMIME: %v, decoded: %v", ierr, err)
			}
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var ie *InvalidError
			if !errors.As(err, &ie) || ie.Reason != tc.reason || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v (%#v), want reason %s with %q", err, ie, tc.reason, tc.want)
			}
			for _, pd := range []string{"ops@", "other@", "victim", "billing@", "a@x", "Nobody"} {
				if strings.Contains(err.Error(), pd) {
					t.Fatalf("error text %q names an address or a name (%q)", err, pd)
				}
			}
		})
	}
}

// TestInlineMIMEChanged: a ContentBase64 changed after InlineMIME is
// validated as it is, not as the message InlineMIME was given.
func TestInlineMIMEChanged(t *testing.T) {
	j := &Job{ID: "x", From: "billing@contoso.com", To: []string{"a@x.com"},
		MIME: InlineMIME([]byte("From: billing@contoso.com\r\nTo: a@x.com\r\n\r\nx\r\n"))}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	j.MIME.ContentBase64 = base64.StdEncoding.EncodeToString([]byte("From: ops@contoso.com\r\nTo: a@x.com\r\n\r\nx\r\n"))
	var ie *InvalidError
	if err := j.Validate(); !errors.As(err, &ie) || ie.Reason != ReasonSenderNotAllowed {
		t.Fatalf("changed ContentBase64: %v, want the other From refused", err)
	}
	j.MIME.ContentBase64 = "not base64!"
	if err := j.Validate(); err == nil {
		t.Fatal("changed ContentBase64 that is not base64: accepted")
	}
}

// FuzzParseAddressList: no panic, and a canonical address parses back to
// itself (the door builds jobs from canonical forms, which the worker's check
// then parses again).
func FuzzParseAddressList(f *testing.F) {
	for _, s := range []string{`a@x.com`, `"john doe"@x.com`, `A (c) <@r:a . b @ x . com>`, `g:a@x,b@y;`, `=?utf-8?q?=E2=9C=93?= <a@x>`,
		`a@[1.2.3.4]`, `"a\"b"@x`, `((a)) a@x`, `x@y <z@w>`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mbs, err := ParseAddressList(s)
		if err != nil {
			return
		}
		for _, m := range mbs {
			again, err := ParseAddressList(m.Addr)
			if err != nil || len(again) != 1 || again[0].Addr != m.Addr {
				t.Fatalf("%q: canonical %q parses to %+v %v", s, m.Addr, again, err)
			}
			if c, err := CanonicalAddrSpec(unquoteLocal(m.Addr)); err != nil || c != m.Addr {
				t.Fatalf("%q: canonical %q through the envelope form: %q %v", s, m.Addr, c, err)
			}
		}
	})
}

// unquoteLocal is an address as go-smtp hands it over: the local part
// unquoted.
func unquoteLocal(a string) string {
	at := strings.LastIndexByte(a, '@')
	local := a[:at]
	if strings.HasPrefix(local, `"`) {
		local = strings.NewReplacer(`\"`, `"`, `\\`, `\`).Replace(local[1 : len(local)-1])
	}
	return local + a[at:]
}

// BenchmarkCheckMIMEHeader: the check a MIME job now gets at decode, on a
// typical message and on one with 500 recipients.
func BenchmarkCheckMIMEHeader(b *testing.B) {
	for _, n := range []int{1, 500} {
		var to []string
		for i := range n {
			to = append(to, fmt.Sprintf("Customer %d <c%d@example.com>", i, i))
		}
		msg := []byte("Received: from app.contoso.com by mx; Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: Billing <billing@contoso.com>\r\nTo: " +
			strings.Join(to, ",\r\n ") + "\r\nSubject: =?utf-8?q?Invoice_=E2=9C=93?=\r\nMessage-ID: <1@contoso.com>\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: text/plain; charset=utf-8\r\n\r\n" + strings.Repeat("body line\r\n", 1000))
		j := &Job{From: "billing@contoso.com", To: to}
		b.Run(fmt.Sprintf("%d recipients", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := j.CheckMIMEHeader(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
