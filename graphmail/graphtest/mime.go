package graphtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/http"
	"net/mail"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-message/charset"

	"github.com/mailworker/mailworker/queue/contract"
)

// The MIME form of sendMail, separate from the JSON path. Microsoft's
// behaviour, as documented:
//
//   - "Content-Type: text/plain to use MIME format in the request body ...
//     provide the applicable Internet message headers and the MIME content,
//     and encode them in base64 format in the request body"
//     (https://learn.microsoft.com/en-us/graph/outlook-send-mime-message);
//   - "If the request body includes malformed MIME content, this method
//     returns 400 Bad request and the following error message: Invalid
//     base64 string for MIME content"
//     (https://learn.microsoft.com/en-us/graph/api/user-sendmail);
//   - MIME payloads are limited to 4 MB, over it 413 Request Entity Too Large
//     (https://learn.microsoft.com/en-us/graph/api/user-post-messages, the
//     same cap as a JSON sendMail request: the whole base64 body counts);
//   - recipients come from the To, Cc and Bcc headers of the MIME message
//     (user-sendmail: "Provide the applicable Internet message headers"),
//     every field of each name; without any, 400 ErrorInvalidRecipients as
//     for JSON, and the same for an address that is not one (Reply-To <>);
//   - addresses are read as RFC 5322 section 4.4 requires of a parser
//     ("MUST accept and parse" the obsolete syntax), and RFC 2047 words in
//     any charset decode (Exchange handles Shift_JIS, ISO-2022-JP, KOI8-R,
//     GB2312 and windows-1252 mail): the parser is the contract's
//     (contract.ParseAddressList), which the worker's check also uses;
//   - Exchange removes the Bcc header from the copies the recipients get
//     (RFC 5322 section 3.6.3, first method): the fake's delivered copy
//     (Message.Delivered, the .eml in OutDir) has no Bcc field, and the Bcc
//     addresses are kept in Message.Bcc only.

// mimeSend is an accepted MIME sendMail request.
type mimeSend struct {
	delivered            []byte // the message as recipients get it: Bcc fields removed
	from, fromName       string
	subject, ctype       string
	to, cc, bcc, replyTo []string
	headers              map[string]string // X- fields
	attachments          []AttachmentInfo
	contents             [][]byte // of attachments, decoded
	importance           string
	messageID            string // the Message-ID field, as written
}

// isMIMERequest reports whether a sendMail request is in MIME form.
func isMIMERequest(r *http.Request) bool {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return mt == "text/plain"
}

// readSendMIME reads, decodes and checks a MIME sendMail body.
func (s *Server) readSendMIME(r *http.Request) (*mimeSend, *graphErr) {
	body, gerr := s.readBody(r) // the whole request counts, as for JSON
	if gerr != nil {
		return nil, gerr
	}
	return parseMIMEBody(body, true)
}

// parseMIMEBody decodes and checks a MIME request body (sendMail's, or a
// draft's create: recipients are required by sendMail only).
func parseMIMEBody(body []byte, needRecipients bool) (*mimeSend, *graphErr) {
	invalid := &graphErr{http.StatusBadRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content."}
	raw, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(body)))
	if err != nil || len(raw) == 0 {
		return nil, invalid
	}
	fields, err := contract.ParseHeaderSection(contract.HeaderSection(raw))
	if err != nil {
		return nil, invalid
	}
	hdr := textproto.MIMEHeader{}
	for _, f := range fields {
		hdr.Add(f.Name, f.Value)
	}
	m := &mimeSend{delivered: stripFields(raw, "Bcc"), subject: decodeWords(hdr.Get("Subject")),
		ctype: hdr.Get("Content-Type"), importance: strings.ToLower(hdr.Get("Importance"))}
	if m.importance == "" {
		m.importance = "normal"
	}
	// Every field of each name counts (a second To: adds recipients), and
	// addresses are read as RFC 5322 section 4.4 asks, obsolete syntax
	// included; names decode in any charset.
	lists := []*[]string{&m.to, &m.cc, &m.bcc, &m.replyTo}
	for i, k := range []string{"To", "Cc", "Bcc", "Reply-To"} {
		for _, v := range hdr.Values(k) {
			as, err := contract.ParseAddressList(v)
			if err != nil {
				return nil, &graphErr{http.StatusBadRequest, "ErrorInvalidRecipients",
					"At least one recipient isn't valid., A message can't be sent because it contains no recipients or an invalid recipient address."}
			}
			for _, a := range as {
				*lists[i] = append(*lists[i], a.Addr)
			}
		}
	}
	if needRecipients && len(m.to)+len(m.cc)+len(m.bcc) == 0 {
		return nil, &graphErr{http.StatusBadRequest, "ErrorInvalidRecipients",
			"At least one recipient is required, but none were found."}
	}
	if as, err := contract.ParseAddressList(hdr.Get("From")); err == nil && len(as) > 0 {
		m.from, m.fromName = as[0].Addr, as[0].Name
	}
	for k, v := range hdr {
		if strings.HasPrefix(k, "X-") && len(v) > 0 {
			if m.headers == nil {
				m.headers = map[string]string{}
			}
			m.headers[k] = v[0]
		}
	}
	m.messageID = strings.TrimSpace(hdr.Get("Message-Id"))
	m.attachments, m.contents = mimeParts(raw)
	return m, nil
}

