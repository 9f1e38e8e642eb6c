package graphtest

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Exchange message trace (Graph v1.0), as the fake serves it from the mail it
// accepted. Sources (README.md, "Message trace"):
//   - GET /admin/exchange/tracing/messageTraces: "messagetracingroot-list-messagetraces"
//     (v1.0): $filter, $top (1..5000, default 1000) and $skiptoken; the next page is
//     the whole @odata.nextLink URL; application permission ExchangeMessageTrace.Read.All;
//     global service only.
//   - The properties and the $filter operators each supports: the exchangeMessageTrace
//     resource page (eq on fromIP, id, messageId, recipientAddress, senderAddress,
//     status, toIP; ge and le on receivedDateTime; subject only contains, startsWith and
//     endsWith, which the fake does not serve: it answers 400 to any filter on subject;
//     source microsoftgraph/microsoft-graph-docs-contrib,
//     api-reference/v1.0/resources/exchangemessagetrace.md). No page documents `or`:
//     the fake refuses it (400), the conservative reading, so that no client depends on it.
//   - The status enumeration exchangeMessageTraceStatus and the function
//     getDetailsByRecipient(recipientAddress) returning exchangeMessageTraceDetail: the
//     v1.0 CSDL (msgraph-metadata schemas/v1.0-Prod.csdl; absent from the Fairfax,
//     Mooncake and USNat schemas).
//   - "This API has a throttling limit of 100 requests per 5 minutes": the
//     getDetailsByRecipient page; Get-MessageTraceDetailV2 says the same of its "query
//     requests" in a "5 minute running window". The fake counts list and detail
//     requests together in one rolling window per tenant and answers past it with 429
//     TooManyRequests and Retry-After (the general Graph throttling answer), seconds
//     until the oldest request leaves the window.

// TraceRole is the application permission the message trace API needs.
const TraceRole = "ExchangeMessageTrace.Read.All"

// TraceAppID is the Microsoft application whose service principal the
// tenant must have (exchangeMessageTrace resource page, "Prerequisites").
const TraceAppID = "8bd644d1-64a1-4d4b-ae52-2e0cbf64e373"

// TraceOptions shape the fake's message trace. Zero values take the defaults.
type TraceOptions struct {
	// Lag is how long an accepted message takes to appear in the trace at
	// all (Exchange's trace is not immediate). Default 1s.
	Lag time.Duration
	// Settle is how long an ordinary recipient stays gettingStatus after it
	// appears, before delivered. Default 2s.
	Settle time.Duration
	// PendingFor is how long a recipient whose local part starts with
	// "pending" stays pending before delivered. Default 30s.
	PendingFor time.Duration
	// Budget requests per Window (default 100 per 5 minutes, Microsoft's figure).
	Budget int
	Window time.Duration
	// NoServicePrincipal is a fault knob: the tenant lacks the service
	// principal of Microsoft's message trace application, which the
	// exchangeMessageTrace resource page requires ("Prerequisites"). The page
	// does not say how the API answers then; the fake answers 401 with the
	// text public integrations report ("Service principal-less authentication
	// failed: The service principal for App ID 8bd644d1-… was not found.",
	// elastic/integrations PR 18240).
	NoServicePrincipal bool
}

func (o TraceOptions) withDefaults() TraceOptions {
	if o.Lag <= 0 {
		o.Lag = time.Second
	}
	if o.Settle <= 0 {
		o.Settle = 2 * time.Second
	}
	if o.PendingFor <= 0 {
		o.PendingFor = 30 * time.Second
	}
	if o.Budget <= 0 {
		o.Budget = 100
	}
	if o.Window <= 0 {
		o.Window = 5 * time.Minute
	}
	return o
}

// TraceRow is one exchangeMessageTrace: one message and one recipient.
type TraceRow struct {
	ID               string    `json:"id"`
	MessageID        string    `json:"messageId"`
	ReceivedDateTime time.Time `json:"receivedDateTime"`
	RecipientAddress string    `json:"recipientAddress"`
	SenderAddress    string    `json:"senderAddress"`
	Size             int       `json:"size"`
	Status           string    `json:"status"`
	Subject          string    `json:"subject"`
	FromIP           string    `json:"fromIP"`
	ToIP             string    `json:"toIP"`
}

