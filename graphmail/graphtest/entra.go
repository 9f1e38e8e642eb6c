package graphtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// clockSkew is the tolerance applied to a client assertion's exp and nbf.
const clockSkew = 5 * time.Minute

func (s *Server) handleOIDC(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if tenant != s.opts.TenantID {
		s.tokenError(w, http.StatusBadRequest, "invalid_tenant", 90002,
			fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant))
		return
	}
	base := s.url + "/" + tenant
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                s.issuer,
		"token_endpoint":                        s.tokenURL,
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
		"end_session_endpoint":                  base + "/oauth2/v2.0/logout",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"tenant_region_scope":                   "EU",
		"cloud_instance_name":                   "microsoftonline.com",
		"cloud_graph_host_name":                 "graph.windows.net",
		"msgraph_host":                          strings.TrimPrefix(s.url, "https://"),
	})
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if s.tokenDown.Load() {
		s.tokenError(w, http.StatusServiceUnavailable, "temporarily_unavailable", 50013,
			"The service is temporarily unavailable. Please try again later.")
		return
	}
	if tenant := r.PathValue("tenant"); tenant != s.opts.TenantID {
		s.tokenError(w, http.StatusBadRequest, "invalid_request", 90002,
			fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		s.tokenError(w, http.StatusBadRequest, "invalid_request", 900144, "The request body must contain a valid form.")
		return
	}
	f := r.PostForm
	if gt := f.Get("grant_type"); gt != "client_credentials" {
		s.tokenError(w, http.StatusBadRequest, "unsupported_grant_type", 70003,
			fmt.Sprintf("The app requested an unsupported grant type '%s'.", gt))
		return
	}
	if cid := f.Get("client_id"); cid != s.opts.ClientID {
		s.tokenError(w, http.StatusBadRequest, "unauthorized_client", 700016,
			fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'.", cid, s.opts.TenantID))
		return
	}
	if scope := strings.TrimSpace(f.Get("scope")); !hasDefaultScope(scope) {
		s.tokenError(w, http.StatusBadRequest, "invalid_scope", 1002012,
			fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope))
		return
	}
	secret, assertion := f.Get("client_secret"), f.Get("client_assertion")
	var used string // the credential, as Entra's sign-in log shows it
	switch {
	case secret != "" && assertion != "":
		s.tokenError(w, http.StatusBadRequest, "invalid_request", 50027,
			"Only one client credential may be presented: client_secret or client_assertion.")
		return
	case secret != "":
		if !s.secretRegistered(secret) {
			s.tokenError(w, http.StatusUnauthorized, "invalid_client", 7000215,
				fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", s.opts.ClientID))
			return
		}
		used = "secret:" + secret[:min(3, len(secret))]
	case assertion != "":
		if at := f.Get("client_assertion_type"); at != assertionType {
			s.tokenError(w, http.StatusBadRequest, "invalid_request", 50027,
				fmt.Sprintf("client_assertion_type must be '%s'.", assertionType))
			return
		}
		cert, err := s.verifyAssertion(assertion)
		if err != nil {
			s.tokenError(w, http.StatusUnauthorized, "invalid_client", 700027,
				"Client assertion failed signature validation or claims validation: "+err.Error())
			return
		}
		used = CertificateThumbprint(cert)
	default:
		s.tokenError(w, http.StatusUnauthorized, "invalid_client", 7000218,
			"The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
		return
	}

	now := s.opts.Now()
	lifetime := s.opts.TokenLifetime
	s.credMu.Lock()
	roles := s.roles
	s.credMu.Unlock()
	tok := s.accessToken(now, lifetime, roles)
	s.tokMu.Lock()
	if len(s.tokens) >= 1024 {
		for k, exp := range s.tokens {
			if !now.Before(exp) {
				delete(s.tokens, k)
			}
		}
	}
	s.tokens[tok] = now.Add(lifetime)
	s.tokMu.Unlock()
	s.credMu.Lock()
	s.issuedWith = append(s.issuedWith, used)
	s.credMu.Unlock()
	s.tokenRequests.Add(1)
	s.logf("graphtest: token issued to %s (expires_in %ds)", s.opts.ClientID, int(lifetime.Seconds()))

	secs := int64(lifetime / time.Second)
	w.Header().Set("Cache-Control", "no-store, no-cache")
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     secs,
		"ext_expires_in": secs,
		"access_token":   tok,
	})
}

