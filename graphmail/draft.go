package graphmail

// The draft flow (draft delivery mode): a mail too large for one sendMail
// request, or one that must be provably sent once, goes out as a draft.
//
//  1. POST /users/{from}/messages with Prefer: IdType="ImmutableId": the draft, with the
//     attachments that fit the 4 MB request (https://learn.microsoft.com/graph/api/user-post-messages,
//     https://learn.microsoft.com/graph/outlook-immutable-id "Immutable ID with sending mail");
//  2. each other attachment whose POST request (base64 content in JSON) fits Graph's 4 MB:
//     POST …/messages/{id}/attachments (https://learn.microsoft.com/graph/api/message-post-attachments);
//     larger ones, up to 150 MB: POST …/attachments/createUploadSession, then PUT chunks to the
//     pre-authenticated uploadUrl, without an Authorization header, in order, up to 4 MB each
//     (https://learn.microsoft.com/graph/outlook-large-attachments,
//     https://learn.microsoft.com/graph/api/attachment-createuploadsession);
//  3. POST …/messages/{id}/send (202, https://learn.microsoft.com/graph/api/message-send);
//  4. after a send that may have gone out: settle it by what can be proven (resumeSend): the
//     message by its immutable id no longer a draft, or a message with the saved
//     internetMessageId in Sent Items, is sent; anything else is "not known yet"
//     (*contract.PendingError), never a reason to send again by itself.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// Sizes of the draft flow.
const (
	// UploadSessionMin: attachments from 3 MB on go through an upload
	// session ("If the file size is between 3 MB and 150 MB, create an upload
	// session", https://learn.microsoft.com/graph/outlook-large-attachments).
	// A smaller one goes by POST unless its POST request would exceed 4 MB
	// (postFits): base64 makes 3,145,727 bytes 4,194,304 before the JSON
	// around them. Graph takes upload sessions for such files: the smallest
	// one measured is 2 MiB (2,097,152 bytes, msgraph-sdk-java#52), under
	// which Graph answers ErrorAttachmentSizeShouldNotBeLessThanMinimumSize.
	UploadSessionMin = 3 * 1024 * 1024
	// UploadSessionFloor is that measured minimum: postFits never sends a
	// file this small to an upload session (its POST always fits).
	UploadSessionFloor = 2 * 1024 * 1024
	// MaxAttachmentBytes: "you can attach files up to 150 MB"
	// (https://learn.microsoft.com/graph/outlook-large-attachments). The page
	// does not say whether its MB is 10^6 or 2^20 bytes: the cap takes the
	// smaller, 150,000,000 bytes. The mailbox's maximum message size
	// (contract.MessageSize, at most 150 MB with the attachments
	// base64-encoded) refuses such a file long before this cap does.
	MaxAttachmentBytes = 150_000_000
	// DefaultUploadChunkBytes is four times 320 KiB (1,280 KiB): a multiple
	// of 320 KiB (the rule of OneDrive's upload sessions, kept here too)
	// under the 4 MB per PUT of Outlook's. Memory follows uploads in flight
	// × chunk: loadtest "large" measured a worker peak of 94 MB at 18
	// uploads in flight with it, 156 MB with 3,200 KiB chunks.
	DefaultUploadChunkBytes = 4 * uploadChunkUnit
	uploadChunkUnit         = 320 * 1024
	maxUploadChunk          = 4 * 1024 * 1024
	// maxRequest is Graph's 4 MB request limit; the create request keeps a
	// margin under it.
	maxRequest    = 4 * 1024 * 1024
	requestMargin = 64 * 1024
	// attachmentJSON bounds the JSON of one fileAttachment around its name,
	// content type, content id and base64 content (@odata.type, the keys,
	// quotes, isInline; measured 131 bytes).
	attachmentJSON = 160
)

// DraftAttachment is an attachment of a mail sent through a draft. A small
// one has its Content; a large one is streamed by Open, from an offset, and
// never held whole in memory.
type DraftAttachment struct {
	Name, ContentType string
	Inline            bool
	ContentID         string
	Size              int64
	Content           []byte // set, or Open is
	// Open returns the content from byte offset on.
	Open func(ctx context.Context, offset int64) (io.ReadCloser, error)
}

