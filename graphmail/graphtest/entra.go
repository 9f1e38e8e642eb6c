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
	"slices"
	"strconv"
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
	if f.Get("grant_type") == "authorization_code" {
		s.redeemCode(w, f) // oidc.go
		return
	}
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
	scope := strings.TrimSpace(f.Get("scope"))
	if !hasDefaultScope(scope) {
		s.tokenError(w, http.StatusBadRequest, "invalid_scope", 1002012,
			fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope))
		return
	}
	if res := strings.TrimSuffix(strings.Fields(scope)[0], "/.default"); strings.TrimRight(res, "/") != s.opts.GraphAudience && res != graphAppID {
		s.tokenError(w, http.StatusBadRequest, "invalid_resource", 500011,
			fmt.Sprintf("The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", res, s.opts.TenantID))
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
		u, aadsts, err := s.verifyAssertion(assertion)
		if err != nil {
			status, code := http.StatusUnauthorized, "invalid_client"
			if aadsts == 70021 {
				// A federated credential with the assertion's issuer but not its subject or
				// audience: 400 invalid_request, as the reply in Azure's workload-identity
				// troubleshooting shows ("reply status code was 400: {"error":"invalid_request",
				// "error_description":"AADSTS70021: No matching federated identity record found
				// for presented assertion…"; README.md, [awi-troubleshooting]).
				status, code = http.StatusBadRequest, "invalid_request"
			}
			s.tokenError(w, status, code, aadsts, err.Error())
			return
		}
		used = u
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
	resp := map[string]any{
		"token_type":     "Bearer",
		"expires_in":     secs,
		"ext_expires_in": secs,
		"access_token":   tok,
	}
	if ri := s.refreshIn(lifetime); ri > 0 {
		resp["refresh_in"] = int64(ri / time.Second)
	}
	w.Header().Set("Cache-Control", "no-store, no-cache")
	writeJSON(w, http.StatusOK, resp)
}

// graphAppID is Microsoft Graph's well-known application id, which a scope may name instead
// of the resource URI.
const graphAppID = "00000003-0000-0000-c000-000000000000"