// Statuses of exchangeMessageTraceStatus (v1.0 CSDL).
const (
	TraceGettingStatus  = "gettingStatus"
	TracePending        = "pending"
	TraceFailed         = "failed"
	TraceDelivered      = "delivered"
	TraceExpanded       = "expanded"
	TraceQuarantined    = "quarantined"
	TraceFilteredAsSpam = "filteredAsSpam"
)

// BounceDetail is the description of the Fail event the fake gives a
// bounce@… recipient: Exchange's NDR text for an unknown recipient.
const BounceDetail = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"

// traceStatus is the status of recipient rcpt of a message received at
// at, seen at now: driven by the recipient's local part (bounce, quarantine,
// spam, pending, anything else delivered).
func (o TraceOptions) traceStatus(rcpt string, at, now time.Time) (string, bool) {
	age := now.Sub(at)
	if age < o.Lag {
		return "", false
	}
	local, _, _ := strings.Cut(strings.ToLower(rcpt), "@")
	switch {
	case strings.HasPrefix(local, "bounce"):
		return TraceFailed, true
	case strings.HasPrefix(local, "quarantine"):
		return TraceQuarantined, true
	case strings.HasPrefix(local, "spam"):
		return TraceFilteredAsSpam, true
	case strings.HasPrefix(local, "pending"):
		if age < o.Lag+o.PendingFor {
			return TracePending, true
		}
	case age < o.Lag+o.Settle:
		return TraceGettingStatus, true
	}
	return TraceDelivered, true
}

// TraceRequests returns the message trace requests the fake answered
// (list and details, throttled ones included) and the times they came.
func (s *Server) TraceRequests() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.traceLog)
}

