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

// The one request path of every Graph mail call (sendMail, the draft flow,
// the upload session): do builds the request (newRequest), makes it
// (roundTrip, which traces whether the request was written), refreshes the
// token once on 401, and classifies a failure (Classify, the one table).

const maxErrorBody = 64 << 10

// maxAnswer bounds the body of a 2xx that is read (a message, a page of
// Sent Items, an upload session).
const maxAnswer = 1 << 20

// request is one Graph call.
type request struct {
	op     string // OpSendMail, OpCreateDraft, …: how the call is classified and named in errors
	method string
	url    string
	body   []byte // nil: none
	ctype  string // Content-Type of body ("": none sent)
	header http.Header
	// immutableID asks for immutable ids (Prefer: IdType="ImmutableId"; the
	// header "only applies to the request it is included with",
	// https://learn.microsoft.com/graph/outlook-immutable-id).
	immutableID bool
	// needBody: the 2xx answer's body is used, so a 2xx whose body cannot be
	// read is a failure (ambiguous for a call that sends).
	needBody bool
	// preauth: the URL is pre-authenticated (an upload session's): no
	// token, no Authorization header, and the URL, which carries a token,
	// never in an error.
	preauth bool
}

// call makes one Graph request of the draft flow: JSON body, immutable ids
// (see do).
func (c *Client) call(ctx context.Context, op, method, u string, body []byte) (Result, []byte, error) {
	r := request{op: op, method: method, url: u, body: body, immutableID: true, needBody: true}
	if body != nil {
		r.ctype = "application/json"
	}
	return c.do(ctx, r)
}

// do makes r with a bearer token from Token (none when preauth); when
// Graph answers 401 it gets a fresh token from Entra once and makes r once
// more. It returns the answer's body on 2xx, and the Result of the last
// request with Calls listing every request made. Every error is a
// *contract.SendError with Op r.op, classified by Classify; a token failure
// is Token's (auth_failed, never ambiguous).
func (c *Client) do(ctx context.Context, r request) (Result, []byte, error) {
	tok := ""
	if !r.preauth {
		var err error
		if tok, err = c.Token(ctx); err != nil {
			return Result{}, nil, withOp(err, r.op)
		}
	}
	start := time.Now()
	res, data, e := c.roundTrip(ctx, r, tok)
	calls := []Call{res.call()}
	if e != nil && e.Status == http.StatusUnauthorized && !r.preauth {
		// 401: the token may have been revoked or issued before a change.
		fresh, terr := c.refreshToken(ctx, tok)
		if terr != nil {
			res.Duration, res.Calls = time.Since(start), calls
			te := withOp(terr, r.op)
			te.EarlierCalls = graphCalls(calls)
			return res, nil, te
		}
		res, data, e = c.roundTrip(ctx, r, fresh)
		if e != nil {
			e.EarlierCalls = graphCalls(calls)
		}
		calls = append(calls, res.call())
	}
	res.Duration, res.Calls = time.Since(start), calls
	if e != nil {
		return res, nil, e
	}
	return res, data, nil
}

// withOp returns err (Token's *contract.SendError) naming op.
func withOp(err error, op string) *contract.SendError {
	var se *contract.SendError
	if !errors.As(err, &se) {
		se = &contract.SendError{Class: contract.ClassRetryable, Reason: contract.ReasonAuthFailed, Err: err}
	}
	se.Op, se.SendsNothing = op, !sends(op)
	return se
}

// wroteTrace records whether the whole request went out on the wire.
type wroteTrace struct {
	wrote atomic.Bool
	trace httptrace.ClientTrace
}

