package graphtest

// The sign-in side of the fake Entra, for the support console: the OAuth 2.0
// authorization code flow with PKCE and OpenID Connect ID tokens, as the
// Microsoft identity platform documents it:
// https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow
// (authorize request and its parameters, code redemption, errors),
// https://learn.microsoft.com/en-us/entra/identity-platform/id-token-claims-reference
// (ID token claims: aud, iss, iat, nbf, exp, nonce, oid, sub, tid, name,
// preferred_username, ver, roles), and
// https://learn.microsoft.com/en-us/entra/identity-platform/howto-add-app-roles-in-apps
// (app roles assigned to users arrive in the roles claim).
// AADSTS codes: https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
//
// Instead of a password page it shows the registered demo users as buttons
// (or signs one in directly with login_hint), which is what tests and
// `mailworker dev` need.

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// OIDCUser is a person who can sign in to an OIDCApp.
type OIDCUser struct {
	Name     string   // display name (name claim)
	Username string   // UPN (preferred_username claim); login_hint matches it
	Roles    []string // app roles assigned to the user (roles claim)
	OID      string   // object id (oid claim); default a GUID derived from Username
}

// OIDCApp is a web app registration that signs people in: its client id,
// client secret, redirect URIs (exact match, as Entra requires) and the users
// assigned to it.
type OIDCApp struct {
	ClientID     string
	ClientSecret string
	RedirectURIs []string
	Users        []OIDCUser
}

type authCode struct {
	app                string
	user               OIDCUser
	redirectURI, nonce string
	challenge, method  string
	expires            time.Time
}

// oidcState is the sign-in state of a Server; the zero value is ready.
type oidcState struct {
	mu    sync.Mutex
	apps  map[string]OIDCApp
	codes map[string]authCode
	key   *rsa.PrivateKey
	kid   string
}

// codeLifetime: "Authorization codes are short lived. Typically, they expire
// after about 10 minutes." (v2-oauth2-auth-code-flow)
const codeLifetime = 10 * time.Minute

// idTokenLifetime: Entra ID tokens are valid for one hour by default
// (https://learn.microsoft.com/en-us/entra/identity-platform/id-tokens#token-lifetime).
const idTokenLifetime = time.Hour

// RegisterOIDCApp registers (or replaces) a web app that signs people in.
func (s *Server) RegisterOIDCApp(app OIDCApp) {
	o := &s.oidc
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.apps == nil {
		o.apps = map[string]OIDCApp{}
	}
	app.RedirectURIs = slices.Clone(app.RedirectURIs)
	app.Users = slices.Clone(app.Users)
	for i := range app.Users {
		if app.Users[i].OID == "" {
			h := sha256.Sum256([]byte(app.Users[i].Username))
			app.Users[i].OID = guidOf(h[:16])
		}
	}
	o.apps[app.ClientID] = app
}

func guidOf(b []byte) string {
	const hexd = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hexd[c>>4], hexd[c&0x0f])
	}
	return string(out)
}

// signingKey returns the ID token signing key, made on first use.
func (o *oidcState) signingKey() (*rsa.PrivateKey, string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.key == nil {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, "", err
		}
		h := sha256.Sum256(k.PublicKey.N.Bytes())
		o.key, o.kid = k, base64.RawURLEncoding.EncodeToString(h[:12])
	}
	return o.key, o.kid, nil
}

func (s *Server) oidcRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /{tenant}/oauth2/v2.0/authorize", s.handleAuthorize)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/authorize", s.handleAuthorize)
	mux.HandleFunc("GET /{tenant}/discovery/v2.0/keys", s.handleKeys)
}

