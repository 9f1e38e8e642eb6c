package contract

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits enforced by Validate.
const (
	// MaxRecipients caps to+cc+bcc at intake: the highest recipient limit an
	// Exchange Online admin can set (1,000; 500 by default: "Exchange Online
	// limits", recipient limits). The profile's own limit
	// (profiles.<name>.maxRecipientsPerMessage, default 500) applies before
	// the Graph call.
	MaxRecipients = 1000
	// MaxAttachments caps the attachments of a job: Exchange Online takes
	// at most 250 file attachments per message ("Exchange Online limits",
	// message limits, "File attachments limit: 250",
	// https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#message-limits).
	// It also bounds the work one job makes (a size look-up per objectRef,
	// a Graph call per attachment in draft mode).
	MaxAttachments = 250
	// MaxInlineAttachmentBytes caps the decoded total of contentBase64
	// attachments: Graph caps one request at 4 MB and base64 adds a third.
	MaxInlineAttachmentBytes = 3 << 20
	// MaxSubjectChars caps the subject, in Unicode code points (as JSON
	// Schema's maxLength counts).
	MaxSubjectChars = 2048
	// MaxHeaderBytes caps the total size of custom headers (names + values).
	MaxHeaderBytes = 8 << 10
	// MaxHeaders caps the custom headers of a job. Graph takes at most 5
	// internetMessageHeaders per message: past that it answers 400
	// InvalidInternetMessageHeaderCollection "Maximum number of headers in
	// one message should be less than or equal to 5." (the error as quoted in
	// Microsoft Q&A 762243, https://learn.microsoft.com/answers/questions/762243;
	// the internetMessageHeader page states no limit). The worker always adds
	// its own X-Mailworker-Job-Id: 4 are left for the job.
	MaxHeaders = 4
	// MaxMetadataKeys, MaxMetadataKeyChars and MaxMetadataValueChars cap
	// metadata, which is echoed in every status event (lengths in code points).
	MaxMetadataKeys       = 32
	MaxMetadataKeyChars   = 64
	MaxMetadataValueChars = 1024
	// MaxJobIDLen is the longest job id.
	MaxJobIDLen = 128
	// MaxMIMEBytes caps a MIME message (mime.contentBase64 decoded, or the
	// object of mime.objectRef): Graph caps one sendMail request at 4 MB and
	// a MIME request body is the message in base64 (4/3 of it), so 3 MiB
	// encodes to exactly 4 MiB. The worker's job id header counts too.
	MaxMIMEBytes = 3 << 20
)

// HeaderStampJobID is the internet message header the worker stamps on every
// mail; jobs may not set it themselves.
const HeaderStampJobID = "X-Mailworker-Job-Id"

// TimestampPattern is the RFC 3339 profile the worker accepts for notBefore
// and expiresAt, and the "pattern" beside "format": "date-time" in
// schema/job.schema.json (a test keeps them equal): an upper-case T between
// date and time, seconds 00-59 (no leap second), an optional fraction with a
// dot, and Z or a numeric offset with a colon. RFC 3339 also allows a lower
// case t and z, and JSON Schema validators such as ajv-formats a space, a
// leap second or an offset without a colon; Go's time package and many
// consumers do not, so the contract leaves them out.
const TimestampPattern = `^[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$`

var timestampRE = regexp.MustCompile(TimestampPattern)

// InvalidError says why a job is not valid: which field (JSON path such as
// to[2] or attachments[0].name, empty when the body is not JSON at all) and
// which rule. Reason is ReasonInvalidJob, or ReasonMessageTooLarge for size
// limits. The message never echoes more than about 100 bytes of input.
type InvalidError struct {
	Field  string
	Rule   string
	Reason Reason
}

func (e *InvalidError) Error() string {
	if e.Field == "" {
		return "job: " + e.Rule
	}
	return e.Field + ": " + e.Rule
}

