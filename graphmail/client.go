// Package graphmail sends mail through Microsoft Graph (POST /users/{from}/sendMail)
// with app-only tokens from Microsoft Entra ID acquired by MSAL, and classifies
// every failure into one typed *contract.SendError (class, reason, status, Graph code,
// Retry-After, ambiguity) that the worker maps onto one queue action. Every
// mail call goes through one request path (request.go: Client.do) and one
// classification table (classify.go: Classify); Sender (jobs.go) maps a job
// onto a message and picks its path, sendMail or a draft (draft.go).
//
// One Client serves one profile (tenant, client id, cloud, credential). It
// holds one MSAL confidential client, created once and reused, whose token
// cache makes about one token request per token lifetime.
package graphmail

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/cache"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"github.com/mailworker/mailworker/queue/contract"
)

// Credential is the app registration's credential. Set exactly one kind;
// when several are set, the certificate wins, then the federated token file,
// then the client secret.
type Credential struct {
	// CertificatePEM is the certificate chain and its private key in PEM
	// (PKCS#1 or PKCS#8, optionally encrypted with CertificatePassword).
	// Preferred. The key must be RSA: Entra verifies client assertions as
	// RS256/PS256 and MSAL v1.10.1 rejects other keys.
	CertificatePEM      []byte
	CertificatePassword string
	ClientSecret        string
	FederatedTokenFile  string // Kubernetes workload identity: file re-read on every assertion request
	// FederatedAudience, when set, is the audience the federated token must
	// carry (its aud claim, read without verifying the signature: Entra
	// verifies it): the cloud's token-exchange audience (Cloud.FederatedAudience)
	// or the one the app's federated identity credential names. A token
	// without it is a local credential fault, found before Entra would answer
	// AADSTS70021.
	FederatedAudience string
}

// Config configures a Client.
type Config struct {
	Name     string // profile name (for errors/metrics only)
	TenantID string
	ClientID string
	Cloud    Cloud // default global
	// AuthorityHost overrides the cloud's authority host, e.g.
	// "https://127.0.0.1:8443"; the authority is AuthorityHost + "/" + TenantID
	// and instance discovery is disabled.
	AuthorityHost string
	// GraphURL overrides the cloud's Graph base URL; requests go to
	// GraphURL + "/v1.0/users/{from}/sendMail".
	GraphURL string
	// Scope overrides the token scope. Default: the cloud's Graph URL +
	// "/.default" (even when GraphURL is overridden: the token audience is
	// still Graph).
	Scope      string
	Credential Credential
	// HTTPClient is used for both MSAL and Graph. Default: a tuned transport
	// (keep-alives, many idle connections per host, HTTP/2), no redirects,
	// no retries.
	HTTPClient *http.Client
	Timeout    time.Duration // per sendMail request, default 60s
	// UploadChunkBytes is the size of each PUT of an upload session (draft
	// delivery mode): a multiple of 320 KiB, at most 4 MiB; default
	// DefaultUploadChunkBytes. One chunk per upload is held in memory.
	UploadChunkBytes int
	// OnTokenRequest, if set, is called after every token request that went
	// to Entra (ok=true; cache hits are not reported) or that failed (ok=false).
	OnTokenRequest func(ok bool)
	// OnToken, if set, is called with what each access token fetched from
	// Entra grants (cache hits are not reported). See TokenInfo.
	OnToken func(TokenInfo)
	// MaxRecipientsPerMessage caps to+cc+bcc of one message: the tenant's
	// Exchange recipient limit, 500 by default, which an Exchange admin can set
	// from 1 to 1,000 (Exchange Online limits, sending limits). 0 = 500.
	MaxRecipientsPerMessage int
	// AllowedHeaders, when not nil, lists the internet message header names
	// (case-insensitive) a message may carry besides X-Mailworker-Job-Id: each
	// distinct X- name uses a named property of the mailbox, a finite quota.
	AllowedHeaders []string
}

// DefaultMaxRecipientsPerMessage is Exchange Online's default recipient limit.
const DefaultMaxRecipientsPerMessage = 500

