package graphtest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Message is a sendMail request the fake accepted.
type Message struct {
	JobID           string            `json:"jobId"`              // the X-Mailworker-Job-Id internet message header, else the client-request-id
	ClientRequestID string            `json:"clientRequestId"`    // the client-request-id request header
	From            string            `json:"from"`               // the {id} of the request URL
	FromName        string            `json:"fromName,omitempty"` // a MIME message's From: display name, decoded
	To              []string          `json:"to"`
	Cc              []string          `json:"cc"`
	Bcc             []string          `json:"bcc"`
	ReplyTo         []string          `json:"replyTo"`
	Subject         string            `json:"subject"`
	BodyType        string            `json:"bodyType"` // "Text" | "HTML"
	Body            string            `json:"body"`
	Headers         map[string]string `json:"headers"` // internetMessageHeaders
	Attachments     []AttachmentInfo  `json:"attachments"`
	Importance      string            `json:"importance"` // as sent; "normal" when absent
	SaveToSentItems bool              `json:"saveToSentItems"`
	ReceivedAt      time.Time         `json:"receivedAt"`
	RequestID       string            `json:"requestId"` // the request-id the fake answered

	// MIME is true for a sendMail in MIME form (Content-Type: text/plain);
	// Delivered is then the message as its To and Cc recipients get it:
	// the submitted MIME without its Bcc fields (see mime.go), also the
	// .eml written to OutDir.
	MIME      bool   `json:"mime,omitempty"`
	Delivered []byte `json:"-"`
	// InternetMessageID is the Message-ID of a message sent as a draft
	// (drafts.go); "" for sendMail.
	InternetMessageID string `json:"internetMessageId,omitempty"`
	Draft             bool   `json:"draft,omitempty"` // sent through the draft flow
}

// AttachmentInfo describes an accepted attachment (its content is not kept).
type AttachmentInfo struct {
	Name        string `json:"name"`
	ContentType string `json:"contentType"`
	Size        int    `json:"size"` // decoded bytes
	IsInline    bool   `json:"isInline"`
	ContentID   string `json:"contentId"`
	SHA256      string `json:"sha256"` // hex SHA-256 of the decoded content
}

func addresses(list []graphRecipient) []string {
	if len(list) == 0 {
		return nil
	}
	out := make([]string, len(list))
	for i, r := range list {
		out[i] = r.EmailAddress.Address
	}
	return out
}

// JobIDHeader is the internet message header in which mailworker stamps the job id.
const JobIDHeader = "X-Mailworker-Job-Id"

func buildMessage(crid, from, reqID string, req *sendMailRequest, contents [][]byte, now time.Time) Message {
	m := req.Message
	jobID := crid
	for _, h := range m.InternetMessageHeaders {
		if strings.EqualFold(h.Name, JobIDHeader) && h.Value != "" {
			jobID = h.Value
		}
	}
	msg := Message{
		JobID:           jobID,
		ClientRequestID: crid,
		From:            from,
		To:              addresses(m.ToRecipients),
		Cc:              addresses(m.CcRecipients),
		Bcc:             addresses(m.BccRecipients),
		ReplyTo:         addresses(m.ReplyTo),
		Subject:         m.Subject,
		BodyType:        "Text",
		Importance:      m.Importance,
		SaveToSentItems: req.SaveToSentItems == nil || *req.SaveToSentItems, // Graph's default is true
		ReceivedAt:      now,
		RequestID:       reqID,
	}
	if msg.Importance == "" {
		msg.Importance = "normal"
	}
	if m.Body != nil {
		msg.Body = m.Body.Content
		if strings.EqualFold(m.Body.ContentType, "html") {
			msg.BodyType = "HTML"
		}
	}
	if len(m.InternetMessageHeaders) > 0 {
		msg.Headers = make(map[string]string, len(m.InternetMessageHeaders))
		for _, h := range m.InternetMessageHeaders {
			msg.Headers[h.Name] = h.Value
		}
	}
	for i, a := range m.Attachments {
		msg.Attachments = append(msg.Attachments, AttachmentInfo{
			Name: a.Name, ContentType: a.ContentType, Size: len(contents[i]), IsInline: a.IsInline, ContentID: a.ContentID,
			SHA256: attachmentHash(contents[i]),
		})
	}
	return msg
}

