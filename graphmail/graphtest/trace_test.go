package graphtest_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

func traceGet(t *testing.T, s *graphtest.Server, tok, query string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.GraphURL()+"/v1.0/admin/exchange/tracing/messageTraces?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestTraceQueryShape: the fake serves the $filter and $top the v1.0 pages
// document and refuses the rest with 400 (no client may depend on `or`,
// which no page documents); the API is refused outside the global cloud.
func TestTraceQueryShape(t *testing.T) {
	t.Parallel()
	s := newServer(t, graphtest.Options{Roles: []string{graphtest.TraceRole}})
	tok := token(t, s)
	send(t, s, tok, "billing@contoso.com", "j1", simpleMail("a@example.com", "b@example.com"))
	for _, tc := range []struct {
		filter string
		top    string
		want   int
	}{
		{"senderAddress eq 'billing@contoso.com' and receivedDateTime ge 2000-01-01T00:00:00Z and receivedDateTime le 2100-01-01T00:00:00Z", "", 200},
		{"recipientAddress eq 'a@example.com'", "1", 200},
		{"status eq 'delivered'", "5000", 200},
		{"senderAddress eq 'billing@contoso.com' or senderAddress eq 'x@contoso.com'", "", 400},
		{"senderAddress eq 'billing@contoso.com' and senderAddress eq 'x@contoso.com'", "", 400},
		{"receivedDateTime gt 2000-01-01T00:00:00Z", "", 400},
		{"subject ne 'x'", "", 400},
		// subject supports contains/startsWith/endsWith only (not served by the fake), not eq.
		{"subject eq 'x'", "", 400},
		{"messageId eq '<a@contoso.com>'", "", 200},
		{"", "0", 400},
		{"", "5001", 400},
	} {
		v := url.Values{}
		if tc.filter != "" {
			v.Set("$filter", tc.filter)
		}
		if tc.top != "" {
			v.Set("$top", tc.top)
		}
		code, body := traceGet(t, s, tok, v.Encode())
		if code != tc.want {
			t.Errorf("$filter=%q $top=%q: %d %s, want %d", tc.filter, tc.top, code, body, tc.want)
		}
	}
	// Filtered to one recipient and paged by one: a nextLink only when more follow.
	code, body := traceGet(t, s, tok, url.Values{"$filter": {"recipientAddress eq 'a@example.com'"}, "$top": {"1"}}.Encode())
	var page struct {
		Value    []graphtest.TraceRow `json:"value"`
		NextLink string               `json:"@odata.nextLink"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &page) != nil || len(page.Value) > 1 || page.NextLink != "" {
		t.Errorf("one recipient, $top 1: %d %s", code, body)
	}

	gov := newServer(t, graphtest.Options{Roles: []string{graphtest.TraceRole}, Cloud: graphtest.CloudUSGov})
	resp, tb := postForm(t, gov, gov.TokenEndpoint(), url.Values{"grant_type": {"client_credentials"}, "client_id": {gov.ClientID()},
		"scope": {"https://graph.microsoft.us/.default"}, "client_secret": {secret}})
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(tb, &tr) != nil {
		t.Fatalf("US Gov token: %d %s", resp.StatusCode, tb)
	}
	if code, body := traceGet(t, gov, tr.AccessToken, ""); code != http.StatusNotFound || !strings.Contains(body, "ResourceNotFound") {
		t.Errorf("US Gov cloud: %d %s, want 404", code, body)
	}
}
