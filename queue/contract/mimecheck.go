package contract

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

// MaxMIMEHeaderBytes caps the header section of a MIME message: Exchange
// Online's message header size limit is 256 KB ("Exchange Online limits",
// message limits: https://learn.microsoft.com/en-us/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#message-limits).
const MaxMIMEHeaderBytes = 256 << 10

// HeaderField is one field of a MIME header section: its name as written
// (trailing white space of the obsolete "Name :" form removed) and its value
// unfolded, line breaks removed, leading white space trimmed.
type HeaderField struct {
	Name, Value string
}

// HeaderSection returns the header section of a MIME message: everything
// before the first empty line (CRLF or bare LF), or the whole message when
// there is none.
func HeaderSection(msg []byte) []byte {
	for off := 0; off < len(msg); {
		if msg[off] == '\n' || (msg[off] == '\r' && off+1 < len(msg) && msg[off+1] == '\n') {
			return msg[:off]
		}
		end := bytes.IndexByte(msg[off:], '\n')
		if end < 0 {
			return msg
		}
		off += end + 1
	}
	return msg
}

// ParseHeaderSection splits a header section into its fields, in order. A
// line that is neither a field ("name: value", name printable US-ASCII
// without colon) nor the continuation of one is an error naming its line
// number.
func ParseHeaderSection(section []byte) ([]HeaderField, error) {
	var out []HeaderField
	valueStart := -1 // offset of the current field's value
	flush := func(end int) {
		if valueStart >= 0 {
			v := section[valueStart:end]
			if bytes.ContainsAny(v, "\r\n") { // unfold in one pass
				v = bytes.ReplaceAll(bytes.ReplaceAll(v, []byte("\r"), nil), []byte("\n"), nil)
			}
			out[len(out)-1].Value = strings.TrimLeft(string(v), " \t")
		}
	}
	line := 0
	for off := 0; off < len(section); {
		line++
		end := bytes.IndexByte(section[off:], '\n')
		next := len(section)
		if end >= 0 {
			next = off + end + 1
		}
		l := section[off:next]
		// A bare CR or a NUL: some parsers end a line there, others do not,
		// so a field could hide from this check (RFC 5322 allows neither).
		if c := bytes.IndexByte(l, '\r'); (c >= 0 && c != len(l)-2) || bytes.IndexByte(l, 0) >= 0 {
			return nil, fmt.Errorf("header line %d holds a bare CR or a NUL", line)
		}
		if len(l) > 0 && isWSP(l[0]) {
			if len(out) == 0 {
				return nil, fmt.Errorf("header line %d: a continuation line before any field", line)
			}
			off = next
			continue
		}
		flush(off)
		colon := bytes.IndexByte(l, ':')
		name := ""
		if colon >= 0 {
			name = strings.TrimRight(string(l[:colon]), " \t") // obs-optional: "Subject :"
		}
		if colon < 0 || name == "" || !fieldName(name) {
			return nil, fmt.Errorf("header line %d is not a field (name: value)", line)
		}
		out = append(out, HeaderField{Name: name})
		valueStart = off + colon + 1
		off = next
	}
	flush(len(section))
	return out, nil
}

