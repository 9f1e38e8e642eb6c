package graphtest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// sendMailRequest is the body of POST /users/{id}/sendMail.
type sendMailRequest struct {
	Message         *graphMessage `json:"message"`
	SaveToSentItems *bool         `json:"saveToSentItems"`
}

type graphMessage struct {
	Subject                string            `json:"subject"`
	Body                   *graphBody        `json:"body"`
	ToRecipients           []graphRecipient  `json:"toRecipients"`
	CcRecipients           []graphRecipient  `json:"ccRecipients"`
	BccRecipients          []graphRecipient  `json:"bccRecipients"`
	ReplyTo                []graphRecipient  `json:"replyTo"`
	Attachments            []graphAttachment `json:"attachments"`
	InternetMessageHeaders []graphHeader     `json:"internetMessageHeaders"`
	Importance             string            `json:"importance"`
}

type graphBody struct {
	ContentType string `json:"contentType"`
	Content     string `json:"content"`
}

type graphRecipient struct {
	EmailAddress *struct {
		Name    string `json:"name"`
		Address string `json:"address"`
	} `json:"emailAddress"`
}

type graphAttachment struct {
	ODataType    string `json:"@odata.type"`
	Name         string `json:"name"`
	ContentType  string `json:"contentType"`
	ContentBytes string `json:"contentBytes"`
	IsInline     bool   `json:"isInline"`
	ContentID    string `json:"contentId"`
}

type graphHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

const fileAttachmentType = "#microsoft.graph.fileAttachment"

// graphErr is a Graph error answer.
type graphErr struct {
	status int
	code   string
	msg    string
}

