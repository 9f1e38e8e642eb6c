// Package console is the support web console (`mailworker console`): dead
// letters with filters, counts and paging, a job's timeline, search,
// an overview with charts, and audited actions (replay, edit and replay,
// purge, reveal), behind Entra ID sign-in with app roles. Pages are
// rendered on the server with html/template; templates, the style sheet
// and one small script are embedded. Every job field is hostile: it is
// only ever written through the template's contextual escaping, and the
// HTML body of a mail is shown as text or in a sandboxed frame under its
// own Content-Security-Policy.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/support"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Config configures the console.
type Config struct {
	// PublicURL is where people reach the console (scheme, host, optional
	// path prefix is not supported); the redirect URI registered in Entra is
	// PublicURL + "/auth/callback".
	PublicURL string
	// Authority is the Entra authority, https://login.microsoftonline.com/<tenant>
	// (the OpenID configuration is read from Authority + "/v2.0/.well-known/openid-configuration").
	Authority    string
	ClientID     string
	ClientSecret string
	// HTTPClient reaches the authority (a custom CA in tests and dev).
	HTTPClient *http.Client
	// Secret (at least 32 bytes) keys the session cookies and the keyed
	// hashes of recipients searched for.
	Secret []byte
	// SessionTTL is how long a sign-in lasts (default 8h).
	SessionTTL time.Duration
	// RunbookURL is the runbook's DLQ triage section ("" = the repository's).
	RunbookURL string
	// AllowedSenders per profile, as the worker has them: an edited job whose
	// from is not one of its profile's is refused next to the field.
	AllowedSenders map[string][]string
	// RecipientsPerDay is the per-mailbox budget the overview compares the
	// recipient ledger with (default 10,000).
	RecipientsPerDay int
	// Support is the support service the console's actions go through
	// (default support.New over the queue: the one the CLI uses).
	Support support.Service
	Logger  zerolog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

const defaultRunbook = "https://github.com/mailworker/mailworker/blob/main/docs/runbook.md#operations"

// Server is the console's HTTP handler and the state behind it.
type Server struct {
	cfg   Config
	q     *queue.Queue
	desk  support.Service
	idp   *provider
	seal  *sealer
	rcpt  []byte // HMAC key for recipient search
	pages map[string]*template.Template
	mux   *http.ServeMux

	boot    string // this process's sessions (session.Boot)
	revoked revocations

	countsMu   sync.Mutex
	counts     *queue.DLQCounts
	countsAt   time.Time
	refreshing bool
	wg         sync.WaitGroup
	ctx        context.Context
	cancel     context.CancelFunc
}

// New builds the console over q. It makes no network call: the OpenID
// configuration is read on the first sign-in. It returns an error naming the
// setting at fault.
func New(cfg Config, q *queue.Queue) (*Server, error) {
	switch {
	case cfg.PublicURL == "":
		return nil, errors.New("console.publicURL is required")
	case cfg.Authority == "":
		return nil, errors.New("console.authority is required")
	case cfg.ClientID == "":
		return nil, errors.New("console.clientId is required")
	case cfg.ClientSecret == "":
		return nil, errors.New("console.clientSecret (or clientSecretFile) is required")
	case len(cfg.Secret) < 32:
		return nil, errors.New("console.secret must be at least 32 bytes")
	}
	u, err := url.Parse(cfg.PublicURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || strings.Trim(u.Path, "/") != "" {
		return nil, fmt.Errorf("console.publicURL %q: want scheme://host[:port] without a path", cfg.PublicURL)
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 8 * time.Hour
	}
	if cfg.RunbookURL == "" {
		cfg.RunbookURL = defaultRunbook
	}
	if cfg.RecipientsPerDay <= 0 {
		cfg.RecipientsPerDay = 10000
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 15 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Support == nil {
		cfg.Support = support.New(q, support.Options{})
	}
	seal, err := newSealer(deriveKey(cfg.Secret, "cookies"))
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, q: q, desk: cfg.Support, seal: seal, rcpt: deriveKey(cfg.Secret, "recipients"),
		idp: &provider{authority: cfg.Authority, clientID: cfg.ClientID, clientSecret: cfg.ClientSecret, client: cfg.HTTPClient}}
	s.boot = randomString(16)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.parseTemplates(); err != nil {
		return nil, err
	}
	s.routes()
	return s, nil
}

// Close stops background work (a counts refresh) and waits for it.
func (s *Server) Close() {
	s.cancel()
	s.wg.Wait()
}

// ServeHTTP serves the console with its security headers.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin") // no Referer leaves the console; Origin stays on our own POSTs
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
	if strings.HasPrefix(s.cfg.PublicURL, "https://") {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	m.HandleFunc("GET /login", s.handleLogin)
	m.HandleFunc("GET /auth/callback", s.handleCallback)
	m.HandleFunc("POST /logout", s.handleLogout)

	read := func(h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
		return s.guard(RoleReader, false, h)
	}
	write := func(h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
		return s.guard(RoleSupport, true, h)
	}
	m.Handle("GET /{$}", read(func(w http.ResponseWriter, r *http.Request, _ *session) {
		http.Redirect(w, r, "/dlq", http.StatusSeeOther)
	}))
	m.Handle("GET /dlq", read(s.handleList))
	m.Handle("GET /jobs/{profile}/{id}", read(s.handleJob))
	m.Handle("GET /search", read(s.handleSearch))
	m.Handle("POST /search", s.guard(RoleReader, true, s.handleSearchRecipient))
	m.Handle("GET /overview", read(s.handleOverview))
	m.Handle("GET /suppressions", read(s.handleSuppressions))
	m.Handle("POST /suppressions/search", s.guard(RoleReader, true, s.handleSuppressionSearch))
	m.Handle("POST /suppressions/remove", write(s.handleUnsuppress))
	m.Handle("GET /dlq/bulk", s.guard(RoleSupport, false, s.handleBulkConfirm))
	m.Handle("POST /dlq/bulk", write(s.handleBulk))
	m.Handle("POST /dlq/replay", write(s.handleReplaySelected))
	m.Handle("POST /jobs/{profile}/{id}/replay", write(s.handleReplay))
	m.Handle("POST /jobs/{profile}/{id}/reveal", write(s.handleReveal))
	m.Handle("GET /jobs/{profile}/{id}/body.html", s.guard(RoleSupport, false, s.handleBodyHTML))
	m.Handle("POST /jobs/{profile}/{id}/edit", write(s.handleEdit))
	m.Handle("GET /jobs/{profile}/{id}/purge", s.guard(RoleSupport, false, s.handlePurgeConfirm))
	m.Handle("POST /jobs/{profile}/{id}/purge", write(s.handlePurge))
	s.mux = m
}

// guard checks the session on every request: signed in (else to /login for
// a GET, 401 otherwise), holding role (else 403), and for writes a CSRF
// token equal to the session's (else 403).
func (s *Server) guard(role string, write bool, h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess := s.session(r)
		if sess == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "sign in first", http.StatusUnauthorized)
			return
		}
		// A page of one profile's job needs the role for that profile
		// (global or scoped); any other page the role for some profile,
		// and the handler narrows what it shows and does to the
		// profiles the person holds it in (session.scope).
		allowed := sess.canSome(role)
		if p := r.PathValue("profile"); p != "" {
			allowed = sess.canIn(role, p)
		}
		if !allowed {
			s.log(r, sess).Warn().Str("need", role).Msg("console: forbidden")
			msg := "You do not have the role " + role + " for this."
			if p := r.PathValue("profile"); p != "" {
				msg = "You do not have the role " + role + " (or " + ScopedRole(role, p) + ") for this."
			}
			s.renderStatus(w, r, sess, http.StatusForbidden, msg)
			return
		}
		if write {
			r.Body = http.MaxBytesReader(w, r.Body, 4<<20)
			if err := r.ParseForm(); err != nil {
				http.Error(w, "bad form", http.StatusBadRequest)
				return
			}
			if !sameOrigin(r, s.cfg.PublicURL) || !constantEq(r.PostForm.Get("csrf"), sess.CSRF) {
				s.log(r, sess).Warn().Msg("console: CSRF check failed")
				s.renderStatus(w, r, sess, http.StatusForbidden, "This form has expired or did not come from the console. Reload the page and try again.")
				return
			}
		}
		h(w, r, sess)
	})
}

// sameOrigin: a POST carrying an Origin header must come from the console.
func sameOrigin(r *http.Request, public string) bool {
	o := r.Header.Get("Origin")
	return o == "" || o == public || o == "http://"+r.Host || o == "https://"+r.Host
}

func (s *Server) log(r *http.Request, sess *session) *zerolog.Logger {
	l := s.cfg.Logger.With().Str("path", r.URL.Path).Str("method", r.Method)
	if sess != nil {
		l = l.Str("actor", sess.actor())
	}
	lg := l.Logger()
	return &lg
}