func fieldName(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// ReservedHeader says why a header field name is reserved, or "" when a
// client may set it. The rules, for JSON headers and MIME messages alike:
//
//   - X-MS-Exchange-* (Organization-*, Forest-*, Transport-*, …): Exchange's
//     own fields, which carry decisions such as the spam confidence level
//     (X-MS-Exchange-Organization-SCL); Exchange's header firewall removes
//     them from messages of untrusted sources
//     (https://learn.microsoft.com/en-us/exchange/mail-flow/mail-routing/header-firewall),
//     so they would not arrive as submitted, and a client that sets them is
//     forging a verdict;
//   - X-Forefront-Antispam-Report* and X-Microsoft-Antispam*: the verdicts
//     Exchange Online Protection stamps on every message
//     (https://learn.microsoft.com/en-us/defender-office-365/message-headers-eop-mdo).
//
// Kept, because Exchange decides nothing on them and a receiver computes its
// own: Received and Resent-* (trace fields; Exchange adds its own Received
// beside them; Resent-* addresses are checked as senders and recipients by
// CheckMIMEHeader), DKIM-Signature and ARC-* (verified cryptographically by
// receivers), and Authentication-Results, which a receiver must not trust
// unless it carries the receiver's own authserv-id, and which it removes
// when it does (RFC 8601 section 5): a forged one is cosmetic, and resent
// real-world mail carries them.
func ReservedHeader(name string) string {
	switch {
	case hasPrefixFold(name, "x-ms-exchange-"):
		return "Exchange Online owns the X-MS-Exchange- headers (its header firewall removes them from client submissions)"
	case hasPrefixFold(name, "x-forefront-antispam-report"), hasPrefixFold(name, "x-microsoft-antispam"):
		return "Exchange Online Protection stamps its own anti-spam verdict"
	}
	return ""
}

// fieldRole is what CheckMIMEHeader makes of a field.
type fieldRole uint8

const (
	roleOther     fieldRole = iota
	roleFrom                // From: exactly one, one mailbox, the job's from
	roleSender              // Sender, Resent-From, Resent-Sender: the job's from
	roleRecipient           // To, Cc, Bcc, Resent-To/Cc/Bcc: the job's recipients
	roleReplyTo             // Reply-To: valid mailboxes
)

func roleOf(name string) fieldRole {
	is := func(names ...string) bool {
		for _, n := range names {
			if equalLowerASCII(name, n) {
				return true
			}
		}
		return false
	}
	switch {
	case is("from"):
		return roleFrom
	case is("sender", "resent-from", "resent-sender"):
		return roleSender
	case is("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"):
		return roleRecipient
	case is("reply-to"):
		return roleReplyTo
	}
	return roleOther
}

// hasPrefixFold is strings.HasPrefix(strings.ToLower(s), prefix) for a
// lower-case ASCII prefix, without the copy (it runs for every header field
// of every MIME job).
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && equalLowerASCII(s[:len(prefix)], prefix)
}