// TokenInfo is what an app-only access token says about the app's rights.
type TokenInfo struct {
	// Roles is the token's roles claim: the application permissions an
	// admin consented to in Entra, tenant-wide. With Exchange RBAC for
	// Applications alone there are no mail roles: a Mail.* role here means
	// the app can reach every mailbox in the tenant, whatever the RBAC
	// scope says (see TenantWideMailRoles).
	Roles []string
	// Readable is false when the token is not a JWT whose claims could be
	// read (Roles then says nothing).
	Readable  bool
	ExpiresOn time.Time
}

// TenantWideMailRoles returns the roles that grant mailbox access across
// the tenant (Mail.Send, Mail.ReadWrite, Mail.Read, ...): any "Mail."
// application permission.
func TenantWideMailRoles(roles []string) []string {
	var out []string
	for _, r := range roles {
		if len(r) > 5 && strings.EqualFold(r[:5], "mail.") {
			out = append(out, r)
		}
	}
	return out
}

// tokenRoles reads the roles claim of a JWT access token without verifying
// it (it is our own, just received from Entra over TLS); ok is false when the
// token's claims cannot be read.
func tokenRoles(tok string) (roles []string, ok bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, false
	}
	var claims struct {
		Roles []string `json:"roles"`
	}
	if json.Unmarshal(raw, &claims) != nil {
		return nil, false
	}
	return claims.Roles, true
}

// DefaultTimeout is the default per-request sendMail timeout.
const DefaultTimeout = 60 * time.Second

// Client sends mail as the shared mailboxes of one profile. It is safe for
// concurrent use.
type Client struct {
	name       string
	http       *http.Client
	ownHTTP    bool
	authority  string // authority host + "/" + tenant
	clientID   string
	msalOpts   []confidential.Option // without the cache, which is per credential
	scopes     []string
	sendPrefix string // GraphURL + "/v1.0/users/"
	timeout    time.Duration
	chunk      int // upload session chunk size
	onToken    func(ok bool)
	onTokenInf func(TokenInfo)

	maxRecipients  int
	allowedHeaders map[string]struct{} // lower-case names; nil = any

	// cred is the credential in use and the MSAL client built on it;
	// SetCredential swaps it (rotation without restart).
	cred atomic.Pointer[credState]

	refreshMu sync.Mutex
	// tok is the last token MSAL gave us, served without calling MSAL until
	// tokenMargin before it expires; tokMu lets one caller at a time go to
	// MSAL, so a cold start makes one token request, not one per sender.
	tok   atomic.Pointer[cachedToken]
	tokMu sync.Mutex
	// After a failed token request, callers get the same failure without a
	// new request until failUntil (1 s, doubling to 30 s while it keeps
	// failing): during an Entra outage a busy worker asks a few times a
	// minute, not once per job, and stays clear of Entra's request-loop
	// protection. Guarded by tokMu.
	failUntil time.Time
	failErr   *contract.SendError
	failures  int

	// localFault is the last token failure when it was a local credential fault
	// (Error.Local), cleared by the next token obtained; see CredentialFault.
	localFault atomic.Pointer[contract.SendError]
}

// CredentialFault returns the local credential fault (a missing or empty
// federated token file) that made the last token request fail, or nil: a
// configuration error for readiness and alerts, not an Entra outage.
func (c *Client) CredentialFault() error {
	if e := c.localFault.Load(); e != nil {
		return e
	}
	return nil
}

// credState is one credential and the MSAL client that presents it. It is
// never changed once stored.
type credState struct {
	msal       confidential.Client
	cache      *tokenCache
	notAfter   time.Time
	thumbprint string // SHA-1 of the certificate, upper-case hex
	hasCert    bool
	redact     []string // secrets to scrub from any text we surface (old ones too)
}

// Token failure back-off bounds.
const (
	tokenFailFirst = time.Second
	tokenFailMax   = 30 * time.Second
)

// cachedToken is an access token and when to stop using it.
type cachedToken struct {
	value    string
	useUntil time.Time
}

