package graphmail

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Exchange message trace through Graph v1.0 (docs/microsoft.md, "Message
// trace"): GET /admin/exchange/tracing/messageTraces with $filter on
// senderAddress (eq) and receivedDateTime (ge, le), $top up to 5,000, paged by
// @odata.nextLink; GET …/messageTraces/{id}/getDetailsByRecipient(recipientAddress='…')
// for the events of one recipient. Application permission
// ExchangeMessageTrace.Read.All; global service only; 100 requests per 5
// minutes per tenant.

// MessageTraceRole is the application permission message trace needs.
const MessageTraceRole = "ExchangeMessageTrace.Read.All"

// MessageTraceAppID is the Microsoft application whose service principal
// must exist in the tenant before message trace answers ("you must provision
// a service principal in your tenant for the Microsoft application with the
// following application (client) ID": the exchangeMessageTrace resource
// page, "Prerequisites"). Without it the API answers 401 naming this id (as
// reported by elastic/integrations PR 18240).
const MessageTraceAppID = "8bd644d1-64a1-4d4b-ae52-2e0cbf64e373"

// TraceAvailable reports whether Microsoft offers the Graph message trace API
// in cloud: the global service only, per the availability table of
// "List messageTraces" (v1.0); the Fairfax and Mooncake v1.0 CSDL have no
// exchangeMessageTrace.
func (c Cloud) TraceAvailable() bool { return c == "" || c == CloudGlobal }

// Trace statuses (exchangeMessageTraceStatus, v1.0 CSDL).
const (
	TraceGettingStatus  = "gettingStatus"
	TracePending        = "pending"
	TraceFailed         = "failed"
	TraceDelivered      = "delivered"
	TraceExpanded       = "expanded"
	TraceQuarantined    = "quarantined"
	TraceFilteredAsSpam = "filteredAsSpam"
)

// MessageTrace is one exchangeMessageTrace: one message, one recipient.
type MessageTrace struct {
	ID               string    `json:"id"`
	MessageID        string    `json:"messageId"`
	ReceivedDateTime time.Time `json:"receivedDateTime"`
	RecipientAddress string    `json:"recipientAddress"`
	SenderAddress    string    `json:"senderAddress"`
	Status           string    `json:"status"`
}

// TraceDetail is one exchangeMessageTraceDetail (an event of one recipient).
type TraceDetail struct {
	DateTime    time.Time `json:"dateTime"`
	Event       string    `json:"event"`
	Action      string    `json:"action"`
	Description string    `json:"description"`
}

// TraceQuery selects traces of one sender received in [From, To]. Microsoft
// documents one comparison per property and no `or`, so queries are planned
// per sender mailbox and time window, never per message.
type TraceQuery struct {
	Sender   string
	From, To time.Time
	Top      int // page size, 1..5000; 0 = 5000
}

// TraceError is a failed message trace request: HTTP status, Graph code and
// the Retry-After Graph gave (429).
type TraceError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
	RequestID  string
	Err        error
}

func (e *TraceError) Error() string {
	if e.Err != nil {
		return "graphmail: message trace: " + e.Err.Error()
	}
	s := fmt.Sprintf("graphmail: message trace: %d %s", e.Status, e.Code)
	if e.Message != "" {
		s += ": " + e.Message
	}
	switch e.Status {
	case http.StatusForbidden:
		s += " (grant the application permission " + MessageTraceRole + " and admin consent; see docs/runbook.md, \"Delivery tracking\")"
	case http.StatusUnauthorized:
		s += " (a valid token refused: the tenant may lack the service principal of Microsoft's message trace application " + MessageTraceAppID +
			"; deploy/entra/Grant-MailworkerMessageTrace.ps1 provisions it)"
	}
	return s
}

func (e *TraceError) Unwrap() error { return e.Err }

// Throttled reports whether err is a 429 from message trace, and its Retry-After.
func Throttled(err error) (time.Duration, bool) {
	var te *TraceError
	if errors.As(err, &te) && te.Status == http.StatusTooManyRequests {
		return te.RetryAfter, true
	}
	return 0, false
}

func (c *Client) graphBase() string { return strings.TrimSuffix(c.sendPrefix, "/users/") }

// MessageTraces returns the traces q selects, calling onRequest before each
// request (each page is one request of the tenant's budget; the caller's
// pacer decides whether it may be made: an error from onRequest stops the
// listing and is returned). It returns a *TraceError when Graph refuses.
func (c *Client) MessageTraces(ctx context.Context, q TraceQuery, onRequest func(context.Context) error) ([]MessageTrace, error) {
	top := q.Top
	if top <= 0 || top > 5000 {
		top = 5000
	}
	filter := fmt.Sprintf("senderAddress eq '%s' and receivedDateTime ge %s and receivedDateTime le %s",
		strings.ReplaceAll(q.Sender, "'", "''"), q.From.UTC().Format(time.RFC3339), q.To.UTC().Format(time.RFC3339))
	v := url.Values{"$filter": {filter}, "$top": {fmt.Sprint(top)}}
	next := c.graphBase() + "/admin/exchange/tracing/messageTraces?" + v.Encode()
	var out []MessageTrace
	for next != "" {
		if onRequest != nil {
			if err := onRequest(ctx); err != nil {
				return out, err
			}
		}
		var page struct {
			Value    []MessageTrace `json:"value"`
			NextLink string         `json:"@odata.nextLink"`
		}
		if err := c.traceGet(ctx, next, &page); err != nil {
			return out, err
		}
		out = append(out, page.Value...)
		next = page.NextLink
		if next != "" && !strings.HasPrefix(next, c.graphBase()+"/") {
			return out, &TraceError{Err: errors.New("@odata.nextLink outside the Graph endpoint")}
		}
	}
	return out, nil
}

// TraceDetails returns the events of recipient in the trace traceID (one
// request of the tenant's budget). It returns a *TraceError when Graph refuses.
func (c *Client) TraceDetails(ctx context.Context, traceID, recipient string) ([]TraceDetail, error) {
	u := c.graphBase() + "/admin/exchange/tracing/messageTraces/" + url.PathEscape(traceID) +
		"/getDetailsByRecipient(recipientAddress='" + url.PathEscape(strings.ReplaceAll(recipient, "'", "''")) + "')"
	var page struct {
		Value []TraceDetail `json:"value"`
	}
	if err := c.traceGet(ctx, u, &page); err != nil {
		return nil, err
	}
	return page.Value, nil
}

func (c *Client) traceGet(ctx context.Context, u string, into any) error {
	tok, err := c.Token(ctx)
	if err != nil {
		return &TraceError{Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return &TraceError{Err: err}
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Client-Request-Id", newGUID())
	resp, err := c.http.Do(req)
	if err != nil {
		// url.Error names the URL, whose $filter holds a sender mailbox (not a recipient).
		return &TraceError{Err: errors.New(scrubURLError(err))}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		var ge struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		_ = json.Unmarshal(data, &ge)
		msg := ge.Error.Message
		if len(msg) > 300 {
			msg = msg[:300]
		}
		return &TraceError{Status: resp.StatusCode, Code: ge.Error.Code, Message: c.scrub(msg, tok),
			RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()), RequestID: safeID(resp.Header.Get("request-id"))}
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(into); err != nil {
		return &TraceError{Status: resp.StatusCode, Err: fmt.Errorf("decode: %w", err)}
	}
	return nil
}

// scrubURLError keeps a transport error's cause without the URL, whose
// getDetailsByRecipient segment names a recipient (personal data).
func scrubURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + " message trace: " + ue.Err.Error()
	}
	return err.Error()
}
