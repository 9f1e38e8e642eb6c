package graphmail

// Large MIME through a draft. A MIME job (SMTP door, mime.objectRef) whose
// message, stamped, is more than one sendMail request carries goes out
// through the draft flow (SendViaDraft, the same machinery and progress
// record as a JSON job's draft):
//
//  1. the message is read from the object store as a stream (never whole in
//     memory) and its MIME structure mapped: the byte range of every leaf
//     part, its headers, its decoded size (scanMIME);
//  2. the largest attachment parts (a filename, Content-Disposition
//     attachment, or a Content-ID) are taken out, nothing put in their
//     place, until the rest — headers, bodies, small parts — fits one
//     request in base64 (planMIME). "Create message in MIME format": POST
//     /users/{id}/messages with Content-Type: text/plain and the MIME
//     content in base64 creates a draft ("Create a draft of a new message in
//     either JSON or MIME format … Provide the applicable Internet message
//     headers and the MIME content, all encoded in base64 format in the
//     request body … Add any attachments and S/MIME properties to the MIME
//     content", https://learn.microsoft.com/graph/api/user-post-messages);
//     the request is capped at 4 MB like every Graph request ("S/MIME message
//     payloads are currently limited to 4 MB … HTTP 413", same page;
//     https://learn.microsoft.com/graph/api/message-post-attachments for the
//     4 MB of one request);
//  3. each part taken out is attached to that draft as a fileAttachment
//     (name, contentType, isInline, contentId: the part's Content-ID, so that
//     cid: references in the HTML still resolve), by POST when it fits one
//     request, else by an upload session (3 MB to 150 MB,
//     https://learn.microsoft.com/graph/outlook-large-attachments), its bytes
//     read from the object store and decoded from their transfer encoding
//     chunk by chunk;
//  4. the draft is sent (POST …/messages/{id}/send), with the exactly-once
//     rules of the draft flow (SendViaDraft).
//
// What stays as written: the whole header section (the worker's
// X-Mailworker-Job-Id stamp first, Message-ID, In-Reply-To, References,
// every other field) and every part not taken out, byte for byte. The parts
// taken out come back as attachments after the others.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/textproto"
	"sort"
	"strconv"
	"strings"

	"github.com/emersion/go-message/charset"

	"github.com/mailworker/mailworker/queue/contract"
)

const (
	// mimeDraftBudget is the largest MIME message (stamped) whose base64
	// fits one create request with the margin the draft flow keeps.
	mimeDraftBudget = (maxRequest - requestMargin) / 4 * 3
	// maxPartHeader bounds one part's header section while the structure
	// is mapped (a part's header is kept in memory until it ends).
	maxPartHeader = 64 << 10
	// maxMIMEDepth bounds multipart nesting; deeper multiparts are kept as
	// leaves (not taken apart).
	maxMIMEDepth = 32
	// mimeLineBuf is the line buffer of the scan: longer lines are read in
	// pieces (a boundary line is never that long).
	mimeLineBuf = 64 << 10
)

// MIMEFitsSendMail reports whether a MIME message of n bytes, stamped with
// the job id, goes by one sendMail request (Graph's 4 MB with the message
// in base64); larger ones need the draft path.
func MIMEFitsSendMail(n int64) bool {
	return n+mimeStampRoom <= contract.MaxMIMEBytes
}

// mimeOverAnyMailbox is the refusal of a MIME message of n bytes, over
// what any Exchange Online mailbox takes.
func mimeOverAnyMailbox(profile string, n int64) error {
	return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
		Message: fmt.Sprintf("MIME message of %d bytes (with the job id stamp), over the 150 MB that an Exchange Online mailbox takes at most "+
			"(Set-Mailbox -MaxSendSize, https://learn.microsoft.com/powershell/module/exchangepowershell/set-mailboxplan)", n)}
}

