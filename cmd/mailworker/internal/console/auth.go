package console

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// App roles of the console's app registration (the roles claim). Each is
// global (every profile), or scoped to one profile by a suffix:
// "Mailworker.Reader.billing", "Mailworker.Support.billing" (ScopedRole).
// A scoped role opens that profile's dead letters, jobs and actions only;
// the overview, which spans every profile, needs a global role.
const (
	RoleReader  = "Mailworker.Reader"  // read-only: lists, jobs, overview
	RoleSupport = "Mailworker.Support" // also replay, edit and replay, purge, reveal
)

// ScopedRole is role limited to profile, as the app registration declares
// it: role + "." + profile.
func ScopedRole(role, profile string) string { return role + "." + profile }

// Cookie names. The __Host- prefix makes browsers refuse them unless Secure,
// Path=/ and without Domain: no sibling host can plant or read them.
const (
	sessionCookie = "__Host-mw_session"
	loginCookie   = "__Host-mw_login"
)

// session is what the session cookie carries, sealed (AES-GCM).
type session struct {
	Sub   string   `json:"sub"`
	Name  string   `json:"name"`
	User  string   `json:"user"` // preferred_username (UPN)
	Roles []string `json:"roles"`
	Exp   int64    `json:"exp"`
	CSRF  string   `json:"csrf"`
	// SID names this sign-in: signing out revokes it on the server
	// (Server.revoke), not only in the browser.
	SID string `json:"sid"`
	// Boot is the issuing process's (Server.boot): see revocations.
	Boot string `json:"boot"`
}

// can reports whether s holds role for every profile (a global role;
// Support implies Reader).
func (s *session) can(role string) bool {
	if role == RoleReader {
		return slices.Contains(s.Roles, RoleReader) || slices.Contains(s.Roles, RoleSupport)
	}
	return slices.Contains(s.Roles, role)
}

// canIn reports whether s holds role for profile: globally, or scoped to
// it (a scoped Support implies the scoped Reader).
func (s *session) canIn(role, profile string) bool {
	if s.can(role) {
		return true
	}
	if role == RoleReader && slices.Contains(s.Roles, ScopedRole(RoleReader, profile)) {
		return true
	}
	return slices.Contains(s.Roles, ScopedRole(RoleSupport, profile))
}

// scope returns the profiles s holds role in: all when the role is global,
// else the profiles of its scoped roles (none: not allowed anywhere).
func (s *session) scope(role string) (profiles []string, all bool) {
	if s.can(role) {
		return nil, true
	}
	for _, r := range s.Roles {
		for _, base := range []string{RoleSupport, RoleReader} {
			if base == RoleSupport || role == RoleReader {
				if p, ok := strings.CutPrefix(r, base+"."); ok && p != "" && !slices.Contains(profiles, p) {
					profiles = append(profiles, p)
				}
			}
		}
	}
	slices.Sort(profiles)
	return profiles, false
}

// canSome reports whether s holds role for at least one profile.
func (s *session) canSome(role string) bool {
	p, all := s.scope(role)
	return all || len(p) > 0
}

// actor names the person in audit records.
func (s *session) actor() string {
	if s.User != "" {
		return s.User
	}
	return s.Sub
}

// loginState is the login cookie: what the callback must find again.
type loginState struct {
	State    string `json:"state"`
	Nonce    string `json:"nonce"`
	Verifier string `json:"verifier"`
	Next     string `json:"next"`
	Exp      int64  `json:"exp"`
}

// sealer encrypts and authenticates cookie values with AES-256-GCM; the
// purpose is bound as additional data, so a login cookie is never a session.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(purpose string, v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, b, []byte(purpose))), nil
}

func (s *sealer) open(purpose, val string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(val)
	if err != nil || len(b) < s.aead.NonceSize() {
		return errors.New("malformed")
	}
	plain, err := s.aead.Open(nil, b[:s.aead.NonceSize()], b[s.aead.NonceSize():], []byte(purpose))
	if err != nil {
		return errors.New("not ours")
	}
	return json.Unmarshal(plain, v)
}

