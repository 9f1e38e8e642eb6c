// Package graphtest is an in-process fake of Microsoft Entra ID (OIDC discovery and the
// client-credentials token endpoint) and Microsoft Graph (POST /v1.0/users/{id}/sendMail, and
// the draft flow of drafts.go: messages, upload sessions, send, get, delete), served over TLS
// with its own CA, with fault knobs for tests, load tests and the sandbox.
//
// The real MSAL Go confidential client talks to it when configured with
// authority AuthorityURL(), confidential.WithHTTPClient(Client()) and
// confidential.WithInstanceDiscovery(false).
//
// Each behaviour follows a Microsoft source, listed per behaviour in README.md next to this file;
// what Microsoft does not document (Options.SimulatedPerMinuteThrottle) is a knob, off by default.
// Graph behaviour for sendMail, in the order checks are made:
//
//  1. bearer token present, issued by this server and unexpired, else 401 InvalidAuthenticationToken;
//  2. scripted faults (Script), then persistent faults (SetMailboxFault, SetFault);
//  3. mailbox exists (Options.Mailboxes), else 404 ErrorInvalidUser;
//  4. mailbox in the RBAC scope (Options.Scope), else 403 ErrorAccessDenied;
//  5. whole request at most 4 MB, else 413 RequestEntityTooLarge (or 400 BadRequest with
//     Options.TooLargeAs400);
//  6. the body conforms to Graph's v1.0 CSDL for sendMail (testdata/graph-v1.0-sendmail.csdl.xml),
//     else 400 RequestBodyRead; or, with Content-Type: text/plain, the MIME form (mime.go): a
//     base64 MIME message, else 400 ErrorMimeContentInvalidBase64String;
//  7. at least one valid recipient, else 400 ErrorInvalidRecipients; 1 to 5 internetMessageHeaders
//     when present, else 400 InvalidInternetMessageHeaderCollection; X- names only, else 400
//     InvalidInternetMessageHeader;
//  8. per-mailbox concurrency (Outlook: 4), and the simulated per-minute throttle when enabled,
//     else 429 ApplicationThrottled with Retry-After;
//  9. Options.Latency, then the message is recorded and 202 Accepted is answered.
//
// Concurrency is counted from the moment an authenticated request for a mailbox arrives until it
// is answered, so requests held by a Delay fault or by Latency occupy a slot.
package graphtest

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MaxRequestBytes is the largest sendMail request body Graph accepts: 4 MB, the whole JSON
// request (base64 attachments included), 4,194,304 bytes (README.md, "Sources").
const MaxRequestBytes = 4 * 1024 * 1024

// MaxInternetMessageHeaders is the most internetMessageHeaders Graph accepts on one message.
const MaxInternetMessageHeaders = 5

