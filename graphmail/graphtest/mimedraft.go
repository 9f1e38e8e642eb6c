package graphtest

import (
	"net/http"
	"net/url"
	"strings"
)

// createMIMEDraft: POST /users/{id}/messages with Content-Type: text/plain
// creates a draft from a MIME message in base64 ([create]: "Create a draft
// of a new message in either JSON or MIME format … Provide the applicable
// Internet message headers and the MIME content, all encoded in base64
// format in the request body … Add any attachments and S/MIME properties to
// the MIME content"). The body is read by readBody, so over 4 MB it is
// refused as every request is ([create]: "S/MIME message payloads are
// currently limited to 4 MB. Submission attempts that exceed this limit
// will result in an HTTP 413 Request Entity Too Large"). A body that is not
// base64 MIME: 400 ErrorMimeContentInvalidBase64String, as sendMail in MIME
// form ([sendMail]). The message is parsed as the MIME form of sendMail
// parses it (mime.go): subject, recipients from To/Cc/Bcc (none needed
// for a draft), X- fields, and its attachment parts become the draft's
// attachments with their content (more can be added by POST or upload
// session). internetMessageId is the MIME's Message-ID when it has one (the
// message resource: "The message ID in the format specified by RFC2822",
// https://learn.microsoft.com/graph/api/resources/message; that a MIME
// draft keeps its Message-ID is the fake's reading, DraftOptions.
// MIMENewMessageID the other), else a new one, written into the MIME. On
// send, the recipients get the MIME as created, without its Bcc fields
// (Message.Delivered); the attachments added to the draft are listed in
// Message.Attachments, with their SHA-256.
func (s *Server) createMIMEDraft(w http.ResponseWriter, r *http.Request, mailbox, key string, body []byte, after *Fault) {
	ms, gerr := parseMIMEBody(body, false)
	if gerr != nil {
		s.graphError(w, r, key, gerr.status, gerr.code, gerr.msg, "")
		return
	}
	if int64(len(ms.delivered)) > s.maxMessageSize(mailbox) {
		s.tooLargeForMailbox(w, r, key) // limits.go
		return
	}
	recips := func(l []string) []graphRecipient {
		out := make([]graphRecipient, len(l))
		for i, a := range l {
			out[i].EmailAddress = &struct {
				Name    string `json:"name"`
				Address string `json:"address"`
			}{Address: a}
		}
		return out
	}
	gm := graphMessage{Subject: ms.subject, ToRecipients: recips(ms.to), CcRecipients: recips(ms.cc),
		BccRecipients: recips(ms.bcc), ReplyTo: recips(ms.replyTo), Importance: ms.importance}
	for k, v := range ms.headers {
		gm.InternetMessageHeaders = append(gm.InternetMessageHeaders, graphHeader{Name: k, Value: v})
	}
	m := &draftMsg{mailbox: mailbox, immutable: prefersImmutable(r), created: s.opts.Now(), msg: gm,
		mime: ms.delivered, mimeAtts: len(ms.attachments), fromName: ms.fromName}
	for i, a := range ms.attachments {
		m.atts = append(m.atts, draftAttachment{id: newItemID(m.immutable), name: a.Name, contentType: a.ContentType,
			contentID: a.ContentID, inline: a.IsInline, content: ms.contents[i]})
	}
	m.id = newItemID(m.immutable)
	d := s.draftState()
	m.internetMessageID = ms.messageID
	if m.internetMessageID == "" || d.opts.MIMENewMessageID {
		m.internetMessageID = "<" + strings.ReplaceAll(newGUID(), "-", "") + "@" + strings.ReplaceAll(mailboxDomain(mailbox), ">", "") + ">"
		m.mime = append([]byte("Message-ID: "+m.internetMessageID+"\r\n"), stripFields(m.mime, "Message-ID")...)
	}
	d.mu.Lock()
	d.byID[m.id] = m
	d.all = append(d.all, m)
	view := m.view(d.opts, s.opts.Now())
	d.mu.Unlock()
	if after != nil {
		s.failAfter(w, r, key, after)
		return
	}
	w.Header().Set("Location", s.url+"/v1.0/users/"+url.PathEscape(mailbox)+"/messages/"+url.PathEscape(m.id))
	writeJSON(w, http.StatusCreated, view)
}
