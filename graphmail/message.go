package graphmail

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"time"
)

// Address is a mailbox: an optional display name and an address.
type Address struct{ Name, Address string }

// Attachment is a file attachment sent inline in the sendMail request
// (Graph caps the whole request at 4 MB).
type Attachment struct {
	Name, ContentType string
	Content           []byte
	Inline            bool
	ContentID         string
}

// Header is an internet message header; Graph accepts only X- names.
type Header struct{ Name, Value string }

// Message is one mail to send. Graph takes one body: HTML when set, else Text.
type Message struct {
	From                 string // the sending (shared) mailbox
	To, Cc, Bcc, ReplyTo []Address
	Subject              string
	Text, HTML           string
	Attachments          []Attachment
	Headers              []Header // internetMessageHeaders
	Importance           string   // "", low, normal, high
	SaveToSentItems      bool

	// MIME, when set, is the whole message (RFC 5322 + MIME) and is sent as
	// MIME: POST sendMail with Content-Type: text/plain and the message in
	// base64 as the body ("Send Outlook messages in MIME format",
	// https://learn.microsoft.com/en-us/graph/outlook-send-mime-message).
	// Recipients, subject, attachments and headers then come from the MIME
	// headers and body only, and every other field but From is ignored (Graph
	// saves a MIME send to Sent Items; it takes no saveToSentItems).
	MIME []byte
}

// Result describes a sendMail call, successful or not: the last HTTP call in
// Status, RequestID, ClientRequestID and Date, every call in Calls.
type Result struct {
	Status          int // HTTP status of the last response, 0 when none
	RequestID       string
	ClientRequestID string    // the GUID sent as client-request-id
	Date            time.Time // the response's Date header; zero when none
	// RetryAfter is a Retry-After on a 2xx answer: the mail was accepted, and the
	// mailbox should pause that long (it must not be sent again).
	RetryAfter time.Duration
	Calls      []Call        // every sendMail HTTP call made (two after a 401 refresh)
	Duration   time.Duration // time spent in sendMail requests (both, after a 401 retry)
}

// Call identifies one sendMail HTTP call as Microsoft support and message trace know it.
type Call struct {
	Status          int
	RequestID       string
	ClientRequestID string
	Date            time.Time
}

func (r Result) call() Call {
	return Call{Status: r.Status, RequestID: r.RequestID, ClientRequestID: r.ClientRequestID, Date: r.Date}
}

// Graph JSON (https://learn.microsoft.com/graph/api/user-sendmail).
type (
	gSendMail struct {
		Message         gMessage `json:"message"`
		SaveToSentItems bool     `json:"saveToSentItems"`
	}
	gMessage struct {
		Subject     string        `json:"subject"`
		Body        gBody         `json:"body"`
		To          []gRecipient  `json:"toRecipients,omitempty"`
		Cc          []gRecipient  `json:"ccRecipients,omitempty"`
		Bcc         []gRecipient  `json:"bccRecipients,omitempty"`
		ReplyTo     []gRecipient  `json:"replyTo,omitempty"`
		Attachments []gAttachment `json:"attachments,omitempty"`
		Headers     []gHeader     `json:"internetMessageHeaders,omitempty"`
		Importance  string        `json:"importance,omitempty"`
	}
	gBody struct {
		ContentType string `json:"contentType"`
		Content     string `json:"content"`
	}
	gRecipient struct {
		EmailAddress gEmailAddress `json:"emailAddress"`
	}
	gEmailAddress struct {
		Name    string `json:"name,omitempty"`
		Address string `json:"address"`
	}
	gAttachment struct {
		ODataType    string `json:"@odata.type"`
		Name         string `json:"name"`
		ContentType  string `json:"contentType,omitempty"`
		ContentBytes []byte `json:"contentBytes"` // encoding/json writes base64
		IsInline     bool   `json:"isInline,omitempty"`
		ContentID    string `json:"contentId,omitempty"`
	}
	gHeader struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	}
)

const fileAttachment = "#microsoft.graph.fileAttachment"

// graphMIME encodes msg.MIME as a MIME sendMail request body: the message
// in standard base64, no line breaks.
func graphMIME(msg *Message) []byte {
	out := make([]byte, base64.StdEncoding.EncodedLen(len(msg.MIME)))
	base64.StdEncoding.Encode(out, msg.MIME)
	return out
}

// gmessage maps msg onto Graph's message resource and estimates its JSON size.
func gmessage(msg *Message) (gMessage, int) {
	var g gMessage
	g.Subject = msg.Subject
	if msg.HTML != "" {
		g.Body = gBody{ContentType: "HTML", Content: msg.HTML}
	} else {
		g.Body = gBody{ContentType: "Text", Content: msg.Text}
	}
	n := len(msg.To) + len(msg.Cc) + len(msg.Bcc) + len(msg.ReplyTo)
	recips := make([]gRecipient, 0, n) // one allocation for all four lists
	size := 256 + len(msg.Subject) + len(g.Body.Content)*11/10
	take := func(as []Address) []gRecipient {
		if len(as) == 0 {
			return nil
		}
		start := len(recips)
		for _, a := range as {
			recips = append(recips, gRecipient{gEmailAddress(a)})
			size += 48 + len(a.Name) + len(a.Address)
		}
		return recips[start:len(recips):len(recips)]
	}
	g.To = take(msg.To)
	g.Cc = take(msg.Cc)
	g.Bcc = take(msg.Bcc)
	g.ReplyTo = take(msg.ReplyTo)
	if len(msg.Attachments) > 0 {
		g.Attachments = make([]gAttachment, len(msg.Attachments))
		for i, a := range msg.Attachments {
			g.Attachments[i] = gAttachment{
				ODataType:    fileAttachment,
				Name:         a.Name,
				ContentType:  a.ContentType,
				ContentBytes: a.Content,
				IsInline:     a.Inline,
				ContentID:    a.ContentID,
			}
			size += 160 + len(a.Name) + len(a.ContentType) + len(a.ContentID) + (len(a.Content)+2)/3*4
		}
	}
	if len(msg.Headers) > 0 {
		g.Headers = make([]gHeader, len(msg.Headers))
		for i, h := range msg.Headers {
			g.Headers[i] = gHeader(h)
			size += 32 + len(h.Name) + len(h.Value)
		}
	}
	g.Importance = msg.Importance
	return g, size
}

// graphJSON encodes msg as a sendMail request body into one buffer sized
// up front. The buffer is not pooled: the transport may still read a request
// body after Do returns (e.g. when Graph answers early), so handing it back
// to a pool would race.
func graphJSON(msg *Message) ([]byte, error) {
	var m gSendMail
	m.SaveToSentItems = msg.SaveToSentItems
	var size int
	m.Message, size = gmessage(msg)

	buf := bytes.NewBuffer(make([]byte, 0, size))
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false) // HTML bodies stay readable and smaller
	if err := enc.Encode(&m); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