// Options configures a Server. The zero value is usable.
type Options struct {
	Addr                    string            // listen address; "" = 127.0.0.1:0
	TenantID                string            // default "test-tenant"
	ClientID                string            // default "test-client"
	ClientSecret            string            // accepted secret; "" = secrets not accepted
	Certificate             *x509.Certificate // accepted for client_assertion (RS256/PS256 JWT); nil = assertions not accepted
	Roles                   []string          // application permissions in the tokens' roles claim (admin consent, e.g. "Mail.Send"); nil = none, as with Exchange RBAC only
	TokenLifetime           time.Duration     // default 1h (expires_in)
	Mailboxes               []string          // mailboxes that exist (case-insensitive); nil = every address exists
	Scope                   []string          // mailboxes inside the app's RBAC scope; nil = all existing mailboxes
	Latency                 time.Duration     // added to every accepted sendMail
	LatencyJitter           time.Duration     // uniform extra 0..jitter
	MaxConcurrentPerMailbox int               // default 4; negative = unlimited
	// SimulatedPerMinuteThrottle is a fault knob, a simulation and not Graph's behaviour: when
	// > 0, a mailbox's sends past this many in a rolling 60 s window are answered 429
	// ApplicationThrottled with Retry-After. Exchange Online limits a mailbox to 30 messages a
	// minute, but Microsoft documents no 429 for it (past it Exchange delays the
	// mail); load tests use the knob to exercise the worker's Retry-After path. 0 (default) = off.
	SimulatedPerMinuteThrottle int
	// TooLargeAs400 picks how a request over MaxRequestBytes is refused: 413 (default) or
	// 400 BadRequest "Maximum request length exceeded." — Graph has answered both (README.md).
	TooLargeAs400 bool
	// RefreshIn is the refresh_in (seconds) put in token responses, telling MSAL when to refresh
	// proactively. 0 = half the lifetime for tokens of 2 hours or more, none below: the
	// fake's choice, borrowed from the Azure SDK's rule for managed-identity tokens
	// (azure-sdk-for-go#19213); when Entra sends refresh_in for client credentials is not
	// documented. Negative = never send it.
	RefreshIn time.Duration
	// GraphAudience is the resource this cloud's Graph answers to, the aud of the tokens issued
	// (default "https://graph.microsoft.com"; e.g. "https://graph.microsoft.us" for US Gov). A
	// token request for another resource is refused with AADSTS500011, as Entra does.
	GraphAudience string
	// Federated lists the app's federated identity credentials (workload identity): a client
	// assertion whose iss is not the client id is checked against them. nil = none.
	Federated []FederatedCredential
	// Cloud is the national cloud the fake stands for: "" or "global", "usgov" (GCC High, L4),
	// "usgovdod" (DoD, L5) or "china". It sets the default GraphAudience and federated
	// audience, and which Graph features exist: the US Government clouds have no
	// createUploadSession for attachments (README.md, "Clouds").
	Cloud string
	// MaxMessageSize is every mailbox's maximum message size (Exchange's MaxSendSize), the
	// whole message with its attachments base64-encoded: default DefaultMaxMessageSize (35 MB,
	// Exchange Online's default); at most MaxMessageSizeLimit (150 MB). Over it a send, an
	// attachment or an upload chunk is refused ErrorMessageSizeExceeded.
	MaxMessageSize int64
	// MailboxMaxMessageSize sets the maximum message size of single mailboxes
	// (case-insensitive), as an admin's Set-Mailbox -MaxSendSize does.
	MailboxMaxMessageSize map[string]int64
	OutDir                string                           // if set, write each accepted message as <jobid-or-n>.eml and .json
	Drafts                DraftOptions                     // the draft flow (drafts.go)
	Trace                 TraceOptions                     // Exchange message trace (trace.go)
	Logf                  func(format string, args ...any) // optional

	// Now is the server's clock (token expiry, rate windows, Retry-After bookkeeping);
	// default time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.TenantID == "" {
		o.TenantID = "test-tenant"
	}
	if o.ClientID == "" {
		o.ClientID = "test-client"
	}
	if o.TokenLifetime <= 0 {
		o.TokenLifetime = time.Hour
	}
	if o.MaxConcurrentPerMailbox == 0 {
		o.MaxConcurrentPerMailbox = 4
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Cloud == "" {
		o.Cloud = CloudGlobal
	}
	if o.GraphAudience == "" {
		o.GraphAudience = cloudGraph[o.Cloud]
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	o.GraphAudience = strings.TrimRight(o.GraphAudience, "/")
	return o
}

func (o Options) validate() error {
	switch {
	case strings.ContainsAny(o.TenantID, "/?#% "):
		return fmt.Errorf("graphtest: Options.TenantID %q must be a single path segment", o.TenantID)
	case o.Latency < 0:
		return errors.New("graphtest: Options.Latency must not be negative")
	case o.LatencyJitter < 0:
		return errors.New("graphtest: Options.LatencyJitter must not be negative")
	case o.SimulatedPerMinuteThrottle < 0:
		return errors.New("graphtest: Options.SimulatedPerMinuteThrottle must not be negative")
	case cloudGraph[o.Cloud] == "":
		return fmt.Errorf("graphtest: Options.Cloud %q is not global, usgov, usgovdod or china", o.Cloud)
	case o.MaxMessageSize < 0 || o.MaxMessageSize > MaxMessageSizeLimit:
		return fmt.Errorf("graphtest: Options.MaxMessageSize %d is not between 1 and %d (150 MB)", o.MaxMessageSize, MaxMessageSizeLimit)
	}
	for mb, n := range o.MailboxMaxMessageSize {
		if n <= 0 || n > MaxMessageSizeLimit {
			return fmt.Errorf("graphtest: Options.MailboxMaxMessageSize[%s] %d is not between 1 and %d (150 MB)", mb, n, MaxMessageSizeLimit)
		}
	}
	return nil
}

// Fault is an injected sendMail outcome.
//
// A fault with Status 0 and neither Reset nor AcceptThenFail only applies its Delay and then lets
// the request continue with normal behaviour (a slow mailbox).
type Fault struct {
	Status         int           // HTTP status to answer (e.g. 429, 500, 503, 504, 401)
	Code           string        // Graph error code; "" = a default for Status
	Message        string        // Graph error message; "" = "Injected fault."
	RetryAfter     string        // Retry-After header value, verbatim ("30" or an HTTP date); "" = none
	Delay          time.Duration // hold the request this long before answering
	Reset          bool          // close the connection without answering
	AcceptThenFail bool          // record the message as accepted, then answer Status (default 504) anyway
	Probability    float64       // for SetFault/SetMailboxFault: 0 or 1 = always
}

// Stats is a snapshot of the server's counters (also served at GET /_sandbox/stats).
type Stats struct {
	TokenRequests int `json:"tokenRequests"`
	TokenFailures int `json:"tokenFailures"`
	SendRequests  int `json:"sendRequests"`
	Accepted      int `json:"accepted"`
	Throttled     int `json:"throttled"`
	InRetryAfter  int `json:"inRetryAfter"`
	Duplicates    int `json:"duplicates"`
}

// Server is a running fake. All methods are safe for concurrent use.
type Server struct {
	opts      Options
	url       string
	tokenURL  string
	issuer    string
	caPEM     []byte
	client    *http.Client
	transport *http.Transport
	httpSrv   *http.Server
	serveDone chan struct{}

	mailboxes map[string]struct{} // nil = all exist
	scope     map[string]struct{} // nil = all in scope
	// mailboxMaxSize is Options.MailboxMaxMessageSize by lower-cased address.
	mailboxMaxSize map[string]int64

	// lifecycle: handlers register under lcMu so Close can wait for them.
	lcMu     sync.Mutex
	closed   bool
	handlers sync.WaitGroup

	// cridMu guards crids: every client-request-id header received.
	cridMu sync.Mutex
	crids  map[string]struct{}
	done   chan struct{}

	tokenDown atomic.Bool
	tokMu     sync.Mutex
	tokens    map[string]time.Time // access token -> expiry

	// The app registration's credentials (SetCredentials) and, per token
	// issued, the credential that obtained it (IssuedWith).
	credMu     sync.Mutex
	secrets    []string
	certs      []*x509.Certificate
	roles      []string
	issuedWith []string

	tokenRequests atomic.Int64
	tokenFailures atomic.Int64
	sendRequests  atomic.Int64
	throttled     atomic.Int64
	inRetryAfter  atomic.Int64
	fileSeq       atomic.Int64

	mu            sync.Mutex // guards everything below
	boxes         map[string]*mailboxState
	scripts       map[string][]Fault // "" = any mailbox
	globalFault   *Fault
	mailboxFaults map[string]*Fault
	// faultMix: SetFaultSpec's faults by lower-cased mailbox ("" = every
	// mailbox), each with its own share of sends (chaos.go).
	faultMix   map[string][]Fault
	messages   []Message
	jobIDs     map[string]struct{}
	duplicates int

	traceLog       []time.Time // every message trace request (trace.go)
	traceRefused   []bool      // parallel to traceLog: answered 429
	traceThrottled atomic.Int64

	oidc       oidcState // sign-in for web apps (oidc.go)
	draftsOnce sync.Once
	drafts     *draftStore // the draft flow (drafts.go)
}

// mailboxState is the per-mailbox throttling bookkeeping, guarded by Server.mu.
type mailboxState struct {
	inFlight   int
	retryUntil time.Time   // Retry-After last given to this mailbox
	window     []time.Time // ring buffer of admitted sends, len <= SimulatedPerMinuteThrottle
	next       int         // ring index of the oldest entry once full
}

// New starts a TLS server with a freshly generated CA and a server certificate valid for
// 127.0.0.1, ::1 and localhost (and the listen host when it is a name or another IP).
// It returns an error when the options are invalid, or the key generation or listen fails.
func New(opts Options) (*Server, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("graphtest: listen %s: %w", opts.Addr, err)
	}
	host := urlHost(opts.Addr, ln.Addr())
	pki, err := newPKI(host)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{
		opts:           opts,
		url:            "https://" + host,
		caPEM:          pki.caPEM,
		serveDone:      make(chan struct{}),
		done:           make(chan struct{}),
		tokens:         make(map[string]time.Time),
		secrets:        nonEmpty(opts.ClientSecret),
		certs:          nonNil(opts.Certificate),
		roles:          slices.Clone(opts.Roles),
		boxes:          make(map[string]*mailboxState),
		scripts:        make(map[string][]Fault),
		mailboxFaults:  make(map[string]*Fault),
		jobIDs:         make(map[string]struct{}),
		mailboxes:      lowerSet(opts.Mailboxes),
		scope:          lowerSet(opts.Scope),
		mailboxMaxSize: lowerKeys(opts.MailboxMaxMessageSize),
	}
	s.tokenURL = s.url + "/" + opts.TenantID + "/oauth2/v2.0/token"
	s.issuer = s.url + "/" + opts.TenantID + "/v2.0"

	s.transport = &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pki.pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        1000,
		MaxIdleConnsPerHost: 1000,
		IdleConnTimeout:     90 * time.Second,
	}
	s.client = &http.Client{Transport: s.transport}

	s.httpSrv = &http.Server{
		Handler:           s.routes(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{pki.serverCert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(logWriter{s}, "graphtest: http: ", 0),
	}
	go func() {
		defer close(s.serveDone)
		err := s.httpSrv.ServeTLS(ln, "", "")
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logf("graphtest: serve: %v", err)
		}
	}()
	s.logf("graphtest: listening on %s (tenant %s, client %s)", s.url, opts.TenantID, opts.ClientID)
	return s, nil
}