// deriveKey derives a 32-byte key for one purpose from the console secret.
func deriveKey(secret []byte, purpose string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("mailworker-console/" + purpose))
	return m.Sum(nil)
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// provider is the OpenID Connect side: discovery, the authorize URL, code
// redemption and ID token verification (signature by a key of the JWKS,
// issuer, audience, expiry, nonce). It is written against Entra's v2.0
// endpoints (https://learn.microsoft.com/en-us/entra/identity-platform/v2-protocols-oidc).
type provider struct {
	authority    string
	clientID     string
	clientSecret string
	client       *http.Client

	mu        sync.Mutex
	meta      *discovery
	keys      map[string]*rsa.PublicKey
	keysFetch time.Time
}

type discovery struct {
	Issuer                string `json:"issuer"`
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	TokenEndpoint         string `json:"token_endpoint"`
	JWKSURI               string `json:"jwks_uri"`
}

func (p *provider) getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

// discover fetches (once) the OpenID configuration of the authority.
func (p *provider) discover(ctx context.Context) (*discovery, error) {
	p.mu.Lock()
	meta := p.meta
	p.mu.Unlock()
	if meta != nil {
		return meta, nil
	}
	var d discovery
	if err := p.getJSON(ctx, strings.TrimRight(p.authority, "/")+"/v2.0/.well-known/openid-configuration", &d); err != nil {
		return nil, fmt.Errorf("openid configuration: %w", err)
	}
	if d.Issuer == "" || d.AuthorizationEndpoint == "" || d.TokenEndpoint == "" || d.JWKSURI == "" {
		return nil, errors.New("openid configuration: issuer, endpoints or jwks_uri missing")
	}
	p.mu.Lock()
	p.meta = &d
	p.mu.Unlock()
	return &d, nil
}