func (a *DraftAttachment) open(ctx context.Context, off int64) (io.ReadCloser, error) {
	if a.Open != nil {
		return a.Open(ctx, off)
	}
	return io.NopCloser(bytes.NewReader(a.Content[off:])), nil
}

// DraftMail is a mail to send through a draft: Message (without
// Attachments) and its attachments in order.
type DraftMail struct {
	Message     *Message
	Attachments []DraftAttachment
}

// MessageInfo is what GetMessage reports about a message.
type MessageInfo struct {
	ID                string `json:"id"`
	InternetMessageID string `json:"internetMessageId"`
	IsDraft           bool   `json:"isDraft"`
}

// requestSize is the size of a's fileAttachment JSON with its content in
// base64 (the POST …/attachments body, or its share of the create request).
// Names are counted twice: JSON escaping at most doubles the usual ones.
func requestSize(a *DraftAttachment) int64 {
	return attachmentJSON + 2*int64(len(a.Name)+len(a.ContentType)+len(a.ContentID)) + (a.Size+2)/3*4
}

// PostFits reports whether an attachment of size bytes with these names goes
// by one POST: under UploadSessionMin and its request under Graph's 4 MB
// (with a margin); otherwise by an upload session. The route follows the
// size of the request, not the raw size: 3,145,727 bytes are 4,194,304 in
// base64, and their POST would be answered 413.
func PostFits(size int64, name, contentType, contentID string) bool {
	a := DraftAttachment{Name: name, ContentType: contentType, ContentID: contentID, Size: size}
	return a.postFits()
}

func (a *DraftAttachment) postFits() bool {
	if a.Size < UploadSessionFloor {
		return true
	}
	return a.Size < UploadSessionMin && requestSize(a) <= maxRequest-requestMargin
}

// plan splits the attachments: those that go inside the create request, and
// the rest, added one by one afterwards in order. It depends on its input
// alone, so a resumed attempt makes the same plan.
func plan(m DraftMail) (inline []Attachment, rest []int) {
	if m.Message.MIME != nil {
		// A MIME draft carries its small parts in its MIME (mimedraft.go).
		for i := range m.Attachments {
			rest = append(rest, i)
		}
		return nil, rest
	}
	_, size := gmessage(m.Message)
	budget := int64(maxRequest - requestMargin - size)
	for i := range m.Attachments {
		a := &m.Attachments[i]
		need := requestSize(a)
		if a.postFits() && a.Content != nil && need <= budget {
			budget -= need
			inline = append(inline, Attachment{Name: a.Name, ContentType: a.ContentType, Content: a.Content,
				Inline: a.Inline, ContentID: a.ContentID})
			continue
		}
		rest = append(rest, i)
	}
	return inline, rest
}