// mimeStampRoom is what the X-Mailworker-Job-Id stamp may add (an id is at
// most 128 characters).
const mimeStampRoom = int64(len(contract.HeaderStampJobID) + 4 + 128)

// mimeLeaf is one leaf part of a MIME message (or the top-level body of a
// message that is not multipart), located by byte offsets in the message.
type mimeLeaf struct {
	delim      int64 // start of the delimiter line that opens the part; -1: the top-level body
	end        int64 // start of the next delimiter line (or the end of the message)
	bodyStart  int64
	bodyEnd    int64 // the line break before the next delimiter belongs to it (RFC 2046 5.1.1)
	parent     int   // index of the enclosing multipart in mimeLayout.multiparts; -1: none
	b64Chars   int64 // base64 alphabet characters (without padding) in the body
	b64Invalid bool

	name, contentType, contentID, encoding string
	inline, attachment                     bool
}

// mimeMultipart is one multipart entity: its boundary and how many parts
// it has (for a stand-in part when every one is taken out).
type mimeMultipart struct {
	boundary string
	parts    int
}

// mimeLayout is a MIME message's structure.
type mimeLayout struct {
	size       int64
	headerEnd  int64
	header     []byte // the top-level header section
	leaves     []mimeLeaf
	multiparts []mimeMultipart
}

// scanMIME maps r's MIME structure in one pass, holding one line (at most
// mimeLineBuf bytes) and one part header at a time. Errors are the
// reader's, or a header section too large.
func scanMIME(r io.Reader) (*mimeLayout, error) {
	br := bufio.NewReaderSize(r, mimeLineBuf)
	lay := &mimeLayout{headerEnd: -1}
	var stack []mimeFrame
	const (
		inHeader = iota
		inBody
		between // preamble or epilogue of a multipart
	)
	state := inHeader
	var hdr []byte
	cur := mimeLeaf{delim: -1, parent: -1}
	var off int64
	prevEOL := int64(0) // line break length of the previous line
	lineStart, midLine := int64(0), false
	closeLeaf := func(at int64) {
		cur.end = at
		cur.bodyEnd = max(cur.bodyStart, at-prevEOL)
		lay.leaves = append(lay.leaves, cur)
	}
	for {
		frag, err := br.ReadSlice('\n')
		if len(frag) == 0 && err != nil {
			if err == io.EOF {
				break
			}
			if err != bufio.ErrBufferFull {
				return nil, err
			}
		}
		start := off
		off += int64(len(frag))
		first := !midLine
		if first {
			lineStart = start
		}
		complete := err == nil || err == io.EOF
		midLine = err == bufio.ErrBufferFull
		if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
			return nil, err
		}

		// A delimiter line of any open multipart ends the current part.
		// A part whose header section never ended (no empty line) is an
		// empty part.
		if first && complete && (state != inHeader || lay.headerEnd >= 0) && len(stack) > 0 && bytes.HasPrefix(frag, []byte("--")) {
			if k, closing, ok := matchDelimiter(frag, stack); ok {
				if state == inHeader {
					describeLeaf(&cur, hdr)
					cur.bodyStart, state = lineStart, inBody
				}
				if state == inBody {
					closeLeaf(lineStart)
				}
				stack = stack[:k+1]
				if closing {
					stack = stack[:k]
					state = between
				} else {
					lay.multiparts[stack[k].mp].parts++
					cur = mimeLeaf{delim: lineStart, parent: stack[k].mp}
					hdr = hdr[:0]
					state = inHeader
				}
				prevEOL = eolLen(frag)
				if err == io.EOF {
					break
				}
				continue
			}
		}
		switch state {
		case inHeader:
			if first && complete && (string(frag) == "\r\n" || string(frag) == "\n") {
				if lay.headerEnd < 0 {
					lay.headerEnd, lay.header = lineStart, bytes.Clone(hdr)
				}
				mp := describeLeaf(&cur, hdr)
				if mp != "" && len(stack) < maxMIMEDepth {
					lay.multiparts = append(lay.multiparts, mimeMultipart{boundary: mp})
					stack = append(stack, mimeFrame{boundary: mp, mp: len(lay.multiparts) - 1})
					state = between
				} else {
					cur.bodyStart = off
					state = inBody
				}
				break
			}
			if len(hdr)+len(frag) > maxPartHeader && lay.headerEnd >= 0 {
				return nil, fmt.Errorf("%w: a part's header section is over %d bytes", contract.ErrAttachmentCorrupt, maxPartHeader)
			}
			if len(hdr)+len(frag) > contract.MaxMIMEHeaderBytes+1 {
				return nil, fmt.Errorf("%w: the header section is over %d bytes", contract.ErrAttachmentCorrupt, contract.MaxMIMEHeaderBytes)
			}
			hdr = append(hdr, frag...)
		case inBody:
			if cur.encoding == "base64" {
				countBase64(&cur, frag)
			}
		}
		if complete {
			prevEOL = eolLen(frag)
		}
		if err == io.EOF {
			break
		}
	}
	lay.size = off
	switch {
	case state == inBody:
		prevEOL = 0
		closeLeaf(off)
	case lay.headerEnd < 0:
		// Headers only: no body.
		lay.headerEnd, lay.header = off, bytes.Clone(hdr)
	}
	return lay, nil
}

