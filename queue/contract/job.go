package contract

import (
	"encoding/base64"
	"time"
)

// Job is one mail to send, as producers publish it on mail.send.<profile>.
// Field names are lowerCamel JSON; see schema/job.schema.json.
type Job struct {
	// ID is the idempotency key, [A-Za-z0-9_-]{1,128}. Generated when absent.
	ID      string   `json:"id,omitempty"`
	From    string   `json:"from"`
	To      []string `json:"to,omitempty"`
	Cc      []string `json:"cc,omitempty"`
	Bcc     []string `json:"bcc,omitempty"`
	ReplyTo []string `json:"replyTo,omitempty"`
	Subject string   `json:"subject,omitempty"`
	Text    string   `json:"text,omitempty"`
	HTML    string   `json:"html,omitempty"`

	Attachments []Attachment `json:"attachments,omitempty"`
	// Headers are extra internet message headers; only X- names are allowed.
	Headers map[string]string `json:"headers,omitempty"`
	// Importance is low, normal or high.
	Importance      string `json:"importance,omitempty"`
	SaveToSentItems *bool  `json:"saveToSentItems,omitempty"`
	// NotBefore defers the send until this time.
	NotBefore *time.Time `json:"notBefore,omitempty"`
	// ExpiresAt: a job not sent by then is dead-lettered as expired.
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
	// Metadata is echoed in every status event of the job.
	Metadata map[string]string `json:"metadata,omitempty"`

	// MIME, when set, is the whole message as the client wrote it (RFC 5322
	// + MIME) and is sent as MIME: subject, text, html, attachments,
	// replyTo, headers and importance must then be absent (they are in the
	// message), and to/cc/bcc list every recipient (the MIME headers are what
	// Graph sends to; bcc recipients are in a Bcc header, which Exchange
	// strips from what the other recipients see).
	MIME *MIME `json:"mime,omitempty"`
}

// MIME is a message in MIME form, inline (ContentBase64) or by reference to
// an object in the MAIL_ATTACHMENTS object store (ObjectRef, for large mail:
// a NATS message is 1 MB by default).
type MIME struct {
	ContentBase64 string `json:"contentBase64,omitempty"`
	ObjectRef     string `json:"objectRef,omitempty"`

	// raw is the message ContentBase64 was made of (InlineMIME), which
	// the validation reads instead of decoding ContentBase64 again while
	// ContentBase64 is still encoded (its base64).
	raw     []byte
	encoded string
}

// InlineMIME is the MIME of a job that carries message msg inline:
// ContentBase64 is msg's standard base64. Validate then checks msg's header
// section as it is instead of decoding ContentBase64 back (the SMTP door
// builds its jobs so); a ContentBase64 changed afterwards is decoded as any.
func InlineMIME(msg []byte) *MIME {
	enc := base64.StdEncoding.EncodeToString(msg)
	return &MIME{ContentBase64: enc, raw: msg, encoded: enc}
}

// Attachment is a file attached to a job, given inline (ContentBase64) or by
// reference to an object in the MAIL_ATTACHMENTS object store (ObjectRef).
type Attachment struct {
	Name          string `json:"name"`
	ContentType   string `json:"contentType,omitempty"`
	ContentBase64 string `json:"contentBase64,omitempty"`
	ObjectRef     string `json:"objectRef,omitempty"`
	Inline        bool   `json:"inline,omitempty"`
	ContentID     string `json:"contentId,omitempty"`
}