func invalid(field, rule string) *InvalidError {
	return &InvalidError{Field: field, Rule: rule, Reason: ReasonInvalidJob}
}

// Quote renders user input for an error message: quoted, escaped, at most 64
// bytes of it.
func Quote(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}

// jobWire decodes a Job, taking the timestamps raw so that a bad one can be
// reported with its field name (encoding/json does not say which field a
// time.Time parse error belongs to), the id as a pointer (an empty id is not
// an absent one) and map values as pointers (null is not a string). Outer
// fields shadow the embedded ones.
type jobWire struct {
	Job
	ID        *string            `json:"id,omitempty"`
	Headers   map[string]*string `json:"headers,omitempty"`
	Metadata  map[string]*string `json:"metadata,omitempty"`
	NotBefore json.RawMessage    `json:"notBefore,omitempty"`
	ExpiresAt json.RawMessage    `json:"expiresAt,omitempty"`
}

// DecodeJob decodes and validates one job. It is strict: unknown fields,
// field names in another case, wrong types, malformed JSON and trailing data
// are rejected, naming the field where there is one. A null stands for an
// absent optional field; it is not a value inside headers or metadata. Every
// error is an *InvalidError. DecodeJob accepts exactly what
// schema/job.schema.json accepts, except for the rules listed in the schema's
// description that a schema cannot express.
func DecodeJob(data []byte) (*Job, error) {
	var w jobWire
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return nil, decodeError(err)
	}
	if rest := bytes.TrimLeft(data[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return nil, invalid("", fmt.Sprintf("trailing data after the job object at byte %d", dec.InputOffset()))
	}
	if err := checkFieldCase(data); err != nil {
		return nil, err
	}
	j := &w.Job
	if w.ID != nil {
		if *w.ID == "" {
			return nil, invalid("id", "is empty: leave it out (or null) to have one generated, or give 1 to 128 of A-Z a-z 0-9 _ -")
		}
		j.ID = *w.ID
	}
	var err error
	if j.Headers, err = derefMap("headers", w.Headers); err != nil {
		return nil, err
	}
	if j.Metadata, err = derefMap("metadata", w.Metadata); err != nil {
		return nil, err
	}
	if j.NotBefore, err = decodeTime("notBefore", w.NotBefore); err != nil {
		return nil, err
	}
	if j.ExpiresAt, err = decodeTime("expiresAt", w.ExpiresAt); err != nil {
		return nil, err
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	return j, nil
}

func decodeTime(field string, raw json.RawMessage) (*time.Time, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var s string
	var t time.Time
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil || !timestampRE.MatchString(s) || t.UnmarshalText([]byte(s)) != nil {
		return nil, invalid(field, "must be an RFC 3339 timestamp string such as \"2026-01-02T15:04:05Z\" or \"2026-01-02T16:04:05.5+01:00\" (upper-case T and Z, no leap second)")
	}
	return &t, nil
}

// derefMap turns a decoded map of pointers into the Job's map, refusing null
// values.
func derefMap(field string, m map[string]*string) (map[string]string, error) {
	if m == nil {
		return nil, nil
	}
	out := make(map[string]string, len(m))
	bad := ""
	for k, v := range m {
		if v == nil {
			if bad == "" || k < bad {
				bad = k
			}
			continue
		}
		out[k] = *v
	}
	if bad != "" {
		return nil, invalid(field+"["+Quote(bad)+"]", "is null: want a string")
	}
	return out, nil
}

// Field names of the wire contract, exactly as spelt: encoding/json matches
// names case-insensitively, JSON Schema does not.
var (
	jobFields        = fieldNames(Job{})
	attachmentFields = fieldNames(Attachment{})
	mimeFields       = fieldNames(MIME{})
)

func fieldNames(v any) map[string]bool {
	out := map[string]bool{}
	t := reflect.TypeOf(v)
	for i := 0; i < t.NumField(); i++ {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			out[name] = true
		}
	}
	return out
}