// wordDecoder decodes RFC 2047 words in every charset go-message knows
// (Shift_JIS, ISO-2022-JP, windows-1252, KOI8-R, GB2312, …).
var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

func decodeWords(s string) string {
	if d, err := wordDecoder.DecodeHeader(s); err == nil {
		return d
	}
	return s
}

// mimeParts lists the attachments of a multipart message, with their
// content decoded from base64 or quoted-printable: the leaf parts that
// carry a filename (Content-Disposition filename, RFC 2231; else
// Content-Type name; RFC 2047 words decoded in any charset), are marked
// attachment, or have a Content-ID (an inline image: isInline unless marked
// attachment). Exchange turns such parts into the message's attachments
// (https://learn.microsoft.com/graph/api/resources/fileattachment:
// contentId, isInline); which parts exactly is not documented, and this is
// the fake's reading.
func mimeParts(raw []byte) ([]AttachmentInfo, [][]byte) {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, nil
	}
	var out []AttachmentInfo
	var contents [][]byte
	var walk func(ctype string, body io.Reader, depth int)
	walk = func(ctype string, body io.Reader, depth int) {
		mt, params, err := mime.ParseMediaType(ctype)
		if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" || depth > 8 {
			return
		}
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err != nil {
				return
			}
			ct := p.Header.Get("Content-Type")
			if strings.HasPrefix(strings.ToLower(ct), "multipart/") {
				walk(ct, p, depth+1)
				continue
			}
			mt, params, _ := mime.ParseMediaType(ct)
			disp, _, _ := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
			name := p.FileName()
			if name == "" {
				name = params["name"]
			}
			name = decodeWords(name)
			cid := strings.TrimSpace(strings.Trim(strings.TrimSpace(p.Header.Get("Content-ID")), "<>"))
			if name == "" && cid == "" && disp != "attachment" {
				continue
			}
			data, _ := io.ReadAll(p)
			switch strings.ToLower(strings.TrimSpace(p.Header.Get("Content-Transfer-Encoding"))) {
			case "base64":
				if d, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(data)), "")); err == nil {
					data = d
				}
			case "quoted-printable":
				if d, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(data))); err == nil {
					data = d
				}
			}
			sum := sha256.Sum256(data)
			out = append(out, AttachmentInfo{Name: name, ContentType: mt, Size: len(data), IsInline: cid != "" && disp != "attachment",
				ContentID: cid, SHA256: hex.EncodeToString(sum[:])})
			contents = append(contents, data)
		}
	}
	walk(msg.Header.Get("Content-Type"), msg.Body, 0)
	return out, contents
}

// message is the record of an accepted MIME send.
func (m *mimeSend) message(crid, mailbox, reqID string, now time.Time) Message {
	jobID := crid
	for k, v := range m.headers {
		if strings.EqualFold(k, JobIDHeader) && v != "" {
			jobID = v
		}
	}
	bodyType := "Text"
	if mt, _, _ := mime.ParseMediaType(m.ctype); mt == "text/html" {
		bodyType = "HTML"
	}
	return Message{JobID: jobID, ClientRequestID: crid, From: mailbox, FromName: m.fromName, To: m.to, Cc: m.cc, Bcc: m.bcc, ReplyTo: m.replyTo,
		Subject: m.subject, BodyType: bodyType, Headers: m.headers, Attachments: m.attachments,
		Importance: m.importance, SaveToSentItems: true, ReceivedAt: now, RequestID: reqID,
		MIME: true, Delivered: m.delivered}
}

// stripFields returns msg without the header fields named name (and their
// continuation lines); everything else is kept byte for byte.
func stripFields(msg []byte, name string) []byte {
	out := make([]byte, 0, len(msg))
	skipping, inHeader := false, true
	for off := 0; off < len(msg); {
		next := len(msg)
		if i := bytes.IndexByte(msg[off:], '\n'); i >= 0 {
			next = off + i + 1
		}
		line := msg[off:next]
		if inHeader {
			switch {
			case len(bytes.TrimRight(line, "\r\n")) == 0:
				inHeader, skipping = false, false
			case line[0] == ' ' || line[0] == '\t':
			default:
				k, _, ok := bytes.Cut(line, []byte(":"))
				skipping = ok && strings.EqualFold(strings.TrimSpace(string(k)), name)
			}
		}
		if !skipping {
			out = append(out, line...)
		}
		off = next
	}
	return out
}
