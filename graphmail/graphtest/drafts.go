package graphtest

// The draft flow: create a message, attach large files through upload
// sessions, send it, look it up by its immutable id, delete it. Each
// behaviour names its source; what Microsoft does not document is said so and
// is the fake's own choice.
//
// Sources:
//   - [create]  https://learn.microsoft.com/graph/api/user-post-messages (201 Created, the message)
//   - [large]   https://learn.microsoft.com/graph/outlook-large-attachments
//   - [session] https://learn.microsoft.com/graph/api/attachment-createuploadsession
//   - [upload]  https://learn.microsoft.com/graph/api/resources/uploadsession
//   - [attach]  https://learn.microsoft.com/graph/api/message-post-attachments (201 Created, the attachment)
//   - [send]    https://learn.microsoft.com/graph/api/message-send (202 Accepted)
//   - [get]     https://learn.microsoft.com/graph/api/message-get
//   - [delete]  https://learn.microsoft.com/graph/api/message-delete (204 No Content)
//   - [immut]   https://learn.microsoft.com/graph/outlook-immutable-id ("Immutable ID with sending mail")
//   - [process] https://learn.microsoft.com/graph/outlook-things-to-know-about-send-mail (step 4: the
//     message moves from Drafts to Sent Items once transport has taken it)
//   - [overview] https://learn.microsoft.com/graph/outlook-mail-concept-overview (immutable ids hold
//     "with the exception of sending a draft message")
//   - [folder]  https://learn.microsoft.com/graph/api/resources/mailfolder (well-known name sentitems),
//     https://learn.microsoft.com/graph/api/mailfolder-list-messages ($filter, $select)

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Upload session limits.
const (
	// MinUploadSessionBytes: Graph refuses an upload session for a file under 2 MiB with
	// ErrorAttachmentSizeShouldNotBeLessThanMinimumSize: [large] ("Errors") advises 3 MB and
	// up and states no exact minimum; 2,097,152 bytes is the minimum measured against Graph
	// (msgraph-sdk-java#52), so a file just under 3 MiB whose POST would exceed 4 MB can go by
	// session, as it must.
	MinUploadSessionBytes = 2 * 1024 * 1024
	// MaxAttachmentBytes: files up to 150 MB ([large], [session]); the
	// pages do not say which MB, the fake takes 150,000,000 bytes.
	MaxAttachmentBytes = 150_000_000
	// MaxChunkBytes: "iteratively upload ranges of bytes (up to 4 MB each
	// time)" ([session]). The 320 KiB multiple rule belongs to OneDrive's
	// driveItem upload sessions, not to Outlook attachments, so the fake does
	// not enforce it (the client keeps to it anyway).
	MaxChunkBytes = 4 * 1024 * 1024
)

// DraftOptions configures the draft flow (Options.Drafts). The zero value is usable.
type DraftOptions struct {
	// TransitDelay is how long an accepted send leaves the message in Drafts
	// before transport takes it and it moves to Sent Items: "the message is
	// saved in the Sent Items folder" ([send]) only after transport has taken
	// responsibility for it ([process] step 4); "the copy of the message is
	// not created until the message successfully sends, which may take time"
	// ([immut]). In between the message is still a draft: GET by its id
	// answers it with isDraft true and parentFolderId Drafts, and the Sent
	// Items search does not find it. The length is not documented; default 0
	// (at once). A send of a message in transit is accepted and delivered
	// again: what Exchange does then is not documented, and this pessimistic
	// reading is what makes a client's resend a duplicate the record shows.
	TransitDelay time.Duration
	// IDChangesOnSend gives a message a new id when its send is accepted
	// (the old one answers 404 ErrorItemNotFound), even with
	// Prefer: IdType="ImmutableId": the mail API overview says immutable ids
	// hold "with the exception of sending a draft message" ([overview]),
	// while [immut] says the Sent Items copy keeps it (the default, false).
	// Microsoft's pages disagree; a client must settle a send either way.
	IDChangesOnSend bool
	// UploadSessionLifetime is the time from createUploadSession to the
	// session's expirationDateTime, which PUTs do not extend ("This
	// expiration date/time remains the same as returned by the initial
	// uploadSession", [large] step 2). Microsoft does not document the
	// length; default 1 hour. A PUT after it answers 404 ErrorItemNotFound
	// (the fake's choice: the answer is not documented either).
	UploadSessionLifetime time.Duration
	// Latency is added to every create and send of the draft flow (so that
	// a worker killed mid-flow is killed mid-call); the upload of chunks is
	// not slowed. Default 0.
	Latency time.Duration
	// MIMENewMessageID gives a draft created from MIME a Message-ID of
	// Exchange's making (internetMessageId, and the Message-ID field of what
	// the recipients get) instead of the MIME's own. Microsoft does not say
	// which happens: the MIME example of [create] answers an Exchange-made
	// internetMessageId, but its request is cut short before any
	// Message-ID; default false (the MIME's own is kept).
	MIMENewMessageID bool
	// ReadWriteScope lists the mailboxes where the app also holds the
	// "Application Mail.ReadWrite" role (Exchange RBAC for Applications),
	// which creating, reading and deleting messages needs; elsewhere those
	// calls answer 403 ErrorAccessDenied. nil = the same as Options.Scope.
	ReadWriteScope []string
}

func (o DraftOptions) withDefaults() DraftOptions {
	if o.UploadSessionLifetime <= 0 {
		o.UploadSessionLifetime = time.Hour
	}
	return o
}