// checkFieldCase rejects field names that encoding/json took in another
// case ("From", "contentbase64", "ſubject"): JSON Schema matches names
// exactly. data has decoded already, so it is valid JSON: a one-pass scan of
// its bytes finds the keys of the top-level object and of each attachments
// element without decoding any value (it showed in the worker's profile as a
// second Unmarshal).
func checkFieldCase(data []byte) *InvalidError {
	stack := make([]byte, 0, 16) // open containers: '{' or '['
	topKey := ""                 // the current key of the top-level object
	att := -1                    // index of the current attachments element
	for i := 0; i < len(data); {
		switch c := data[i]; c {
		case '"':
			end, escaped := stringEnd(data, i)
			j := end
			for j < len(data) && (data[j] == ' ' || data[j] == '\t' || data[j] == '\r' || data[j] == '\n') {
				j++
			}
			if j < len(data) && data[j] == ':' && len(stack) > 0 && stack[len(stack)-1] == '{' {
				raw := data[i+1 : end-1]
				var key string
				if escaped {
					_ = json.Unmarshal(data[i:end], &key)
				}
				switch {
				case len(stack) == 1:
					if (escaped && !jobFields[key]) || (!escaped && !jobFields[string(raw)]) {
						return caseError("", keyOf(key, raw, escaped), jobFields)
					}
					topKey, att = keyOf(key, raw, escaped), -1
				case len(stack) == 2 && stack[1] == '{' && topKey == "mime":
					if (escaped && !mimeFields[key]) || (!escaped && !mimeFields[string(raw)]) {
						return caseError("mime.", keyOf(key, raw, escaped), mimeFields)
					}
				case len(stack) == 3 && stack[1] == '[' && topKey == "attachments":
					if (escaped && !attachmentFields[key]) || (!escaped && !attachmentFields[string(raw)]) {
						return caseError("attachments["+strconv.Itoa(att)+"].", keyOf(key, raw, escaped), attachmentFields)
					}
				}
			}
			i = end
			continue
		case '{', '[':
			stack = append(stack, c)
			if c == '{' && len(stack) == 3 && stack[1] == '[' && topKey == "attachments" {
				att++
			}
		case '}', ']':
			stack = stack[:len(stack)-1]
		}
		i++
	}
	return nil
}

// stringEnd returns the index after the JSON string starting at data[i]
// (a quote), and whether it holds an escape.
func stringEnd(data []byte, i int) (int, bool) {
	escaped := false
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			return j + 1, escaped
		}
	}
	return len(data), escaped
}

func keyOf(key string, raw []byte, escaped bool) string {
	if escaped {
		return key
	}
	return string(raw)
}

func caseError(prefix, k string, names map[string]bool) *InvalidError {
	field := prefix + k
	if hasCtl(k) {
		field = prefix + Quote(k)
	}
	return invalid(field, "unknown field (field names are case-sensitive"+didYouMean(k, names)+")")
}

func didYouMean(k string, names map[string]bool) string {
	for n := range names {
		if strings.EqualFold(n, k) {
			return ": did you mean " + n + "?"
		}
	}
	return ""
}

func decodeError(err error) *InvalidError {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return invalid("", fmt.Sprintf("malformed JSON at byte %d: %s", se.Offset, se.Error()))
	case errors.As(err, &te):
		if te.Field == "" {
			return invalid("", "must be a JSON object, got "+te.Value)
		}
		// The path runs through jobWire's embedded Job: drop that step.
		return invalid(strings.TrimPrefix(te.Field, "Job."), fmt.Sprintf("wrong type: got JSON %s, want %s", te.Value, jsonKind(te.Type.Kind().String())))
	case errors.Is(err, io.EOF):
		return invalid("", "empty body: want a JSON object")
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, `json: unknown field "`); ok {
		name = strings.TrimSuffix(name, `"`)
		return invalid(name, "unknown field")
	}
	if strings.Contains(msg, "unexpected EOF") {
		return invalid("", "malformed JSON: unexpected end of input")
	}
	if len(msg) > 100 {
		msg = msg[:100]
	}
	return invalid("", "malformed JSON: "+msg)
}