// MaxTraceRequestsInWindow is the most trace requests the fake saw inside
// any one throttling window (answered or throttled).
func (s *Server) MaxTraceRequestsInWindow() int {
	log := s.TraceRequests()
	w := s.opts.Trace.withDefaults().Window
	most := 0
	j := 0
	for i := range log {
		for log[i].Sub(log[j]) >= w {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

// TraceThrottled counts trace requests answered 429.
func (s *Server) TraceThrottled() int { return int(s.traceThrottled.Load()) }

// traceAdmit records a trace request and reports how long to wait when it
// is past the tenant's budget.
func (s *Server) traceAdmit(now time.Time) time.Duration {
	o := s.opts.Trace.withDefaults()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.traceLog = append(s.traceLog, now)
	n := 0
	var oldest time.Time
	for i := len(s.traceLog) - 2; i >= 0; i-- { // the admitted requests before this one
		t := s.traceLog[i]
		if now.Sub(t) >= o.Window {
			break
		}
		if !s.traceRefused[i] {
			n++
			oldest = t
		}
	}
	if n < o.Budget {
		s.traceRefused = append(s.traceRefused, false)
		return 0
	}
	s.traceRefused = append(s.traceRefused, true)
	return max(oldest.Add(o.Window).Sub(now), time.Second)
}

// traceAuth answers 401/403 and reports false when the request may not read
// message trace.
func (s *Server) traceAuth(w http.ResponseWriter, r *http.Request) bool {
	h := w.Header()
	h.Set("request-id", newGUID())
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" || !s.tokenValid(strings.TrimSpace(tok)) {
		s.graphError(w, r, "", http.StatusUnauthorized, "InvalidAuthenticationToken", "Access token is empty or has expired.", "")
		return false
	}
	if s.opts.Cloud != CloudGlobal {
		// The API exists in the global service only (its availability table).
		s.graphError(w, r, "", http.StatusNotFound, "ResourceNotFound", "Resource not found for the segment 'tracing'.", "")
		return false
	}
	if s.opts.Trace.NoServicePrincipal {
		s.graphError(w, r, "", http.StatusUnauthorized, "Unauthorized",
			"Service principal-less authentication failed: The service principal for App ID "+TraceAppID+" was not found.", "")
		return false
	}
	s.credMu.Lock()
	has := slices.Contains(s.roles, TraceRole)
	s.credMu.Unlock()
	if !has {
		s.graphError(w, r, "", http.StatusForbidden, "Forbidden", "Missing role permissions on the request. API requires one of 'ExchangeMessageTrace.Read.All'.", "")
		return false
	}
	if d := s.traceAdmit(s.opts.Now()); d > 0 {
		s.traceThrottled.Add(1)
		s.graphError(w, r, "", http.StatusTooManyRequests, "TooManyRequests",
			"Too many requests: message trace allows 100 requests per 5 minutes.", strconv.Itoa(int((d+time.Second-1)/time.Second)))
		return false
	}
	return true
}

// traceRows is the trace of every accepted message at now.
func (s *Server) traceRows(now time.Time) []TraceRow {
	o := s.opts.Trace.withDefaults()
	s.mu.Lock()
	msgs := slices.Clone(s.messages)
	s.mu.Unlock()
	var rows []TraceRow
	for i, m := range msgs {
		mid := m.InternetMessageID
		if mid == "" {
			mid = "<" + m.RequestID + "@graphtest.invalid>" // Exchange assigns one
		}
		rcpts := slices.Concat(m.To, m.Cc, m.Bcc)
		for _, rcpt := range rcpts {
			st, ok := o.traceStatus(rcpt, m.ReceivedAt, now)
			if !ok {
				continue
			}
			rows = append(rows, TraceRow{
				ID: traceID(i), MessageID: mid, ReceivedDateTime: m.ReceivedAt.UTC(),
				RecipientAddress: rcpt, SenderAddress: m.From, Size: len(m.Body) + 1024, Status: st,
				Subject: m.Subject, FromIP: "127.0.0.1", ToIP: "",
			})
		}
	}
	return rows
}

// traceID is the message trace id of the i-th accepted message: one per
// message, shared by its recipients' rows, as Exchange's MessageTraceId.
func traceID(i int) string {
	return "00000000-0000-4000-8000-" + strconv.FormatInt(1e11+int64(i), 10)[0:12]
}

type traceFilter struct {
	eq     map[string]string
	ge, le time.Time
}

var traceEqProps = map[string]bool{"fromip": true, "id": true, "messageid": true, "recipientaddress": true,
	"senderaddress": true, "status": true, "toip": true}

// parseTraceFilter reads a $filter of `and`-joined clauses, each one
// property compared with one literal.
func parseTraceFilter(f string) (traceFilter, string) {
	tf := traceFilter{eq: map[string]string{}}
	if strings.TrimSpace(f) == "" {
		return tf, ""
	}
	for _, clause := range splitAnd(f) {
		fields := strings.SplitN(strings.TrimSpace(clause), " ", 3)
		if len(fields) != 3 {
			return tf, "Invalid filter clause: " + clause
		}
		prop, op, lit := strings.ToLower(fields[0]), strings.ToLower(fields[1]), strings.TrimSpace(fields[2])
		switch {
		case prop == "receiveddatetime" && (op == "ge" || op == "le"):
			t, err := time.Parse(time.RFC3339, lit)
			if err != nil {
				return tf, "Invalid receivedDateTime literal: " + lit
			}
			if op == "ge" {
				tf.ge = t
			} else {
				tf.le = t
			}
		case traceEqProps[prop] && op == "eq":
			if len(lit) < 2 || lit[0] != '\'' || lit[len(lit)-1] != '\'' || strings.Contains(strings.ReplaceAll(lit[1:len(lit)-1], "''", ""), "'") {
				return tf, "Invalid string literal: " + lit
			}
			if _, dup := tf.eq[prop]; dup {
				return tf, "A property may be compared once: " + fields[0]
			}
			tf.eq[prop] = strings.ReplaceAll(lit[1:len(lit)-1], "''", "'")
		default:
			return tf, "Unsupported filter: " + clause
		}
	}
	return tf, ""
}

// splitAnd splits f on " and " outside string literals; an " or " outside a
// literal is refused by the caller through an unparsable clause.
func splitAnd(f string) []string {
	var out []string
	inLit := false
	start := 0
	for i := 0; i < len(f); i++ {
		if f[i] == '\'' {
			inLit = !inLit
			continue
		}
		if !inLit && i+5 <= len(f) && strings.EqualFold(f[i:i+5], " and ") {
			out = append(out, f[start:i])
			start = i + 5
			i += 4
		}
	}
	return append(out, f[start:])
}

func (tf traceFilter) match(r TraceRow) bool {
	for k, v := range tf.eq {
		var got string
		switch k {
		case "fromip":
			got = r.FromIP
		case "id":
			got = r.ID
		case "messageid":
			got = r.MessageID
		case "recipientaddress":
			got = r.RecipientAddress
		case "senderaddress":
			got = r.SenderAddress
		case "status":
			got = r.Status
		case "toip":
			got = r.ToIP
		}
		if !strings.EqualFold(got, v) {
			return false
		}
	}
	if !tf.ge.IsZero() && r.ReceivedDateTime.Before(tf.ge) {
		return false
	}
	if !tf.le.IsZero() && r.ReceivedDateTime.After(tf.le) {
		return false
	}
	return true
}

func (s *Server) handleMessageTraces(w http.ResponseWriter, r *http.Request) {
	if !s.traceAuth(w, r) {
		return
	}
	q := r.URL.Query()
	top := 1000
	if v := q.Get("$top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 5000 {
			s.graphError(w, r, "", http.StatusBadRequest, "BadRequest", "$top must be between 1 and 5000.", "")
			return
		}
		top = n
	}
	tf, bad := parseTraceFilter(q.Get("$filter"))
	if bad != "" {
		s.graphError(w, r, "", http.StatusBadRequest, "BadRequest", bad, "")
		return
	}
	skip := 0
	if v := q.Get("$skiptoken"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			s.graphError(w, r, "", http.StatusBadRequest, "BadRequest", "Invalid $skiptoken.", "")
			return
		}
		skip = n
	}
	var rows []TraceRow
	for _, row := range s.traceRows(s.opts.Now()) {
		if tf.match(row) {
			rows = append(rows, row)
		}
	}
	out := map[string]any{"@odata.context": s.url + "/v1.0/$metadata#admin/exchange/tracing/messageTraces"}
	page := rows[min(skip, len(rows)):]
	if len(page) > top {
		page = page[:top]
		next := url.Values{}
		for k, v := range q {
			next[k] = v
		}
		next.Set("$skiptoken", strconv.Itoa(skip+top))
		out["@odata.nextLink"] = s.url + r.URL.Path + "?" + next.Encode()
	}
	if page == nil {
		page = []TraceRow{}
	}
	out["value"] = page
	writeJSON(w, http.StatusOK, out)
}