// refreshRetry is how long a token past its refresh_in is served without asking MSAL again
// when MSAL's proactive refresh failed (MSAL then keeps serving the token it has).
const refreshRetry = 30 * time.Second

// useUntil is when the fast path stops serving a token MSAL returned: tokenMargin before it
// expires, or its refresh_in (RefreshOn) when that comes first, so that MSAL refreshes it
// proactively as it intends (MSAL Go: apps/internal/base/base.go, AcquireTokenSilent). A token
// already past its refresh_in (MSAL's refresh failed and it served the cached one) is asked
// about again after refreshRetry, not on every send.
func useUntil(expiresOn, refreshOn, now time.Time) time.Time {
	until := expiresOn.Add(-tokenMargin)
	if !refreshOn.IsZero() && refreshOn.Before(until) {
		until = refreshOn
	}
	if !until.After(now) {
		until = now.Add(refreshRetry)
		if end := expiresOn.Add(-tokenMargin); end.Before(until) {
			until = end
		}
	}
	return until
}

// tokenMargin is how long before expiry a token stops being served from the
// fast path (MSAL itself treats tokens as expired 5 minutes early).
const tokenMargin = 5 * time.Minute

// New validates cfg and builds the client with its MSAL confidential client.
// It returns an error naming the offending field when cfg is invalid or the
// certificate cannot be parsed; it makes no network calls.
func New(cfg Config) (*Client, error) {
	authorityHost, graphURL, err := cfg.Cloud.Endpoints()
	if err != nil {
		return nil, fmt.Errorf("graphmail: Cloud: %w", err)
	}
	scope := graphURL + "/.default"
	if cfg.Scope != "" {
		scope = cfg.Scope
	}
	if cfg.TenantID == "" {
		return nil, errors.New("graphmail: TenantID is required")
	}
	if strings.ContainsAny(cfg.TenantID, "/?#% ") {
		return nil, errors.New("graphmail: TenantID contains invalid characters")
	}
	if cfg.ClientID == "" {
		return nil, errors.New("graphmail: ClientID is required")
	}
	instanceDiscovery := true
	if cfg.AuthorityHost != "" {
		if err := checkBaseURL(cfg.AuthorityHost); err != nil {
			return nil, fmt.Errorf("graphmail: AuthorityHost: %w", err)
		}
		authorityHost = strings.TrimRight(cfg.AuthorityHost, "/")
		instanceDiscovery = false
	}
	if cfg.GraphURL != "" {
		if err := checkBaseURL(cfg.GraphURL); err != nil {
			return nil, fmt.Errorf("graphmail: GraphURL: %w", err)
		}
		graphURL = strings.TrimRight(cfg.GraphURL, "/")
	}
	if n := cfg.UploadChunkBytes; n < 0 || n%uploadChunkUnit != 0 || n > maxUploadChunk {
		return nil, fmt.Errorf("graphmail: UploadChunkBytes %d: want a multiple of %d bytes (320 KiB), at most %d (4 MiB)", n, uploadChunkUnit, maxUploadChunk)
	}
	if cfg.Timeout < 0 {
		return nil, errors.New("graphmail: Timeout must not be negative")
	}
	if cfg.MaxRecipientsPerMessage < 0 || cfg.MaxRecipientsPerMessage > 1000 {
		return nil, fmt.Errorf("graphmail: MaxRecipientsPerMessage %d: Exchange allows 1 to 1000", cfg.MaxRecipientsPerMessage)
	}
	var allowed map[string]struct{}
	if cfg.AllowedHeaders != nil {
		allowed = make(map[string]struct{}, len(cfg.AllowedHeaders))
		for _, h := range cfg.AllowedHeaders {
			if len(h) < 3 || !strings.EqualFold(h[:2], "x-") {
				return nil, fmt.Errorf("graphmail: AllowedHeaders: %q does not start with X- (Graph accepts only X- names)", h)
			}
			allowed[strings.ToLower(h)] = struct{}{}
		}
	}
	c := &Client{
		name:       cfg.Name,
		http:       cfg.HTTPClient,
		authority:  authorityHost + "/" + cfg.TenantID,
		clientID:   cfg.ClientID,
		scopes:     []string{scope},
		sendPrefix: graphURL + "/v1.0/users/",
		timeout:    cfg.Timeout,
		chunk:      cfg.UploadChunkBytes,
		onToken:    cfg.OnTokenRequest,
		onTokenInf: cfg.OnToken,

		maxRecipients:  cfg.MaxRecipientsPerMessage,
		allowedHeaders: allowed,
	}
	if c.maxRecipients == 0 {
		c.maxRecipients = DefaultMaxRecipientsPerMessage
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if c.chunk == 0 {
		c.chunk = DefaultUploadChunkBytes
	}
	if c.http == nil {
		c.http = defaultHTTPClient()
		c.ownHTTP = true
	}

	c.msalOpts = []confidential.Option{confidential.WithHTTPClient(c.http)}
	if !instanceDiscovery {
		c.msalOpts = append(c.msalOpts, confidential.WithInstanceDiscovery(false))
	}
	cs, err := c.newCredState(cfg.Credential, nil)
	if err != nil {
		return nil, err
	}
	c.cred.Store(cs)
	return c, nil
}

// SetCredential replaces the client's credential, for a rotation without
// restart: the certificate or secret file changed. On error (a PEM that does
// not parse, a key that is not RSA) the credential in use is kept. On success
// the cached token is dropped and any token failure back-off cleared, so the
// next send fetches a token with the new credential at once: a credential
// Entra refuses shows up while the operator is rotating, not an hour later.
// Sends in flight keep the token they have.
func (c *Client) SetCredential(in Credential) error {
	cs, err := c.newCredState(in, c.cred.Load().redact)
	if err != nil {
		return err
	}
	c.tokMu.Lock()
	c.cred.Store(cs)
	c.tok.Store(nil)
	c.failures, c.failErr = 0, nil
	c.tokMu.Unlock()
	return nil
}

// newCredState builds the MSAL client for in; redact is kept and extended.
func (c *Client) newCredState(in Credential, redact []string) (*credState, error) {
	cs := &credState{cache: &tokenCache{}, redact: slices.Clip(redact)}
	cred, err := c.credential(in, cs)
	if err != nil {
		return nil, err
	}
	opts := append(slices.Clip(c.msalOpts), confidential.WithCache(cs.cache))
	cs.msal, err = confidential.New(c.authority, c.clientID, cred, opts...)
	if err != nil {
		return nil, fmt.Errorf("graphmail: building the MSAL client: %s", c.scrubWith(cs.redact, err.Error()))
	}
	return cs, nil
}

func checkBaseURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL")
	}
	if u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%q: want https://host[:port]", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q: want https://host[:port] without query, fragment or user info", s)
	}
	return nil
}

