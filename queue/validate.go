package queue

import (
	"fmt"

	"github.com/nats-io/nats.go"
)

// Limits enforced by Validate.
const (
	// MaxRecipients caps to+cc+bcc: Exchange's default per-message recipient limit.
	MaxRecipients = 500
	// MaxInlineAttachmentBytes caps the decoded total of inline (contentBase64)
	// attachments: Graph caps one request at 4 MB and base64 adds a third.
	MaxInlineAttachmentBytes = 3 << 20
)

// InvalidError says why a job is not valid: which field, which rule. Reason is
// ReasonInvalidJob, or ReasonMessageTooLarge for size limits. The message never
// echoes more than about 100 bytes of input.
type InvalidError struct {
	Field  string
	Rule   string
	Reason Reason
}

func (e *InvalidError) Error() string {
	if e.Field == "" {
		return e.Rule
	}
	return e.Field + ": " + e.Rule
}

// DecodeJob decodes and validates one job. It is strict: unknown fields, wrong
// types and trailing data are rejected. Every error is an *InvalidError.
func DecodeJob(data []byte) (*Job, error) {
	return nil, fmt.Errorf("not implemented")
}

// Validate checks j against the wire contract. The error is an *InvalidError.
func (j *Job) Validate() error { return nil }

// ValidJobID reports whether id matches [A-Za-z0-9_-]{1,128}.
func ValidJobID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ResolveJobID returns the id of a job message: the body id; else the
// Mail-Job-Id header; else Nats-Msg-Id if it is a valid job id; else
// "s"+streamSeq. j and h may be nil.
func ResolveJobID(j *Job, h nats.Header, streamSeq uint64) string {
	if j != nil && j.ID != "" {
		return j.ID
	}
	if h != nil {
		if id := h.Get(HeaderJobID); ValidJobID(id) {
			return id
		}
		if id := h.Get(HeaderMsgID); ValidJobID(id) {
			return id
		}
	}
	return fmt.Sprintf("s%d", streamSeq)
}

// ParseAddress parses one RFC 5322 mailbox (a@x.com or Name <a@x.com>). It
// rejects CR, LF and NUL anywhere.
func ParseAddress(s string) (name, addr string, err error) {
	return "", "", fmt.Errorf("not implemented")
}
