package graphmail

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"
	"github.com/mailworker/mailworker/queue/contract"
)

// Things that must never reach an error string: JWTs (access tokens, client
// assertions, federated tokens) and PEM blocks. Known secrets are scrubbed by
// value as well (raw and form-encoded).
var (
	jwtRE = regexp.MustCompile(`eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.?[A-Za-z0-9_\-]*`)
	pemRE = regexp.MustCompile(`(?s)-----BEGIN[^-]*-----.*?(-----END[^-]*-----|$)`)
)

const redacted = "[REDACTED]"

// scrub removes secrets from s and caps its length.
func (c *Client) scrub(s string, extra ...string) string {
	return c.scrubWith(c.cred.Load().redact, s, extra...)
}

// scrubWith is scrub with the known secrets given.
func (c *Client) scrubWith(redact []string, s string, extra ...string) string {
	for _, list := range [2][]string{redact, extra} {
		for _, v := range list {
			if len(v) < 4 {
				continue
			}
			s = strings.ReplaceAll(s, v, redacted)
			if q := url.QueryEscape(v); q != v {
				s = strings.ReplaceAll(s, q, redacted)
			}
		}
	}
	if strings.Contains(s, "eyJ") {
		s = jwtRE.ReplaceAllString(s, redacted)
	}
	if strings.Contains(s, "-----BEGIN") {
		s = pemRE.ReplaceAllString(s, redacted)
	}
	const max = 512
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// authError is the sanitised form of an MSAL failure. MSAL's own errors must
// not be wrapped: errors.CallErr carries the token request (with the client
// secret or assertion in its body) and its text echoes the response body.
type authError struct {
	status int         // token endpoint HTTP status, 0 when none
	code   string      // OAuth "error", e.g. invalid_client
	msg    string      // scrubbed description
	entra  *EntraError // codes and ids for the sign-in logs; nil when none
	cause  error       // context error, or the *CredentialFaultError
}

func (e *authError) Error() string {
	var b strings.Builder
	b.WriteString("token request failed")
	if e.status != 0 {
		b.WriteString(": HTTP ")
		b.WriteString(strconv.Itoa(e.status))
	}
	if e.code != "" {
		b.WriteString(" ")
		b.WriteString(e.code)
	}
	if e.msg != "" {
		b.WriteString(": ")
		b.WriteString(e.msg)
	}
	if ids := e.entra.ids(); ids != "" {
		b.WriteString(" (")
		b.WriteString(ids)
		b.WriteString(")")
	}
	return b.String()
}

func (e *authError) Unwrap() error { return e.cause }

// tokenError turns an MSAL error into an *contract.SendError without leaking anything.
func (c *Client) tokenError(ctx context.Context, err error) *contract.SendError {
	ae := &authError{}
	var (
		callErr msalerrors.CallErr
		local   *CredentialFaultError
	)
	switch {
	case errors.As(err, &callErr) && callErr.Resp != nil:
		ae.status = callErr.Resp.StatusCode
		var body entraErrorBody
		if callErr.Resp.Body != nil {
			// MSAL replaced the body with an in-memory copy.
			_ = json.NewDecoder(callErr.Resp.Body).Decode(&body)
		}
		ae.code = c.scrub(body.Error)
		if len(ae.code) > 64 {
			ae.code = ae.code[:64]
		}
		// The first line is the AADSTS code and text; the rest repeats the ids kept in entra.
		ae.msg = c.scrub(firstLine(body.Description))
		ae.entra = body.entra()
	case errors.As(err, &local):
		ae.msg = c.scrub(local.msg)
		ae.cause = local
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		ae.msg = c.scrub(err.Error())
		if ctx.Err() != nil {
			ae.cause = ctx.Err()
		} else if errors.Is(err, context.Canceled) {
			ae.cause = context.Canceled
		} else {
			ae.cause = context.DeadlineExceeded
		}
	default:
		// Network, discovery, assertion-callback or option errors: MSAL
		// builds these from fmt.Errorf; their text names URLs and paths,
		// scrubbed anyway.
		ae.msg = c.scrub(err.Error())
	}
	// Entra unreachable, timing out, throttling or failing (5xx) says nothing
	// about the credential: the job waits without spending attempts. A 4xx
	// (invalid_client, unauthorized_client, AADSTS…) is the credential or the
	// app registration: retries spend attempts and end in auth_failed.
	// A local credential fault (local != nil) is a configuration error: retries spend
	// attempts as for a refused credential, and IsCredentialFault finds it.
	class := contract.ClassRetryable
	if local == nil && (ae.status == 0 || ae.status == http.StatusTooManyRequests || ae.status >= 500) {
		class = contract.ClassUnavailable
	}
	// The Entra ids travel in Message, so that status events, dead-letter records, logs and
	// `mailworker check` carry what finds the request in the Entra sign-in logs.
	msg := ae.msg
	if ids := ae.entra.ids(); ids != "" {
		msg += " (" + ids + ")"
	}
	return &contract.SendError{
		Class:   class,
		Reason:  contract.ReasonAuthFailed,
		Code:    ae.code,
		Message: msg,
		Profile: c.name,
		Err:     ae,
	}
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// entraErrorBody is Entra's token error response (Microsoft Entra error codes reference).
type entraErrorBody struct {
	Error         string `json:"error"`
	Description   string `json:"error_description"`
	Codes         []int  `json:"error_codes"`
	Timestamp     string `json:"timestamp"`
	TraceID       string `json:"trace_id"`
	CorrelationID string `json:"correlation_id"`
}

var (
	guidRE      = regexp.MustCompile(`^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$`)
	timestampRE = regexp.MustCompile(`^[0-9][0-9:. TZ+-]{9,39}$`)
	aadstsRE    = regexp.MustCompile(`^AADSTS([0-9]{1,9}):`)
)

// entra keeps the codes and ids that find the request in Entra's sign-in logs. Ids are
// kept only when they have their documented form (GUIDs, a timestamp), so nothing else in
// the response can travel with them. The description's "Trace ID:" lines are the fallback.
func (b *entraErrorBody) entra() *EntraError {
	e := &EntraError{}
	for _, c := range b.Codes {
		if c > 0 && len(e.Codes) < 8 {
			e.Codes = append(e.Codes, c)
		}
	}
	lines := strings.Split(strings.ReplaceAll(b.Description, "\r\n", "\n"), "\n")
	if len(e.Codes) == 0 && len(lines) > 0 {
		if m := aadstsRE.FindStringSubmatch(strings.TrimSpace(lines[0])); m != nil {
			if n, err := strconv.Atoi(m[1]); err == nil {
				e.Codes = []int{n}
			}
		}
	}
	field := func(v, label string, re *regexp.Regexp) string {
		v = strings.TrimSpace(v)
		if v == "" {
			for _, l := range lines {
				if rest, ok := strings.CutPrefix(strings.TrimSpace(l), label+":"); ok {
					v = strings.TrimSpace(rest)
				}
			}
		}
		if re.MatchString(v) {
			return v
		}
		return ""
	}
	e.TraceID = field(b.TraceID, "Trace ID", guidRE)
	e.CorrelationID = field(b.CorrelationID, "Correlation ID", guidRE)
	e.Timestamp = field(b.Timestamp, "Timestamp", timestampRE)
	if len(e.Codes) == 0 && e.TraceID == "" && e.CorrelationID == "" && e.Timestamp == "" {
		return nil
	}
	return e
}
