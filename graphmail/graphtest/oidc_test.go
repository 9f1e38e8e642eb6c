package graphtest_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

func TestAuthorizationCodeWithPKCE(t *testing.T) {
	s, err := graphtest.New(graphtest.Options{TenantID: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const redirect = "http://127.0.0.1:9/auth/callback"
	s.RegisterOIDCApp(graphtest.OIDCApp{ClientID: "web", ClientSecret: "web-secret", RedirectURIs: []string{redirect},
		Users: []graphtest.OIDCUser{{Name: "Ann", Username: "ann@contoso.example", Roles: []string{"Mailworker.Support"}}}})
	c := *s.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	verifier := strings.Repeat("v", 50)
	h := sha256.Sum256([]byte(verifier))
	authorize := func(redirectURI, user string) *http.Response {
		t.Helper()
		q := url.Values{"client_id": {"web"}, "response_type": {"code"}, "redirect_uri": {redirectURI}, "scope": {"openid profile"},
			"state": {"st"}, "nonce": {"nn"}, "code_challenge": {base64.RawURLEncoding.EncodeToString(h[:])}, "code_challenge_method": {"S256"}}
		if user != "" {
			q.Set("login_hint", user)
		}
		resp, err := c.Get(s.URL() + "/t1/oauth2/v2.0/authorize?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// Without a hint: the sign-in page lists the demo users.
	resp := authorize(redirect, "")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `value="ann@contoso.example"`) {
		t.Fatalf("sign-in page: %d %s", resp.StatusCode, body)
	}
	// A redirect URI that is not registered: an error page, no redirect (AADSTS50011).
	resp = authorize("https://evil.example/cb", "ann@contoso.example")
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "AADSTS50011") {
		t.Fatalf("unregistered redirect URI: %d %s", resp.StatusCode, body)
	}
	code := func() string {
		resp := authorize(redirect, "ann@contoso.example")
		resp.Body.Close()
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusFound || loc.Query().Get("state") != "st" || loc.Query().Get("code") == "" {
			t.Fatalf("authorize: %d %s", resp.StatusCode, loc)
		}
		return loc.Query().Get("code")
	}
	redeem := func(code, verifier, secret string) (int, map[string]any) {
		resp, err := c.PostForm(s.TokenEndpoint(), url.Values{"grant_type": {"authorization_code"}, "client_id": {"web"},
			"client_secret": {secret}, "code": {code}, "redirect_uri": {redirect}, "code_verifier": {verifier}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if st, m := redeem(code(), "wrong-verifier-"+verifier, "web-secret"); st != 400 || !strings.Contains(m["error_description"].(string), "AADSTS501481") {
		t.Errorf("wrong verifier: %d %v", st, m)
	}
	if st, m := redeem(code(), verifier, "bad"); st != 401 || m["error"] != "invalid_client" {
		t.Errorf("wrong client secret: %d %v", st, m)
	}
	good := code()
	st, m := redeem(good, verifier, "web-secret")
	if st != 200 {
		t.Fatalf("redeem: %d %v", st, m)
	}
	parts := strings.Split(m["id_token"].(string), ".")
	var claims map[string]any
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	json.Unmarshal(b, &claims)
	if claims["aud"] != "web" || claims["nonce"] != "nn" || claims["preferred_username"] != "ann@contoso.example" ||
		claims["iss"] != s.URL()+"/t1/v2.0" || claims["roles"].([]any)[0] != "Mailworker.Support" {
		t.Errorf("ID token claims %v", claims)
	}
	if st, _ := redeem(good, verifier, "web-secret"); st != 400 {
		t.Errorf("a code redeemed twice: %d", st)
	}
	resp, err = c.Get(s.URL() + "/t1/discovery/v2.0/keys")
	if err != nil {
		t.Fatal(err)
	}
	var keys struct{ Keys []map[string]string }
	json.NewDecoder(resp.Body).Decode(&keys)
	resp.Body.Close()
	if len(keys.Keys) != 1 || keys.Keys[0]["kty"] != "RSA" || keys.Keys[0]["kid"] == "" {
		t.Errorf("JWKS %v", keys)
	}
}