// refreshIn is the refresh_in of a token of this lifetime (Options.RefreshIn).
func (s *Server) refreshIn(lifetime time.Duration) time.Duration {
	switch ri := s.opts.RefreshIn; {
	case ri > 0:
		return min(ri, lifetime)
	case ri < 0:
		return 0
	case lifetime >= 2*time.Hour:
		return lifetime / 2
	}
	return 0
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
	ts := s.opts.Now().UTC().Format("2006-01-02 15:04:05Z")
	// Entra's error_description is multi-line: the AADSTS code and text, then the ids that find
	// the failure in the sign-in logs, separated by CR LF.
	writeJSON(w, status, map[string]any{
		"error": code,
		"error_description": fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s",
			aadsts, desc, traceID, corrID, ts),
		"error_codes":    []int{aadsts},
		"timestamp":      ts,
		"trace_id":       traceID,
		"correlation_id": corrID,
		"error_uri":      s.url + "/error?code=" + strconv.Itoa(aadsts),
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

// FederatedCredential is a federated identity credential of the app registration (workload
// identity federation): Entra accepts a client assertion issued by Issuer for Subject with one
// of Audiences, signed by the issuer's key. Entra fetches that key from the issuer's OIDC
// discovery document (JWKS); the fake is given it.
type FederatedCredential struct {
	Issuer    string
	Subject   string
	Audiences []string         // default [FederatedAudience(Options.Cloud)], e.g. ["api://AzureADTokenExchange"]
	Key       crypto.PublicKey // the issuer's signing key (*rsa.PublicKey)
}

// DefaultFederatedAudience is the audience Entra recommends for federated identity credentials.
const DefaultFederatedAudience = "api://AzureADTokenExchange"

// assertionHeader and assertionClaims are what the fake reads of a client assertion JWT.
type assertionHeader struct {
	Alg     string `json:"alg"`
	X5t     string `json:"x5t"`
	X5tS256 string `json:"x5t#S256"`
}

type assertionClaims struct {
	Aud json.RawMessage `json:"aud"`
	Iss string          `json:"iss"`
	Sub string          `json:"sub"`
	Exp *json.Number    `json:"exp"`
	Nbf *json.Number    `json:"nbf"`
}

// verifyAssertion checks a client assertion JWT and returns the credential that verified it as
// IssuedWith names it, or the AADSTS code and text Entra answers:
//
//   - iss = sub = ClientID: a certificate assertion. RS256 or PS256 signature by one of the app's
//     certificates (the one its x5t/x5t#S256 names, when present), aud = the token endpoint;
//     a bad signature is AADSTS700027.
//   - any other iss: a federated assertion (workload identity), checked against Options.Federated:
//     no credential with that issuer is AADSTS700211; issuer known but subject or audience not
//     matching is AADSTS70021; a bad signature AADSTS700027.
//   - either: exp required, exp/nbf within clockSkew, else AADSTS700024.
func (s *Server) verifyAssertion(jwt string) (used string, aadsts int, err error) {
	const invalid = 700027
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return "", invalid, errors.New("Client assertion failed signature validation: malformed JWT.")
	}
	var hdr assertionHeader
	if err := decodeSegment(parts[0], &hdr); err != nil {
		return "", invalid, fmt.Errorf("Client assertion failed signature validation: header: %w.", err)
	}
	var claims assertionClaims
	if err := decodeSegment(parts[1], &claims); err != nil {
		return "", invalid, fmt.Errorf("Client assertion contains invalid claims: %w.", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "", invalid, errors.New("Client assertion failed signature validation: signature is not base64url.")
	}
	if hdr.Alg != "RS256" && hdr.Alg != "PS256" {
		return "", invalid, fmt.Errorf("Client assertion failed signature validation: unsupported alg %q.", hdr.Alg)
	}
	signed := []byte(parts[0] + "." + parts[1])

	if claims.Iss == s.opts.ClientID {
		cert, err := s.verifyCertSignature(hdr, signed, sig)
		if err != nil {
			return "", invalid, err
		}
		if claims.Sub != s.opts.ClientID {
			return "", invalid, errors.New("Client assertion contains invalid claims: iss and sub must both be the client id.")
		}
		if !s.audienceOK(claims.Aud) {
			return "", invalid, errors.New("Client assertion audience claim does not match the token endpoint.")
		}
		if code, err := s.checkAssertionTime(claims); err != nil {
			return "", code, err
		}
		return CertificateThumbprint(cert), 0, nil
	}

	var byIssuer []FederatedCredential
	for _, fc := range s.opts.Federated {
		if fc.Issuer == claims.Iss {
			byIssuer = append(byIssuer, fc)
		}
	}
	if len(byIssuer) == 0 {
		return "", 700211, fmt.Errorf("No matching federated identity record found for presented assertion issuer '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.", claims.Iss)
	}
	auds := audiences(claims.Aud)
	var match *FederatedCredential
	for i, fc := range byIssuer {
		want := fc.Audiences
		if len(want) == 0 {
			want = []string{FederatedAudience(s.opts.Cloud)}
		}
		if fc.Subject == claims.Sub && slices.ContainsFunc(auds, func(a string) bool { return slices.Contains(want, a) }) {
			match = &byIssuer[i]
			break
		}
	}
	if match == nil {
		return "", 70021, fmt.Errorf("No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'.",
			claims.Iss, claims.Sub, strings.Join(auds, ","))
	}
	pub, ok := match.Key.(*rsa.PublicKey)
	if !ok || verifyRSA(pub, hdr.Alg, signed, sig) != nil {
		return "", invalid, errors.New("Client assertion failed signature validation with the key of the federated issuer.")
	}
	if code, err := s.checkAssertionTime(claims); err != nil {
		return "", code, err
	}
	return "federated:" + claims.Iss + "|" + claims.Sub, 0, nil
}

// verifyCertSignature finds the registered certificate that signed the assertion.
func (s *Server) verifyCertSignature(hdr assertionHeader, signed, sig []byte) (*x509.Certificate, error) {
	s.credMu.Lock()
	certs := s.certs
	s.credMu.Unlock()
	if len(certs) == 0 {
		return nil, errors.New("Client assertion failed signature validation: no certificate credential is registered for the application.")
	}
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
		if pub, ok := c.PublicKey.(*rsa.PublicKey); ok && verifyRSA(pub, hdr.Alg, signed, sig) == nil {
			return c, nil
		}
	}
	if hdr.X5t != "" || hdr.X5tS256 != "" {
		return nil, errors.New("Client assertion failed signature validation: no registered certificate matches the assertion's thumbprint and signature.")
	}
	return nil, errors.New("Client assertion failed signature validation: the signature does not verify with a registered certificate.")
}

func verifyRSA(pub *rsa.PublicKey, alg string, signed, sig []byte) error {
	digest := sha256.Sum256(signed)
	if alg == "RS256" {
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
	}
	return rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
}

// checkAssertionTime applies exp and nbf with clockSkew: AADSTS700024 when out of range.
func (s *Server) checkAssertionTime(c assertionClaims) (int, error) {
	const code = 700024
	now := s.opts.Now()
	if c.Exp == nil {
		return 700023, errors.New("Client assertion contains invalid claims: exp is required.")
	}
	exp, err := c.Exp.Float64()
	if err != nil {
		return 700023, errors.New("Client assertion contains invalid claims: exp is not a number.")
	}
	var nbf float64
	if c.Nbf != nil {
		if nbf, err = c.Nbf.Float64(); err != nil {
			return 700023, errors.New("Client assertion contains invalid claims: nbf is not a number.")
		}
	}
	expT, nbfT := time.Unix(int64(exp), 0).UTC(), time.Unix(int64(nbf), 0).UTC()
	if now.Add(-clockSkew).After(expT) || (c.Nbf != nil && now.Add(clockSkew).Before(nbfT)) {
		const f = "2006-01-02T15:04:05Z"
		return code, fmt.Errorf("Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s.",
			now.UTC().Format(f), nbfT.Format(f), expT.Format(f))
	}
	return 0, nil
}

// audiences reads an aud claim: a string or an array of strings.
func audiences(raw json.RawMessage) []string {
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}
	}
	var list []string
	_ = json.Unmarshal(raw, &list)
	return list
}

// audienceOK accepts the token endpoint (v2 or v1 path, any host name the client used to reach
// this server) or the issuer, as a string or in an array.
func (s *Server) audienceOK(raw json.RawMessage) bool {
	for _, aud := range audiences(raw) {
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
		"aud": s.opts.GraphAudience, "iss": s.issuer, "tid": s.opts.TenantID,
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
