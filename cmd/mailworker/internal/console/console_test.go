package console

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/mailworker/mailworker/support"
)

// objectPutRace: nats.go v1.55's object store Put publishes through a
// JetStream context of its own and cleans it up when it returns
// (jetstream/object.go:693, cleanupReplySub sets publisher.connStatusCh to
// nil); the goroutine that the first async publish started
// (publish.go:451, resetPendingAcksOnReconnect) reads that field under the
// lock only when it gets to run, and when the cleanup came first it waits on
// a nil channel for ever. One parked goroutine per such Put, in nats.go, not
// in our code: ignored here, named so that nothing else hides behind it.
var objectPutRace = goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, objectPutRace)
}

// idp is a minimal OpenID provider: discovery and a JWKS with one key.
type idp struct {
	srv *httptest.Server
	key *rsa.PrivateKey
}

func newIDP(t *testing.T) *idp {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := &idp{key: key}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tenant/v2.0/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": p.srv.URL + "/tenant/v2.0",
			"authorization_endpoint": p.srv.URL + "/authorize", "token_endpoint": p.srv.URL + "/token", "jwks_uri": p.srv.URL + "/keys"})
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{{"kty": "RSA", "kid": "k1", "use": "sig",
			"n": base64.RawURLEncoding.EncodeToString(key.PublicKey.N.Bytes()),
			"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(key.PublicKey.E)).Bytes())}}})
	})
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *idp) token(t *testing.T, mod func(jwt.MapClaims, *jwt.Token)) string {
	now := time.Now()
	c := jwt.MapClaims{"iss": p.srv.URL + "/tenant/v2.0", "aud": "console", "sub": "s1", "nonce": "n1",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(), "roles": []string{RoleSupport},
		"preferred_username": "ann@contoso.example"}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	tok.Header["kid"] = "k1"
	if mod != nil {
		mod(c, tok)
	}
	var key any = p.key
	if tok.Method == jwt.SigningMethodHS256 {
		key = []byte("secret")
	}
	if tok.Method == jwt.SigningMethodNone {
		key = jwt.UnsafeAllowNoneSignatureType
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestIDTokenVerification(t *testing.T) {
	p := newIDP(t)
	prov := &provider{authority: p.srv.URL + "/tenant", clientID: "console", client: p.srv.Client()}
	ctx := context.Background()
	if c, err := prov.verify(ctx, p.token(t, nil), "n1"); err != nil || c.PreferredUsername != "ann@contoso.example" || len(c.Roles) != 1 {
		t.Fatalf("a good token: %+v, %v", c, err)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	for name, mod := range map[string]func(jwt.MapClaims, *jwt.Token){
		"wrong audience": func(c jwt.MapClaims, _ *jwt.Token) { c["aud"] = "someone-else" },
		"wrong issuer":   func(c jwt.MapClaims, _ *jwt.Token) { c["iss"] = "https://login.example/other/v2.0" },
		"expired":        func(c jwt.MapClaims, _ *jwt.Token) { c["exp"] = time.Now().Add(-time.Hour).Unix() },
		"no expiry":      func(c jwt.MapClaims, _ *jwt.Token) { delete(c, "exp") },
		"wrong nonce":    func(c jwt.MapClaims, _ *jwt.Token) { c["nonce"] = "replayed" },
		"no nonce":       func(c jwt.MapClaims, _ *jwt.Token) { delete(c, "nonce") },
		"unknown key":    func(_ jwt.MapClaims, tok *jwt.Token) { tok.Header["kid"] = "k2" },
		"HS256 with a guessable key": func(_ jwt.MapClaims, tok *jwt.Token) {
			tok.Method = jwt.SigningMethodHS256
			tok.Header["alg"] = "HS256"
		},
		"alg none": func(_ jwt.MapClaims, tok *jwt.Token) {
			tok.Method = jwt.SigningMethodNone
			tok.Header["alg"] = "none"
		},
	} {
		if _, err := prov.verify(ctx, p.token(t, mod), "n1"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Signed by another key under our kid.
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"iss": p.srv.URL + "/tenant/v2.0", "aud": "console",
		"sub": "s1", "nonce": "n1", "exp": time.Now().Add(time.Hour).Unix()})
	tok.Header["kid"] = "k1"
	forged, _ := tok.SignedString(other)
	if _, err := prov.verify(ctx, forged, "n1"); err == nil {
		t.Error("a token signed by another key: accepted")
	}
}

func testServer(t *testing.T) *Server {
	p := newIDP(t)
	s, err := New(Config{PublicURL: "http://console.test", Authority: p.srv.URL + "/tenant", ClientID: "console",
		ClientSecret: "x", HTTPClient: p.srv.Client(), Secret: []byte(strings.Repeat("s", 32))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func (s *Server) cookieFor(t *testing.T, sess session) *http.Cookie {
	if sess.Exp == 0 {
		sess.Exp = time.Now().Add(time.Hour).Unix()
	}
	if sess.SID == "" {
		sess.SID = randomString(12)
	}
	if sess.Boot == "" {
		sess.Boot = s.boot
	}
	v, err := s.seal.seal("session", sess)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Cookie{Name: sessionCookie, Value: v}
}

func TestGuard(t *testing.T) {
	s := testServer(t)
	reader := s.cookieFor(t, session{Sub: "r", Roles: []string{RoleReader}, CSRF: "tok-r"})
	support := s.cookieFor(t, session{Sub: "s", Roles: []string{RoleSupport}, CSRF: "tok-s"})
	nobody := s.cookieFor(t, session{Sub: "n", CSRF: "tok-n"})
	expired := s.cookieFor(t, session{Sub: "s", Roles: []string{RoleSupport}, CSRF: "tok-s", Exp: time.Now().Add(-time.Minute).Unix()})
	login, _ := s.seal.seal("login", session{Sub: "s", Roles: []string{RoleSupport}, CSRF: "tok-s", Exp: time.Now().Add(time.Hour).Unix()})
	tampered := *support
	tampered.Value = tampered.Value[:len(tampered.Value)-2] + "AA"

	post := func(c *http.Cookie, form url.Values, origin string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/jobs/billing/j1/replay", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		if c != nil {
			r.AddCookie(c)
		}
		return r
	}
	get := func(c *http.Cookie) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/jobs/billing/j1/purge", nil)
		if c != nil {
			r.AddCookie(c)
		}
		return r
	}
	for _, tt := range []struct {
		name string
		req  *http.Request
		want int
	}{
		{"no session, GET: to sign-in", get(nil), http.StatusSeeOther},
		{"expired session: to sign-in", get(expired), http.StatusSeeOther},
		{"tampered cookie: to sign-in", get(&tampered), http.StatusSeeOther},
		{"a login cookie is not a session", get(&http.Cookie{Name: sessionCookie, Value: login}), http.StatusSeeOther},
		{"no session, POST", post(nil, url.Values{"csrf": {"tok-s"}}, ""), http.StatusUnauthorized},
		{"no role", get(nobody), http.StatusForbidden},
		{"reader, support page", get(reader), http.StatusForbidden},
		{"reader, POST with its own token", post(reader, url.Values{"csrf": {"tok-r"}}, ""), http.StatusForbidden},
		{"support, POST without token", post(support, url.Values{}, ""), http.StatusForbidden},
		{"support, POST with another's token", post(support, url.Values{"csrf": {"tok-r"}}, ""), http.StatusForbidden},
		{"support, POST from another origin", post(support, url.Values{"csrf": {"tok-s"}}, "https://evil.example"), http.StatusForbidden},
		{"support, purge confirmation page", get(support), http.StatusOK},
	} {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, tt.req)
		if w.Code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, w.Code, tt.want)
		}
		if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP %q", tt.name, csp)
		}
	}
}