// urlHost is the host:port clients use: loopback or unspecified listen hosts become 127.0.0.1.
func urlHost(addr string, got net.Addr) string {
	_, port, _ := net.SplitHostPort(got.String())
	h, _, err := net.SplitHostPort(addr)
	if err != nil || h == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	if ip := net.ParseIP(h); ip != nil && (ip.IsUnspecified() || ip.Equal(net.IPv4(127, 0, 0, 1))) {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return net.JoinHostPort(h, port)
}

func lowerKeys(m map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[strings.ToLower(strings.TrimSpace(k))] = v
	}
	return out
}

func lowerSet(list []string) map[string]struct{} {
	if list == nil {
		return nil
	}
	m := make(map[string]struct{}, len(list))
	for _, v := range list {
		m[strings.ToLower(strings.TrimSpace(v))] = struct{}{}
	}
	return m
}

// Close stops the server, cancels held (delayed) requests, waits for handlers to return and
// closes the idle connections of Client(). It is safe to call more than once.
func (s *Server) Close() {
	s.lcMu.Lock()
	if s.closed {
		s.lcMu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	s.lcMu.Unlock()

	// Our own client's idle (HTTP/2) connections would otherwise keep Shutdown polling.
	s.transport.CloseIdleConnections()
	// A short grace lets answers being written finish; then connections are cut.
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	if err := s.httpSrv.Shutdown(ctx); err != nil {
		s.httpSrv.Close()
	}
	<-s.serveDone
	s.handlers.Wait()
	s.transport.CloseIdleConnections()
}

// enter registers a running handler; it reports false once Close has started.
func (s *Server) enter() bool {
	s.lcMu.Lock()
	defer s.lcMu.Unlock()
	if s.closed {
		return false
	}
	s.handlers.Add(1)
	return true
}

// URL is the server's base URL, https://127.0.0.1:port.
func (s *Server) URL() string { return s.url }

// AuthorityURL is the MSAL authority: URL()+"/"+TenantID.
func (s *Server) AuthorityURL() string { return s.url + "/" + s.opts.TenantID }

// TokenEndpoint is the OAuth 2.0 v2 token endpoint (also the audience of client assertions).
func (s *Server) TokenEndpoint() string { return s.tokenURL }

// GraphURL is the Graph base URL (without /v1.0): URL().
func (s *Server) GraphURL() string { return s.url }

// TenantID is the tenant the server accepts.
func (s *Server) TenantID() string { return s.opts.TenantID }

// ClientID is the application (client) id the server accepts.
func (s *Server) ClientID() string { return s.opts.ClientID }

// Client returns an *http.Client that trusts the server's CA. The same client is returned on
// every call; Close closes its idle connections.
func (s *Server) Client() *http.Client { return s.client }

// CACertPEM is the PEM of the CA that signed the server certificate.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.caPEM...) }

// TokenRequests is the count of successful token issuances.
func (s *Server) TokenRequests() int { return int(s.tokenRequests.Load()) }

// TokenFailures is the count of token requests answered with an error.
func (s *Server) TokenFailures() int { return int(s.tokenFailures.Load()) }

// SendRequests is the count of sendMail requests received, whatever their outcome.
func (s *Server) SendRequests() int { return int(s.sendRequests.Load()) }

// Throttled is the count of 429 answers (limits and faults).
func (s *Server) Throttled() int { return int(s.throttled.Load()) }

// InRetryAfter counts authenticated sendMail requests that arrived for a mailbox before the
// Retry-After it was last given (by a limit or a fault) had elapsed.
func (s *Server) InRetryAfter() int { return int(s.inRetryAfter.Load()) }

// Duplicates counts accepted messages whose job id (Message.JobID) had already been accepted.
func (s *Server) Duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.duplicates
}