// roundTrip makes one HTTP exchange of r, bounded by the client's timeout.
func (c *Client) roundTrip(ctx context.Context, r request, tok string) (Result, []byte, *contract.SendError) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	wt := &wroteTrace{}
	wt.trace.WroteRequest = func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			wt.wrote.Store(true)
		}
	}
	req, crid, err := c.newRequest(httptrace.WithClientTrace(ctx, &wt.trace), r.method, r.url, r.body)
	if err != nil {
		e := &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInternal, Profile: c.name, Op: r.op,
			Message: "building the request", Err: err}
		if r.preauth {
			e.Message, e.Err = "the upload URL does not parse", nil // its text holds the URL
		}
		return Result{}, nil, e
	}
	h := req.Header
	if !r.preauth {
		h["Authorization"] = []string{"Bearer " + tok}
	}
	if r.immutableID {
		h["Prefer"] = []string{`IdType="ImmutableId"`}
	}
	if r.ctype != "" {
		h["Content-Type"] = []string{r.ctype}
	}
	for k, v := range r.header {
		h[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if r.preauth {
			// The upload URL carries a token: keep the cause only.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			err = errors.New(c.scrub(err.Error()))
		} // else url.Error names the URL (the sender mailbox), never headers.
		v := Classify(r.op, 0, "", "", wt.wrote.Load())
		return Result{ClientRequestID: crid}, nil, &contract.SendError{Class: v.Class, Reason: v.Reason, Ambiguous: v.Ambiguous,
			Profile: c.name, Op: r.op, SendsNothing: !sends(r.op), ClientRequestID: crid, Err: err}
	}
	res := Result{Status: resp.StatusCode, RequestID: safeID(resp.Header.Get("request-id")), ClientRequestID: crid}
	if d, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		res.Date = d
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return res, nil, c.httpError(r.op, resp, res, tok)
	}
	// A 202 to sendMail or to a draft's send may carry Retry-After (Microsoft
	// Q&A 5629476): the mail is sent (never send it again), and the mailbox
	// should pause.
	res.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody)) // so the connection is reused
	_ = resp.Body.Close()
	if err != nil && r.needBody {
		v := Classify(r.op, 0, "", "", true)
		return res, nil, &contract.SendError{Class: v.Class, Reason: v.Reason, Ambiguous: v.Ambiguous, Profile: c.name, Op: r.op,
			SendsNothing: !sends(r.op), ClientRequestID: crid, RequestID: res.RequestID, Date: res.Date, Err: err}
	}
	return res, data, nil
}

// httpError reads and closes the body of a Graph error answer to op and
// turns it into a *contract.SendError classified by Classify; tok is
// scrubbed from any text Graph echoes.
func (c *Client) httpError(op string, resp *http.Response, res Result, tok string) *contract.SendError {
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
	v := Classify(op, resp.StatusCode, ge.Error.Code, ge.Error.Message, true)
	code := ge.Error.Code
	if len(code) > 128 {
		code = code[:128]
	}
	msg := c.scrub(strings.TrimSpace(ge.Error.Message), tok)
	if v.Hint != "" {
		msg = strings.TrimSpace(msg + " " + v.Hint)
	}
	return &contract.SendError{
		Class:           v.Class,
		Reason:          v.Reason,
		Status:          resp.StatusCode,
		Code:            c.scrub(code, tok),
		Message:         msg,
		RetryAfter:      parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		Ambiguous:       v.Ambiguous,
		RequestID:       res.RequestID,
		ClientRequestID: res.ClientRequestID,
		Date:            res.Date,
		Profile:         c.name,
		Op:              op,
		SendsNothing:    !sends(op),
	}
}

// newRequest is the one place a Graph or upload request is built: it sends a
// fresh GUID as client-request-id (and asks Graph to echo it), as Microsoft
// advises for every request, and returns that GUID so that whatever reports
// the call reports exactly what was sent. Job ids never go there: they
// travel in the message's X-Mailworker-Job-Id header.
func (c *Client) newRequest(ctx context.Context, method, u string, body []byte) (*http.Request, string, error) {
	var rd io.Reader = http.NoBody
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, "", err
	}
	crid := newGUID()
	req.Header["Client-Request-Id"] = []string{crid}
	req.Header["Return-Client-Request-Id"] = []string{"true"}
	return req, crid, nil
}