// equalLowerASCII is strings.ToLower(s) == lower for a lower-case ASCII
// lower: only A-Z fold (not strings.EqualFold's Unicode folds, such as
// U+017F to s).
func equalLowerASCII(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// CheckMIMEHeader checks the header section of a MIME job's message (the
// bytes before the first empty line; the whole message will do) against the
// job, whatever door the job came through:
//
//   - every From:, Sender:, Resent-From: and Resent-Sender: field, each
//     occurrence, names only the job's from mailbox (the profile's approved
//     mailbox, which the worker checks) — else ReasonSenderNotAllowed; From:
//     appears at most once, with one mailbox (a message without one is sent
//     as the mailbox: Exchange fills it in);
//   - the addresses of every To:, Cc:, Bcc: and Resent-To/Cc/Bcc: field are
//     the job's to+cc+bcc and the reverse (Graph sends to the message's
//     header recipients: the job's lists are what the limits and the daily
//     recipient budget count);
//   - Reply-To: holds only valid mailboxes (not <>);
//   - no reserved field (ReservedHeader);
//   - at most MaxMIMEHeaderBytes.
//
// The error is an *InvalidError whose message names the header field and
// the job field, never an address or a display name.
func (j *Job) CheckMIMEHeader(msg []byte) error {
	section := HeaderSection(msg)
	if len(section) > MaxMIMEHeaderBytes {
		return &InvalidError{Field: "mime", Reason: ReasonMessageTooLarge,
			Rule: fmt.Sprintf("header section of %d bytes, over Exchange Online's message header limit of %d", len(section), MaxMIMEHeaderBytes)}
	}
	fields, err := ParseHeaderSection(section)
	if err != nil {
		return invalid("mime", "malformed message: "+err.Error())
	}
	_, from, err := ParseAddress(j.From)
	if err != nil {
		return invalid("from", "not an RFC 5322 mailbox")
	}
	want := map[string]string{} // lower-case canonical address -> job field
	var order []string
	for _, l := range [...]struct {
		name string
		list []string
	}{{"to", j.To}, {"cc", j.Cc}, {"bcc", j.Bcc}} {
		for i, a := range l.list {
			mbs, err := ParseAddressList(a)
			if err != nil || len(mbs) != 1 {
				return invalid(l.name+"["+strconv.Itoa(i)+"]", "not an RFC 5322 mailbox")
			}
			if k := strings.ToLower(mbs[0].Addr); want[k] == "" {
				want[k] = l.name + "[" + strconv.Itoa(i) + "]"
				order = append(order, k)
			}
		}
	}
	fromKey := ""
	if mbs, err := ParseAddressList(from); err == nil && len(mbs) == 1 {
		fromKey = strings.ToLower(mbs[0].Addr)
	}
	got := map[string]bool{}
	froms := 0 // From: fields
	for _, f := range fields {
		if why := ReservedHeader(f.Name); why != "" {
			return invalid("mime", "header "+Quote(f.Name)+" is reserved: "+why)
		}
		role := roleOf(f.Name)
		if role == roleOther {
			continue
		}
		name := Quote(f.Name) // for the errors below; quoted only for the few fields checked
		mbs, err := ParseAddressList(f.Value)
		if err != nil {
			return invalid("mime", "the "+name+" header is not a list of RFC 5322 addresses")
		}
		switch role {
		case roleFrom:
			if froms++; froms > 1 {
				return &InvalidError{Field: "mime", Reason: ReasonSenderNotAllowed,
					Rule: "more than one From: header (RFC 5322 allows one): a message is sent only as the job's from mailbox"}
			}
			if len(mbs) != 1 {
				return &InvalidError{Field: "mime", Reason: ReasonSenderNotAllowed,
					Rule: fmt.Sprintf("the From: header names %d mailboxes: it must name the job's from mailbox, and only it", len(mbs))}
			}
			fallthrough
		case roleSender:
			if len(mbs) == 0 {
				return invalid("mime", "the "+name+" header names no mailbox")
			}
			for _, mb := range mbs {
				if strings.ToLower(mb.Addr) != fromKey {
					return &InvalidError{Field: "mime", Reason: ReasonSenderNotAllowed,
						Rule: "the " + name + " header is not the job's from mailbox (the profile's approved mailbox): a message is sent only as that mailbox"}
				}
			}
		case roleRecipient:
			for _, mb := range mbs {
				k := strings.ToLower(mb.Addr)
				if want[k] == "" {
					return invalid("mime", "the "+name+" header lists an address that is not among the job's to, cc and bcc (Graph sends to the message's header recipients; the job's lists are what the recipient limits count)")
				}
				got[k] = true
			}
		case roleReplyTo:
			if len(mbs) == 0 {
				return invalid("mime", "the "+name+" header names no mailbox")
			}
		}
	}
	for _, k := range order {
		if !got[k] {
			return invalid(want[k], "is not in the message's To, Cc or Bcc header (Graph sends only to the message's header recipients)")
		}
	}
	return nil
}

// mimeHeaderFromBase64 decodes the start of a valid base64 MIME message up to
// the end of its header section (at most MaxMIMEHeaderBytes and one chunk).
func mimeHeaderFromBase64(s string) []byte {
	const chunk = 4 << 10 // base64 bytes, a multiple of 4
	var out []byte
	for off := 0; off < len(s); off += chunk {
		end := min(off+chunk, len(s))
		buf := make([]byte, base64.StdEncoding.DecodedLen(end-off))
		n, err := base64.StdEncoding.Decode(buf, []byte(s[off:end]))
		if err != nil {
			return out
		}
		start := max(len(out)-3, 0)
		out = append(out, buf[:n]...)
		if bytes.Contains(out[start:], []byte("\n\n")) || bytes.Contains(out[start:], []byte("\n\r\n")) ||
			bytes.HasPrefix(out, []byte("\n")) || bytes.HasPrefix(out, []byte("\r\n")) || len(out) > MaxMIMEHeaderBytes {
			return out
		}
	}
	return out
}