// SendViaDraft sends m through a draft, resuming from p (the zero Draft to
// start) and calling save after every step that changes p, so that a
// restarted worker resumes where this one stopped. save must succeed before
// a send is attempted: p.SendAt marks that the mail may have gone out.
//
// When p.SendAt is set (an earlier attempt may have sent the mail) nothing
// is sent: the message is looked up (resumeSend) and the result is either
// `sent` (Lookup contract.LookupSent) or a *contract.PendingError saying what the
// look-up saw, for the worker to decide on (look again later, or after the
// transit window: taken as sent, or the draft proven unsent; see
// worker.decide). The worker clears SendAt when it decides to send again.
//
// Every other error is a *contract.SendError with Op naming the failed call
// and ClientRequestID the GUID that call sent (empty when no request was
// made); only the send itself can be Ambiguous.
//
// A worker that stops (killed, out of memory) at any step leaves its
// progress in the job state, and the job's next attempt (worker.decide:
// decideStopped, not ambiguous) resumes from it:
//
//   - before the draft exists (p.ID empty; the first save says "a draft"):
//     a new draft is created; at worst an orphan draft is left, which
//     `mailworker check` reports;
//   - while attachments are added (p.Done of them): from the next one;
//   - during an upload (p.Upload: the session and its next byte, saved
//     after each chunk): the upload goes on from the saved byte (a PUT the
//     session refuses makes it ask the session where it stands, Upload),
//     or a new session is made once it is about to expire or Graph no
//     longer knows it (ErrSessionGone);
//   - after p.SendAt was saved: nothing is sent; the draft is looked up
//     (resumeSend).
func (c *Client) SendViaDraft(ctx context.Context, m DraftMail, p *contract.Draft, save func(context.Context) error) (contract.SendResult, error) {
	from := m.Message.From
	inline, rest := plan(m)
	if p.SendAt != nil {
		return c.resumeSend(ctx, from, p)
	}
	if p.ID == "" {
		// Say first that this job goes through a draft: a worker that dies
		// during the create leaves a job the next attempt knows cannot have
		// sent anything (at worst an orphan draft, which check reports).
		p.Mailbox, p.CreatedAt = from, time.Now().UTC()
		if err := c.saved(ctx, save); err != nil {
			return contract.SendResult{}, err
		}
		msg := *m.Message
		msg.Attachments = inline
		info, err := c.CreateDraft(ctx, &msg)
		if err != nil {
			return contract.SendResult{}, err
		}
		p.ID, p.InternetMessageID = info.ID, info.InternetMessageID
		if err := c.saved(ctx, save); err != nil {
			return contract.SendResult{}, err
		}
	}
	for p.Done < len(rest) {
		a := &m.Attachments[rest[p.Done]]
		if err := c.attach(ctx, from, p, a, save); err != nil {
			if draftGone(err) {
				// The draft is gone (deleted in the mailbox) before any send:
				// start over with a new one on the next attempt.
				*p = contract.Draft{Mailbox: from, CreatedAt: time.Now().UTC()}
				if serr := c.saved(ctx, save); serr != nil {
					return contract.SendResult{}, serr
				}
			}
			return contract.SendResult{}, err
		}
		p.Done++
		p.Upload = nil
		if err := c.saved(ctx, save); err != nil {
			return contract.SendResult{}, err
		}
	}
	now := time.Now().UTC()
	p.SendAt = &now
	if err := c.saved(ctx, save); err != nil {
		p.SendAt = nil
		return contract.SendResult{}, err
	}
	return c.sendDraft(ctx, from, p, save)
}

func (c *Client) saved(ctx context.Context, save func(context.Context) error) error {
	if save == nil {
		return nil
	}
	if err := save(ctx); err != nil {
		return &contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonInternal, Profile: c.name,
			Message: "saving the draft's progress in the job state", Err: err}
	}
	return nil
}

func (c *Client) sendDraft(ctx context.Context, from string, p *contract.Draft, save func(context.Context) error) (contract.SendResult, error) {
	res, err := c.SendDraft(ctx, from, p.ID)
	out := contract.SendResult{Status: res.Status, RequestID: res.RequestID, ClientRequestID: res.ClientRequestID,
		Date: res.Date, RetryAfter: res.RetryAfter, Duration: res.Duration, InternetMessageID: p.InternetMessageID,
		EarlierCalls: earlier(res.Calls)}
	if err != nil && !IsAmbiguous(err) {
		// Graph refused the send (4xx, 429, no token): the mail did not go
		// out and the draft is an unsent one again, which a dead letter
		// deletes. Best effort: kept, SendAt only costs a look-up.
		sendAt := p.SendAt
		p.SendAt = nil
		if c.saved(ctx, save) != nil {
			p.SendAt = sendAt
		}
	}
	return out, err
}