func (s *Server) handleSendMail(w http.ResponseWriter, r *http.Request) {
	s.sendRequests.Add(1)
	reqID := newGUID()
	crid := r.Header.Get("client-request-id")
	h := w.Header()
	h.Set("request-id", reqID)
	if crid != "" {
		h.Set("client-request-id", crid)
	}
	mailbox := r.PathValue("id")
	key := strings.ToLower(mailbox)

	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" || !s.tokenValid(strings.TrimSpace(tok)) {
		msg := "Access token is empty."
		if ok && tok != "" {
			msg = "Access token has expired or is not yet valid."
		}
		h.Set("WWW-Authenticate", `Bearer realm="", authorization_uri="`+s.AuthorityURL()+`/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`)
		s.graphError(w, r, key, http.StatusUnauthorized, "InvalidAuthenticationToken", msg, "")
		return
	}

	now := s.opts.Now()
	s.mu.Lock()
	st := s.boxes[key]
	if st == nil {
		st = &mailboxState{}
		s.boxes[key] = st
	}
	if now.Before(st.retryUntil) {
		s.inRetryAfter.Add(1)
	}
	st.inFlight++
	overConcurrency := s.opts.MaxConcurrentPerMailbox > 0 && st.inFlight > s.opts.MaxConcurrentPerMailbox
	fault := s.nextFaultLocked(key)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		st.inFlight--
		s.mu.Unlock()
	}()

	var failAfter *Fault
	if fault != nil {
		if !s.wait(r.Context(), fault.Delay) {
			resetConn(w) // client gone or server closing: answer nothing
			return
		}
		switch {
		case fault.Reset:
			// Read the whole request first: the connection drops after
			// Graph has the mail, the ambiguous case a client must handle
			// (a reset before the body arrived would depend on timing).
			_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, MaxRequestBytes+1))
			s.logf("graphtest: sendMail %s: fault: connection reset", mailbox)
			resetConn(w)
			return
		case fault.AcceptThenFail:
			failAfter = fault
		case fault.Status != 0:
			msg := fault.Message
			if msg == "" {
				msg = "Injected fault."
			}
			s.graphError(w, r, key, fault.Status, faultCode(fault), msg, fault.RetryAfter)
			return
		}
	}

	if s.mailboxes != nil {
		if _, ok := s.mailboxes[key]; !ok {
			s.graphError(w, r, key, http.StatusNotFound, "ErrorInvalidUser",
				"The requested user '"+mailbox+"' is invalid.", "")
			return
		}
	}
	if s.scope != nil {
		if _, ok := s.scope[key]; !ok {
			s.graphError(w, r, key, http.StatusForbidden, "ErrorAccessDenied",
				"Access is denied. Check credentials and try again.", "")
			return
		}
	}

	var (
		req         *sendMailRequest
		attachments [][]byte
		mimeReq     *mimeSend
		gerr        *graphErr
	)
	if isMIMERequest(r) {
		mimeReq, gerr = s.readSendMIME(r) // mime.go
	} else {
		req, attachments, gerr = s.readSendMail(r)
	}
	if gerr != nil {
		s.graphError(w, r, key, gerr.status, gerr.code, gerr.msg, "")
		return
	}
	size := int64(0)
	if mimeReq != nil {
		size = int64(len(mimeReq.delivered))
	} else {
		size = messageSizeOf(req.Message, attachments)
	}
	if size > s.maxMessageSize(mailbox) {
		s.tooLargeForMailbox(w, r, key) // limits.go
		return
	}

	if failAfter == nil {
		if overConcurrency {
			s.graphError(w, r, key, http.StatusTooManyRequests, "ApplicationThrottled",
				"Application is over its MailboxConcurrency limit.", "1")
			return
		}
		if wait := s.admitRate(st, now); wait > 0 {
			s.graphError(w, r, key, http.StatusTooManyRequests, "ApplicationThrottled",
				"graphtest: simulated per-minute throttle (Options.SimulatedPerMinuteThrottle); not a documented Graph response.", strconv.Itoa(wait))
			return
		}
		d := s.opts.Latency
		if j := s.opts.LatencyJitter; j > 0 {
			d += rand.N(j + 1)
		}
		// The message is submitted even if the client gives up while we hold it
		// (an ambiguous outcome, as with the real service); only Close abandons it.
		if !s.wait(r.Context(), d) && s.isClosed() {
			resetConn(w)
			return
		}
	}

	var msg Message
	if mimeReq != nil {
		msg = mimeReq.message(crid, mailbox, reqID, s.opts.Now())
	} else {
		msg = buildMessage(crid, mailbox, reqID, req, attachments, s.opts.Now())
	}
	s.record(msg, req, attachments)

	if failAfter != nil {
		status := failAfter.Status
		if status == 0 {
			status = http.StatusGatewayTimeout
		}
		s.graphError(w, r, key, status, faultCode(&Fault{Status: status, Code: failAfter.Code}),
			"Injected fault after the message was accepted.", failAfter.RetryAfter)
		return
	}
	if s.opts.Logf != nil {
		s.logf("graphtest: sendMail %s: 202 job=%s request-id=%s", mailbox, crid, reqID)
	}
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// nextFaultLocked pops a scripted fault for key (then for any mailbox), else picks a persistent
// one. Callers hold s.mu.
func (s *Server) nextFaultLocked(key string) *Fault {
	for _, k := range [2]string{key, ""} {
		if q := s.scripts[k]; len(q) > 0 {
			f := q[0]
			if len(q) == 1 {
				delete(s.scripts, k)
			} else {
				s.scripts[k] = q[1:]
			}
			return &f
		}
	}
	if len(s.faultMix) > 0 {
		return s.mixFaultLocked(key)
	}
	f := s.mailboxFaults[key]
	if f == nil {
		f = s.globalFault
	}
	if f == nil {
		return nil
	}
	if p := f.Probability; p > 0 && p < 1 && rand.Float64() >= p {
		return nil
	}
	c := *f
	return &c
}

