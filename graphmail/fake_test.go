package graphmail

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

const testTenant = "tenant-1"

// fake is a TLS server playing Entra (OIDC discovery + token endpoint) and
// Graph sendMail, with handlers the test controls.
type fake struct {
	srv    *httptest.Server
	tokens atomic.Int32 // token requests served
	sends  atomic.Int32 // sendMail requests received

	mu    sync.Mutex
	token func(w http.ResponseWriter, r *http.Request, n int) // nil: issue "tok-<n>"
	graph func(w http.ResponseWriter, r *http.Request, n int) // nil: 202
	forms []map[string][]string
}

func newFake(t testing.TB) *fake {
	t.Helper()
	f := &fake{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		base := f.srv.URL + "/" + r.PathValue("tenant")
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                 base + "/v2.0",
			"token_endpoint":         base + "/oauth2/v2.0/token",
			"authorization_endpoint": base + "/oauth2/v2.0/authorize",
		})
	})
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", func(w http.ResponseWriter, r *http.Request) {
		n := int(f.tokens.Add(1))
		_ = r.ParseForm()
		f.mu.Lock()
		f.forms = append(f.forms, r.PostForm)
		h := f.token
		f.mu.Unlock()
		if h != nil {
			h(w, r, n)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"token_type": "Bearer", "access_token": fmt.Sprintf("tok-%d", n), "expires_in": 3600, "ext_expires_in": 3600,
		})
	})
	mux.HandleFunc("POST /v1.0/users/{from}/sendMail", func(w http.ResponseWriter, r *http.Request) {
		n := int(f.sends.Add(1))
		f.mu.Lock()
		h := f.graph
		f.mu.Unlock()
		w.Header().Set("request-id", fmt.Sprintf("req-%d", n))
		if v := r.Header.Get("client-request-id"); v != "" && r.Header.Get("return-client-request-id") == "true" {
			w.Header().Set("client-request-id", v)
		}
		if h != nil {
			h(w, r, n)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	})
	f.srv = httptest.NewTLSServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fake) setGraph(h func(w http.ResponseWriter, r *http.Request, n int)) {
	f.mu.Lock()
	f.graph = h
	f.mu.Unlock()
}

func (f *fake) setToken(h func(w http.ResponseWriter, r *http.Request, n int)) {
	f.mu.Lock()
	f.token = h
	f.mu.Unlock()
}

func (f *fake) lastForm() map[string][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.forms) == 0 {
		return nil
	}
	return f.forms[len(f.forms)-1]
}

func (f *fake) config() Config {
	return Config{
		Name:          "billing",
		TenantID:      testTenant,
		ClientID:      "client-1",
		AuthorityHost: f.srv.URL,
		GraphURL:      f.srv.URL,
		Credential:    Credential{ClientSecret: "s3cret-value"},
		HTTPClient:    f.srv.Client(),
		Timeout:       2 * time.Minute, // an upper bound: a 4 MB request under -race on two shared cores took more than 10 s
	}
}

func (f *fake) client(t *testing.T, mod ...func(*Config)) *Client {
	t.Helper()
	cfg := f.config()
	for _, m := range mod {
		m(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func graphError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// selfSignedPEM returns a certificate + PKCS#8 RSA key in PEM, valid until notAfter.
func selfSignedPEM(t testing.TB, notAfter time.Time) []byte {
	t.Helper()
	_, pemData, err := graphtest.NewAppCertificate(notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return pemData
}

// certPEM is a certificate for pub signed by key, in PEM with the key:
// for credentials graphtest does not make (an EC key).
func certPEM(t testing.TB, key crypto.Signer, pub crypto.PublicKey, notAfter time.Time) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mailworker-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})...)
}

// isGUID reports whether s is a GUID in its 8-4-4-4-12 form, as client-request-id must be.
func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return false
			}
		} else if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
