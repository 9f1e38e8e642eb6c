package graphtest_test

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// TestSendMailSchema plants one error at a time in an otherwise valid body and checks that the
// CSDL check refuses it with Graph's error shape, and that what the schema allows is accepted.
func TestSendMailSchema(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	msg := func(body map[string]any) map[string]any { return body["message"].(map[string]any) }
	plant := func(f func(body map[string]any)) map[string]any {
		b := fullMail()
		f(b)
		return b
	}
	rejected := []struct {
		name string
		body any
		want string // in the error message
	}{
		{"unknown emailAddress property", plant(func(b map[string]any) {
			msg(b)["toRecipients"] = []any{map[string]any{"emailAddress": map[string]any{"address": "a@example.com", "type": "smtp"}}}
		}), "The property 'type' does not exist on type 'microsoft.graph.emailAddress'"},
		{"unknown itemBody property", plant(func(b map[string]any) {
			msg(b)["body"] = map[string]any{"contentType": "text", "content": "x", "charset": "utf-8"}
		}), "'charset' does not exist on type 'microsoft.graph.itemBody'"},
		{"unknown header property", plant(func(b map[string]any) {
			msg(b)["internetMessageHeaders"] = []any{map[string]any{"name": "X-A", "value": "1", "encoding": "q"}}
		}), "'encoding' does not exist on type 'microsoft.graph.internetMessageHeader'"},
		{"unknown attachment property", plant(func(b map[string]any) {
			msg(b)["attachments"].([]map[string]any)[0]["disposition"] = "inline"
		}), "'disposition' does not exist on type 'microsoft.graph.fileAttachment'"},
		{"unknown action parameter", plant(func(b map[string]any) { b["sendAt"] = "2030-01-01T00:00:00Z" }),
			"The parameter 'sendAt' in the request payload is not a valid parameter for the operation 'sendMail'"},
		{"bodyType not in the enum", plant(func(b map[string]any) {
			msg(b)["body"] = map[string]any{"contentType": "markdown", "content": "x"}
		}), "Cannot convert the literal 'markdown' to the expected type 'microsoft.graph.bodyType'"},
		{"importance not in the enum", plant(func(b map[string]any) { msg(b)["importance"] = "urgent" }),
			"Cannot convert the literal 'urgent' to the expected type 'microsoft.graph.importance'"},
		{"subject not a string", plant(func(b map[string]any) { msg(b)["subject"] = 42 }),
			"Cannot convert the literal '42' to the expected type 'Edm.String'"},
		{"saveToSentItems not a boolean", plant(func(b map[string]any) { b["saveToSentItems"] = "yes" }),
			"Cannot convert the literal 'yes' to the expected type 'Edm.Boolean'"},
		{"isInline null (Nullable=false)", plant(func(b map[string]any) {
			msg(b)["attachments"].([]map[string]any)[0]["isInline"] = nil
		}), "A null value was found for the property named 'isInline'"},
		{"contentBytes not base64", plant(func(b map[string]any) {
			msg(b)["attachments"].([]map[string]any)[0]["contentBytes"] = "not base64!"
		}), "to the expected type 'Edm.Binary'"},
		{"recipients not a collection", plant(func(b map[string]any) {
			msg(b)["toRecipients"] = map[string]any{"emailAddress": map[string]any{"address": "a@example.com"}}
		}), "A 'StartArray' node was expected"},
		{"body not an object", plant(func(b map[string]any) { msg(b)["body"] = "hello" }),
			"A 'StartObject' node was expected"},
		{"unknown @odata.type", plant(func(b map[string]any) {
			msg(b)["attachments"].([]map[string]any)[0]["@odata.type"] = "#microsoft.graph.bogusAttachment"
		}), "could not be resolved by the model"},
		{"@odata.type of another hierarchy", plant(func(b map[string]any) {
			msg(b)["attachments"].([]map[string]any)[0]["@odata.type"] = "#microsoft.graph.message"
		}), "could not be resolved by the model"},
		{"abstract attachment", plant(func(b map[string]any) {
			delete(msg(b)["attachments"].([]map[string]any)[0], "@odata.type")
		}), "is abstract"},
		{"top level not an object", []any{1, 2}, "A 'StartObject' node was expected"},
	}
	for _, tc := range rejected {
		t.Run(tc.name, func(t *testing.T) {
			r := send(t, s, tok, mailbox, newGUID(), tc.body)
			var ge graphError
			if err := json.Unmarshal(r.body, &ge); err != nil {
				t.Fatalf("not Graph's error shape: %s", r.body)
			}
			if r.status != http.StatusBadRequest || ge.Error.Code != "RequestBodyRead" || !strings.Contains(ge.Error.Message, tc.want) {
				t.Fatalf("got %d %s %q, want 400 RequestBodyRead containing %q", r.status, ge.Error.Code, ge.Error.Message, tc.want)
			}
			for _, k := range []string{"date", "request-id", "client-request-id"} {
				if ge.Error.InnerError[k] == "" {
					t.Errorf("innerError.%s missing: %s", k, r.body)
				}
			}
		})
	}
	if n := len(s.Messages()); n != 0 {
		t.Fatalf("%d planted bodies accepted", n)
	}

	accepted := []struct {
		name string
		body any
	}{
		{"as Microsoft's sample writes it", fullMail()},
		{"parameter names as the CSDL writes them", map[string]any{"Message": simpleMail("a@example.com")["message"], "SaveToSentItems": true}},
		{"enum values in any case", plant(func(b map[string]any) {
			msg(b)["body"] = map[string]any{"contentType": "HTML", "content": "<p>x</p>"}
			msg(b)["importance"] = "Low"
		})},
		{"other message properties the schema defines", plant(func(b map[string]any) {
			msg(b)["isReadReceiptRequested"] = true
			msg(b)["categories"] = []string{"billing"}
		})},
		// The CSDL marks message OpenType="true": a property it does not declare is a dynamic
		// property, which OData accepts (the types inside message are not open: see above).
		{"a dynamic property of message (open type)", plant(func(b map[string]any) { msg(b)["priority"] = "high" })},
	}
	for _, tc := range accepted {
		t.Run(tc.name, func(t *testing.T) {
			if r := send(t, s, tok, mailbox, newGUID(), tc.body); r.status != http.StatusAccepted {
				t.Fatalf("got %d %s", r.status, r.body)
			}
		})
	}
}