// Messages returns a copy of the accepted messages, in order of acceptance.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.messages))
	copy(out, s.messages)
	return out
}

// InFlight is the number of sendMail requests for mailbox currently being handled.
func (s *Server) InFlight(mailbox string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.boxes[strings.ToLower(mailbox)]; b != nil {
		return b.inFlight
	}
	return 0
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	accepted, dups := len(s.messages), s.duplicates
	s.mu.Unlock()
	return Stats{
		TokenRequests: s.TokenRequests(),
		TokenFailures: s.TokenFailures(),
		SendRequests:  s.SendRequests(),
		Accepted:      accepted,
		Throttled:     s.Throttled(),
		InRetryAfter:  s.InRetryAfter(),
		Duplicates:    dups,
	}
}

// IssuedTokens returns every access token issued and not yet pruned, so that
// tests can assert that no token leaks into logs, events or records.
func (s *Server) IssuedTokens() []string {
	s.tokMu.Lock()
	defer s.tokMu.Unlock()
	out := make([]string, 0, len(s.tokens))
	for tok := range s.tokens {
		out = append(out, tok)
	}
	return out
}

// Reset clears the accepted messages, the counters, the seen job ids and the per-mailbox
// rate windows and Retry-After marks. Issued tokens, faults and scripts are kept.
func (s *Server) Reset() {
	s.mu.Lock()
	s.messages = nil
	s.jobIDs = make(map[string]struct{})
	s.duplicates = 0
	for k, b := range s.boxes {
		if b.inFlight == 0 {
			delete(s.boxes, k)
			continue
		}
		b.retryUntil, b.window, b.next = time.Time{}, nil, 0
	}
	s.tokenRequests.Store(0)
	s.tokenFailures.Store(0)
	s.sendRequests.Store(0)
	s.throttled.Store(0)
	s.inRetryAfter.Store(0)
	s.mu.Unlock()
}