func jsonKind(goKind string) string {
	switch goKind {
	case "slice", "array":
		return "array"
	case "map", "struct":
		return "object"
	case "bool":
		return "boolean"
	case "string":
		return "string"
	}
	return goKind
}

// Validate checks j against the wire contract. The error is an *InvalidError.
func (j *Job) Validate() error {
	if j.ID != "" && !ValidJobID(j.ID) {
		return invalid("id", "not a valid job id: want 1 to 128 of A-Z a-z 0-9 _ -")
	}
	if j.From == "" {
		return invalid("from", "required: the shared mailbox to send from")
	}
	if err := checkMailbox("from", j.From); err != nil {
		return err
	}
	n := len(j.To) + len(j.Cc) + len(j.Bcc)
	if n == 0 {
		return invalid("to", "at least one recipient in to, cc or bcc is required")
	}
	if n > MaxRecipients {
		return invalid("to", fmt.Sprintf("%d recipients in to+cc+bcc, over the limit of %d per message", n, MaxRecipients))
	}
	for _, l := range [...]struct {
		name string
		list []string
	}{{"to", j.To}, {"cc", j.Cc}, {"bcc", j.Bcc}, {"replyTo", j.ReplyTo}} {
		for i, a := range l.list {
			if err := checkMailbox(l.name+"["+strconv.Itoa(i)+"]", a); err != nil {
				return err
			}
		}
	}
	if len(j.ReplyTo) > MaxRecipients {
		return invalid("replyTo", fmt.Sprintf("%d addresses, over the limit of %d", len(j.ReplyTo), MaxRecipients))
	}
	if hasCtl(j.Subject) {
		return invalid("subject", ctlRule)
	}
	if n := utf8.RuneCountInString(j.Subject); n > MaxSubjectChars {
		return invalid("subject", fmt.Sprintf("%d characters, over the limit of %d", n, MaxSubjectChars))
	}
	if j.MIME != nil {
		if err := j.validateMIME(); err != nil {
			return err
		}
	} else if j.Text == "" && j.HTML == "" {
		return invalid("text", "a body is required: set text, html or both")
	}
	if err := j.validateHeaders(); err != nil {
		return err
	}
	if err := j.validateAttachments(); err != nil {
		return err
	}
	switch j.Importance {
	case "", "low", "normal", "high":
	default:
		return invalid("importance", "not one of low, normal, high")
	}
	if j.NotBefore != nil && j.ExpiresAt != nil && !j.ExpiresAt.After(*j.NotBefore) {
		return invalid("expiresAt", "must be after notBefore")
	}
	return j.validateMetadata()
}