// key returns the signing key kid, fetching the JWKS when it is unknown
// (keys roll over; at most one fetch per 10 seconds).
func (p *provider) key(ctx context.Context, kid string) (*rsa.PublicKey, error) {
	p.mu.Lock()
	k, ok := p.keys[kid]
	recent := time.Since(p.keysFetch) < 10*time.Second
	p.mu.Unlock()
	if ok {
		return k, nil
	}
	if recent {
		return nil, fmt.Errorf("unknown signing key %q", kid)
	}
	meta, err := p.discover(ctx)
	if err != nil {
		return nil, err
	}
	var set struct {
		Keys []struct {
			Kty, Kid, N, E, Use string
		} `json:"keys"`
	}
	if err := p.getJSON(ctx, meta.JWKSURI, &set); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	keys := map[string]*rsa.PublicKey{}
	for _, jk := range set.Keys {
		if jk.Kty != "RSA" || (jk.Use != "" && jk.Use != "sig") {
			continue
		}
		n, err1 := base64.RawURLEncoding.DecodeString(jk.N)
		e, err2 := base64.RawURLEncoding.DecodeString(jk.E)
		if err1 != nil || err2 != nil || len(e) > 4 {
			continue
		}
		keys[jk.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	p.mu.Lock()
	p.keys, p.keysFetch = keys, time.Now()
	p.mu.Unlock()
	if k, ok := keys[kid]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("unknown signing key %q", kid)
}

// authorizeURL is where the browser goes to sign in: the authorization code
// flow with PKCE (S256), a state and a nonce.
func (p *provider) authorizeURL(ctx context.Context, redirectURI string, ls loginState) (string, error) {
	meta, err := p.discover(ctx)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256([]byte(ls.Verifier))
	v := url.Values{
		"client_id": {p.clientID}, "response_type": {"code"}, "redirect_uri": {redirectURI},
		"response_mode": {"query"}, "scope": {"openid profile email"}, "state": {ls.State}, "nonce": {ls.Nonce},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(h[:])}, "code_challenge_method": {"S256"},
	}
	sep := "?"
	if strings.Contains(meta.AuthorizationEndpoint, "?") {
		sep = "&"
	}
	return meta.AuthorizationEndpoint + sep + v.Encode(), nil
}

// idClaims are the ID token claims the console uses.
type idClaims struct {
	Nonce             string   `json:"nonce"`
	Name              string   `json:"name"`
	PreferredUsername string   `json:"preferred_username"`
	OID               string   `json:"oid"`
	Roles             []string `json:"roles"`
	jwt.RegisteredClaims
}

// redeem exchanges the code for tokens and returns the verified ID token's
// claims. Errors name the step and, for Entra errors, the AADSTS text.
func (p *provider) redeem(ctx context.Context, code, redirectURI string, ls loginState) (*idClaims, error) {
	meta, err := p.discover(ctx)
	if err != nil {
		return nil, err
	}
	form := url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI},
		"client_id": {p.clientID}, "client_secret": {p.clientSecret}, "code_verifier": {ls.Verifier},
		"scope": {"openid profile email"},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, meta.TokenEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("token request: %w", err)
	}
	defer resp.Body.Close()
	var tr struct {
		IDToken string `json:"id_token"`
		Error   string `json:"error"`
		Desc    string `json:"error_description"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&tr); err != nil {
		return nil, fmt.Errorf("token response: %s: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK || tr.IDToken == "" {
		first, _, _ := strings.Cut(tr.Desc, "\n")
		return nil, fmt.Errorf("token request refused: %s %s", tr.Error, first)
	}
	return p.verify(ctx, tr.IDToken, ls.Nonce)
}

// verify checks an ID token: RS256 signature by a key of the JWKS, issuer =
// the discovered issuer, audience = our client id, exp/nbf/iat (one minute
// of leeway), and nonce = the one we sent.
func (p *provider) verify(ctx context.Context, raw, nonce string) (*idClaims, error) {
	meta, err := p.discover(ctx)
	if err != nil {
		return nil, err
	}
	var c idClaims
	_, err = jwt.ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		return p.key(ctx, kid)
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(meta.Issuer), jwt.WithAudience(p.clientID),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(time.Minute))
	if err != nil {
		return nil, fmt.Errorf("id token: %w", err)
	}
	if nonce == "" || subtle.ConstantTimeCompare([]byte(c.Nonce), []byte(nonce)) != 1 {
		return nil, errors.New("id token: nonce does not match the sign-in request")
	}
	if c.Subject == "" {
		return nil, errors.New("id token: no subject")
	}
	return &c, nil
}

// ---- sign-in, sign-out and the session cookie

func (s *Server) session(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	var sess session
	if s.seal.open("session", c.Value, &sess) != nil || s.cfg.Now().Unix() > sess.Exp || sess.SID == "" || sess.Boot != s.boot || s.isRevoked(sess.SID) {
		return nil
	}
	return &sess
}

func (s *Server) setCookie(w http.ResponseWriter, name, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: int(maxAge.Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

func (s *Server) redirectURI() string { return s.cfg.PublicURL + "/auth/callback" }

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	next := r.URL.Query().Get("next")
	if !localPath(next) {
		next = "/dlq"
	}
	ls := loginState{State: randomString(24), Nonce: randomString(24), Verifier: randomString(48), Next: next,
		Exp: s.cfg.Now().Add(10 * time.Minute).Unix()}
	u, err := s.idp.authorizeURL(r.Context(), s.redirectURI(), ls)
	if err != nil {
		s.cfg.Logger.Error().Err(err).Msg("console: sign-in unavailable")
		s.renderStatus(w, r, nil, http.StatusBadGateway, "Sign-in is unavailable: Entra ID could not be reached.")
		return
	}
	v, err := s.seal.seal("login", ls)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	s.setCookie(w, loginCookie, v, 10*time.Minute)
	http.Redirect(w, r, u, http.StatusFound)
}

// localPath reports whether next is a path on this site: it starts with one
// "/" and holds no backslash or control character (browsers drop tabs and
// newlines, so "/\t/evil.example" would become "//evil.example").
func localPath(next string) bool {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") {
		return false
	}
	for _, c := range next {
		if c == '\\' || c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

func (s *Server) handleCallback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	c, err := r.Cookie(loginCookie)
	var ls loginState
	if err != nil || s.seal.open("login", c.Value, &ls) != nil || s.cfg.Now().Unix() > ls.Exp {
		s.renderStatus(w, r, nil, http.StatusBadRequest, "The sign-in took too long or was not started here. Sign in again.")
		return
	}
	s.setCookie(w, loginCookie, "", -time.Second)
	if !constantEq(q.Get("state"), ls.State) {
		s.renderStatus(w, r, nil, http.StatusBadRequest, "The sign-in answer does not match the request. Sign in again.")
		return
	}
	if e := q.Get("error"); e != "" {
		first, _, _ := strings.Cut(q.Get("error_description"), "\n")
		s.renderStatus(w, r, nil, http.StatusForbidden, "Entra ID refused the sign-in: "+e+": "+first)
		return
	}
	claims, err := s.idp.redeem(r.Context(), q.Get("code"), s.redirectURI(), ls)
	if err != nil {
		s.cfg.Logger.Warn().Err(err).Msg("console: sign-in failed")
		s.renderStatus(w, r, nil, http.StatusForbidden, "Sign-in failed: "+err.Error())
		return
	}
	sess := session{Sub: claims.Subject, Name: claims.Name, User: claims.PreferredUsername, Roles: claims.Roles,
		Exp: s.cfg.Now().Add(s.cfg.SessionTTL).Unix(), CSRF: randomString(24), SID: randomString(24), Boot: s.boot}
	v, err := s.seal.seal("session", sess)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	s.setCookie(w, sessionCookie, v, s.cfg.SessionTTL)
	s.cfg.Logger.Info().Str("actor", sess.actor()).Strs("roles", sess.Roles).Msg("console: signed in")
	http.Redirect(w, r, ls.Next, http.StatusSeeOther)
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	// Signing out needs no CSRF token: the worst a forged one does is sign
	// someone out. The session is revoked on the server too: a copy of the
	// cookie (a shared machine, a proxy log) no longer opens the console.
	if sess := s.session(r); sess != nil {
		s.revoke(sess.SID, sess.Exp)
		s.cfg.Logger.Info().Str("actor", sess.actor()).Msg("console: signed out")
	}
	s.setCookie(w, sessionCookie, "", -time.Second)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// revocations are the sessions signed out before they expire: sid → expiry
// (Unix seconds), held in memory. So that a restart cannot bring a signed-out
// session back, a session also names the process that issued it
// (session.Boot): a restart ends every session (people sign in again, a
// redirect through Entra). Hence the console runs as one replica
// (deploy/kubernetes: replicas 1, strategy Recreate).
type revocations struct {
	mu  sync.Mutex
	sid map[string]int64
}

func (s *Server) revoke(sid string, exp int64) {
	s.revoked.mu.Lock()
	defer s.revoked.mu.Unlock()
	if s.revoked.sid == nil {
		s.revoked.sid = map[string]int64{}
	}
	now := s.cfg.Now().Unix()
	for k, e := range s.revoked.sid {
		if e < now {
			delete(s.revoked.sid, k) // expired anyway
		}
	}
	s.revoked.sid[sid] = exp
}

func (s *Server) isRevoked(sid string) bool {
	s.revoked.mu.Lock()
	defer s.revoked.mu.Unlock()
	_, ok := s.revoked.sid[sid]
	return ok
}