func TestLoginSetsPKCEStateAndCookie(t *testing.T) {
	s := testServer(t)
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/login?next=//evil.example/x", nil))
	if w.Code != http.StatusFound {
		t.Fatalf("GET /login: %d", w.Code)
	}
	u, _ := url.Parse(w.Header().Get("Location"))
	q := u.Query()
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("state") == "" || q.Get("nonce") == "" ||
		q.Get("redirect_uri") != "http://console.test/auth/callback" || q.Get("client_id") != "console" {
		t.Fatalf("authorize URL %s", u)
	}
	var c *http.Cookie
	for _, k := range w.Result().Cookies() {
		if k.Name == loginCookie {
			c = k
		}
	}
	if c == nil || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode {
		t.Fatalf("login cookie %+v", c)
	}
	var ls loginState
	if err := s.seal.open("login", c.Value, &ls); err != nil || ls.Next != "/dlq" || ls.State != q.Get("state") {
		t.Fatalf("login state %+v, %v (an off-site next must become /dlq)", ls, err)
	}
	// A callback whose state differs is refused.
	r := httptest.NewRequest(http.MethodGet, "/auth/callback?code=c&state=other", nil)
	r.AddCookie(c)
	w = httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != http.StatusBadRequest {
		t.Fatalf("callback with another state: %d", w.Code)
	}
}

func TestMaskAndHash(t *testing.T) {
	for in, want := range map[string]string{
		"Jane Doe <jane@contoso.com>": "j•••@contoso.com",
		"x@y.z":                       "x•••@y.z",
		"not an address":              "•••",
	} {
		if got := support.MaskAddr(in); got != want {
			t.Errorf("support.MaskAddr(%q) = %q, want %q", in, got, want)
		}
	}
	s := testServer(t)
	if s.rcptHash("Jane <JANE@Contoso.com>") != s.rcptHash(" jane@contoso.com") {
		t.Error("the recipient hash does not normalise")
	}
	other := testServer(t)
	other.rcpt = deriveKey([]byte(strings.Repeat("t", 32)), "recipients")
	if s.rcptHash("jane@contoso.com") == other.rcptHash("jane@contoso.com") {
		t.Error("the recipient hash does not depend on the console secret")
	}
}

func TestFormField(t *testing.T) {
	for in, want := range map[string]string{"to[2]": "to", "from": "from", "attachments[0].name": "other", "": "other", "metadata.k": "other", "subject": "subject"} {
		if got := formField(in); got != want {
			t.Errorf("formField(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMaskText(t *testing.T) {
	got := support.MaskText(`to[1]: "Jane <jane.doe@contoso.com>" is not valid; sender intruder@contoso.example refused`, "Intruder <intruder@contoso.example>")
	want := `to[1]: "Jane <j•••@contoso.com>" is not valid; sender intruder@contoso.example refused`
	if got != want {
		t.Errorf("maskText = %q, want %q", got, want)
	}
}

func TestLocalPath(t *testing.T) {
	for next, want := range map[string]bool{
		"/dlq": true, "/jobs/a?x=1": true, "": false, "//evil.example": false, "/\\evil.example": false,
		"/\t/evil.example": false, "https://evil.example": false, "/\n/evil": false,
	} {
		if got := localPath(next); got != want {
			t.Errorf("localPath(%q) = %v, want %v", next, got, want)
		}
	}
}