// validateMIME checks a MIME job: exactly one of contentBase64 or
// objectRef, and none of the fields the message itself carries.
func (j *Job) validateMIME() error {
	m := j.MIME
	for _, f := range [...]struct {
		name string
		set  bool
	}{{"subject", j.Subject != ""}, {"text", j.Text != ""}, {"html", j.HTML != ""},
		{"attachments", len(j.Attachments) > 0}, {"replyTo", len(j.ReplyTo) > 0},
		{"headers", len(j.Headers) > 0}, {"importance", j.Importance != ""}} {
		if f.set {
			return invalid(f.name, "must be absent when mime is set: the MIME message carries it")
		}
	}
	switch {
	case (m.ContentBase64 == "") == (m.ObjectRef == ""):
		return invalid("mime.contentBase64", "exactly one of contentBase64 or objectRef is required")
	case hasCtl(m.ObjectRef):
		return invalid("mime.objectRef", ctlRule)
	case m.ObjectRef != "":
		return nil
	}
	if m.raw != nil && m.ContentBase64 == m.encoded {
		// Made by InlineMIME and unchanged: valid base64 of raw.
		if n := len(m.raw); n > MaxMIMEBytes {
			return &InvalidError{Field: "mime.contentBase64",
				Rule:   fmt.Sprintf("%d bytes decoded, over the %d that one Graph sendMail request carries in MIME form", n, MaxMIMEBytes),
				Reason: ReasonMessageTooLarge}
		}
		return j.CheckMIMEHeader(m.raw)
	}
	n, ok := base64Size(m.ContentBase64)
	if !ok || !validBase64(m.ContentBase64) {
		return invalid("mime.contentBase64", "is not valid standard base64 (RFC 4648, padded, no line breaks)")
	}
	if n > MaxMIMEBytes {
		return &InvalidError{Field: "mime.contentBase64",
			Rule:   fmt.Sprintf("%d bytes decoded, over the %d that one Graph sendMail request carries in MIME form", n, MaxMIMEBytes),
			Reason: ReasonMessageTooLarge}
	}
	return j.CheckMIMEHeader(mimeHeaderFromBase64(m.ContentBase64))
}

func (j *Job) validateHeaders() error {
	total := 0
	var bad *InvalidError
	badKey := ""
	for k, v := range j.Headers {
		total += len(k) + len(v)
		if bad != nil && k > badKey {
			continue // report the first bad header in name order: stable messages
		}
		if err := checkHeader(k, v); err != nil {
			bad, badKey = err, k
		}
	}
	if bad != nil {
		return bad
	}
	if len(j.Headers) > MaxHeaders {
		return invalid("headers", fmt.Sprintf("%d headers, over the limit of %d: Graph takes at most 5 internet message headers per message and the worker adds %s", len(j.Headers), MaxHeaders, HeaderStampJobID))
	}
	if total > MaxHeaderBytes {
		return invalid("headers", fmt.Sprintf("%d bytes of names and values, over the limit of %d", total, MaxHeaderBytes))
	}
	return nil
}

func checkHeader(k, v string) *InvalidError {
	field := "headers[" + Quote(k) + "]"
	if len(k) < 3 || !strings.EqualFold(k[:2], "X-") {
		return invalid(field, "only X- headers are allowed (Graph rejects others)")
	}
	for i := 0; i < len(k); i++ {
		// RFC 5322 field-name: printable US-ASCII except colon.
		if c := k[i]; c < 33 || c > 126 || c == ':' {
			return invalid(field, "header name may contain only printable US-ASCII except colon (no CR, LF, NUL, space)")
		}
	}
	if strings.EqualFold(k, HeaderStampJobID) {
		return invalid(field, "is reserved: the worker stamps it")
	}
	if why := ReservedHeader(k); why != "" {
		return invalid(field, "is reserved: "+why)
	}
	if hasCtl(v) {
		return invalid(field, "header value "+ctlRule)
	}
	return nil
}

