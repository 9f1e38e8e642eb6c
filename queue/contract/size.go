package contract

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The mailbox's maximum message size, as Exchange Online sets it.
//
// "Exchange Online lets administrators customize the message size limit for
// Microsoft 365 mailboxes, including any message attachments. By default,
// this message size limit is 35 MB"
// (https://learn.microsoft.com/graph/api/attachment-createuploadsession, Tip).
// Set-MailboxPlan -MaxSendSize: "A valid value is a number up to 150 MB. The
// default value is 35 MB", and "Base64 encoding increases the size of
// messages by approximately 33%, so specify a value that's 33% larger than
// the actual maximum message size that you want to enforce"
// (https://learn.microsoft.com/powershell/module/exchangepowershell/set-mailboxplan).
//
// Exchange's sizes are binary: the same page gives "1.999999999 terabytes
// (2199023254528 bytes)", so 1 TB is 2^40 bytes and 1 MB 2^20, and
// Get-Mailbox shows the default MaxSendSize as "35 MB (36,700,160 bytes)".
// The constants follow Exchange: 35 MB = 36,700,160 bytes, 150 MB =
// 157,286,400 bytes.
const (
	// DefaultMaxMessageBytes is Exchange Online's default MaxSendSize, 35 MB.
	DefaultMaxMessageBytes int64 = 35 << 20
	// MaxMessageBytesLimit is the largest MaxSendSize an admin can set, 150 MB.
	MaxMessageBytesLimit int64 = 150 << 20
	// messageOverhead stands for the header section Exchange writes
	// (Received, Message-ID, Date, MIME boundaries, authentication results),
	// a generous allowance rather than a documented figure.
	messageOverhead = 8 << 10
	// partOverhead stands for one attachment's MIME part headers.
	partOverhead = 512
)

// EncodedSize is what n bytes of attachment count for in the message size
// Exchange checks: base64, 4 bytes for every 3 ("approximately 33%",
// Set-MailboxPlan).
func EncodedSize(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return (n + 2) / 3 * 4
}

// MessageSize is the size Exchange counts for job against the sending
// mailbox's maximum message size: the whole message with its attachments
// base64-encoded. size reports the size of an objectRef object (attachment
// or MIME message); an error from it is returned as is. For a MIME job the
// message is counted as written (it is already encoded), for a JSON job the
// subject, bodies and recipients are counted as base64 too (Exchange may
// encode them so) with an allowance for headers and MIME parts: an estimate
// on the high side, so that a message this function passes is not refused
// by Exchange for its size.
func MessageSize(job *Job, size func(ref string) (int64, error)) (int64, error) {
	if job.MIME != nil {
		if job.MIME.ObjectRef != "" {
			return size(job.MIME.ObjectRef)
		}
		return int64(base64.StdEncoding.DecodedLen(len(job.MIME.ContentBase64))), nil
	}
	n := int64(messageOverhead)
	text := len(job.Subject) + len(job.Text) + len(job.HTML)
	for _, l := range [][]string{job.To, job.Cc, job.Bcc, job.ReplyTo} {
		for _, a := range l {
			text += len(a) + 4
		}
	}
	for k, v := range job.Headers {
		text += len(k) + len(v) + 4
	}
	n += EncodedSize(int64(text))
	for _, a := range job.Attachments {
		raw := int64(base64.StdEncoding.DecodedLen(len(a.ContentBase64)))
		if a.ObjectRef != "" {
			s, err := size(a.ObjectRef)
			if err != nil {
				return 0, err
			}
			raw = s
		}
		n += partOverhead + int64(2*len(a.Name)+len(a.ContentType)+len(a.ContentID)) + EncodedSize(raw)
	}
	return n, nil
}

// ParseMessageSize reads a maximum message size as Exchange writes it: a
// number with the unit B, KB or MB (binary, as Exchange's: 1 KB = 1,024
// bytes, 1 MB = 1,048,576 bytes), or bytes without a unit; spaces and
// thousands separators are ignored, and Get-Mailbox's own form
// "35 MB (36,700,160 bytes)" is taken too. "" is the default, 35 MB. It
// returns an error for anything else, and for a size over 150 MB (Exchange's
// maximum) or under 1 MB.
func ParseMessageSize(s string) (int64, error) {
	orig := s
	if i := strings.IndexByte(s, '('); i >= 0 {
		s = s[:i]
	}
	s = strings.ToUpper(strings.NewReplacer(" ", "", ",", "", "_", "").Replace(s))
	if s == "" {
		if strings.TrimSpace(orig) != "" {
			return 0, fmt.Errorf("%q is not a size such as 35MB", orig)
		}
		return DefaultMaxMessageBytes, nil
	}
	unit := int64(1)
	for _, u := range []struct {
		suffix string
		scale  int64
	}{{"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, unit = strings.TrimSuffix(s, u.suffix), u.scale
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a size such as 35MB", orig)
	}
	n := int64(v * float64(unit))
	switch {
	case n > MaxMessageBytesLimit:
		return 0, fmt.Errorf("%s is %d bytes, over Exchange Online's maximum of 150 MB (%d bytes)", strings.TrimSpace(orig), n, MaxMessageBytesLimit)
	case n < 1<<20:
		return 0, errors.New(strings.TrimSpace(orig) + " is under 1 MB: no mailbox is set that low (a unit missing? sizes without a unit are bytes)")
	}
	return n, nil
}

// FormatMessageSize renders n as Exchange does: "35 MB (36,700,160 bytes)".
func FormatMessageSize(n int64) string {
	var mb string
	if n%(1<<20) == 0 {
		mb = strconv.FormatInt(n>>20, 10) + " MB"
	} else {
		mb = strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MB"
	}
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return mb + " (" + b.String() + " bytes)"
}