// DraftOp names a call of the draft flow, for ScriptDraft.
type DraftOp string

// The calls of the draft flow.
const (
	OpCreate  DraftOp = "create"  // POST /users/{id}/messages
	OpAttach  DraftOp = "attach"  // POST …/messages/{id}/attachments
	OpSession DraftOp = "session" // POST …/attachments/createUploadSession
	OpUpload  DraftOp = "upload"  // PUT uploadUrl
	OpSend    DraftOp = "send"    // POST …/messages/{id}/send
	OpGet     DraftOp = "get"     // GET …/messages/{id}
	OpFind    DraftOp = "find"    // GET …/mailFolders/{folder}/messages ($filter)
	OpDelete  DraftOp = "delete"  // DELETE …/messages/{id}
)

// DraftInfo is what the fake knows about one message created by the draft flow.
type DraftInfo struct {
	ID                string    `json:"id"`
	Mailbox           string    `json:"mailbox"`
	Immutable         bool      `json:"immutable"`
	InternetMessageID string    `json:"internetMessageId"`
	JobID             string    `json:"jobId"`
	IsDraft           bool      `json:"isDraft"`
	Sent              bool      `json:"sent"`
	Deleted           bool      `json:"deleted"`
	SendRequests      int       `json:"sendRequests"`
	Deliveries        int       `json:"deliveries"` // accepted sends: 2 or more is a mail delivered twice
	Attachments       int       `json:"attachments"`
	CreatedAt         time.Time `json:"createdAt"`
}

type draftAttachment struct {
	id, name, contentType, contentID string
	inline                           bool
	content                          []byte
}

type draftMsg struct {
	id, mailbox, internetMessageID string
	immutable                      bool
	msg                            graphMessage // as created, attachments moved to atts
	atts                           []draftAttachment
	// mime is the message of a draft created in MIME form (mimedraft.go),
	// without its Bcc fields; mimeAtts of atts came from it.
	mime         []byte
	mimeAtts     int
	fromName     string
	created      time.Time
	sent         bool
	sentAt       time.Time // the first accepted send
	sendRequests int
	deliveries   int // accepted sends (more than 1: delivered twice)
	deleted      bool
}

type uploadSession struct {
	id, token, draftID, mailbox string
	item                        attachmentItem
	buf                         []byte
	expires                     time.Time
}

type attachmentItem struct {
	AttachmentType string `json:"attachmentType"`
	Name           string `json:"name"`
	Size           int64  `json:"size"`
	ContentType    string `json:"contentType"`
	IsInline       bool   `json:"isInline"`
	ContentID      string `json:"contentId"`
}

// draftStore is the fake mailbox content of the draft flow.
type draftStore struct {
	mu       sync.Mutex
	opts     DraftOptions
	rwScope  map[string]struct{}
	byID     map[string]*draftMsg // current ids
	all      []*draftMsg
	sessions map[string]*uploadSession
	scripts  map[DraftOp][]Fault
	faults   map[DraftOp]*Fault
	puts     int
}

func (s *Server) draftState() *draftStore {
	s.draftsOnce.Do(func() {
		o := s.opts.Drafts.withDefaults()
		s.drafts = &draftStore{opts: o, byID: map[string]*draftMsg{}, sessions: map[string]*uploadSession{},
			scripts: map[DraftOp][]Fault{}, faults: map[DraftOp]*Fault{}, rwScope: lowerSet(o.ReadWriteScope)}
		if s.drafts.rwScope == nil {
			s.drafts.rwScope = s.scope
		}
	})
	return s.drafts
}

// ScriptDraft queues faults consumed, one per request, by the next calls of op (any mailbox).
// AcceptThenFail applies the call (the message is sent, the chunk is stored) and then answers
// Status (default 504); Reset closes the connection after reading the request, without
// applying it, except for OpSend where the send takes effect first (the ambiguous case).
func (s *Server) ScriptDraft(op DraftOp, faults ...Fault) {
	d := s.draftState()
	d.mu.Lock()
	d.scripts[op] = append(d.scripts[op], faults...)
	d.mu.Unlock()
}

// SetDraftFault sets a persistent fault applied to every call of op with f.Probability (nil
// clears), after the scripted ones (ScriptDraft).
func (s *Server) SetDraftFault(op DraftOp, f *Fault) {
	d := s.draftState()
	d.mu.Lock()
	d.faults[op] = cloneFault(f)
	d.mu.Unlock()
}

func (d *draftStore) nextFault(op DraftOp) *Fault {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q := d.scripts[op]; len(q) > 0 {
		f := q[0]
		d.scripts[op] = q[1:]
		return &f
	}
	f := d.faults[op]
	if f == nil {
		return nil
	}
	if p := f.Probability; p > 0 && p < 1 && mrand.Float64() >= p {
		return nil
	}
	c := *f
	return &c
}

// Drafts returns every message the draft flow created, in order of creation.
func (s *Server) Drafts() []DraftInfo {
	d := s.draftState()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]DraftInfo, 0, len(d.all))
	for _, m := range d.all {
		out = append(out, m.info())
	}
	return out
}

// UploadPuts counts PUT requests to upload URLs, whatever their outcome.
func (s *Server) UploadPuts() int {
	d := s.draftState()
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.puts
}

func (m *draftMsg) info() DraftInfo {
	return DraftInfo{ID: m.id, Mailbox: m.mailbox, Immutable: m.immutable, InternetMessageID: m.internetMessageID,
		JobID: jobIDOf(&m.msg), IsDraft: !m.sent && !m.deleted, Sent: m.sent, Deleted: m.deleted,
		SendRequests: m.sendRequests, Deliveries: m.deliveries, Attachments: len(m.atts), CreatedAt: m.created}
}