// resumeSend settles a send that may have gone out, by what can be proven,
// and never sends. A message that is no longer a draft, found by its
// immutable id, is sent; so is a message with the saved internetMessageId in
// Sent Items. Nothing else proves anything either way:
//
//   - message-send (https://learn.microsoft.com/graph/api/message-send) and
//     "Overview of the Microsoft Graph send mail process" (step 4,
//     https://learn.microsoft.com/graph/outlook-things-to-know-about-send-mail):
//     the message moves from Drafts to Sent Items only once transport has
//     taken it, so an accepted send leaves a draft (isDraft true) in Drafts
//     meanwhile, for as long as transport takes;
//   - the immutable id may or may not survive the send: the mail API
//     overview (https://learn.microsoft.com/graph/outlook-mail-concept-overview)
//     says immutable ids hold "with the exception of sending a draft
//     message", https://learn.microsoft.com/graph/outlook-immutable-id says
//     the Sent Items copy keeps it; so a 404 by id is no proof either, and
//     the copy is looked for by the internetMessageId saved when the draft
//     was created.
//
// Those cases are a *contract.PendingError (InDrafts when the draft is still
// there as a draft): "not known yet, look again later".
func (c *Client) resumeSend(ctx context.Context, from string, p *contract.Draft) (contract.SendResult, error) {
	sent := contract.SendResult{Status: http.StatusOK, InternetMessageID: p.InternetMessageID, Lookup: contract.LookupSent}
	info, found, err := c.GetMessage(ctx, from, p.ID)
	if err != nil {
		return contract.SendResult{}, err
	}
	if found && !info.IsDraft {
		return sent, nil
	}
	if !found && p.InternetMessageID != "" {
		inSent, err := c.FindSent(ctx, from, p.InternetMessageID)
		if err != nil {
			return contract.SendResult{}, err
		}
		if inSent {
			return sent, nil
		}
	}
	pe := &contract.PendingError{Profile: c.name, InternetMessageID: p.InternetMessageID, InDrafts: found}
	if p.SendAt != nil {
		pe.SentAt = *p.SendAt
	}
	return contract.SendResult{}, pe
}

// attach adds one attachment to the draft: one POST when its request fits
// (postFits), else an upload session (resumed from p.Upload while it has not
// expired; recreated once when Graph no longer knows it).
func (c *Client) attach(ctx context.Context, from string, p *contract.Draft, a *DraftAttachment, save func(context.Context) error) error {
	if a.postFits() {
		content := a.Content
		if content == nil {
			rc, err := a.open(ctx, 0)
			if err != nil {
				return sourceError(c.name, err)
			}
			content, err = io.ReadAll(io.LimitReader(rc, a.Size+1))
			rc.Close()
			if err != nil {
				return sourceError(c.name, err)
			}
		}
		return c.AddAttachment(ctx, from, p.ID, Attachment{Name: a.Name, ContentType: a.ContentType, Content: content,
			Inline: a.Inline, ContentID: a.ContentID})
	}
	for try := 0; ; try++ {
		if p.Upload == nil || time.Until(p.Upload.Expires) < time.Minute {
			u, err := c.CreateUploadSession(ctx, from, p.ID, a)
			if err != nil {
				return err
			}
			p.Upload = &u
			if err := c.saved(ctx, save); err != nil {
				return err
			}
		}
		err := c.Upload(ctx, p.Upload, a, func(ctx context.Context) error { return c.saved(ctx, save) })
		if errors.Is(err, ErrSessionGone) && try == 0 {
			p.Upload = nil
			continue
		}
		return err
	}
}

func sourceError(profile string, err error) error {
	var se *contract.SendError
	if errors.As(err, &se) {
		return se
	}
	class, reason := contract.ClassRetryable, contract.ReasonInternal
	switch {
	case errors.Is(err, contract.ErrNoAttachment), errors.Is(err, contract.ErrAttachmentCorrupt):
		class, reason = contract.ClassPermanent, contract.ReasonInvalidJob
	case errors.Is(err, contract.ErrAttachmentTooLarge):
		class, reason = contract.ClassPermanent, contract.ReasonMessageTooLarge
	}
	return &contract.SendError{Class: class, Reason: reason, Profile: profile,
		Message: "reading an attachment from the store: " + err.Error(), Err: err}
}

// ErrSessionGone is wrapped by an upload error when Graph no longer knows
// the upload session (expired or cancelled): create a new one.
var ErrSessionGone = errors.New("upload session expired or unknown")