func hasDefaultScope(scope string) bool {
	if scope == "" {
		return false
	}
	for _, sc := range strings.Fields(scope) {
		if strings.HasSuffix(sc, "/.default") {
			return true
		}
	}
	return false
}

// tokenValid reports whether tok was issued by this server and has not expired.
func (s *Server) tokenValid(tok string) bool {
	s.tokMu.Lock()
	exp, ok := s.tokens[tok]
	s.tokMu.Unlock()
	return ok && s.opts.Now().Before(exp)
}

// tokenError answers an AADSTS-shaped error and counts a token failure.
func (s *Server) tokenError(w http.ResponseWriter, status int, code string, aadsts int, desc string) {
	s.tokenFailures.Add(1)
	s.logf("graphtest: token request failed: %d %s AADSTS%d", status, code, aadsts)
	traceID, corrID := newGUID(), newGUID()
	ts := time.Now().UTC().Format("2006-01-02 15:04:05Z")
	writeJSON(w, status, map[string]any{
		"error": code,
		"error_description": fmt.Sprintf("AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s",
			aadsts, desc, traceID, corrID, ts),
		"error_codes":    []int{aadsts},
		"timestamp":      ts,
		"trace_id":       traceID,
		"correlation_id": corrID,
		"error_uri":      s.url + "/error?code=" + fmt.Sprint(aadsts),
	})
}

// secretRegistered reports whether secret is one of the app's client secrets.
func (s *Server) secretRegistered(secret string) bool {
	s.credMu.Lock()
	defer s.credMu.Unlock()
	for _, want := range s.secrets {
		if subtle.ConstantTimeCompare([]byte(secret), []byte(want)) == 1 {
			return true
		}
	}
	return false
}

// verifyAssertion checks a client assertion JWT: an RS256 or PS256 signature by
// the key of one of the app's certificates (the one its x5t/x5t#S256 names,
// when present), aud = the token endpoint, iss = sub = ClientID, and exp/nbf
// within clockSkew. It returns the certificate that verified it.
func (s *Server) verifyAssertion(jwt string) (*x509.Certificate, error) {
	s.credMu.Lock()
	certs := s.certs
	s.credMu.Unlock()
	if len(certs) == 0 {
		return nil, errors.New("no certificate credential is registered for the application")
	}
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil, errors.New("malformed JWT")
	}
	var hdr struct {
		Alg     string `json:"alg"`
		X5t     string `json:"x5t"`
		X5tS256 string `json:"x5t#S256"`
	}
	if err := decodeSegment(parts[0], &hdr); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, errors.New("signature is not base64url")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if hdr.Alg != "RS256" && hdr.Alg != "PS256" {
		return nil, fmt.Errorf("unsupported alg %q", hdr.Alg)
	}
	var cert *x509.Certificate
	for _, c := range certs {
		if hdr.X5tS256 != "" {
			h := sha256.Sum256(c.Raw)
			if !thumbprintMatches(hdr.X5tS256, h[:]) {
				continue
			}
		}
		if hdr.X5t != "" {
			h := sha1.Sum(c.Raw) // #nosec G401 -- x5t is defined as SHA-1
			if !thumbprintMatches(hdr.X5t, h[:]) {
				continue
			}
		}
		pub, ok := c.PublicKey.(*rsa.PublicKey)
		if !ok {
			continue
		}
		if hdr.Alg == "RS256" {
			err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
		} else {
			err = rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		}
		if err == nil {
			cert = c
			break
		}
	}
	if cert == nil {
		if hdr.X5t != "" || hdr.X5tS256 != "" {
			return nil, errors.New("no registered certificate matches the assertion's thumbprint and signature")
		}
		return nil, errors.New("signature does not verify with a registered certificate")
	}

	var claims struct {
		Aud json.RawMessage `json:"aud"`
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Exp *json.Number    `json:"exp"`
		Nbf *json.Number    `json:"nbf"`
	}
	if err := decodeSegment(parts[1], &claims); err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	if claims.Iss != s.opts.ClientID || claims.Sub != s.opts.ClientID {
		return nil, errors.New("iss and sub must be the client id")
	}
	if !s.audienceOK(claims.Aud) {
		return nil, errors.New("aud must be the token endpoint")
	}
	now := s.opts.Now()
	if claims.Exp == nil {
		return nil, errors.New("exp is required")
	}
	exp, err := claims.Exp.Float64()
	if err != nil {
		return nil, errors.New("exp is not a number")
	}
	if now.Add(-clockSkew).After(time.Unix(int64(exp), 0)) {
		return nil, errors.New("assertion has expired")
	}
	if claims.Nbf != nil {
		nbf, err := claims.Nbf.Float64()
		if err != nil {
			return nil, errors.New("nbf is not a number")
		}
		if now.Add(clockSkew).Before(time.Unix(int64(nbf), 0)) {
			return nil, errors.New("assertion is not yet valid")
		}
	}
	return cert, nil
}