func jobIDOf(m *graphMessage) string {
	for _, h := range m.InternetMessageHeaders {
		if strings.EqualFold(h.Name, "X-Mailworker-Job-Id") {
			return h.Value
		}
	}
	return ""
}

func (s *Server) draftRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1.0/users/{id}/messages", s.handleCreateDraft)
	mux.HandleFunc("POST /v1.0/users/{id}/messages/{mid}/attachments/createUploadSession", s.handleCreateUploadSession)
	mux.HandleFunc("POST /v1.0/users/{id}/messages/{mid}/attachments", s.handleAddAttachment)
	mux.HandleFunc("POST /v1.0/users/{id}/messages/{mid}/send", s.handleSendDraft)
	mux.HandleFunc("GET /v1.0/users/{id}/messages/{mid}", s.handleGetMessage)
	mux.HandleFunc("GET /v1.0/users/{id}/mailFolders/{folder}/messages", s.handleFolderMessages)
	mux.HandleFunc("DELETE /v1.0/users/{id}/messages/{mid}", s.handleDeleteMessage)
	mux.HandleFunc("PUT /_upload/{sid}", s.handleUploadPut)
	mux.HandleFunc("GET /_upload/{sid}", s.handleUploadStatus)
	mux.HandleFunc("DELETE /_upload/{sid}", s.handleUploadCancel)
}

// draftAuth checks the bearer token, the mailbox, the Mail.Send scope and the
// Mail.ReadWrite scope, as for sendMail; it answers and returns false on failure.
func (s *Server) draftAuth(w http.ResponseWriter, r *http.Request) (mailbox, key string, ok bool) {
	h := w.Header()
	h.Set("request-id", newGUID())
	if crid := r.Header.Get("client-request-id"); crid != "" {
		h.Set("client-request-id", crid)
	}
	mailbox = r.PathValue("id")
	key = strings.ToLower(mailbox)
	tok, has := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !has || tok == "" || !s.tokenValid(strings.TrimSpace(tok)) {
		s.graphError(w, r, key, http.StatusUnauthorized, "InvalidAuthenticationToken", "Access token is empty or invalid.", "")
		return "", "", false
	}
	if s.mailboxes != nil {
		if _, ok := s.mailboxes[key]; !ok {
			s.graphError(w, r, key, http.StatusNotFound, "ErrorInvalidUser", "The requested user '"+mailbox+"' is invalid.", "")
			return "", "", false
		}
	}
	d := s.draftState()
	if d.rwScope != nil {
		if _, ok := d.rwScope[key]; !ok {
			s.graphError(w, r, key, http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", "")
			return "", "", false
		}
	}
	return mailbox, key, true
}

// applyFault handles a scripted fault before the call: a delay, a reset, or an answer. It
// returns the fault to apply after the call (AcceptThenFail) and whether to continue.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, key string, op DraftOp) (after *Fault, cont bool) {
	f := s.draftState().nextFault(op)
	if f == nil {
		return nil, true
	}
	if !s.wait(r.Context(), f.Delay) {
		resetConn(w)
		return nil, false
	}
	switch {
	case f.AcceptThenFail:
		return f, true
	case op == OpSend && f.Status >= 200 && f.Status < 300:
		return f, true // accepted, answered with the fault's Retry-After (handleSendDraft)
	case f.Reset:
		if op == OpSend {
			return f, true // the send takes effect, then the connection drops
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, MaxChunkBytes+1))
		resetConn(w)
		return nil, false
	case f.Status != 0:
		s.graphError(w, r, key, f.Status, faultCode(f), "Injected fault.", f.RetryAfter)
		return nil, false
	}
	return nil, true
}

func (s *Server) failAfter(w http.ResponseWriter, r *http.Request, key string, f *Fault) {
	if f.Reset {
		resetConn(w)
		return
	}
	status := f.Status
	if status == 0 {
		status = http.StatusGatewayTimeout
	}
	s.graphError(w, r, key, status, faultCode(&Fault{Status: status, Code: f.Code}),
		"Injected fault after the request was applied.", f.RetryAfter)
}

// prefersImmutable reports whether the request carries Prefer: IdType="ImmutableId" ([immut]).
func prefersImmutable(r *http.Request) bool {
	for _, v := range r.Header.Values("Prefer") {
		for _, p := range strings.Split(v, ",") {
			k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(strings.TrimSpace(k), "IdType") && strings.Trim(strings.TrimSpace(val), `"`) == "ImmutableId" {
				return true
			}
		}
	}
	return false
}

// newItemID returns a message id shaped like Exchange's (base64, case-sensitive): immutable
// ids as returned with Prefer: IdType="ImmutableId" start with AAkALg, REST ids with AAMkAD.
func newItemID(immutable bool) string {
	b := make([]byte, 45)
	rand.Read(b)
	p := "AAMkAD"
	if immutable {
		p = "AAkALg"
	}
	return p + base64.URLEncoding.EncodeToString(b)
}