// CreateDraft creates msg as a draft in msg.From's mailbox with an immutable
// id. Errors are *contract.SendError (Op createDraft), never ambiguous.
func (c *Client) CreateDraft(ctx context.Context, msg *Message) (MessageInfo, error) {
	if msg.MIME != nil {
		return c.createMIMEDraft(ctx, msg)
	}
	g, size := gmessage(msg)
	buf := bytes.NewBuffer(make([]byte, 0, size))
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&g); err != nil {
		return MessageInfo{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInternal, Profile: c.name,
			Op: OpCreateDraft, Message: "encoding the message", Err: err}
	}
	res, data, err := c.call(ctx, OpCreateDraft, http.MethodPost, c.userURL(msg.From, "messages"), buf.Bytes())
	if err != nil {
		return MessageInfo{}, err
	}
	var info MessageInfo
	if err := json.Unmarshal(data, &info); err != nil || info.ID == "" {
		return MessageInfo{}, c.badAnswer(OpCreateDraft, res, "Graph answered the draft without an id")
	}
	return info, nil
}

// badAnswer is a 2xx whose body does not say what it should: retryable, and
// identified by the call that got it.
func (c *Client) badAnswer(op string, res Result, msg string) *contract.SendError {
	return &contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonInternal, Profile: c.name,
		Op: op, Message: msg, Status: 0, RequestID: res.RequestID, ClientRequestID: res.ClientRequestID, Date: res.Date}
}

// AddAttachment adds a (one POST, postFits) to draft id. Errors are *contract.SendError.
func (c *Client) AddAttachment(ctx context.Context, from, id string, a Attachment) error {
	body, err := json.Marshal(gAttachment{ODataType: fileAttachment, Name: a.Name, ContentType: a.ContentType,
		ContentBytes: a.Content, IsInline: a.Inline, ContentID: a.ContentID})
	if err != nil {
		return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInternal, Profile: c.name,
			Op: OpAddAttachment, Message: "encoding the attachment", Err: err}
	}
	_, _, err = c.call(ctx, OpAddAttachment, http.MethodPost, c.messageURL(from, id, "/attachments"), body)
	return err
}

// CreateUploadSession creates an upload session for a on draft id.
// Errors are *contract.SendError.
func (c *Client) CreateUploadSession(ctx context.Context, from, id string, a *DraftAttachment) (contract.Upload, error) {
	item := map[string]any{"attachmentType": "file", "name": a.Name, "size": a.Size}
	if a.ContentType != "" {
		item["contentType"] = a.ContentType
	}
	if a.Inline {
		item["isInline"] = true
	}
	if a.ContentID != "" {
		item["contentId"] = a.ContentID
	}
	body, _ := json.Marshal(map[string]any{"AttachmentItem": item})
	res, data, err := c.call(ctx, OpCreateSession, http.MethodPost, c.messageURL(from, id, "/attachments/createUploadSession"), body)
	if err != nil {
		return contract.Upload{}, err
	}
	var s struct {
		UploadURL          string    `json:"uploadUrl"`
		ExpirationDateTime time.Time `json:"expirationDateTime"`
		NextExpectedRanges []string  `json:"nextExpectedRanges"`
	}
	if err := json.Unmarshal(data, &s); err != nil || !strings.HasPrefix(s.UploadURL, "https://") {
		return contract.Upload{}, c.badAnswer(OpCreateSession, res, "Graph answered an upload session without an https uploadUrl")
	}
	return contract.Upload{URL: s.UploadURL, Expires: s.ExpirationDateTime, Next: nextRange(s.NextExpectedRanges)}, nil
}

