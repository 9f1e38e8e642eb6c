package console

// Rendering: the page templates, the view every page gets, error pages, and
// the helpers the pages share (masking lives in package support).

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/support"
)

func constantEq(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// view is what every page template gets.
type view struct {
	Title   string
	Sess    *session
	Support bool
	Nav     string
	Flash   string
	Data    any
}

func (s *Server) parseTemplates() error {
	funcs := template.FuncMap{
		"ts": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"trunc": func(n int, v string) string {
			if len([]rune(v)) <= n {
				return v
			}
			return string([]rune(v)[:n-1]) + "…"
		},
		"mask": support.MaskAddr,
		"maskAll": func(l []string) []string {
			out := make([]string, len(l))
			for i, a := range l {
				out[i] = support.MaskAddr(a)
			}
			return out
		},
		"join":    strings.Join,
		"maskErr": func(dl contract.DeadLetter) string { return support.MaskText(dl.Error, dl.From) },
		"runbook": func(r contract.Reason) string { return s.cfg.RunbookURL },
		"advice":  func(r contract.Reason) string { return advice[r] },
		"dict": func(kv ...any) map[string]any {
			m := map[string]any{}
			for i := 0; i+1 < len(kv); i += 2 {
				m[kv[i].(string)] = kv[i+1]
			}
			return m
		},
		"hoursList": func() []int { return []int{1, 3, 6, 12, 24} },
	}
	s.pages = map[string]*template.Template{}
	for _, name := range []string{"list", "job", "edit", "search", "overview", "confirm", "status", "suppressions"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return fmt.Errorf("console: template %s: %w", name, err)
		}
		s.pages[name] = t
	}
	return nil
}

func (s *Server) render(w http.ResponseWriter, status int, name string, v view) {
	var buf bytes.Buffer
	if err := s.pages[name].Execute(&buf, v); err != nil {
		s.cfg.Logger.Error().Err(err).Str("page", name).Msg("console: render")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

func (s *Server) view(sess *session, title, nav string, data any) view {
	return view{Title: title, Sess: sess, Support: sess != nil && sess.can(RoleSupport), Nav: nav, Data: data}
}

func (s *Server) renderStatus(w http.ResponseWriter, r *http.Request, sess *session, status int, msg string) {
	s.render(w, status, "status", s.view(sess, http.StatusText(status), "", msg))
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, sess *session, err error) {
	s.log(r, sess).Error().Err(err).Msg("console: request failed")
	s.renderStatus(w, r, sess, http.StatusBadGateway, "The queue could not be read or written: "+err.Error())
}

// advice is the console's one-line "what next" per reason; the runbook row
// (linked) has the long form.
var advice = map[contract.Reason]string{
	contract.ReasonInvalidJob:        "The job failed validation: fix it in the editor (the error names the field) and replay, or have the producer fixed.",
	contract.ReasonSenderNotAllowed:  "The sender is not an approved mailbox of the profile: fix the sender, or onboard the mailbox, then replay.",
	contract.ReasonRecipientInvalid:  "Graph rejected a recipient address: correct it in the editor and replay, or purge.",
	contract.ReasonMailboxNotFound:   "The sender mailbox does not exist in Exchange Online (typo, renamed, on-premises): fix the sender or the mailbox, then replay.",
	contract.ReasonAccessDenied:      "The sender is outside the app's RBAC scope, or a scope change is still propagating (30 min to 2 h): check the scope, wait, then replay.",
	contract.ReasonMessageTooLarge:   "The mail is over Graph's 4 MB request limit: shrink or move attachments to objectRef, then replay; or purge.",
	contract.ReasonAuthFailed:        "Entra refused the profile's credential: fix the certificate or secret (AADSTS code below), then replay all of this reason.",
	contract.ReasonExpired:           "expiresAt passed before the mail could go: usually purge; replay only with a new expiresAt.",
	contract.ReasonAttemptsExhausted: "Graph kept failing: check its health and throttling; the mail may have been delivered (ambiguous): check message trace for the job id before replaying.",
	contract.ReasonGraphRejected:     "Graph refused the message for another reason: read the error, fix the job or the config, replay or purge.",
	contract.ReasonInternal:          "A worker fault: collect the job id and the worker logs, file a bug; replay after the fix.",
}

// normAddr is the form a recipient is hashed in: the address part only,
// trimmed and lower-cased.
func normAddr(a string) string {
	if _, addr, err := contract.ParseAddress(a); err == nil {
		a = addr
	}
	return strings.ToLower(strings.TrimSpace(a))
}

func (s *Server) rcptHash(a string) string {
	m := hmac.New(sha256.New, s.rcpt)
	m.Write([]byte(normAddr(a)))
	return hex.EncodeToString(m.Sum(nil))
}