// TestInternetMessageHeaderLimits: at most 5 headers, never an empty array, only X- names.
func TestInternetMessageHeaderLimits(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	headers := func(n int) map[string]any {
		b := simpleMail("a@example.com")
		hs := []map[string]string{}
		for i := range n {
			hs = append(hs, map[string]string{"name": "X-H" + string(rune('a'+i)), "value": "v"})
		}
		b["message"].(map[string]any)["internetMessageHeaders"] = hs
		return b
	}
	const msg = "Maximum number of headers in one message should be less than or equal to 5."
	for _, tc := range []struct {
		n      int
		status int
	}{{0, 400}, {1, 202}, {5, 202}, {6, 400}} {
		r := send(t, s, tok, mailbox, newGUID(), headers(tc.n))
		if r.status != tc.status {
			t.Fatalf("%d headers: got %d %s, want %d", tc.n, r.status, r.body, tc.status)
		}
		if tc.status == 400 && (r.code != "InvalidInternetMessageHeaderCollection" || !strings.Contains(string(r.body), msg)) {
			t.Fatalf("%d headers: got %s", tc.n, r.body)
		}
	}
	b := simpleMail("a@example.com")
	b["message"].(map[string]any)["internetMessageHeaders"] = []map[string]string{{"name": "Reply-By", "value": "x"}}
	if r := send(t, s, tok, mailbox, newGUID(), b); r.code != "InvalidInternetMessageHeader" {
		t.Fatalf("non-X- name: got %d %s", r.status, r.body)
	}
}

// TestRequestSizeLimit: the 4 MB cap is on the whole request, in both forms Graph has answered.
func TestRequestSizeLimit(t *testing.T) {
	// 3 MiB of attachment is 4,194,304 bytes of base64: with the rest of the JSON, over the cap,
	// though the attachment alone is under 4 MB.
	body := simpleMail("a@example.com")
	body["message"].(map[string]any)["attachments"] = []map[string]any{{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.bin",
		"contentBytes": base64.StdEncoding.EncodeToString(make([]byte, 3<<20)),
	}}
	for _, tc := range []struct {
		as400  bool
		status int
		code   string
	}{{false, 413, "RequestEntityTooLarge"}, {true, 400, "BadRequest"}} {
		s := newServer(t, graphtest.Options{TooLargeAs400: tc.as400})
		r := send(t, s, token(t, s), mailbox, newGUID(), body)
		if r.status != tc.status || r.code != tc.code {
			t.Fatalf("TooLargeAs400=%v: got %d %s, want %d %s", tc.as400, r.status, r.body, tc.status, tc.code)
		}
		if tc.as400 && !strings.Contains(string(r.body), "Maximum request length exceeded.") {
			t.Fatalf("400 form: %s", r.body)
		}
	}
	// Just under the cap is accepted.
	s := newServer(t, graphtest.Options{})
	under := simpleMail("a@example.com")
	under["message"].(map[string]any)["attachments"] = []map[string]any{{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.bin",
		"contentBytes": base64.StdEncoding.EncodeToString(make([]byte, 3<<20-3000)),
	}}
	if r := send(t, s, token(t, s), mailbox, newGUID(), under); r.status != http.StatusAccepted {
		t.Fatalf("under the cap: %d %s", r.status, r.body)
	}
}