// admitRate applies SimulatedPerMinuteThrottle: it records an admitted send and returns 0, or returns
// the whole seconds (>= 1) until a slot in the rolling window frees.
func (s *Server) admitRate(st *mailboxState, now time.Time) int {
	limit := s.opts.SimulatedPerMinuteThrottle
	if limit <= 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(st.window) < limit {
		st.window = append(st.window, now)
		return 0
	}
	oldest := st.window[st.next]
	if free := oldest.Add(time.Minute); now.Before(free) {
		wait := int((free.Sub(now) + time.Second - 1) / time.Second)
		return max(wait, 1)
	}
	st.window[st.next] = now
	st.next = (st.next + 1) % limit
	return 0
}

func faultCode(f *Fault) string {
	if f.Code != "" {
		return f.Code
	}
	switch f.Status {
	case http.StatusBadRequest:
		return "ErrorInvalidRequest"
	case http.StatusUnauthorized:
		return "InvalidAuthenticationToken"
	case http.StatusForbidden:
		return "ErrorAccessDenied"
	case http.StatusNotFound:
		return "ErrorInvalidUser"
	case http.StatusRequestEntityTooLarge:
		return "RequestEntityTooLarge"
	case http.StatusTooManyRequests:
		return "ApplicationThrottled"
	case http.StatusInternalServerError:
		return "generalException"
	case http.StatusServiceUnavailable:
		return "ServiceUnavailable"
	case http.StatusGatewayTimeout:
		return "GatewayTimeout"
	}
	return "UnknownError"
}

// resetConn closes the connection without an answer: hijack on HTTP/1, stream abort on HTTP/2.
func resetConn(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

// readSendMail reads and validates the request body; it returns the request, the decoded
// attachment contents (parallel to req.Message.Attachments) or a Graph error. The checks, in
// order, and the Microsoft source each follows are listed in README.md.
func (s *Server) readSendMail(r *http.Request) (*sendMailRequest, [][]byte, *graphErr) {
	body, gerr := s.readBody(r)
	if gerr != nil {
		return nil, nil, gerr
	}
	if gerr := schema.checkSendMail(body); gerr != nil {
		return nil, nil, gerr
	}
	var req sendMailRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, nil, &graphErr{http.StatusBadRequest, "RequestBodyRead", "Invalid JSON in the request body: " + err.Error()}
	}
	m := req.Message
	if m == nil {
		return nil, nil, &graphErr{http.StatusBadRequest, "ErrorInvalidRequest", "Empty Payload. JSON content expected: the 'message' property is required."}
	}
	lists := [][]graphRecipient{m.ToRecipients, m.CcRecipients, m.BccRecipients, m.ReplyTo}
	n := 0
	for i, list := range lists {
		for _, rc := range list {
			if rc.EmailAddress == nil || !plausibleAddress(rc.EmailAddress.Address) {
				return nil, nil, &graphErr{http.StatusBadRequest, "ErrorInvalidRecipients",
					"At least one recipient isn't valid., A message can't be sent because it contains no recipients or an invalid recipient address."}
			}
			if i < 3 {
				n++
			}
		}
	}
	if n == 0 {
		return nil, nil, &graphErr{http.StatusBadRequest, "ErrorInvalidRecipients",
			"At least one recipient is required, but none were found."}
	}
	// 1 to 5 internetMessageHeaders when present (README.md: Microsoft Q&A 762243, msgraph-sdk-dotnet#2208).
	if m.InternetMessageHeaders != nil && (len(m.InternetMessageHeaders) == 0 || len(m.InternetMessageHeaders) > MaxInternetMessageHeaders) {
		return nil, nil, &graphErr{http.StatusBadRequest, "InvalidInternetMessageHeaderCollection",
			"Maximum number of headers in one message should be less than or equal to 5."}
	}
	for _, hd := range m.InternetMessageHeaders {
		if !(strings.HasPrefix(hd.Name, "X-") || strings.HasPrefix(hd.Name, "x-")) {
			return nil, nil, &graphErr{http.StatusBadRequest, "InvalidInternetMessageHeader",
				"The internet message header name '" + hd.Name + "' should start with 'x-' or 'X-'."}
		}
	}
	contents := make([][]byte, len(m.Attachments))
	for i, a := range m.Attachments {
		if a.ODataType != fileAttachmentType {
			return nil, nil, &graphErr{http.StatusBadRequest, "ErrorInvalidRequest",
				"graphtest: only '" + fileAttachmentType + "' attachments are supported by the fake."}
		}
		if a.Name == "" {
			return nil, nil, &graphErr{http.StatusBadRequest, "ErrorInvalidRequest", "Attachment name is required."}
		}
		b, err := base64.StdEncoding.DecodeString(a.ContentBytes)
		if err != nil {
			return nil, nil, &graphErr{http.StatusBadRequest, "RequestBodyRead",
				"Attachment '" + a.Name + "': contentBytes is not valid base64."}
		}
		contents[i] = b
	}
	return &req, contents, nil
}