func eolLen(line []byte) int64 {
	switch {
	case bytes.HasSuffix(line, []byte("\r\n")):
		return 2
	case bytes.HasSuffix(line, []byte("\n")):
		return 1
	}
	return 0
}

// mimeFrame is an open multipart during the scan.
type mimeFrame struct {
	boundary string
	mp       int // index in mimeLayout.multiparts
}

// matchDelimiter reports whether line is "--boundary" or "--boundary--" of
// a multipart on the stack (innermost first), with transport padding.
func matchDelimiter(line []byte, stack []mimeFrame) (k int, closing, ok bool) {
	l := bytes.TrimRight(line, " \t\r\n")[2:]
	for k = len(stack) - 1; k >= 0; k-- {
		b := stack[k].boundary
		if !bytes.HasPrefix(l, []byte(b)) {
			continue
		}
		switch rest := l[len(b):]; string(rest) {
		case "":
			return k, false, true
		case "--":
			return k, true, true
		}
	}
	return 0, false, false
}

// countBase64 counts the base64 alphabet characters of a body line; any
// other character but whitespace and padding marks the part invalid.
func countBase64(l *mimeLeaf, frag []byte) {
	for _, c := range frag {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/':
			l.b64Chars++
		case c == '=', c == ' ', c == '\t', c == '\r', c == '\n':
		default:
			l.b64Invalid = true
		}
	}
}

// describeLeaf reads a part's header section: its content type, transfer
// encoding, filename (RFC 2231 and RFC 2047, any charset), Content-ID and
// disposition. It returns the boundary when the part is a multipart.
func describeLeaf(l *mimeLeaf, hdr []byte) (boundary string) {
	h, _ := textproto.NewReader(bufio.NewReader(bytes.NewReader(append(bytes.Clone(hdr), "\r\n"...)))).ReadMIMEHeader()
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt == "" {
		mt, params = "text/plain", nil
	}
	if strings.HasPrefix(mt, "multipart/") && params["boundary"] != "" {
		return params["boundary"]
	}
	l.contentType = mt
	l.encoding = strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	disp, dparams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	l.name = partFileName(h, dparams, params)
	l.contentID = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(h.Get("Content-Id")), "<"), ">"))
	// An attachment: said so, or named, or referenced by cid: (an inline
	// image). A text part with none of those is a body, never taken out.
	l.attachment = disp == "attachment" || l.name != "" || l.contentID != ""
	// isInline: a part referenced by Content-ID and not marked attachment
	// (Graph's fileAttachment isInline with contentId, as the inline image
	// of an HTML body, https://learn.microsoft.com/graph/api/resources/fileattachment).
	l.inline = l.contentID != "" && disp != "attachment"
	return ""
}