// TestTokenEntraShapes: refresh_in, the cloud's own aud, a multi-line AADSTS description.
func TestTokenEntraShapes(t *testing.T) {
	tokenResp := func(t *testing.T, s *graphtest.Server, scope, sec string) (int, map[string]any) {
		t.Helper()
		resp, body := postForm(t, s, s.TokenEndpoint(), url.Values{
			"grant_type": {"client_credentials"}, "client_id": {s.ClientID()}, "scope": {scope}, "client_secret": {sec},
		})
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, m
	}
	claims := func(t *testing.T, tok string) map[string]any {
		parts := strings.Split(tok, ".")
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var c map[string]any
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Run("refresh_in half of a long lifetime, none for an hour", func(t *testing.T) {
		long := newServer(t, graphtest.Options{TokenLifetime: 24 * time.Hour})
		if _, m := tokenResp(t, long, scope, secret); m["refresh_in"] != float64(12*3600) {
			t.Fatalf("24 h token: refresh_in = %v, want 43200", m["refresh_in"])
		}
		short := newServer(t, graphtest.Options{})
		if _, m := tokenResp(t, short, scope, secret); m["refresh_in"] != nil {
			t.Fatalf("1 h token: refresh_in = %v, want none", m["refresh_in"])
		}
		set := newServer(t, graphtest.Options{RefreshIn: 90 * time.Second})
		if _, m := tokenResp(t, set, scope, secret); m["refresh_in"] != float64(90) {
			t.Fatalf("RefreshIn 90s: refresh_in = %v", m["refresh_in"])
		}
	})
	t.Run("aud is the cloud's Graph", func(t *testing.T) {
		gov := newServer(t, graphtest.Options{GraphAudience: "https://graph.microsoft.us"})
		st, m := tokenResp(t, gov, "https://graph.microsoft.us/.default", secret)
		if st != 200 || claims(t, m["access_token"].(string))["aud"] != "https://graph.microsoft.us" {
			t.Fatalf("US Gov token: %d %v", st, m)
		}
		st, m = tokenResp(t, gov, "https://graph.microsoft.com/.default", secret)
		if st != 400 || !strings.HasPrefix(m["error_description"].(string), "AADSTS500011:") {
			t.Fatalf("global scope at a US Gov authority: %d %v", st, m)
		}
	})
	t.Run("AADSTS description is multi-line with its ids", func(t *testing.T) {
		s := newServer(t, graphtest.Options{})
		st, m := tokenResp(t, s, scope, "wrong")
		desc, _ := m["error_description"].(string)
		lines := strings.Split(desc, "\r\n")
		if st != 401 || len(lines) != 4 || !strings.HasPrefix(lines[0], "AADSTS7000215: ") ||
			lines[1] != "Trace ID: "+m["trace_id"].(string) || lines[2] != "Correlation ID: "+m["correlation_id"].(string) ||
			lines[3] != "Timestamp: "+m["timestamp"].(string) {
			t.Fatalf("got %d %q", st, desc)
		}
		if codes, _ := m["error_codes"].([]any); len(codes) != 1 || codes[0] != float64(7000215) {
			t.Fatalf("error_codes = %v", m["error_codes"])
		}
	})
}

// TestFederatedAssertion: Entra matches a workload identity token to a federated identity
// credential by issuer, then subject and audience, and checks its signature and time range.
func TestFederatedAssertion(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	const iss, sub = "https://oidc.example.com/cluster", "system:serviceaccount:mail:mailworker"
	s := newServer(t, graphtest.Options{Federated: []graphtest.FederatedCredential{{Issuer: iss, Subject: sub, Key: &key.PublicKey}}})
	now := time.Now()
	for _, tc := range []struct {
		name   string
		key    *rsa.PrivateKey
		claims map[string]any
		aadsts string // "" = accepted
	}{
		{"matching", key, map[string]any{"iss": iss, "sub": sub, "aud": graphtest.DefaultFederatedAudience}, ""},
		{"unknown issuer", key, map[string]any{"iss": "https://other.example.com", "sub": sub, "aud": graphtest.DefaultFederatedAudience}, "AADSTS700211:"},
		{"wrong subject", key, map[string]any{"iss": iss, "sub": "system:serviceaccount:mail:other", "aud": graphtest.DefaultFederatedAudience}, "AADSTS70021:"},
		{"wrong audience", key, map[string]any{"iss": iss, "sub": sub, "aud": "api://other"}, "AADSTS70021:"},
		{"expired", key, map[string]any{"iss": iss, "sub": sub, "aud": graphtest.DefaultFederatedAudience, "exp": now.Add(-time.Hour).Unix()}, "AADSTS700024:"},
		{"signed by another key", other, map[string]any{"iss": iss, "sub": sub, "aud": graphtest.DefaultFederatedAudience}, "AADSTS700027:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := tc.claims["exp"]; !ok {
				tc.claims["exp"] = now.Add(time.Hour).Unix()
			}
			resp, body := postForm(t, s, s.TokenEndpoint(), url.Values{
				"grant_type": {"client_credentials"}, "client_id": {s.ClientID()}, "scope": {scope},
				"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
				"client_assertion":      {signJWT(t, tc.key, tc.claims)},
			})
			var m map[string]any
			_ = json.Unmarshal(body, &m)
			if tc.aadsts == "" {
				if resp.StatusCode != 200 {
					t.Fatalf("got %d %s", resp.StatusCode, body)
				}
				return
			}
			// AADSTS70021 is 400 invalid_request (Azure's workload-identity troubleshooting);
			// the others 401 invalid_client.
			status, code := 401, "invalid_client"
			if tc.aadsts == "AADSTS70021:" {
				status, code = 400, "invalid_request"
			}
			if desc, _ := m["error_description"].(string); resp.StatusCode != status || m["error"] != code || !strings.HasPrefix(desc, tc.aadsts) {
				t.Fatalf("got %d %s, want %d %s %s", resp.StatusCode, body, status, code, tc.aadsts)
			}
		})
	}
}