// record stores an accepted message, counts a duplicate job id, and writes OutDir files.
func (s *Server) record(msg Message, req *sendMailRequest, contents [][]byte) {
	dup := false
	s.mu.Lock()
	if msg.JobID != "" {
		if _, seen := s.jobIDs[msg.JobID]; seen {
			dup = true
			s.duplicates++
		} else {
			s.jobIDs[msg.JobID] = struct{}{}
		}
	}
	s.messages = append(s.messages, msg)
	s.mu.Unlock()
	if s.opts.OutDir == "" {
		return
	}
	seq := s.fileSeq.Add(1)
	name := fmt.Sprintf("%06d", seq)
	if safeFileName(msg.JobID) {
		name = msg.JobID
		if dup {
			name = fmt.Sprintf("%s-%06d", msg.JobID, seq)
		}
	}
	if err := s.writeFiles(name, msg, req, contents); err != nil {
		s.logf("graphtest: write %s: %v", name, err)
	}
}

func safeFileName(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (s *Server) writeFiles(name string, msg Message, req *sendMailRequest, contents [][]byte) error {
	if err := os.MkdirAll(s.opts.OutDir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(msg, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.opts.OutDir, name+".json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	eml := msg.Delivered
	if !msg.MIME {
		eml = renderEML(msg, req, contents)
	}
	return os.WriteFile(filepath.Join(s.opts.OutDir, name+".eml"), eml, 0o644)
}

func formatList(list []graphRecipient) string {
	parts := make([]string, len(list))
	for i, r := range list {
		a := mail.Address{Name: r.EmailAddress.Name, Address: r.EmailAddress.Address}
		parts[i] = a.String()
	}
	return strings.Join(parts, ", ")
}

// renderEML renders a plausible RFC 5322 message; MIME multipart/mixed when there are attachments.
func renderEML(msg Message, req *sendMailRequest, contents [][]byte) []byte {
	m := req.Message
	var b bytes.Buffer
	hdr := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	hdr("From", (&mail.Address{Address: msg.From}).String())
	hdr("To", formatList(m.ToRecipients))
	hdr("Cc", formatList(m.CcRecipients))
	hdr("Reply-To", formatList(m.ReplyTo))
	hdr("Subject", mime.QEncoding.Encode("utf-8", msg.Subject))
	hdr("Date", msg.ReceivedAt.Format(time.RFC1123Z))
	if msg.InternetMessageID != "" {
		hdr("Message-ID", msg.InternetMessageID)
	} else {
		hdr("Message-ID", "<"+msg.RequestID+"@graphtest.invalid>")
	}
	if msg.Importance != "normal" {
		hdr("Importance", msg.Importance)
	}
	names := make([]string, 0, len(msg.Headers))
	for k := range msg.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		hdr(k, mime.QEncoding.Encode("utf-8", msg.Headers[k]))
	}
	hdr("MIME-Version", "1.0")

	bodyType := "text/plain; charset=utf-8"
	if msg.BodyType == "HTML" {
		bodyType = "text/html; charset=utf-8"
	}
	if len(m.Attachments) == 0 {
		hdr("Content-Type", bodyType)
		hdr("Content-Transfer-Encoding", "quoted-printable")
		b.WriteString("\r\n")
		writeQP(&b, msg.Body)
		return b.Bytes()
	}
	mw := multipart.NewWriter(&b)
	hdr("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	b.WriteString("\r\n")
	pw, _ := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {bodyType},
		"Content-Transfer-Encoding": {"quoted-printable"},
	})
	var body bytes.Buffer
	writeQP(&body, msg.Body)
	pw.Write(body.Bytes())
	for i, a := range m.Attachments {
		ct := a.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		disp := "attachment"
		if a.IsInline {
			disp = "inline"
		}
		h := textproto.MIMEHeader{
			"Content-Type":              {mime.FormatMediaType(ct, map[string]string{"name": a.Name})},
			"Content-Disposition":       {mime.FormatMediaType(disp, map[string]string{"filename": a.Name})},
			"Content-Transfer-Encoding": {"base64"},
		}
		if a.ContentID != "" {
			h["Content-ID"] = []string{"<" + a.ContentID + ">"}
		}
		if h.Get("Content-Type") == "" { // FormatMediaType refuses odd values
			h.Set("Content-Type", "application/octet-stream")
		}
		pw, _ := mw.CreatePart(h)
		enc := base64.StdEncoding.EncodeToString(contents[i])
		for len(enc) > 76 {
			pw.Write([]byte(enc[:76] + "\r\n"))
			enc = enc[76:]
		}
		pw.Write([]byte(enc + "\r\n"))
	}
	mw.Close()
	return b.Bytes()
}

func writeQP(b *bytes.Buffer, s string) {
	qw := quotedprintable.NewWriter(b)
	qw.Write([]byte(s))
	qw.Close()
	b.WriteString("\r\n")
}
