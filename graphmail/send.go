package graphmail

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

const maxErrorBody = 64 << 10

// Send posts msg to Graph as msg.From (POST /v1.0/users/{From}/sendMail).
// clientRequestID (the job id) is sent as client-request-id, with
// return-client-request-id: true, so the call can be found in Microsoft's logs.
//
// A token comes from Token (a cache hit nearly always). When Graph answers
// 401, Send gets a fresh token from Entra once and retries once.
//
// Every error is a *contract.SendError: Class and Reason per Classify,
// Ambiguous when the mail may have been sent anyway (5xx, or a network error
// or timeout after the request was written), RetryAfter from the Retry-After
// header, and the request-id/client-request-id of the response. Token
// failures are as Token returns them (reason auth_failed, class unavailable
// or retryable) and never ambiguous. The Result is filled in
// on failure as well (Status 0 when there was no response).
func (c *Client) Send(ctx context.Context, msg *Message, clientRequestID string) (Result, error) {
	if msg == nil || msg.From == "" {
		return Result{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInternal, Profile: c.name,
			Message: "message without From", ClientRequestID: clientRequestID}
	}
	body, err := graphJSON(msg)
	if err != nil {
		return Result{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInternal, Profile: c.name,
			Message: "encoding the message", ClientRequestID: clientRequestID, Err: err}
	}
	u := c.sendPrefix + url.PathEscape(msg.From) + "/sendMail"

	tok, err := c.Token(ctx)
	if err != nil {
		e := err.(*contract.SendError)
		e.ClientRequestID = clientRequestID
		return Result{}, e
	}
	start := time.Now()
	res, perr := c.post(ctx, u, body, tok, clientRequestID)
	if perr == nil || perr.Status != http.StatusUnauthorized {
		res.Duration = time.Since(start)
		return res, nilIfNone(perr)
	}
	// 401: the token may have been revoked or issued before a change.
	fresh, terr := c.refreshToken(ctx, tok)
	if terr != nil {
		res.Duration = time.Since(start)
		e := terr.(*contract.SendError)
		e.ClientRequestID = clientRequestID
		return res, e
	}
	res, perr = c.post(ctx, u, body, fresh, clientRequestID)
	res.Duration = time.Since(start)
	return res, nilIfNone(perr)
}

// nilIfNone avoids returning a typed nil *contract.SendError as a non-nil error.
func nilIfNone(e *contract.SendError) error {
	if e == nil {
		return nil
	}
	return e
}

// wroteTrace records whether the whole request went out on the wire.
type wroteTrace struct {
	wrote atomic.Bool
	trace httptrace.ClientTrace
}

func (c *Client) post(ctx context.Context, u string, body []byte, tok, crid string) (Result, *contract.SendError) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	wt := &wroteTrace{}
	wt.trace.WroteRequest = func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			wt.wrote.Store(true)
		}
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, &wt.trace), http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return Result{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInternal, Profile: c.name,
			Message: "building the request", ClientRequestID: crid, Err: err}
	}
	h := req.Header
	h["Authorization"] = []string{"Bearer " + tok}
	h["Content-Type"] = []string{"application/json"}
	if crid != "" {
		h["Client-Request-Id"] = []string{crid}
		h["Return-Client-Request-Id"] = []string{"true"}
	}

	resp, err := c.http.Do(req)
	if err != nil {
		// url.Error names the URL (the sender mailbox), never headers.
		return Result{ClientRequestID: crid}, &contract.SendError{
			Class:           contract.ClassRetryable,
			Ambiguous:       wt.wrote.Load(),
			Profile:         c.name,
			ClientRequestID: crid,
			Err:             err,
		}
	}
	res := Result{
		Status:          resp.StatusCode,
		RequestID:       resp.Header.Get("request-id"),
		ClientRequestID: resp.Header.Get("client-request-id"),
	}
	if res.ClientRequestID == "" {
		res.ClientRequestID = crid
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// 202 has no body; drain whatever there is so the connection is reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		_ = resp.Body.Close()
		return res, nil
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	_ = resp.Body.Close()

	var ge struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(data, &ge)
	class, reason := Classify(resp.StatusCode, ge.Error.Code)
	code := ge.Error.Code
	if len(code) > 128 {
		code = code[:128]
	}
	e := &contract.SendError{
		Class:           class,
		Reason:          reason,
		Status:          resp.StatusCode,
		Code:            c.scrub(code, tok),
		Message:         c.scrub(strings.TrimSpace(ge.Error.Message), tok),
		RetryAfter:      parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		Ambiguous:       ambiguousStatus(resp.StatusCode),
		RequestID:       res.RequestID,
		ClientRequestID: res.ClientRequestID,
		Profile:         c.name,
	}
	return res, e
}

// IsAmbiguous reports whether err is an *contract.SendError whose send may have reached Graph.
func IsAmbiguous(err error) bool {
	var e *contract.SendError
	return errors.As(err, &e) && e.Ambiguous
}