func (s *Server) handleKeys(w http.ResponseWriter, r *http.Request) {
	k, kid, err := s.oidc.signingKey()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"keys": []map[string]any{{
		"kty": "RSA", "use": "sig", "kid": kid, "alg": "RS256",
		"n": base64.RawURLEncoding.EncodeToString(k.PublicKey.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.PublicKey.E)).Bytes()),
	}}})
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to your account</title></head>
<body><h1>Sign in</h1><p>graphtest: pick a demo account for {{.App}}.</p>
<form method="post">{{range $k, $v := .Params}}<input type="hidden" name="{{$k}}" value="{{$v}}">{{end}}
{{range .Users}}<p><button type="submit" name="login_user" value="{{.Username}}" id="user-{{.Username}}">{{.Name}} ({{.Username}})</button></p>{{end}}
</form></body></html>`))

// authError shows an error page: Entra does not redirect when the client id
// or redirect URI is wrong, because the redirect URI cannot be trusted.
func (s *Server) authError(w http.ResponseWriter, status, aadsts int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, "AADSTS%d: %s\n", aadsts, msg)
}

func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("tenant") != s.opts.TenantID {
		s.authError(w, http.StatusBadRequest, 90002, "Tenant not found.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		s.authError(w, http.StatusBadRequest, 900144, "The request must contain a valid form.")
		return
	}
	q := r.Form
	s.oidc.mu.Lock()
	app, ok := s.oidc.apps[q.Get("client_id")]
	s.oidc.mu.Unlock()
	if !ok {
		s.authError(w, http.StatusBadRequest, 700016, fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'.", q.Get("client_id"), s.opts.TenantID))
		return
	}
	redirect := q.Get("redirect_uri")
	if !slices.Contains(app.RedirectURIs, redirect) {
		s.authError(w, http.StatusBadRequest, 50011, fmt.Sprintf("The redirect URI '%s' specified in the request does not match the redirect URIs configured for the application '%s'.", redirect, app.ClientID))
		return
	}
	fail := func(code, desc string) {
		v := url.Values{"error": {code}, "error_description": {desc}}
		if st := q.Get("state"); st != "" {
			v.Set("state", st)
		}
		http.Redirect(w, r, redirect+"?"+v.Encode(), http.StatusFound)
	}
	switch {
	case q.Get("response_type") != "code":
		fail("unsupported_response_type", "AADSTS700054: response_type 'code' is required here.")
		return
	case !slices.Contains(strings.Fields(q.Get("scope")), "openid"):
		fail("invalid_request", "AADSTS900144: the scope must include openid to receive an ID token.")
		return
	case q.Get("code_challenge") != "" && q.Get("code_challenge_method") != "S256" && q.Get("code_challenge_method") != "plain":
		fail("invalid_request", "AADSTS501491: Invalid code_challenge_method.")
		return
	}
	username := q.Get("login_user")
	if username == "" {
		username = q.Get("login_hint")
	}
	var user *OIDCUser
	for i := range app.Users {
		if strings.EqualFold(app.Users[i].Username, username) {
			user = &app.Users[i]
		}
	}
	if user == nil {
		params := map[string]string{}
		for _, k := range []string{"client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge", "code_challenge_method", "response_mode"} {
			if v := q.Get(k); v != "" {
				params[k] = v
			}
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; form-action 'self' "+redirectOrigins(app.RedirectURIs))
		_ = loginPage.Execute(w, map[string]any{"App": app.ClientID, "Params": params, "Users": app.Users})
		return
	}
	code := randomToken()
	method := q.Get("code_challenge_method")
	if method == "" && q.Get("code_challenge") != "" {
		method = "plain"
	}
	s.oidc.mu.Lock()
	if s.oidc.codes == nil {
		s.oidc.codes = map[string]authCode{}
	}
	now := s.opts.Now()
	for k, c := range s.oidc.codes {
		if now.After(c.expires) {
			delete(s.oidc.codes, k)
		}
	}
	s.oidc.codes[code] = authCode{app: app.ClientID, user: *user, redirectURI: redirect, nonce: q.Get("nonce"),
		challenge: q.Get("code_challenge"), method: method, expires: now.Add(codeLifetime)}
	s.oidc.mu.Unlock()
	v := url.Values{"code": {code}}
	if st := q.Get("state"); st != "" {
		v.Set("state", st)
	}
	http.Redirect(w, r, redirect+"?"+v.Encode(), http.StatusFound)
}

func redirectOrigins(uris []string) string {
	var out []string
	for _, u := range uris {
		if p, err := url.Parse(u); err == nil {
			out = append(out, p.Scheme+"://"+p.Host)
		}
	}
	return strings.Join(out, " ")
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// redeemCode answers grant_type=authorization_code on the token endpoint
// (the form is parsed): the code must be one this server issued, unexpired,
// unused, for this client and redirect URI, with the PKCE verifier matching
// the challenge, and the client secret must be the app's. The answer carries
// an ID token signed with the key published at the JWKS endpoint.
func (s *Server) redeemCode(w http.ResponseWriter, f url.Values) {
	s.oidc.mu.Lock()
	app, ok := s.oidc.apps[f.Get("client_id")]
	code, found := s.oidc.codes[f.Get("code")]
	if found {
		delete(s.oidc.codes, f.Get("code")) // one use only
	}
	s.oidc.mu.Unlock()
	switch {
	case !ok:
		s.tokenError(w, http.StatusBadRequest, "unauthorized_client", 700016,
			fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'.", f.Get("client_id"), s.opts.TenantID))
		return
	case app.ClientSecret == "" || subtle.ConstantTimeCompare([]byte(f.Get("client_secret")), []byte(app.ClientSecret)) != 1:
		s.tokenError(w, http.StatusUnauthorized, "invalid_client", 7000215,
			fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", app.ClientID))
		return
	case !found || code.app != app.ClientID || s.opts.Now().After(code.expires):
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", 70008,
			"The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.")
		return
	case code.redirectURI != f.Get("redirect_uri"):
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", 50148,
			"The code_verifier or redirect_uri does not match the one in the authorization request.")
		return
	case !pkceOK(code, f.Get("code_verifier")):
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", 501481,
			"The Code_Verifier does not match the code_challenge supplied in the authorization request.")
		return
	}
	idt, err := s.idToken(app, code)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.tokenRequests.Add(1)
	w.Header().Set("Cache-Control", "no-store, no-cache")
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type": "Bearer", "scope": "openid profile email", "expires_in": int(idTokenLifetime.Seconds()),
		"id_token": idt, "access_token": randomToken(),
	})
}

func pkceOK(c authCode, verifier string) bool {
	switch c.method {
	case "":
		return true // no PKCE was asked for (confidential clients may skip it)
	case "plain":
		return verifier != "" && subtle.ConstantTimeCompare([]byte(verifier), []byte(c.challenge)) == 1
	default:
		h := sha256.Sum256([]byte(verifier))
		return verifier != "" && subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(h[:])), []byte(c.challenge)) == 1
	}
}

func (s *Server) idToken(app OIDCApp, c authCode) (string, error) {
	k, kid, err := s.oidc.signingKey()
	if err != nil {
		return "", err
	}
	now := s.opts.Now()
	claims := map[string]any{
		"aud": app.ClientID, "iss": s.issuer, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(idTokenLifetime).Unix(),
		"sub": c.user.OID, "oid": c.user.OID, "tid": s.opts.TenantID, "name": c.user.Name,
		"preferred_username": c.user.Username, "ver": "2.0",
	}
	if c.nonce != "" {
		claims["nonce"] = c.nonce
	}
	if len(c.user.Roles) > 0 {
		claims["roles"] = c.user.Roles
	}
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]string{"typ": "JWT", "alg": "RS256", "kid": kid}) + "." + enc(claims)
	h := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, h[:])
	if err != nil {
		return "", err
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
