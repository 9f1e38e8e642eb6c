package graphmail

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/mailworker/mailworker/queue/contract"
)

// MaxRequestBytes is Graph's cap on one sendMail request: 4 MB of JSON, base64
// attachments included (docs/microsoft.md). Send refuses a larger request
// without calling Graph.
const MaxRequestBytes = 4 * 1024 * 1024

// Send posts msg to Graph as msg.From (POST /v1.0/users/{From}/sendMail).
// Every HTTP request carries a fresh GUID as client-request-id (Microsoft's
// best practices), with return-client-request-id: true; the job id travels in
// the message's X-Mailworker-Job-Id header.
// The request-id, client-request-id and Date of every call are in Result.Calls,
// and of the last one in Result and *Error, so that a Microsoft support case or
// a message trace can name the exact call.
//
// Before any call, Send refuses (contract.ClassPermanent) a message whose request would
// exceed MaxRequestBytes (message_too_large), with more recipients than
// Config.MaxRecipientsPerMessage, or with a header name outside
// Config.AllowedHeaders (invalid_job).
//
// A token comes from Token (a cache hit nearly always). When Graph answers
// 401, Send gets a fresh token from Entra once and retries once.
//
// Every error is a *contract.SendError: Class, Reason and Ambiguous per Classify
// (ambiguous when the mail may have been sent anyway: a 5xx, or a network error or
// timeout after the request was written), RetryAfter from the Retry-After header, and the
// request-id/client-request-id of the response. Token failures are
// contract.ClassRetryable "auth_failed" and never ambiguous. The Result is filled in
// on failure as well (Status 0 when there was no response).
func (c *Client) Send(ctx context.Context, msg *Message) (Result, error) {
	if msg == nil || msg.From == "" {
		return Result{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInternal, Profile: c.name,
			Message: "message without From"}
	}
	if e := c.checkLimits(msg); e != nil {
		return Result{}, e
	}
	body, ctype, err := []byte(nil), "application/json", error(nil)
	if msg.MIME != nil {
		body, ctype = graphMIME(msg), "text/plain" // MIME form: the message in base64
	} else {
		body, err = graphJSON(msg)
	}
	if err != nil {
		return Result{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInternal, Profile: c.name,
			Message: "encoding the message", Err: err}
	}
	if len(body) > MaxRequestBytes {
		return Result{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonMessageTooLarge, Profile: c.name,
			Message: fmt.Sprintf("the sendMail request would be %d bytes (JSON with attachments base64-encoded, or a MIME message in base64), over Graph's 4 MB (%d bytes) per request", len(body), MaxRequestBytes)}
	}
	res, _, err := c.do(ctx, request{op: OpSendMail, method: http.MethodPost, body: body, ctype: ctype,
		url: c.sendPrefix + url.PathEscape(msg.From) + "/sendMail"})
	return res, err
}

// checkLimits applies the profile's limits to msg before anything is sent.
func (c *Client) checkLimits(msg *Message) *contract.SendError {
	if n := len(msg.To) + len(msg.Cc) + len(msg.Bcc); n > c.maxRecipients {
		return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob, Profile: c.name,
			Message: fmt.Sprintf("%d recipients in to+cc+bcc, over this profile's maxRecipientsPerMessage of %d (the tenant's Exchange recipient limit)", n, c.maxRecipients)}
	}
	if c.allowedHeaders == nil {
		return nil
	}
	for _, h := range msg.Headers {
		if strings.EqualFold(h.Name, contract.HeaderStampJobID) {
			continue
		}
		if _, ok := c.allowedHeaders[strings.ToLower(h.Name)]; !ok {
			// Header names come from the job: quote them, never print them raw.
			return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob, Profile: c.name,
				Message: fmt.Sprintf("headers: %q is not in this profile's allowedHeaders (each distinct X- header name uses a named property of the mailbox, a finite quota)", h.Name)}
		}
	}
	return nil
}

// newGUID returns a random version 4 GUID for client-request-id.
func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// safeID keeps an id from a response header only when it looks like one (letters, digits,
// dashes, at most 64): it goes into logs, events and DLQ headers.
func safeID(s string) string {
	if len(s) > 64 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return ""
		}
	}
	return s
}

// IsAmbiguous reports whether err is an *contract.SendError whose send may have reached Graph.
func IsAmbiguous(err error) bool {
	var e *contract.SendError
	return errors.As(err, &e) && e.Ambiguous
}

// graphCalls renders calls in the contract's terms.
func graphCalls(calls []Call) []contract.GraphCall {
	out := make([]contract.GraphCall, 0, len(calls))
	for _, c := range calls {
		out = append(out, contract.GraphCall{Status: c.Status, RequestID: c.RequestID, ClientRequestID: c.ClientRequestID,
			Date: contract.GraphDate(c.Date)})
	}
	return out
}