func (j *Job) validateAttachments() error {
	if len(j.Attachments) > MaxAttachments {
		return invalid("attachments", fmt.Sprintf("%d attachments, over the limit of %d per message (Exchange Online's file attachments limit)", len(j.Attachments), MaxAttachments))
	}
	total := 0
	for i := range j.Attachments {
		a := &j.Attachments[i]
		p := "attachments[" + strconv.Itoa(i) + "]"
		switch {
		case a.Name == "":
			return invalid(p+".name", "required")
		case hasCtl(a.Name):
			return invalid(p+".name", ctlRule)
		case hasCtl(a.ContentType):
			return invalid(p+".contentType", ctlRule)
		case hasCtl(a.ContentID):
			return invalid(p+".contentId", ctlRule)
		case a.Inline && a.ContentID == "":
			return invalid(p+".contentId", "required when inline is true")
		case (a.ContentBase64 == "") == (a.ObjectRef == ""):
			return invalid(p+".contentBase64", "exactly one of contentBase64 or objectRef is required")
		case hasCtl(a.ObjectRef):
			return invalid(p+".objectRef", ctlRule)
		}
		if a.ContentBase64 == "" {
			continue
		}
		n, ok := base64Size(a.ContentBase64)
		if !ok {
			return invalid(p+".contentBase64", "is not valid standard base64 (RFC 4648, padded, no line breaks)")
		}
		total += n
		if total > MaxInlineAttachmentBytes {
			return &InvalidError{
				Field:  "attachments",
				Rule:   fmt.Sprintf("inline attachments total more than %d bytes decoded, over what one Graph request carries; store large attachments in the MAIL_ATTACHMENTS object store and name them by objectRef (a profile with deliveryMode: draft sends them through upload sessions, up to 150 MB each)", MaxInlineAttachmentBytes),
				Reason: ReasonMessageTooLarge,
			}
		}
		if !validBase64(a.ContentBase64) {
			return invalid(p+".contentBase64", "is not valid standard base64 (RFC 4648, padded, no line breaks)")
		}
	}
	return nil
}

// base64Size returns the decoded size of padded standard base64 s, checking
// only its length and padding.
func base64Size(s string) (int, bool) {
	if len(s)%4 != 0 {
		return 0, false
	}
	n := len(s) / 4 * 3
	if strings.HasSuffix(s, "==") {
		n -= 2
	} else if strings.HasSuffix(s, "=") {
		n--
	}
	return n, true
}

// validBase64 decodes s in chunks into a stack buffer: no allocation
// proportional to the attachment. Line breaks, which encoding/base64 would
// silently skip, are rejected.
func validBase64(s string) bool {
	if strings.ContainsAny(s, "\r\n") {
		return false
	}
	var buf [3 * 1024]byte
	var src [4 * 1024]byte
	for len(s) > 0 {
		c := copy(src[:], s)
		s = s[c:]
		if _, err := base64.StdEncoding.Decode(buf[:], src[:c]); err != nil {
			return false
		}
		if len(s) > 0 && src[c-1] == '=' {
			return false // padding before the end
		}
	}
	return true
}

func (j *Job) validateMetadata() error {
	if len(j.Metadata) > MaxMetadataKeys {
		return invalid("metadata", fmt.Sprintf("%d keys, over the limit of %d", len(j.Metadata), MaxMetadataKeys))
	}
	var bad *InvalidError
	badKey := ""
	for k, v := range j.Metadata {
		if bad != nil && k > badKey {
			continue
		}
		field := "metadata[" + Quote(k) + "]"
		var err *InvalidError
		switch {
		case utf8.RuneCountInString(k) > MaxMetadataKeyChars:
			err = invalid(field, fmt.Sprintf("key is %d characters, over the limit of %d", utf8.RuneCountInString(k), MaxMetadataKeyChars))
		case utf8.RuneCountInString(v) > MaxMetadataValueChars:
			err = invalid(field, fmt.Sprintf("value is %d characters, over the limit of %d", utf8.RuneCountInString(v), MaxMetadataValueChars))
		}
		if err != nil {
			bad, badKey = err, k
		}
	}
	if bad != nil {
		return bad
	}
	return nil
}

// checkMailbox validates one mailbox. Its messages never carry the address
// or the display name (personal data: they reach logs, events and dead
// letters): the field path says which one failed.
func checkMailbox(field, s string) *InvalidError {
	if _, _, err := ParseAddress(s); err != nil {
		if hasCtl(s) {
			return invalid(field, ctlRule)
		}
		if errors.Is(err, errCtl) {
			return invalid(field, "display name "+ctlRule+" once decoded")
		}
		return invalid(field, "not an RFC 5322 mailbox (a@x.com or Name <a@x.com>)")
	}
	return nil
}

// ctlRule is the message for a control character where none is allowed.
const ctlRule = "contains a control character (CR, LF, NUL, ESC or another C0/C1 control; only tab is allowed)"