// TraceDetail is one exchangeMessageTraceDetail.
type TraceDetail struct {
	ID          string    `json:"id"`
	MessageID   string    `json:"messageId"`
	DateTime    time.Time `json:"dateTime"`
	Event       string    `json:"event"`
	Action      string    `json:"action"`
	Description string    `json:"description"`
	Data        string    `json:"data"`
}

func (s *Server) handleTraceDetails(w http.ResponseWriter, r *http.Request) {
	fn := r.PathValue("fn")
	arg, ok := strings.CutPrefix(fn, "getDetailsByRecipient(recipientAddress='")
	if !ok || !strings.HasSuffix(arg, "')") {
		s.handleNotFound(w, r)
		return
	}
	rcpt := strings.ReplaceAll(strings.TrimSuffix(arg, "')"), "''", "'")
	if !s.traceAuth(w, r) {
		return
	}
	id := r.PathValue("id")
	var row *TraceRow
	for _, x := range s.traceRows(s.opts.Now()) {
		if x.ID == id && strings.EqualFold(x.RecipientAddress, rcpt) {
			row = &x
			break
		}
	}
	if row == nil {
		s.graphError(w, r, "", http.StatusNotFound, "ResourceNotFound", "No message trace with this id and recipient.", "")
		return
	}
	d := []TraceDetail{{ID: newGUID(), MessageID: row.MessageID, DateTime: row.ReceivedDateTime, Event: "Receive",
		Action: "", Description: "Message received by: graphtest.invalid"}}
	switch row.Status {
	case TraceFailed:
		d = append(d, TraceDetail{ID: newGUID(), MessageID: row.MessageID, DateTime: row.ReceivedDateTime.Add(time.Second),
			Event: "Fail", Description: "Reason: [{LED=" + BounceDetail + "}]"})
	case TraceQuarantined:
		d = append(d, TraceDetail{ID: newGUID(), MessageID: row.MessageID, DateTime: row.ReceivedDateTime.Add(time.Second),
			Event: "Quarantine", Description: "The message was quarantined."})
	case TraceFilteredAsSpam:
		d = append(d, TraceDetail{ID: newGUID(), MessageID: row.MessageID, DateTime: row.ReceivedDateTime.Add(time.Second),
			Event: "Spam", Description: "The message was marked as spam."})
	case TraceDelivered:
		d = append(d, TraceDetail{ID: newGUID(), MessageID: row.MessageID, DateTime: row.ReceivedDateTime.Add(time.Second),
			Event: "Deliver", Description: "The message was successfully delivered."})
	}
	writeJSON(w, http.StatusOK, map[string]any{"value": d})
}