// partFileName is a part's file name: Content-Disposition filename (RFC
// 2231 encoded or continued, in any charset), else Content-Type name, each
// with RFC 2047 words decoded in any charset.
func partFileName(h textproto.MIMEHeader, dparams, params map[string]string) string {
	name := dparams["filename"]
	if name == "" {
		name = rfc2231(h.Get("Content-Disposition"), "filename")
	}
	if name == "" {
		name = params["name"]
	}
	if name == "" {
		name = rfc2231(h.Get("Content-Type"), "name")
	}
	if d, err := nameDecoder.DecodeHeader(name); err == nil {
		name = d
	}
	return strings.TrimSpace(name)
}

var nameDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

// rfc2231 decodes an RFC 2231 extended parameter (name*=charset'lang'…, or
// its continuations name*0*=…) in a charset other than UTF-8 and US-ASCII,
// which mime.ParseMediaType leaves out. "" when there is none.
func rfc2231(value, param string) string {
	var parts []string
	cs := ""
	for _, p := range strings.Split(value, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		v = strings.Trim(strings.TrimSpace(v), `"`)
		if !strings.HasPrefix(k, param+"*") {
			continue
		}
		rest := strings.TrimPrefix(k, param+"*")
		n := 0
		if rest != "" {
			var err error
			if n, err = strconv.Atoi(strings.TrimSuffix(rest, "*")); err != nil || n > 64 {
				continue
			}
		}
		encoded := rest == "" || strings.HasSuffix(rest, "*")
		if encoded && n == 0 {
			f := strings.SplitN(v, "'", 3)
			if len(f) != 3 {
				continue
			}
			cs, v = f[0], f[2]
		}
		if encoded {
			if u, err := pctDecode(v); err == nil {
				v = u
			}
		}
		for len(parts) <= n {
			parts = append(parts, "")
		}
		parts[n] = v
	}
	raw := strings.Join(parts, "")
	if raw == "" || cs == "" {
		return raw
	}
	r, err := charset.Reader(cs, strings.NewReader(raw))
	if err != nil {
		return raw
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return raw
	}
	return string(b)
}

func pctDecode(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				return "", err
			}
			b.WriteByte(byte(v))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String(), nil
}

// planMIME picks the leaves to take out: attachment parts, largest first
// (then in order), until the rest is at most budget bytes. It depends on
// the layout alone, so a resumed attempt makes the same plan. ok is false
// when the message cannot be made to fit.
func planMIME(lay *mimeLayout, budget int64) (out []int, ok bool) {
	rest := lay.size
	var cands []int
	for i, l := range lay.leaves {
		switch {
		case l.delim >= 0 && l.attachment:
			cands = append(cands, i)
		case l.delim < 0 && len(lay.multiparts) == 0 && (l.attachment || !strings.HasPrefix(l.contentType, "text/")):
			// A message that is one file (Content-Type: application/pdf
			// at the top): the file is taken out and the message becomes
			// a multipart with an empty text part (singlePart).
			cands = append(cands, i)
		}
	}
	span := func(l mimeLeaf) int64 {
		if l.delim < 0 {
			return l.end - lay.headerEnd - singlePartRoom
		}
		return l.end - l.delim
	}
	sort.SliceStable(cands, func(a, b int) bool { return span(lay.leaves[cands[a]]) > span(lay.leaves[cands[b]]) })
	for _, i := range cands {
		if rest <= budget {
			break
		}
		rest -= span(lay.leaves[i])
		out = append(out, i)
	}
	// A multipart left without parts gets an empty text part (below): room
	// for it.
	rest += int64(len(emptyPart(""))+70) * int64(len(lay.multiparts))
	sort.Ints(out)
	return out, rest <= budget || len(out) == 0 && lay.size <= budget
}