// errCtl is returned by ParseAddress for a control character.
var errCtl = errors.New("queue: address contains a control character")

// ParseAddress parses one RFC 5322 mailbox (a@x.com or Name <a@x.com>) with
// net/mail and returns its display name (RFC 2047 words decoded) and address.
// It rejects C0 and C1 control characters other than tab anywhere, including
// in a decoded display name.
func ParseAddress(s string) (name, addr string, err error) {
	if name, addr, ok := parseSimpleAddress(s); ok {
		return name, addr, nil
	}
	if hasCtl(s) {
		return "", "", errCtl
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", "", err
	}
	if hasCtl(a.Name) || hasCtl(a.Address) {
		return "", "", errCtl
	}
	return a.Name, a.Address, nil
}

// parseSimpleAddress is ParseAddress's fast path for the common shapes,
// which net/mail parses to the same result at a fraction of the cost (it
// showed in the worker's CPU profile: every address is parsed on validation,
// for the sender check and for the Graph message): "local@domain" and
// "Name Words <local@domain>", with a dot-atom local part, a domain of
// letters, digits, hyphens and dots, and a display name of letters, digits
// and single spaces. It reports false for anything else.
func parseSimpleAddress(s string) (name, addr string, ok bool) {
	addr = s
	if i := strings.IndexByte(s, '<'); i >= 0 {
		if i < 2 || s[i-1] != ' ' || s[len(s)-1] != '>' {
			return "", "", false
		}
		name, addr = s[:i-1], s[i+1:len(s)-1]
		if !simpleName(name) {
			return "", "", false
		}
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || !dotAtom(addr[:at], isAtext) || !dotAtom(addr[at+1:], isDomainChar) {
		return "", "", false
	}
	return name, addr, true
}

func simpleName(n string) bool {
	if n == "" || n[0] == ' ' || n[len(n)-1] == ' ' {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c == ' ' {
			if n[i-1] == ' ' {
				return false
			}
			continue
		}
		if !isAlnum(c) {
			return false
		}
	}
	return true
}

// dotAtom reports whether s is non-empty runs of ok characters joined by
// single dots.
func dotAtom(s string, ok func(byte) bool) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '.' {
			if s[i-1] == '.' {
				return false
			}
		} else if !ok(c) {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isAtext(c byte) bool { return isAlnum(c) || strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0 }

func isDomainChar(c byte) bool { return isAlnum(c) || c == '-' }

// hasCtl reports whether s holds a C0 control other than tab, DEL, or a C1
// control (U+0080 to U+009F): the characters that break a header line or
// steer a terminal. The schema's "line" pattern is the same set.
func hasCtl(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 && c != '\t' || c == 0x7f {
			return true
		}
		// C1 controls are U+0080-U+009F, encoded C2 80 to C2 9F.
		if c == 0xc2 && i+1 < len(s) && s[i+1] >= 0x80 && s[i+1] <= 0x9f {
			return true
		}
	}
	return false
}

// ValidJobID reports whether id matches [A-Za-z0-9_-]{1,128}.
func ValidJobID(id string) bool {
	if len(id) == 0 || len(id) > MaxJobIDLen {
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
// "s"+streamSeq. j and header may be nil; header returns a message header's
// value (nats.Header.Get).
func ResolveJobID(j *Job, header func(string) string, streamSeq uint64) string {
	if j != nil && j.ID != "" {
		return j.ID
	}
	if header != nil {
		if id := header(HeaderJobID); ValidJobID(id) {
			return id
		}
		if id := header(HeaderMsgID); ValidJobID(id) {
			return id
		}
	}
	return "s" + strconv.FormatUint(streamSeq, 10)
}

// NewJobID returns a random job id (22 URL-safe base64 characters, 128 bits),
// valid for ValidJobID.
func NewJobID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b[:])
}