// SetCredentials replaces the credentials registered for the application, as
// an admin does in Entra while rotating: add the new certificate or secret,
// then remove the old one. Tokens already issued stay valid.
func (s *Server) SetCredentials(secrets []string, certs []*x509.Certificate) {
	s.credMu.Lock()
	defer s.credMu.Unlock()
	s.secrets = slices.Clone(secrets)
	s.certs = slices.Clone(certs)
}

// SetRoles changes the application permissions put in tokens issued from now
// on, as an admin granting (or revoking) consent does.
func (s *Server) SetRoles(roles ...string) {
	s.credMu.Lock()
	defer s.credMu.Unlock()
	s.roles = slices.Clone(roles)
}

// IssuedWith returns, for every token issued, in order, the credential that
// obtained it as Entra's sign-in log identifies it: "cert:" and the
// certificate's SHA-1 thumbprint (CertificateThumbprint), or "secret:" and
// the secret's first three characters (the hint the Entra portal shows).
func (s *Server) IssuedWith() []string {
	s.credMu.Lock()
	defer s.credMu.Unlock()
	return slices.Clone(s.issuedWith)
}

// CertificateThumbprint is how IssuedWith names a certificate: "cert:" and
// its SHA-1 thumbprint in upper-case hex, as Entra and PowerShell show it.
func CertificateThumbprint(c *x509.Certificate) string {
	h := sha1.Sum(c.Raw) // #nosec G401 -- the thumbprint is defined as SHA-1
	return "cert:" + strings.ToUpper(hex.EncodeToString(h[:]))
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

func nonNil(c *x509.Certificate) []*x509.Certificate {
	if c == nil {
		return nil
	}
	return []*x509.Certificate{c}
}

// SetTokenEndpointDown makes the token endpoint answer 503 while down is true.
func (s *Server) SetTokenEndpointDown(down bool) { s.tokenDown.Store(down) }

// Script queues faults consumed, one per request, by the next sendMail requests for mailbox
// ("" = any mailbox), before normal behaviour. A mailbox's own queue is used before the "" queue.
func (s *Server) Script(mailbox string, faults ...Fault) {
	key := strings.ToLower(mailbox)
	s.mu.Lock()
	s.scripts[key] = append(s.scripts[key], faults...)
	s.mu.Unlock()
}

// SetFault sets a persistent fault applied to every sendMail with f.Probability (nil clears).
func (s *Server) SetFault(f *Fault) {
	s.mu.Lock()
	s.globalFault = cloneFault(f)
	s.mu.Unlock()
}

// SetMailboxFault sets a persistent fault for one mailbox (nil clears). It takes precedence
// over SetFault.
func (s *Server) SetMailboxFault(mailbox string, f *Fault) {
	key := strings.ToLower(mailbox)
	s.mu.Lock()
	if f == nil {
		delete(s.mailboxFaults, key)
	} else {
		s.mailboxFaults[key] = cloneFault(f)
	}
	s.mu.Unlock()
}

func cloneFault(f *Fault) *Fault {
	if f == nil {
		return nil
	}
	c := *f
	return &c
}

// logWriter routes net/http's own error log (e.g. TLS handshake errors) to Options.Logf.
type logWriter struct{ s *Server }

func (w logWriter) Write(p []byte) (int, error) {
	if w.s.opts.Logf != nil {
		w.s.opts.Logf("%s", strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

var _ io.Writer = logWriter{}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// wait holds for d, returning false early if the request is cancelled or the server closes.
func (s *Server) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.done:
		return false
	}
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", s.handleOIDC)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", s.handleToken)
	mux.HandleFunc("POST /v1.0/users/{id}/sendMail", s.handleSendMail)
	s.oidcRoutes(mux)
	s.draftRoutes(mux)
	mux.HandleFunc("GET /v1.0/admin/exchange/tracing/messageTraces", s.handleMessageTraces)
	mux.HandleFunc("GET /v1.0/admin/exchange/tracing/messageTraces/{id}/{fn}", s.handleTraceDetails)
	mux.HandleFunc("GET /_sandbox/messages", s.handleListMessages)
	mux.HandleFunc("DELETE /_sandbox/messages", s.handleDeleteMessages)
	mux.HandleFunc("GET /_sandbox/stats", s.handleStats)
	mux.HandleFunc("GET /_sandbox/ca.pem", s.handleCA)
	mux.HandleFunc("/_sandbox/faults", s.handleFaults)
	mux.HandleFunc("/", s.handleNotFound)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.enter() {
			w.Header().Set("Connection", "close")
			http.Error(w, "server closing", http.StatusServiceUnavailable)
			return
		}
		defer s.handlers.Done()
		if v := r.Header.Get("client-request-id"); v != "" {
			s.cridMu.Lock()
			if s.crids == nil {
				s.crids = map[string]struct{}{}
			}
			s.crids[v] = struct{}{}
			s.cridMu.Unlock()
		}
		mux.ServeHTTP(w, r)
	})
}

// ReceivedClientRequestID reports whether any request to the fake (Entra, Graph, upload URLs)
// carried id as its client-request-id header: a client that reports a client-request-id
// should report one it sent.
func (s *Server) ReceivedClientRequestID(id string) bool {
	s.cridMu.Lock()
	defer s.cridMu.Unlock()
	_, ok := s.crids[id]
	return ok
}

func (s *Server) handleNotFound(w http.ResponseWriter, r *http.Request) {
	s.graphError(w, r, "", http.StatusNotFound, "ResourceNotFound",
		"Resource not found for the segment '"+strings.TrimPrefix(r.URL.Path, "/")+"'.", "")
}

func (s *Server) handleListMessages(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Messages())
}

func (s *Server) handleDeleteMessages(w http.ResponseWriter, r *http.Request) {
	s.Reset()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

func (s *Server) handleCA(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Content-Length", strconv.Itoa(len(s.caPEM)))
	w.Write(s.caPEM)
}