// emptyPart stands in for the parts of a multipart that were all taken
// out: an empty text part (a multipart needs one body part, RFC 2046 5.1.1).
func emptyPart(boundary string) string {
	return "--" + boundary + "\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\r\n"
}

// skeleton copies the message from r without the leaves in out (sorted),
// an empty text part standing in for a multipart left without any. It
// returns an error when more than limit bytes would result.
func skeleton(r io.Reader, lay *mimeLayout, out []int, limit int64) ([]byte, error) {
	left := map[int]int{}
	for _, i := range out {
		left[lay.leaves[i].parent]++
	}
	if len(out) == 1 && lay.leaves[out[0]].delim < 0 {
		return singlePart(lay), nil
	}
	var b bytes.Buffer
	rest := lay.size + int64(len(emptyPart(""))+70)*int64(len(lay.multiparts))
	for _, i := range out {
		rest -= lay.leaves[i].end - lay.leaves[i].delim
	}
	b.Grow(int(max(0, min(rest, limit))) + 1) // one allocation, not doublings
	var pos int64
	for _, i := range out {
		l := lay.leaves[i]
		if _, err := io.CopyN(&b, r, l.delim-pos); err != nil {
			return nil, err
		}
		if _, err := io.CopyN(io.Discard, r, l.end-l.delim); err != nil {
			return nil, err
		}
		pos = l.end
		mp := lay.multiparts[l.parent]
		if left[l.parent]--; left[l.parent] == 0 && mp.parts == countIn(lay, out, l.parent) {
			b.WriteString(emptyPart(mp.boundary))
		}
		if int64(b.Len()) > limit {
			return nil, errors.New("over the limit")
		}
	}
	if _, err := io.Copy(&b, io.LimitReader(r, limit-int64(b.Len())+1)); err != nil {
		return nil, err
	}
	if int64(b.Len()) > limit {
		return nil, errors.New("over the limit")
	}
	return b.Bytes(), nil
}

// singlePartRoom bounds what singlePart adds to the header section.
const singlePartRoom = 256

// singlePartBoundary separates the stand-in text part of a message that was
// one file; it cannot occur in the header section it follows.
const singlePartBoundary = "=_mailworker_part_taken_out"

// singlePart is the draft's MIME of a message that was one file at the top
// level: its header section without the fields that described the file
// (Content-Type, Content-Transfer-Encoding, Content-Disposition,
// Content-ID, Content-Description), a multipart/mixed Content-Type, and an
// empty text part; the file goes as an attachment.
func singlePart(lay *mimeLayout) []byte {
	h := dropFields(lay.header, "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-Id", "Content-Description")
	eol := "\r\n"
	if !bytes.Contains(lay.header, []byte("\r\n")) && len(lay.header) > 0 {
		eol = "\n"
	}
	if len(h) > 0 && !bytes.HasSuffix(h, []byte("\n")) {
		h = append(h, eol...)
	}
	s := "Content-Type: multipart/mixed; boundary=\"" + singlePartBoundary + "\"\r\n\r\n" + emptyPart(singlePartBoundary) + "--" + singlePartBoundary + "--\r\n"
	if eol == "\n" {
		s = strings.ReplaceAll(s, "\r\n", "\n")
	}
	return append(h, s...)
}

// dropFields returns a header section without the fields named (and their
// continuation lines).
func dropFields(hdr []byte, names ...string) []byte {
	out := make([]byte, 0, len(hdr))
	skipping := false
	for off := 0; off < len(hdr); {
		next := len(hdr)
		if i := bytes.IndexByte(hdr[off:], '\n'); i >= 0 {
			next = off + i + 1
		}
		line := hdr[off:next]
		if line[0] != ' ' && line[0] != '\t' {
			k, _, _ := bytes.Cut(line, []byte(":"))
			skipping = false
			for _, n := range names {
				if strings.EqualFold(strings.TrimSpace(string(k)), n) {
					skipping = true
				}
			}
		}
		if !skipping {
			out = append(out, line...)
		}
		off = next
	}
	return out
}