// handleCreateDraft: POST /users/{id}/messages creates a draft in the Drafts folder and answers
// 201 Created with the message, including id and internetMessageId, isDraft true ([create]).
// The body is a message resource; the 4 MB request limit applies as to every Graph request.
func (s *Server) handleCreateDraft(w http.ResponseWriter, r *http.Request) {
	mailbox, key, ok := s.draftAuth(w, r)
	if !ok {
		return
	}
	after, cont := s.applyFault(w, r, key, OpCreate)
	if !cont || !s.wait(r.Context(), s.draftState().opts.Latency) {
		return
	}
	body, gerr := s.readBody(r)
	if gerr != nil {
		s.graphError(w, r, key, gerr.status, gerr.code, gerr.msg, "")
		return
	}
	if isMIMERequest(r) {
		s.createMIMEDraft(w, r, mailbox, key, body, after) // mimedraft.go
		return
	}
	// The same checks as sendMail's message (README.md, "Draft flow"): the CSDL, then 1 to 5
	// internetMessageHeaders, then their x- names.
	if gerr := schema.checkMessage(body); gerr != nil {
		s.graphError(w, r, key, gerr.status, gerr.code, gerr.msg, "")
		return
	}
	var gm graphMessage
	if err := json.Unmarshal(body, &gm); err != nil {
		s.graphError(w, r, key, http.StatusBadRequest, "RequestBodyRead", "Invalid JSON in the request body: "+err.Error(), "")
		return
	}
	if gm.InternetMessageHeaders != nil && (len(gm.InternetMessageHeaders) == 0 || len(gm.InternetMessageHeaders) > MaxInternetMessageHeaders) {
		s.graphError(w, r, key, http.StatusBadRequest, "InvalidInternetMessageHeaderCollection",
			"Maximum number of headers in one message should be less than or equal to 5.", "")
		return
	}
	for _, hd := range gm.InternetMessageHeaders {
		if !(strings.HasPrefix(hd.Name, "X-") || strings.HasPrefix(hd.Name, "x-")) {
			s.graphError(w, r, key, http.StatusBadRequest, "InvalidInternetMessageHeader",
				"The internet message header name '"+hd.Name+"' should start with 'x-' or 'X-'.", "")
			return
		}
	}
	m := &draftMsg{mailbox: mailbox, immutable: prefersImmutable(r), created: s.opts.Now()}
	for _, a := range gm.Attachments {
		if a.ODataType != fileAttachmentType || a.Name == "" {
			s.graphError(w, r, key, http.StatusBadRequest, "ErrorInvalidRequest",
				"Attachments need @odata.type '"+fileAttachmentType+"' and a name.", "")
			return
		}
		b, err := base64.StdEncoding.DecodeString(a.ContentBytes)
		if err != nil {
			s.graphError(w, r, key, http.StatusBadRequest, "RequestBodyRead", "Attachment '"+a.Name+"': contentBytes is not valid base64.", "")
			return
		}
		m.atts = append(m.atts, draftAttachment{id: newItemID(m.immutable), name: a.Name, contentType: a.ContentType,
			contentID: a.ContentID, inline: a.IsInline, content: b})
	}
	gm.Attachments = nil
	m.msg = gm
	m.id = newItemID(m.immutable)
	m.internetMessageID = "<" + strings.ReplaceAll(newGUID(), "-", "") + "@" + strings.ReplaceAll(mailboxDomain(mailbox), ">", "") + ">"
	d := s.draftState()
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

func mailboxDomain(mailbox string) string {
	if at := strings.LastIndexByte(mailbox, '@'); at >= 0 && at < len(mailbox)-1 {
		return mailbox[at+1:]
	}
	return "graphtest.invalid"
}

// inSentItems reports whether transport has taken the sent message: after TransitDelay it is
// in Sent Items, no longer a draft ([process] step 4). Before, it is still a draft in Drafts.
func (m *draftMsg) inSentItems(o DraftOptions, now time.Time) bool {
	return m.sent && !now.Before(m.sentAt.Add(o.TransitDelay))
}

// view is the message resource the fake answers ([get]): a subset of its properties.
func (m *draftMsg) view(o DraftOptions, now time.Time) map[string]any {
	v := map[string]any{
		"@odata.context":    "https://graph.microsoft.com/v1.0/$metadata#users('" + m.mailbox + "')/messages/$entity",
		"id":                m.id,
		"internetMessageId": m.internetMessageID,
		"isDraft":           true,
		"subject":           m.msg.Subject,
		"hasAttachments":    len(m.atts) > 0,
		"createdDateTime":   m.created.UTC().Format(time.RFC3339),
		"parentFolderId":    "Drafts",
	}
	if m.inSentItems(o, now) {
		v["isDraft"] = false
		v["parentFolderId"] = "SentItems"
		v["sentDateTime"] = m.sentAt.UTC().Format(time.RFC3339)
	}
	return v
}

// lookupLocked returns the message with id in mailbox, nil when there is none (deleted, or an
// id the message no longer has). A message in transit is still there, as a draft. Callers
// hold d.mu.
func (d *draftStore) lookupLocked(mailbox, id string, _ time.Time) *draftMsg {
	m := d.byID[id]
	if m == nil || m.deleted || !strings.EqualFold(m.mailbox, mailbox) {
		return nil
	}
	return m
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request, key string) {
	s.graphError(w, r, key, http.StatusNotFound, "ErrorItemNotFound",
		"The specified object was not found in the store.", "")
}

// handleGetMessage: GET /users/{id}/messages/{mid} ([get]): the draft before the send; after
// an accepted send, still the draft (isDraft true) for DraftOptions.TransitDelay ([process]),
// then the Sent Items copy (isDraft false), under the same id when the draft was created with
// Prefer: IdType="ImmutableId" ([immut]) unless DraftOptions.IDChangesOnSend ([overview]), and
// under a new id otherwise ([immut]: REST ids change when an item moves folder).
func (s *Server) handleGetMessage(w http.ResponseWriter, r *http.Request) {
	_, key, ok := s.draftAuth(w, r)
	if !ok {
		return
	}
	if _, cont := s.applyFault(w, r, key, OpGet); !cont {
		return
	}
	d := s.draftState()
	d.mu.Lock()
	m := d.lookupLocked(r.PathValue("id"), r.PathValue("mid"), s.opts.Now())
	var view map[string]any
	if m != nil {
		view = m.view(d.opts, s.opts.Now())
	}
	d.mu.Unlock()
	if m == nil {
		s.notFound(w, r, key)
		return
	}
	writeJSON(w, http.StatusOK, view)
}

// handleDeleteMessage: DELETE /users/{id}/messages/{mid} answers 204 No Content ([delete]).
func (s *Server) handleDeleteMessage(w http.ResponseWriter, r *http.Request) {
	_, key, ok := s.draftAuth(w, r)
	if !ok {
		return
	}
	after, cont := s.applyFault(w, r, key, OpDelete)
	if !cont {
		return
	}
	d := s.draftState()
	d.mu.Lock()
	m := d.lookupLocked(r.PathValue("id"), r.PathValue("mid"), s.opts.Now())
	if m != nil {
		m.deleted = true
		delete(d.byID, m.id)
		for id, ss := range d.sessions {
			if ss.draftID == m.id {
				delete(d.sessions, id)
			}
		}
		m.atts = dropContent(m.atts)
	}
	d.mu.Unlock()
	if m == nil {
		s.notFound(w, r, key)
		return
	}
	if after != nil {
		s.failAfter(w, r, key, after)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func dropContent(atts []draftAttachment) []draftAttachment {
	for i := range atts {
		atts[i].content = nil
	}
	return atts
}

// handleCreateUploadSession: POST …/messages/{mid}/attachments/createUploadSession with an
// AttachmentItem ([session]) answers 201 Created and an uploadSession whose uploadUrl is
// pre-authenticated (an authtoken in the query), expirationDateTime, and nextExpectedRanges
// ["0-"] ([large] step 1). Files under MinUploadSessionBytes are refused with
// ErrorAttachmentSizeShouldNotBeLessThanMinimumSize ([large] "Errors"); attachmentType must be
// "file" ([session]: attachmentItem). Over 150 MB: 400 ErrorAttachmentSizeShouldNotBeGreaterThanMaximumSize
// (the limit is documented, the code is the fake's choice).
func (s *Server) handleCreateUploadSession(w http.ResponseWriter, r *http.Request) {
	if !s.hasUploadSessions() { // limits.go: not in the US Government clouds
		s.graphError(w, r, "", http.StatusBadRequest, "BadRequest", "Resource not found for the segment 'createUploadSession'.", "")
		return
	}
	mailbox, key, ok := s.draftAuth(w, r)
	if !ok {
		return
	}
	after, cont := s.applyFault(w, r, key, OpSession)
	if !cont {
		return
	}
	var body struct {
		AttachmentItem *attachmentItem `json:"AttachmentItem"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&body); err != nil || body.AttachmentItem == nil {
		s.graphError(w, r, key, http.StatusBadRequest, "RequestBodyRead", "The AttachmentItem parameter is required.", "")
		return
	}
	it := *body.AttachmentItem
	switch {
	case !strings.EqualFold(it.AttachmentType, "file"):
		s.graphError(w, r, key, http.StatusBadRequest, "RequestBodyRead", "attachmentType must be 'file'.", "")
		return
	case it.Name == "":
		s.graphError(w, r, key, http.StatusBadRequest, "ErrorInvalidRequest", "The attachment name is required.", "")
		return
	case it.Size < MinUploadSessionBytes:
		s.graphError(w, r, key, http.StatusBadRequest, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
			"Attachment size should not be less than the minimum size for an upload session.", "")
		return
	case it.Size > MaxAttachmentBytes:
		s.graphError(w, r, key, http.StatusBadRequest, "ErrorAttachmentSizeShouldNotBeGreaterThanMaximumSize",
			"Attachment size should not be greater than 150 MB.", "")
		return
	}
	d := s.draftState()
	now := s.opts.Now()
	d.mu.Lock()
	m := d.lookupLocked(mailbox, r.PathValue("mid"), now)
	if m == nil || m.sent {
		d.mu.Unlock()
		s.notFound(w, r, key)
		return
	}
	tok := make([]byte, 24)
	rand.Read(tok)
	ss := &uploadSession{id: newItemID(m.immutable), token: base64.RawURLEncoding.EncodeToString(tok), draftID: m.id,
		mailbox: mailbox, item: it, expires: now.Add(d.opts.UploadSessionLifetime)}
	d.sessions[ss.id] = ss
	d.mu.Unlock()
	if after != nil {
		s.failAfter(w, r, key, after)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{
		"@odata.context":     "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
		"uploadUrl":          s.url + "/_upload/" + url.PathEscape(ss.id) + "?authtoken=" + ss.token,
		"expirationDateTime": ss.expires.UTC().Format(time.RFC3339Nano),
		"nextExpectedRanges": []string{"0-"},
	})
}

// session finds the upload session of an upload URL request. The URL is pre-authenticated and
// "Do not specify an Authorization request header" ([large] step 2): a request that carries
// one is refused with 401 (the status is the fake's choice). An unknown or expired session is
// 404 ErrorItemNotFound (the fake's choice; the token "expires by expirationDateTime", [large]).
func (s *Server) session(w http.ResponseWriter, r *http.Request) *uploadSession {
	w.Header().Set("request-id", newGUID())
	if r.Header.Get("Authorization") != "" {
		s.graphError(w, r, "", http.StatusUnauthorized, "InvalidAuthenticationToken",
			"The upload URL is pre-authenticated: do not send an Authorization header.", "")
		return nil
	}
	d := s.draftState()
	d.mu.Lock()
	ss := d.sessions[r.PathValue("sid")]
	if ss != nil && (ss.token != r.URL.Query().Get("authtoken") || !s.opts.Now().Before(ss.expires)) {
		if ss.token == r.URL.Query().Get("authtoken") {
			delete(d.sessions, ss.id) // expired
		}
		ss = nil
	}
	d.mu.Unlock()
	if ss == nil {
		s.graphError(w, r, "", http.StatusNotFound, "ErrorItemNotFound", "The upload session does not exist or has expired.", "")
	}
	return ss
}

func (s *Server) sessionJSON(w http.ResponseWriter, status int, ss *uploadSession, next int) {
	writeJSON(w, status, map[string]any{
		"@odata.context":     "https://outlook.office.com/api/v2.0/$metadata#AttachmentSessions/$entity",
		"expirationDateTime": ss.expires.UTC().Format(time.RFC3339Nano),
		// [upload]: for Outlook attachments "this property always indicates a
		// single value "{start}", the location in the file where the next
		// upload should begin".
		"nextExpectedRanges": []string{strconv.Itoa(next)},
	})
}

// handleUploadPut: PUT uploadUrl with Content-Range "bytes {start}-{end}/{total}" and the bytes
// ([large] step 2). Bytes must be uploaded in order ("You must upload bytes in a file in
// order"): a range that does not start at the next expected byte is refused with 416 Requested
// Range Not Satisfiable (OneDrive's documented answer for such a range; Outlook documents
// none). A range over 4 MB is 413 ([session]: "up to 4 MB each time"). An intermediate range
// answers 200 OK with expirationDateTime and nextExpectedRanges; the last one 201 Created, a
// Location header naming the attachment, and no body ([large] step 3).
func (s *Server) handleUploadPut(w http.ResponseWriter, r *http.Request) {
	d := s.draftState()
	d.mu.Lock()
	d.puts++
	d.mu.Unlock()
	ss := s.session(w, r)
	if ss == nil {
		return
	}
	after, cont := s.applyFault(w, r, "", OpUpload)
	if !cont {
		return
	}
	start, end, total, ok := parseContentRange(r.Header.Get("Content-Range"))
	if !ok || total != ss.item.Size || end >= total {
		s.graphError(w, r, "", http.StatusBadRequest, "InvalidContentRange",
			"Content-Range must be 'bytes {start}-{end}/{total}' with total the size given to createUploadSession.", "")
		return
	}
	n := end - start + 1
	if n > MaxChunkBytes {
		s.graphError(w, r, "", http.StatusRequestEntityTooLarge, "RequestEntityTooLarge",
			fmt.Sprintf("Upload at most %d bytes per request.", MaxChunkBytes), "")
		return
	}
	if r.ContentLength >= 0 && r.ContentLength != n {
		s.graphError(w, r, "", http.StatusBadRequest, "InvalidContentRange", "Content-Length does not match Content-Range.", "")
		return
	}
	chunk, err := io.ReadAll(io.LimitReader(r.Body, n+1))
	if err != nil || int64(len(chunk)) != n {
		s.graphError(w, r, "", http.StatusBadRequest, "RequestBodyRead", "The request body does not match Content-Range.", "")
		return
	}
	d.mu.Lock()
	if start != int64(len(ss.buf)) || d.sessions[ss.id] != ss {
		next := len(ss.buf)
		d.mu.Unlock()
		w.Header().Set("request-id", newGUID())
		writeJSON(w, http.StatusRequestedRangeNotSatisfiable, map[string]any{
			"error": map[string]any{"code": "InvalidRange", "message": "The range does not start at the next expected byte " + strconv.Itoa(next) + "."},
		})
		return
	}
	if m := d.byID[ss.draftID]; m != nil && draftSizeLocked(m)+countedSize(int64(len(ss.buf))+n) > s.maxMessageSize(ss.mailbox) {
		d.mu.Unlock()
		s.tooLargeForMailbox(w, r, "") // limits.go: mid-upload, as in [docs-2561]
		return
	}
	if ss.buf == nil {
		ss.buf = make([]byte, 0, ss.item.Size)
	}
	ss.buf = append(ss.buf, chunk...)
	done := int64(len(ss.buf)) == ss.item.Size
	var attID, draftID string
	if done {
		delete(d.sessions, ss.id)
		m := d.byID[ss.draftID]
		if m != nil && !m.sent && !m.deleted {
			attID = newItemID(m.immutable)
			draftID = m.id
			m.atts = append(m.atts, draftAttachment{id: attID, name: ss.item.Name, contentType: ss.item.ContentType,
				contentID: ss.item.ContentID, inline: ss.item.IsInline, content: ss.buf})
		}
		ss.buf = nil
	}
	next := len(ss.buf)
	d.mu.Unlock()
	if after != nil {
		s.failAfter(w, r, "", after)
		return
	}
	if !done {
		s.sessionJSON(w, http.StatusOK, ss, next)
		return
	}
	if draftID == "" {
		s.graphError(w, r, "", http.StatusNotFound, "ErrorItemNotFound", "The message of this upload session no longer exists.", "")
		return
	}
	w.Header().Set("Location", "https://outlook.office.com/api/v2.0/Users('"+ss.mailbox+"')/Messages('"+draftID+"')/Attachments('"+attID+"')")
	w.WriteHeader(http.StatusCreated)
}

// handleUploadStatus: GET uploadUrl answers the session with nextExpectedRanges, so a client
// unsure of the state after an interrupted upload can resume ([large] step 3: "This is useful if
// you need to resume a transfer that was interrupted and your client is unsure of the state on
// the service"; the GET itself is documented for OneDrive upload sessions).
func (s *Server) handleUploadStatus(w http.ResponseWriter, r *http.Request) {
	ss := s.session(w, r)
	if ss == nil {
		return
	}
	d := s.draftState()
	d.mu.Lock()
	next := len(ss.buf)
	d.mu.Unlock()
	s.sessionJSON(w, http.StatusOK, ss, next)
}

// handleUploadCancel: DELETE uploadUrl cancels the session, 204 No Content ([large]
// "Alternative: Cancel the upload session").
func (s *Server) handleUploadCancel(w http.ResponseWriter, r *http.Request) {
	ss := s.session(w, r)
	if ss == nil {
		return
	}
	d := s.draftState()
	d.mu.Lock()
	delete(d.sessions, ss.id)
	d.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func parseContentRange(v string) (start, end, total int64, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	start, err1 = strconv.ParseInt(a, 10, 64)
	end, err2 = strconv.ParseInt(b, 10, 64)
	total, err3 = strconv.ParseInt(tot, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || start < 0 || end < start {
		return 0, 0, 0, false
	}
	return start, end, total, true
}

// handleSendDraft: POST /users/{id}/messages/{mid}/send answers 202 Accepted ([send]); the
// message is delivered (recorded like a sendMail message, .eml in OutDir with every attachment
// byte for byte) and stays a draft in Drafts for DraftOptions.TransitDelay before it is in Sent
// Items ([process] step 4, [immut]). A send of a message in transit is accepted and delivered
// again (TransitDelay). A draft without recipients is 400 ErrorInvalidRecipients, as for
// sendMail. A message already in Sent Items (no longer a draft) is 404 ErrorItemNotFound:
// Microsoft documents no answer for it. A scripted fault with a 2xx Status (SetDraftFault,
// ScriptDraft) accepts the send and answers that status with the fault's Retry-After:
// "There have been cases where Graph returns 202 and a Retry-After header" (Microsoft Q&A
// 5629476).
func (s *Server) handleSendDraft(w http.ResponseWriter, r *http.Request) {
	mailbox, key, ok := s.draftAuth(w, r)
	if !ok {
		return
	}
	if s.scope != nil {
		if _, in := s.scope[key]; !in {
			s.graphError(w, r, key, http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", "")
			return
		}
	}
	after, cont := s.applyFault(w, r, key, OpSend)
	if !cont {
		return
	}
	// As for sendMail, a send held by Latency is applied even if the client
	// gives up meanwhile (an ambiguous outcome); only Close abandons it.
	if !s.wait(r.Context(), s.draftState().opts.Latency) && s.isClosed() {
		resetConn(w)
		return
	}
	d := s.draftState()
	now := s.opts.Now()
	d.mu.Lock()
	m := d.lookupLocked(mailbox, r.PathValue("mid"), now)
	if m != nil {
		m.sendRequests++
	}
	if m == nil || m.inSentItems(d.opts, now) {
		d.mu.Unlock()
		s.notFound(w, r, key)
		return
	}
	n := 0
	for _, l := range [][]graphRecipient{m.msg.ToRecipients, m.msg.CcRecipients, m.msg.BccRecipients} {
		for _, rc := range l {
			if rc.EmailAddress == nil || !plausibleAddress(rc.EmailAddress.Address) {
				n = -1000
			}
			n++
		}
	}
	if n <= 0 {
		d.mu.Unlock()
		s.graphError(w, r, key, http.StatusBadRequest, "ErrorInvalidRecipients",
			"At least one recipient isn't valid., A message can't be sent because it contains no recipients or an invalid recipient address.", "")
		return
	}
	if !m.sent {
		m.sent, m.sentAt = true, now
		if !m.immutable || d.opts.IDChangesOnSend {
			// A REST id changes when the item moves to Sent Items ([immut]);
			// an immutable one may too when a draft is sent ([overview]).
			delete(d.byID, m.id)
			m.id = newItemID(m.immutable)
			d.byID[m.id] = m
		}
	}
	m.deliveries++
	gm := m.msg
	contents := make([][]byte, len(m.atts))
	for i, a := range m.atts {
		gm.Attachments = append(gm.Attachments, graphAttachment{ODataType: fileAttachmentType, Name: a.name,
			ContentType: a.contentType, IsInline: a.inline, ContentID: a.contentID})
		contents[i] = a.content
	}
	if d.opts.TransitDelay <= 0 {
		m.atts = dropContent(m.atts) // in transit it can be sent again: kept
	}
	d.mu.Unlock()

	crid := r.Header.Get("client-request-id")
	save := true // a sent draft is saved to Sent Items ([send])
	req := &sendMailRequest{Message: &gm, SaveToSentItems: &save}
	msg := buildMessage(crid, mailbox, w.Header().Get("request-id"), req, contents, now)
	msg.InternetMessageID = m.internetMessageID
	msg.Draft = true
	if m.mime != nil {
		msg.MIME, msg.Delivered, msg.FromName = true, m.mime, m.fromName
	}
	s.record(msg, req, contents)
	if after != nil && (after.Status < 200 || after.Status > 299) {
		s.failAfter(w, r, key, after)
		return
	}
	status := http.StatusAccepted
	if after != nil {
		status = after.Status
		if after.RetryAfter != "" {
			w.Header().Set("Retry-After", after.RetryAfter)
		}
	}
	w.WriteHeader(status)
}

// handleFolderMessages: GET /users/{id}/mailFolders/{folder}/messages lists a folder's messages
// ([folder]); the fake knows the well-known names sentitems and drafts, and one $filter:
// internetMessageId eq '<value>' (an OData string literal, quotes doubled), the search a client
// makes for the Sent Items copy of a sent draft. A message in transit is in Drafts, not in Sent
// Items ([process] step 4). Another folder or filter answers 400 (the fake's choice: it does not
// implement them).
func (s *Server) handleFolderMessages(w http.ResponseWriter, r *http.Request) {
	mailbox, key, ok := s.draftAuth(w, r)
	if !ok {
		return
	}
	if _, cont := s.applyFault(w, r, key, OpFind); !cont {
		return
	}
	folder := strings.ToLower(r.PathValue("folder"))
	if folder != "sentitems" && folder != "drafts" {
		s.graphError(w, r, key, http.StatusBadRequest, "ErrorInvalidRequest", "graphtest: only the sentitems and drafts folders are supported by the fake.", "")
		return
	}
	want, filtered, okFilter := internetMessageIDFilter(r.URL.Query().Get("$filter"))
	if !okFilter {
		s.graphError(w, r, key, http.StatusBadRequest, "BadRequest", "graphtest: only $filter=internetMessageId eq '...' is supported by the fake.", "")
		return
	}
	d := s.draftState()
	now := s.opts.Now()
	d.mu.Lock()
	list := []map[string]any{}
	for _, m := range d.all {
		if m.deleted || !strings.EqualFold(m.mailbox, mailbox) || (filtered && m.internetMessageID != want) {
			continue
		}
		if (folder == "sentitems") == m.inSentItems(d.opts, now) {
			list = append(list, m.view(d.opts, now))
		}
	}
	d.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('" + mailbox + "')/mailFolders('" + folder + "')/messages",
		"value":          list,
	})
}

// internetMessageIDFilter parses "internetMessageId eq '<v>'" ("" = no filter).
func internetMessageIDFilter(f string) (want string, filtered, ok bool) {
	f = strings.TrimSpace(f)
	if f == "" {
		return "", false, true
	}
	rest, found := strings.CutPrefix(f, "internetMessageId eq '")
	if !found || !strings.HasSuffix(rest, "'") {
		return "", false, false
	}
	lit := strings.TrimSuffix(rest, "'")
	if strings.Count(strings.ReplaceAll(lit, "''", ""), "'") != 0 {
		return "", false, false
	}
	return strings.ReplaceAll(lit, "''", "'"), true, true
}

// attachmentHash returns the hex SHA-256 of b.
func attachmentHash(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// handleAddAttachment: POST …/messages/{mid}/attachments with a fileAttachment under 3 MB
// answers 201 Created and the attachment ([attach]; [large]: "If the file size is under 3 MB, do
// a single POST on the attachments navigation property"). The 4 MB request limit applies.
func (s *Server) handleAddAttachment(w http.ResponseWriter, r *http.Request) {
	mailbox, key, ok := s.draftAuth(w, r)
	if !ok {
		return
	}
	after, cont := s.applyFault(w, r, key, OpAttach)
	if !cont {
		return
	}
	body, gerr := s.readBody(r)
	if gerr != nil {
		s.graphError(w, r, key, gerr.status, gerr.code, gerr.msg, "")
		return
	}
	var a graphAttachment
	if err := json.Unmarshal(body, &a); err != nil || a.ODataType != fileAttachmentType || a.Name == "" {
		s.graphError(w, r, key, http.StatusBadRequest, "ErrorInvalidRequest",
			"A fileAttachment with @odata.type '"+fileAttachmentType+"' and a name is required.", "")
		return
	}
	content, err := base64.StdEncoding.DecodeString(a.ContentBytes)
	if err != nil {
		s.graphError(w, r, key, http.StatusBadRequest, "RequestBodyRead", "contentBytes is not valid base64.", "")
		return
	}
	d := s.draftState()
	d.mu.Lock()
	m := d.lookupLocked(mailbox, r.PathValue("mid"), s.opts.Now())
	var id string
	if m != nil && !m.sent && draftSizeLocked(m)+countedSize(int64(len(content))) > s.maxMessageSize(mailbox) {
		d.mu.Unlock()
		s.tooLargeForMailbox(w, r, key) // limits.go
		return
	}
	if m != nil && !m.sent {
		id = newItemID(m.immutable)
		m.atts = append(m.atts, draftAttachment{id: id, name: a.Name, contentType: a.ContentType, contentID: a.ContentID,
			inline: a.IsInline, content: content})
	}
	d.mu.Unlock()
	if id == "" {
		s.notFound(w, r, key)
		return
	}
	if after != nil {
		s.failAfter(w, r, key, after)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"@odata.type": fileAttachmentType, "id": id, "name": a.Name,
		"contentType": a.ContentType, "size": len(content), "isInline": a.IsInline, "contentId": a.ContentID})
}