// nextRange reads the first nextExpectedRanges value, "{start}" or
// "{start}-[end]" (https://learn.microsoft.com/graph/api/resources/uploadsession).
func nextRange(r []string) int64 {
	if len(r) == 0 {
		return 0
	}
	start, _, _ := strings.Cut(r[0], "-")
	n, err := strconv.ParseInt(start, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// upload retry bounds: transient PUT failures are retried in place this
// many times (each after a look at where the session is) before the error
// goes back to the worker, which retries the job later from u.Next.
const uploadRetries = 3

// Upload PUTs a's bytes from u.Next on, in chunks of Config.UploadChunkBytes
// read from a.Open (one chunk in memory at a time), to the pre-authenticated
// u.URL without an Authorization header. u.Next follows the session's
// nextExpectedRanges, and save is called after each chunk. After a failed
// PUT (network, 5xx, 416) it asks the session where to resume (GET u.URL)
// and goes on from there. It returns nil once the attachment is complete
// (201), an error wrapping ErrSessionGone when the session is no longer
// known, else a *contract.SendError (Op upload). No error text contains the
// upload URL, which carries a token.
func (c *Client) Upload(ctx context.Context, u *contract.Upload, a *DraftAttachment, save func(context.Context) error) error {
	buf := make([]byte, min(int64(c.chunk), max(a.Size, 1)))
	var rc io.ReadCloser
	pos := int64(-1)
	defer func() {
		if rc != nil {
			rc.Close()
		}
	}()
	failures := 0
	for {
		if rc == nil || pos != u.Next {
			if rc != nil {
				rc.Close()
			}
			var err error
			if rc, err = a.open(ctx, u.Next); err != nil {
				rc = nil
				return sourceError(c.name, err)
			}
			pos = u.Next
		}
		n := min(int64(len(buf)), a.Size-u.Next)
		if n <= 0 {
			return &contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonInternal, Profile: c.name, Op: OpUpload,
				Message: fmt.Sprintf("upload session expects byte %d of %d", u.Next, a.Size)}
		}
		if _, err := io.ReadFull(rc, buf[:n]); err != nil {
			return sourceError(c.name, err)
		}
		pos += n
		next, done, err := c.putChunk(ctx, u.URL, buf[:n], u.Next, a.Size)
		if done {
			return nil
		}
		if err == nil {
			u.Next = next
			if serr := save(ctx); serr != nil {
				return serr
			}
			continue
		}
		if errors.Is(err, ErrSessionGone) {
			return err
		}
		var se *contract.SendError
		if errors.As(err, &se) && se.Class == contract.ClassPermanent && se.Status != http.StatusRequestedRangeNotSatisfiable {
			return err
		}
		if failures++; failures > uploadRetries {
			return err
		}
		at, serr := c.uploadStatus(ctx, u.URL)
		if serr != nil {
			return serr
		}
		u.Next = at
	}
}

// putChunk PUTs one range. done is set on 201 (the attachment is complete).
func (c *Client) putChunk(ctx context.Context, uploadURL string, chunk []byte, start, total int64) (next int64, done bool, err error) {
	res, data, err := c.do(ctx, request{op: OpUpload, method: http.MethodPut, url: uploadURL, body: chunk, preauth: true,
		ctype:  "application/octet-stream",
		header: http.Header{"Content-Range": {fmt.Sprintf("bytes %d-%d/%d", start, start+int64(len(chunk))-1, total)}}})
	switch {
	case err != nil:
		return 0, false, sessionGone(err)
	case res.Status == http.StatusCreated:
		return 0, true, nil
	}
	var s struct {
		NextExpectedRanges []string `json:"nextExpectedRanges"`
	}
	if json.Unmarshal(data, &s) != nil || len(s.NextExpectedRanges) == 0 {
		return start + int64(len(chunk)), false, nil
	}
	return nextRange(s.NextExpectedRanges), false, nil
}

// uploadStatus asks an upload session where to resume (GET uploadUrl).
func (c *Client) uploadStatus(ctx context.Context, uploadURL string) (int64, error) {
	res, data, err := c.do(ctx, request{op: OpUpload, method: http.MethodGet, url: uploadURL, preauth: true, needBody: true})
	if err != nil {
		return 0, sessionGone(err)
	}
	var s struct {
		NextExpectedRanges []string `json:"nextExpectedRanges"`
	}
	if res.Status != http.StatusOK || json.Unmarshal(data, &s) != nil {
		return 0, &contract.SendError{Class: contract.ClassRetryable, Profile: c.name, Op: OpUpload, ClientRequestID: res.ClientRequestID,
			Status: res.Status, RequestID: res.RequestID, Message: "the upload session's state does not parse"}
	}
	return nextRange(s.NextExpectedRanges), nil
}

// sessionGone wraps ErrSessionGone around an upload URL's 404, 401 or 403:
// the session (and its token) is no longer valid.
func sessionGone(err error) error {
	var se *contract.SendError
	if errors.As(err, &se) {
		switch se.Status {
		case http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %w", ErrSessionGone, se)
		}
	}
	return err
}

// SendDraft sends draft id (POST …/messages/{id}/send, 202). A Retry-After
// on the 202 is kept in the Result, as for sendMail (Microsoft Q&A 5629476):
// the mail is sent, and the mailbox waits. Errors are *contract.SendError,
// Ambiguous as for sendMail.
func (c *Client) SendDraft(ctx context.Context, from, id string) (Result, error) {
	res, _, err := c.call(ctx, OpSendDraft, http.MethodPost, c.messageURL(from, id, "/send"), nil)
	return res, err
}

// GetMessage gets message id; found is false when Graph answers 404
// ErrorItemNotFound. Errors are *contract.SendError.
func (c *Client) GetMessage(ctx context.Context, from, id string) (info MessageInfo, found bool, err error) {
	u := c.messageURL(from, id, "") + "?$select=id,internetMessageId,isDraft"
	res, data, err := c.call(ctx, OpGetMessage, http.MethodGet, u, nil)
	if isItemNotFound(err) {
		return MessageInfo{}, false, nil
	}
	if err != nil {
		return MessageInfo{}, false, err
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return MessageInfo{}, false, c.badAnswer(OpGetMessage, res, "the message does not parse")
	}
	return info, true, nil
}

// FindSent reports whether a sent message with this internetMessageId is in
// from's Sent Items: GET …/mailFolders/sentitems/messages with $filter on
// internetMessageId ("sentitems" is the folder's well-known name,
// https://learn.microsoft.com/graph/api/resources/mailfolder; list messages
// of a folder with OData $filter and $select,
// https://learn.microsoft.com/graph/api/mailfolder-list-messages). Only a
// message that is not a draft counts. Errors are *contract.SendError (Op
// findSent).
func (c *Client) FindSent(ctx context.Context, from, internetMessageID string) (bool, error) {
	// An OData string literal doubles its single quotes.
	filter := "internetMessageId eq '" + strings.ReplaceAll(internetMessageID, "'", "''") + "'"
	q := url.Values{"$filter": {filter}, "$select": {"id,internetMessageId,isDraft"}, "$top": {"5"}}
	u := c.userURL(from, "mailFolders/sentitems/messages") + "?" + strings.ReplaceAll(q.Encode(), "+", "%20")
	res, data, err := c.call(ctx, OpFindSent, http.MethodGet, u, nil)
	if err != nil {
		return false, err
	}
	var list struct {
		Value []MessageInfo `json:"value"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return false, c.badAnswer(OpFindSent, res, "the Sent Items search does not parse")
	}
	for _, m := range list.Value {
		if !m.IsDraft && m.InternetMessageID == internetMessageID {
			return true, nil
		}
	}
	return false, nil
}

// DeleteMessage deletes message id (a draft left behind); a message that is
// not there is not an error. Errors are *contract.SendError.
func (c *Client) DeleteMessage(ctx context.Context, from, id string) error {
	_, _, err := c.call(ctx, OpDeleteMessage, http.MethodDelete, c.messageURL(from, id, ""), nil)
	if isItemNotFound(err) {
		return nil
	}
	return err
}

// draftGone reports whether err says the draft no longer exists while
// attachments were being added to it.
func draftGone(err error) bool {
	var e *contract.SendError
	return isItemNotFound(err) && errors.As(err, &e) && (e.Op == OpAddAttachment || e.Op == OpCreateSession)
}

func isItemNotFound(err error) bool {
	var e *contract.SendError
	return errors.As(err, &e) && e.Status == http.StatusNotFound && strings.EqualFold(e.Code, "ErrorItemNotFound")
}

func (c *Client) userURL(from, rest string) string {
	return c.sendPrefix + url.PathEscape(from) + "/" + rest
}

func (c *Client) messageURL(from, id, rest string) string {
	return c.sendPrefix + url.PathEscape(from) + "/messages/" + url.PathEscape(id) + rest
}