func countIn(lay *mimeLayout, out []int, mp int) int {
	n := 0
	for _, i := range out {
		if lay.leaves[i].parent == mp {
			n++
		}
	}
	return n
}

// partReader decodes a part's body from its transfer encoding.
func partReader(encoding string, r io.Reader) io.Reader {
	switch encoding {
	case "base64":
		return base64.NewDecoder(base64.RawStdEncoding, &b64Filter{r: r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	return r
}

// b64Filter drops whitespace and padding, so that RawStdEncoding decodes
// padded and unpadded base64 with any line length.
type b64Filter struct{ r io.Reader }

func (f *b64Filter) Read(p []byte) (int, error) {
	for {
		n, err := f.r.Read(p)
		j := 0
		for _, c := range p[:n] {
			if c != '\r' && c != '\n' && c != ' ' && c != '\t' && c != '=' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// decodedSize is the size of a leaf's content once decoded; read opens the
// leaf's raw body when it must be decoded to know (quoted-printable).
func decodedSize(l *mimeLeaf, read func() (io.ReadCloser, error)) (int64, error) {
	switch l.encoding {
	case "base64":
		if l.b64Invalid || l.b64Chars%4 == 1 {
			return 0, fmt.Errorf("%w: a part's base64 content is not valid", contract.ErrAttachmentCorrupt)
		}
		return l.b64Chars * 6 / 8, nil
	case "quoted-printable":
		rc, err := read()
		if err != nil {
			return 0, err
		}
		defer rc.Close()
		n, err := io.Copy(io.Discard, partReader(l.encoding, rc))
		if err != nil {
			return 0, fmt.Errorf("%w: a part's quoted-printable content: %v", contract.ErrAttachmentCorrupt, err)
		}
		return n, nil
	}
	return l.bodyEnd - l.bodyStart, nil
}

// attachmentName is the name a part taken out gets: its own, else one made
// from its position and content type.
func attachmentName(l *mimeLeaf, i int) string {
	if l.name != "" {
		return l.name
	}
	ext := ""
	if exts, _ := mime.ExtensionsByType(l.contentType); len(exts) > 0 {
		ext = exts[0]
	}
	return fmt.Sprintf("part%d%s", i+1, ext)
}

type readCloser struct {
	io.Reader
	io.Closer
}

// mimeDraft builds the DraftMail of a MIME job whose message is object ref
// of profile's store (size bytes): the message without its large parts,
// stamped, and the parts taken out as attachments read from the store.
// Errors are *contract.SendError: invalid_job for a message the worker's
// check refuses or a corrupt part, message_too_large when the rest does not
// fit one request, retryable internal when the store fails.
//
// Without withBody (the draft exists already: only its attachments are
// left to add) the rest of the message is not built, and Message.MIME is
// empty.
func (s *Sender) mimeDraft(ctx context.Context, profile, from, jobID string, job *contract.Job, withBody bool) (DraftMail, error) {
	ref := job.MIME.ObjectRef
	store := s.attachments
	fail := func(err error) error {
		if se, ok := err.(*contract.SendError); ok {
			return se
		}
		se := sourceError(profile, err).(*contract.SendError)
		se.Message = "mime.objectRef: " + err.Error()
		return se
	}
	if store == nil {
		return DraftMail{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob, Profile: profile,
			Message: "mime.objectRef: no attachment store"}
	}
	// The size first, from the object's metadata: nothing is read of a
	// message no mailbox takes.
	if n, err := store.Size(ctx, profile, ref); err == nil && int64(n)+mimeStampRoom > contract.MaxMessageBytesLimit {
		return DraftMail{}, mimeOverAnyMailbox(profile, int64(n))
	}
	open := func(ctx context.Context, off int64) (io.ReadCloser, error) {
		rc, _, err := store.Open(ctx, profile, ref, off)
		return rc, err
	}
	rc, err := open(ctx, 0)
	if err != nil {
		return DraftMail{}, fail(err)
	}
	lay, err := scanMIME(rc)
	rc.Close()
	if err != nil {
		return DraftMail{}, fail(err)
	}
	// The worker's own check of the header section, as for a message sent
	// by sendMail (what the door accepted must still hold).
	if err := job.CheckMIMEHeader(append(bytes.Clone(lay.header), "\r\n"...)); err != nil {
		reason := contract.ReasonInvalidJob
		var ie *contract.InvalidError
		if errors.As(err, &ie) && ie.Reason != "" {
			reason = ie.Reason
		}
		return DraftMail{}, &contract.SendError{Class: contract.ClassPermanent, Reason: reason, Profile: profile, Message: err.Error()}
	}
	stampLen := int64(len(contract.HeaderStampJobID) + 4 + len(jobID))
	out, ok := planMIME(lay, mimeDraftBudget-stampLen)
	if !ok {
		return DraftMail{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
			Message: fmt.Sprintf("MIME message of %d bytes: without its attachment parts it is still over the %d bytes that one Graph request "+
				"carries in base64 (headers and body text cannot go by upload session)", lay.size, mimeDraftBudget)}
	}
	mail := DraftMail{Attachments: make([]DraftAttachment, 0, len(out))}
	for _, i := range out {
		l := lay.leaves[i]
		raw := func(ctx context.Context) (io.ReadCloser, error) {
			rc, err := open(ctx, l.bodyStart)
			if err != nil {
				return nil, err
			}
			return readCloser{io.LimitReader(rc, l.bodyEnd-l.bodyStart), rc}, nil
		}
		n, err := decodedSize(&l, func() (io.ReadCloser, error) { return raw(ctx) })
		if err != nil {
			return DraftMail{}, fail(err)
		}
		if n > MaxAttachmentBytes {
			return DraftMail{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: profile,
				Message: fmt.Sprintf("a MIME part of %d bytes: Graph attaches files up to 150 MB (%d bytes)", n, MaxAttachmentBytes)}
		}
		enc := l.encoding
		mail.Attachments = append(mail.Attachments, DraftAttachment{Name: attachmentName(&l, i), ContentType: l.contentType,
			Inline: l.inline, ContentID: l.contentID, Size: n,
			Open: func(ctx context.Context, off int64) (io.ReadCloser, error) {
				rc, err := raw(ctx)
				if err != nil {
					return nil, err
				}
				d := partReader(enc, rc)
				if off > 0 {
					if _, err := io.CopyN(io.Discard, d, off); err != nil {
						rc.Close()
						return nil, fmt.Errorf("%w: decoding a MIME part: %v", contract.ErrAttachmentCorrupt, err)
					}
				}
				return readCloser{corruptOnError{d}, rc}, nil
			}})
	}
	if !withBody {
		mail.Message = &Message{From: from, MIME: []byte{}, To: addresses(job.To), Cc: addresses(job.Cc), Bcc: addresses(job.Bcc),
			Headers: mimeXHeaders(lay.header)}
		return mail, nil
	}
	rc, err = open(ctx, 0)
	if err != nil {
		return DraftMail{}, fail(err)
	}
	body, err := skeleton(rc, lay, out, mimeDraftBudget-stampLen)
	rc.Close()
	if err != nil {
		return DraftMail{}, fail(err)
	}
	body = StampMIME(body, contract.HeaderStampJobID, jobID)
	mail.Message = &Message{From: from, MIME: body, To: addresses(job.To), Cc: addresses(job.Cc), Bcc: addresses(job.Bcc),
		Headers: mimeXHeaders(body)}
	return mail, nil
}

// corruptOnError marks a decoding error as corrupt content (permanent):
// the object store's own errors come through Close or the raw reader.
type corruptOnError struct{ r io.Reader }

func (c corruptOnError) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	var ce base64.CorruptInputError
	if errors.As(err, &ce) {
		err = fmt.Errorf("%w: decoding a MIME part: %v", contract.ErrAttachmentCorrupt, err)
	}
	return n, err
}

// createMIMEDraft creates msg.MIME as a draft: POST /users/{from}/messages
// with Content-Type: text/plain and the message in base64
// (https://learn.microsoft.com/graph/api/user-post-messages, "Create a
// message in MIME format"), with an immutable id as every draft. A body
// over Graph's 4 MB is refused before any call (message_too_large). Errors
// are *contract.SendError (Op createDraft), never ambiguous.
func (c *Client) createMIMEDraft(ctx context.Context, msg *Message) (MessageInfo, error) {
	body := graphMIME(msg)
	if len(body) > MaxRequestBytes {
		return MessageInfo{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: c.name,
			Op: OpCreateDraft, Message: fmt.Sprintf("the MIME draft's create request would be %d bytes, over Graph's 4 MB (%d bytes) per request", len(body), MaxRequestBytes)}
	}
	res, data, err := c.do(ctx, request{op: OpCreateDraft, method: "POST", url: c.userURL(msg.From, "messages"), body: body,
		ctype: "text/plain", immutableID: true, needBody: true})
	if err != nil {
		return MessageInfo{}, err
	}
	var info MessageInfo
	if err := json.Unmarshal(data, &info); err != nil || info.ID == "" {
		return MessageInfo{}, c.badAnswer(OpCreateDraft, res, "Graph answered the draft without an id")
	}
	return info, nil
}

// mimeNeedsDraft reports whether a MIME job goes through a draft: its
// message, stamped, is over one sendMail request. Only an objectRef message
// can be (contentBase64 is capped at contract.MaxMIMEBytes by validation).
func (s *Sender) mimeNeedsDraft(ctx context.Context, profile string, job *contract.Job) (bool, error) {
	if job.MIME.ObjectRef == "" || s.attachments == nil {
		return false, nil
	}
	n, err := s.attachments.Size(ctx, profile, job.MIME.ObjectRef)
	switch {
	case errors.Is(err, contract.ErrNoAttachment):
		return false, nil // the send dead-letters it invalid_job
	case err != nil:
		return false, &contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonInternal, Profile: profile,
			Message: "mime.objectRef: " + err.Error(), Err: err}
	}
	return !MIMEFitsSendMail(int64(n)), nil
}

// sendMIMEDraft sends a MIME job through a draft (mimeDraft), resuming from
// draft as sendDraft does for a JSON job.
func (s *Sender) sendMIMEDraft(ctx context.Context, c *Client, profile, jobID string, job *contract.Job,
	draft *contract.Draft, save func(context.Context, *contract.Draft) error) (contract.SendResult, error) {
	_, from, _ := contract.ParseAddress(job.From)
	if draft != nil && draft.SendAt != nil {
		// A send that may have gone out is only looked up (SendViaDraft,
		// resumeSend): the message is not read again (during the transit
		// window that is every draftLookupEvery), and a message the store
		// no longer holds is still settled.
		return c.SendViaDraft(ctx, DraftMail{Message: &Message{From: from, MIME: []byte{}}}, draft, func(ctx context.Context) error {
			if save == nil {
				return nil
			}
			return save(ctx, draft)
		})
	}
	mail, err := s.mimeDraft(ctx, profile, from, jobID, job, draft == nil || draft.ID == "")
	if err != nil {
		return contract.SendResult{}, err
	}
	if e := c.checkLimits(mail.Message); e != nil {
		return contract.SendResult{}, e
	}
	p := draft
	if p == nil {
		p = &contract.Draft{}
	}
	var saveFn func(context.Context) error
	if save != nil {
		saveFn = func(ctx context.Context) error { return save(ctx, p) }
	}
	return c.SendViaDraft(ctx, mail, p, saveFn)
}