// credential builds MSAL's credential from in, recording in cs the secrets to
// redact and the certificate's expiry.
func (c *Client) credential(in Credential, cs *credState) (confidential.Credential, error) {
	if in.CertificatePassword != "" {
		cs.redact = append(cs.redact, in.CertificatePassword)
	}
	if in.ClientSecret != "" {
		cs.redact = append(cs.redact, in.ClientSecret)
	}
	switch {
	case len(in.CertificatePEM) > 0:
		certs, key, err := confidential.CertFromPEM(in.CertificatePEM, in.CertificatePassword)
		if err != nil {
			// MSAL's message describes the PEM structure, never its content.
			return confidential.Credential{}, fmt.Errorf("graphmail: Credential.CertificatePEM: %s", c.scrubWith(cs.redact, err.Error()))
		}
		if _, ok := key.(*rsa.PrivateKey); !ok {
			return confidential.Credential{}, fmt.Errorf("graphmail: Credential.CertificatePEM: the private key is %T; Entra client assertions need an RSA key", key)
		}
		if len(certs) == 0 {
			return confidential.Credential{}, errors.New("graphmail: Credential.CertificatePEM: no certificate")
		}
		leaf := leafFor(certs, key)
		sum := sha1.Sum(leaf.Raw) // #nosec G401 -- the thumbprint Entra shows is SHA-1
		cs.notAfter, cs.thumbprint, cs.hasCert = leaf.NotAfter, strings.ToUpper(hex.EncodeToString(sum[:])), true
		cred, err := confidential.NewCredFromCert(certs, key)
		if err != nil {
			return confidential.Credential{}, fmt.Errorf("graphmail: Credential.CertificatePEM: %s", c.scrubWith(cs.redact, err.Error()))
		}
		return cred, nil
	case in.FederatedTokenFile != "":
		path := in.FederatedTokenFile
		return confidential.NewCredFromAssertionCallback(func(context.Context, confidential.AssertionRequestOptions) (string, error) {
			// Re-read every time: the kubelet rotates the projected token.
			// A fault here is local: nothing has gone to Entra (CredentialFaultError).
			b, err := os.ReadFile(path)
			if err != nil {
				return "", &CredentialFaultError{msg: "reading Credential.FederatedTokenFile: " + err.Error()}
			}
			a := strings.TrimSpace(string(b))
			if a == "" {
				return "", &CredentialFaultError{msg: "Credential.FederatedTokenFile " + path + " is empty"}
			}
			if want := in.FederatedAudience; want != "" {
				if got, ok := jwtAudiences(a); ok && !slices.Contains(got, want) {
					return "", &CredentialFaultError{msg: fmt.Sprintf("the federated token in %s is for audience %q, not %q: "+
						"Entra would refuse it (AADSTS70021); project the service-account token with audience %s and give the app's federated identity credential the same audience",
						path, strings.Join(got, ","), want, want)}
				}
			}
			return a, nil
		}), nil
	case in.ClientSecret != "":
		cred, err := confidential.NewCredFromSecret(in.ClientSecret)
		if err != nil {
			return confidential.Credential{}, errors.New("graphmail: Credential.ClientSecret: invalid")
		}
		return cred, nil
	}
	return confidential.Credential{}, errors.New("graphmail: Credential: one of CertificatePEM, FederatedTokenFile or ClientSecret is required")
}

