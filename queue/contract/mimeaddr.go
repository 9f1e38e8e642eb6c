package contract

import (
	"errors"
	"mime"
	"strings"

	"github.com/emersion/go-message/charset"
)

// Mailbox is one address of a MIME header field, as ParseAddressList reads
// it.
type Mailbox struct {
	// Name is the display name, RFC 2047 encoded words decoded (in any
	// charset github.com/emersion/go-message/charset knows; a word in an
	// unknown charset is kept as it was written).
	Name string
	// Addr is the addr-spec in its canonical form: comments, folding white
	// space and an obsolete route removed, the local part a dot-atom where it
	// can be one and a quoted string otherwise ("john doe"@example.com), the
	// domain as written. Compare two with strings.EqualFold.
	Addr string
}

// errAddress is the one error of ParseAddressList and CanonicalAddrSpec:
// their callers name the field, never its content (personal data).
var errAddress = errors.New("not an RFC 5322 address list")

// wordDecoder decodes RFC 2047 encoded words in every charset go-message
// knows (Shift_JIS, ISO-2022-JP, windows-1252, KOI8-R, GB2312, …), not only
// the UTF-8, US-ASCII and ISO-8859-1 of the standard library.
var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

// ParseAddressList parses the value of an address header field (From,
// Sender, Reply-To, To, Cc, Bcc, Resent-*) as RFC 5322 section 4.4 asks a
// parser to: it accepts the current syntax and the obsolete one (comments
// and folding white space between the words of an address, "John Q. Public"
// with an unquoted period, a route <@relay:user@example.com>, empty list
// members), groups ("undisclosed-recipients:;" yields nothing), quoted local
// parts and domain literals, UTF-8 (RFC 6532), and, as Exchange and most
// mail programs do, an unquoted "@" in a display name
// (user@example.com <user@example.com>). It refuses an empty address (<>),
// an unterminated quoted string, comment or angle bracket, and anything left
// over after an address. The error never quotes the value.
func ParseAddressList(v string) ([]Mailbox, error) {
	if name, addr, ok := parseSimpleAddress(v); ok {
		// The common shape (the jobs' own lists): already canonical.
		return []Mailbox{{Name: name, Addr: addr}}, nil
	}
	toks, err := tokenize(unfold(v))
	if err != nil {
		return nil, err
	}
	var out []Mailbox
	var elem []token
	inAngle, inGroup := false, false
	flush := func() error {
		if len(elem) == 0 {
			return nil // obs-mbox-list / obs-addr-list: empty members
		}
		mb, err := parseMailbox(elem)
		if err != nil {
			return err
		}
		out = append(out, mb)
		elem = elem[:0]
		return nil
	}
	for _, t := range toks {
		switch {
		case t.kind == tSpecial && t.s == "<" && !inAngle:
			inAngle = true
		case t.kind == tSpecial && t.s == ">" && inAngle:
			inAngle = false
		case inAngle:
		case t.kind == tSpecial && t.s == ",":
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		case t.kind == tSpecial && t.s == ":" && !inGroup:
			// A group: its display name is not an address.
			inGroup, elem = true, elem[:0]
			continue
		case t.kind == tSpecial && t.s == ";" && inGroup:
			if err := flush(); err != nil {
				return nil, err
			}
			inGroup = false
			continue
		}
		elem = append(elem, t)
	}
	if inAngle {
		return nil, errAddress
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// CanonicalAddrSpec returns the canonical form (see Mailbox.Addr) of an SMTP
// envelope address as go-smtp hands it over: local part unquoted, so
// `john doe@example.com` stands for <"john doe"@example.com>.
func CanonicalAddrSpec(s string) (string, error) {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 || hasCtl(s) {
		return "", errAddress
	}
	local, domain := s[:at], s[at+1:]
	dt, err := tokenize(domain)
	if err != nil {
		return "", errAddress
	}
	d, ok := domainOf(dt)
	if !ok {
		return "", errAddress
	}
	return quoteLocal(local) + "@" + d, nil
}

type tokenKind uint8

const (
	tAtom    tokenKind = iota // atext run (and UTF-8)
	tQuoted                   // quoted-string, content unescaped
	tLiteral                  // domain literal, brackets included
	tSpecial                  // one of < > @ , ; : .
)

type token struct {
	kind  tokenKind
	s     string
	space bool // white space or a comment came before it
}

// unfold removes the line breaks of folding white space (the value may come
// straight from a header section).
func unfold(v string) string {
	if !strings.ContainsAny(v, "\r\n") {
		return v
	}
	return strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(v)
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' }

// tokenize splits an address header value into tokens, dropping white space
// and comments.
func tokenize(v string) ([]token, error) {
	out := make([]token, 0, len(v)/4+4)
	space := false
	add := func(t token) {
		t.space, space = space, false
		out = append(out, t)
	}
	for i := 0; i < len(v); {
		c := v[i]
		switch {
		case isWSP(c):
			space = true
			i++
		case c == '(':
			depth := 0
			for ; i < len(v); i++ {
				if v[i] == '\\' {
					i++
				} else if v[i] == '(' {
					depth++
				} else if v[i] == ')' {
					if depth--; depth == 0 {
						break
					}
				}
			}
			if depth != 0 {
				return nil, errAddress
			}
			space = true
			i++
		case c == '"':
			var b strings.Builder
			j := i + 1
			for ; j < len(v) && v[j] != '"'; j++ {
				if v[j] == '\\' && j+1 < len(v) {
					j++
				}
				b.WriteByte(v[j])
			}
			if j >= len(v) {
				return nil, errAddress
			}
			add(token{kind: tQuoted, s: b.String()})
			i = j + 1
		case c == '[':
			// A domain literal is an address literal (RFC 5321 section
			// 4.1.3): IPv4, "IPv6:…" or "tag:…".
			j := strings.IndexByte(v[i:], ']')
			if j < 2 || strings.Trim(v[i+1:i+j], "0123456789abcdefABCDEFIPVv.:-") != "" {
				return nil, errAddress
			}
			add(token{kind: tLiteral, s: v[i : i+j+1]})
			i += j + 1
		case strings.IndexByte("<>@,;:.", c) >= 0:
			add(token{kind: tSpecial, s: string(c)})
			i++
		case c < 0x20 || c == 0x7f || c == ')' || c == ']' || c == '\\':
			return nil, errAddress
		default:
			j := i
			for j < len(v) && (isAtext(v[j]) || v[j] >= 0x80) {
				j++
			}
			if j == i {
				return nil, errAddress
			}
			add(token{kind: tAtom, s: v[i:j]})
			i = j
		}
	}
	return out, nil
}

// parseMailbox reads one list member: an addr-spec, or a display name and an
// angle address.
func parseMailbox(toks []token) (Mailbox, error) {
	lt := -1
	for i, t := range toks {
		if t.kind == tSpecial && t.s == "<" {
			lt = i
			break
		}
	}
	if lt < 0 {
		addr, ok := addrSpec(toks)
		if !ok {
			return Mailbox{}, errAddress
		}
		return Mailbox{Addr: addr}, nil
	}
	if last := toks[len(toks)-1]; last.kind != tSpecial || last.s != ">" {
		return Mailbox{}, errAddress
	}
	inner := toks[lt+1 : len(toks)-1]
	if len(inner) > 0 && inner[0].kind == tSpecial && inner[0].s == "@" {
		// obs-route: "@relay1,@relay2:" before the addr-spec.
		i := 0
		for i < len(inner) && !(inner[i].kind == tSpecial && inner[i].s == ":") {
			i++
		}
		if i == len(inner) {
			return Mailbox{}, errAddress
		}
		inner = inner[i+1:]
	}
	addr, ok := addrSpec(inner)
	if !ok {
		return Mailbox{}, errAddress
	}
	name, ok := displayName(toks[:lt])
	if !ok {
		return Mailbox{}, errAddress
	}
	return Mailbox{Name: name, Addr: addr}, nil
}

// addrSpec reads local-part "@" domain, obsolete forms included, and returns
// its canonical form.
func addrSpec(toks []token) (string, bool) {
	at := -1
	for i, t := range toks {
		if t.kind == tSpecial && t.s == "@" {
			at = i
		}
	}
	if at <= 0 {
		return "", false
	}
	// local-part: word *("." word), words atoms or quoted strings.
	var local strings.Builder
	for i, t := range toks[:at] {
		if i%2 == 1 {
			if t.kind != tSpecial || t.s != "." {
				return "", false
			}
			local.WriteByte('.')
			continue
		}
		if t.kind != tAtom && t.kind != tQuoted {
			return "", false
		}
		local.WriteString(t.s)
	}
	if at%2 == 0 { // ends with a dot
		return "", false
	}
	domain, ok := domainOf(toks[at+1:])
	// Control characters (obs-qtext allows some) have no place in an address.
	if !ok || local.Len() == 0 || hasCtl(local.String()) || hasCtl(domain) {
		return "", false
	}
	return quoteLocal(local.String()) + "@" + domain, true
}

// domainOf reads a domain: atoms joined by dots, or one domain literal.
func domainOf(toks []token) (string, bool) {
	if len(toks) == 1 && toks[0].kind == tLiteral {
		return toks[0].s, true
	}
	if len(toks)%2 == 0 {
		return "", false
	}
	var b strings.Builder
	for i, t := range toks {
		if i%2 == 1 {
			if t.kind != tSpecial || t.s != "." {
				return "", false
			}
			b.WriteByte('.')
			continue
		}
		if t.kind != tAtom {
			return "", false
		}
		b.WriteString(t.s)
	}
	return b.String(), true
}

// quoteLocal returns a local part as a dot-atom when it is one, else as a
// quoted string.
func quoteLocal(s string) string {
	if dotAtom(s, func(c byte) bool { return isAtext(c) || c >= 0x80 }) {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

// displayName joins the words of a phrase, RFC 2047 words decoded. Periods
// (obs-phrase) and, leniently, "@" are words too.
func displayName(toks []token) (string, bool) {
	var b strings.Builder
	prevEncoded := false
	for _, t := range toks {
		w := t.s
		encoded := false
		switch t.kind {
		case tAtom:
			if strings.HasPrefix(w, "=?") && strings.HasSuffix(w, "?=") {
				if d, err := wordDecoder.Decode(w); err == nil {
					w, encoded = d, true
				}
			}
		case tQuoted:
		case tSpecial:
			if t.s != "." && t.s != "@" {
				return "", false
			}
		default:
			return "", false
		}
		// White space between two encoded words is not part of the text
		// (RFC 2047 section 6.2).
		if b.Len() > 0 && t.space && !(encoded && prevEncoded) {
			b.WriteByte(' ')
		}
		b.WriteString(w)
		prevEncoded = encoded
	}
	return b.String(), true
}