func signJWT(t *testing.T, key *rsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	tok, err := graphtest.SignRS256JWT(key, claims)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestDraftCreateChecksLikeSendMail: the draft create (POST /users/{id}/messages) takes the
// same message as sendMail's and is checked the same way: the CSDL (unknown properties of
// closed types refused, of the open message type accepted) and 1 to 5 internetMessageHeaders.
func TestDraftCreateChecksLikeSendMail(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	create := func(m map[string]any) resp {
		body, _ := json.Marshal(m)
		return do(t, s, http.MethodPost, s.GraphURL()+"/v1.0/users/"+url.PathEscape(mailbox)+"/messages", tok, immutable, body)
	}
	headers := func(n int) []map[string]string {
		h := make([]map[string]string, n)
		for i := range h {
			h[i] = map[string]string{"name": fmt.Sprintf("X-H%d", i), "value": "v"}
		}
		return h
	}
	base := func() map[string]any {
		return map[string]any{"subject": "s", "body": map[string]any{"contentType": "Text", "content": "x"},
			"toRecipients": rcpt("a@example.com")}
	}
	m := base()
	m["internetMessageHeaders"] = headers(6)
	m["priority"] = "high"
	if r := create(m); r.status != http.StatusBadRequest || r.code(t) != "InvalidInternetMessageHeaderCollection" {
		t.Errorf("6 headers: %d %s, want 400 InvalidInternetMessageHeaderCollection", r.status, r.body)
	}
	m = base()
	m["internetMessageHeaders"] = []any{}
	if r := create(m); r.status != http.StatusBadRequest || r.code(t) != "InvalidInternetMessageHeaderCollection" {
		t.Errorf("empty headers: %d %s, want 400 InvalidInternetMessageHeaderCollection", r.status, r.body)
	}
	m = base()
	m["toRecipients"] = []any{map[string]any{"emailAddress": map[string]any{"address": "a@example.com", "type": "smtp"}}}
	if r := create(m); r.status != http.StatusBadRequest || r.code(t) != "RequestBodyRead" || !strings.Contains(string(r.body), "'type' does not exist on type 'microsoft.graph.emailAddress'") {
		t.Errorf("unknown emailAddress property: %d %s, want 400 RequestBodyRead", r.status, r.body)
	}
	m = base()
	m["importance"] = "urgent"
	if r := create(m); r.status != http.StatusBadRequest || r.code(t) != "RequestBodyRead" {
		t.Errorf("importance not in the enum: %d %s, want 400 RequestBodyRead", r.status, r.body)
	}
	m = base()
	m["internetMessageHeaders"] = headers(5)
	m["priority"] = "high"
	if r := create(m); r.status != http.StatusCreated {
		t.Errorf("5 headers and a dynamic property: %d %s, want 201", r.status, r.body)
	}
}