// tooLarge is the answer to a request over MaxRequestBytes, in the form Options.TooLargeAs400 picks.
// readBody reads a Graph request's body under the 4 MB limit on the whole
// request (413, or 400 with Options.TooLargeAs400; see README.md).
func (s *Server) readBody(r *http.Request) ([]byte, *graphErr) {
	if r.ContentLength > MaxRequestBytes {
		return nil, s.tooLarge()
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBytes+1))
	if err != nil {
		return nil, &graphErr{http.StatusBadRequest, "RequestBodyRead", "Cannot read the request body: " + err.Error()}
	}
	if len(body) > MaxRequestBytes {
		return nil, s.tooLarge()
	}
	return body, nil
}

func (s *Server) tooLarge() *graphErr {
	if s.opts.TooLargeAs400 {
		return &graphErr{http.StatusBadRequest, "BadRequest", "Maximum request length exceeded."}
	}
	return &graphErr{http.StatusRequestEntityTooLarge, "RequestEntityTooLarge",
		fmt.Sprintf("The maximum request length supported is %d bytes.", MaxRequestBytes)}
}

func plausibleAddress(a string) bool {
	at := strings.LastIndexByte(a, '@')
	return at > 0 && at < len(a)-1 && !strings.ContainsAny(a, " \t\r\n<>,;")
}

// graphError answers a Graph-shaped error. When retryAfter is set it is sent verbatim and
// remembered for the mailbox (InRetryAfter). 429s are counted.
func (s *Server) graphError(w http.ResponseWriter, r *http.Request, key string, status int, code, msg, retryAfter string) {
	h := w.Header()
	reqID := h.Get("request-id")
	if reqID == "" {
		reqID = newGUID()
		h.Set("request-id", reqID)
	}
	crid := r.Header.Get("client-request-id")
	if crid != "" {
		h.Set("client-request-id", crid)
	}
	if status == http.StatusTooManyRequests {
		s.throttled.Add(1)
	}
	if retryAfter != "" {
		h.Set("Retry-After", retryAfter)
		if until, ok := retryAfterTime(retryAfter, s.opts.Now()); ok && key != "" {
			s.mu.Lock()
			if st := s.boxes[key]; st != nil && until.After(st.retryUntil) {
				st.retryUntil = until
			}
			s.mu.Unlock()
		}
	}
	if s.opts.Logf != nil {
		s.logf("graphtest: %s %s: %d %s request-id=%s", r.Method, r.URL.Path, status, code, reqID)
	}
	inner := map[string]string{
		"request-id": reqID,
		"date":       s.opts.Now().UTC().Format("2006-01-02T15:04:05"),
	}
	if crid != "" {
		inner["client-request-id"] = crid
	}
	writeJSON(w, status, map[string]any{
		"error": map[string]any{
			"code":       code,
			"message":    msg,
			"innerError": inner,
		},
	})
}

// retryAfterTime converts a Retry-After value (delta seconds or an HTTP date) to an instant.
func retryAfterTime(v string, now time.Time) (time.Time, bool) {
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		return now.Add(time.Duration(secs) * time.Second), secs > 0
	}
	if t, err := http.ParseTime(v); err == nil {
		return t, true
	}
	return time.Time{}, false
}