// audienceOK accepts the token endpoint (v2 or v1 path, any host name the client used to reach
// this server) or the issuer, as a string or in an array.
func (s *Server) audienceOK(raw json.RawMessage) bool {
	var list []string
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		list = []string{one}
	} else if err := json.Unmarshal(raw, &list); err != nil {
		return false
	}
	for _, aud := range list {
		if aud == s.tokenURL || aud == s.issuer {
			return true
		}
		u, err := url.Parse(aud)
		if err != nil || u.Scheme != "https" {
			continue
		}
		switch u.Path {
		case "/" + s.opts.TenantID + "/oauth2/v2.0/token", "/" + s.opts.TenantID + "/oauth2/token":
			return true
		}
	}
	return false
}

func thumbprintMatches(got string, want []byte) bool {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(got); err == nil && subtle.ConstantTimeCompare(b, want) == 1 {
			return true
		}
	}
	return false
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(seg, "="))
	if err != nil {
		return errors.New("not base64url")
	}
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return errors.New("not JSON")
	}
	return nil
}

// accessToken returns a JWT-shaped app-only access token, as Entra issues
// them: the claims a reader of the token can see (aud, iss, tid, appid,
// roles, iat, nbf, exp) and a random signature, which nobody checks but this
// server (by value, tokenValid). roles are the application permissions
// granted to the app by admin consent; none when only Exchange RBAC grants
// access.
func (s *Server) accessToken(now time.Time, lifetime time.Duration, roles []string) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	claims := map[string]any{
		"aud": "https://graph.microsoft.com", "iss": s.issuer, "tid": s.opts.TenantID,
		"appid": s.opts.ClientID, "idtyp": "app",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(lifetime).Unix(),
	}
	if len(roles) > 0 {
		claims["roles"] = roles
	}
	sig := make([]byte, 32)
	rand.Read(sig)
	return enc(map[string]string{"typ": "JWT", "alg": "RS256"}) + "." + enc(claims) + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// newGUID returns a random (version 4) GUID.
func newGUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hexd = "0123456789abcdef"
	out := make([]byte, 36)
	j := 0
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out[j] = '-'
			j++
		}
		out[j], out[j+1] = hexd[c>>4], hexd[c&0x0f]
		j += 2
	}
	return string(out)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}