// leafFor returns the certificate whose public key matches key (the one MSAL
// signs assertions with), else the first.
func leafFor(certs []*x509.Certificate, key crypto.PrivateKey) *x509.Certificate {
	type publicKeyer interface{ Public() crypto.PublicKey }
	if pk, ok := key.(publicKeyer); ok {
		pub := pk.Public()
		for _, c := range certs {
			type equaler interface{ Equal(crypto.PublicKey) bool }
			if e, ok := c.PublicKey.(equaler); ok && e.Equal(pub) {
				return c
			}
		}
	}
	return certs[0]
}

func defaultHTTPClient() *http.Client {
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{
		Transport: tr,
		// A redirected POST would be re-sent: never follow.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Close releases idle connections of the HTTP client the Client created.
// It does nothing to a Config.HTTPClient the caller supplied.
func (c *Client) Close() {
	if c.ownHTTP {
		c.http.CloseIdleConnections()
	}
}

// CertificateNotAfter returns the expiry of the certificate credential
// (the certificate matching the private key), and false when the credential
// is not a certificate.
func (c *Client) CertificateNotAfter() (time.Time, bool) {
	cs := c.cred.Load()
	return cs.notAfter, cs.hasCert
}

// CertificateThumbprint returns the SHA-1 thumbprint (upper-case hex, as the
// Entra portal, its sign-in logs and PowerShell show it) of the certificate
// credential, or "" when the credential is not a certificate.
func (c *Client) CertificateThumbprint() string { return c.cred.Load().thumbprint }

// Token returns an access token for Graph: the last one MSAL returned while
// it is more than 5 minutes from expiry and before its refresh_in (no MSAL
// call, no lock), else from MSAL's cache or Entra, one caller at a time.
// Errors are *contract.SendError with Reason "auth_failed" and Class
// contract.ClassUnavailable (Entra unreachable or failing; RetryAfter says
// when the next request will be made) or contract.ClassRetryable (the
// credential was refused, with Entra's codes and ids in EntraDetails and the
// message, or a local credential fault, IsCredentialFault); their text never
// contains secrets, assertions or tokens. A failure is shared with every
// caller until its back-off ends.
func (c *Client) Token(ctx context.Context) (string, error) {
	if t := c.tok.Load(); t != nil && time.Now().Before(t.useUntil) {
		return t.value, nil
	}
	c.tokMu.Lock()
	defer c.tokMu.Unlock()
	if t := c.tok.Load(); t != nil && time.Now().Before(t.useUntil) {
		return t.value, nil // another caller just fetched it
	}
	if c.failErr != nil && time.Now().Before(c.failUntil) {
		e := *c.failErr
		e.RetryAfter = time.Until(c.failUntil)
		return "", &e
	}
	ar, err := c.cred.Load().msal.AcquireTokenByCredential(ctx, c.scopes)
	if err != nil {
		if c.onToken != nil {
			c.onToken(false)
		}
		e := c.tokenError(ctx, err)
		if IsCredentialFault(e) {
			cp := *e
			c.localFault.Store(&cp)
		}
		if ctx.Err() == nil { // the caller's own deadline says nothing about Entra
			c.failures++
			backoff := min(tokenFailFirst<<min(c.failures-1, 5), tokenFailMax)
			c.failUntil = time.Now().Add(backoff)
			e.RetryAfter = backoff
			cp := *e // callers annotate the error they get: keep our own copy
			c.failErr = &cp
		}
		return "", e
	}
	c.failures, c.failErr = 0, nil
	c.localFault.Store(nil)
	if ar.Metadata.TokenSource == confidential.TokenSourceIdentityProvider {
		if c.onToken != nil {
			c.onToken(true)
		}
		if c.onTokenInf != nil {
			roles, ok := tokenRoles(ar.AccessToken)
			c.onTokenInf(TokenInfo{Roles: roles, Readable: ok, ExpiresOn: ar.ExpiresOn})
		}
	}
	c.tok.Store(&cachedToken{value: ar.AccessToken, useUntil: useUntil(ar.ExpiresOn, ar.Metadata.RefreshOn, time.Now())})
	return ar.AccessToken, nil
}

// refreshToken replaces the token bad, which Graph rejected with 401, by a new
// one from Entra. MSAL Go v1.10.1 has no "force refresh" option for the client
// credentials flow (WithClaims bypasses the cache but sends a claims challenge
// to Entra, which we have none of), so the Client owns MSAL's cache accessor:
// marking it stale makes MSAL load an empty cache on its next read, miss, and
// go to Entra; the new token is written back as usual. Concurrent 401s on the
// same token make one refresh: whoever comes second sees a different token.
func (c *Client) refreshToken(ctx context.Context, bad string) (string, error) {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	tok, err := c.Token(ctx)
	if err != nil || tok != bad {
		return tok, err
	}
	c.tokMu.Lock()
	c.tok.Store(nil)
	c.cred.Load().cache.stale.Store(true)
	c.tokMu.Unlock()
	return c.Token(ctx)
}

// tokenCache is the MSAL cache accessor. MSAL keeps its in-memory cache; the
// accessor only wipes it when stale is set.
type tokenCache struct {
	stale atomic.Bool
}

var emptyCache = []byte("{}")

func (t *tokenCache) Replace(_ context.Context, u cache.Unmarshaler, _ cache.ReplaceHints) error {
	if t.stale.CompareAndSwap(true, false) {
		return u.Unmarshal(emptyCache)
	}
	return nil
}

func (t *tokenCache) Export(context.Context, cache.Marshaler, cache.ExportHints) error { return nil }

// jwtAudiences reads the aud claim (a string or an array) of a JWT without
// verifying it; ok is false when tok is not a JWT with an aud.
func jwtAudiences(tok string) (aud []string, ok bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, false
	}
	var c struct {
		Aud json.RawMessage `json:"aud"`
	}
	if json.Unmarshal(payload, &c) != nil || len(c.Aud) == 0 {
		return nil, false
	}
	var one string
	if json.Unmarshal(c.Aud, &one) == nil {
		return []string{one}, true
	}
	if json.Unmarshal(c.Aud, &aud) == nil {
		return aud, true
	}
	return nil, false
}
