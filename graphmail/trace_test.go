package graphmail_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// TestMessageTrace runs the message trace client (real MSAL) against the
// fake over TLS: statuses by recipient, paging by @odata.nextLink, details
// for a failure, the 403 without the permission, and the 429 past the
// tenant's budget with its Retry-After.
func TestMessageTrace(t *testing.T) {
	t.Parallel()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret, Roles: []string{graphtest.TraceRole},
		Trace: graphtest.TraceOptions{Lag: time.Nanosecond, Settle: time.Nanosecond, Budget: 6, Window: time.Hour}})
	c := newIntegrationClient(t, s, graphmail.Credential{ClientSecret: itSecret})
	ctx := context.Background()
	start := time.Now().Add(-time.Minute)
	for _, to := range []string{"ann@example.com", "bounce@example.com", "quarantine@example.com", "spam@example.com", "pending@example.com"} {
		if _, err := c.Send(ctx, &graphmail.Message{From: itSender, To: []graphmail.Address{{Address: to}}, Subject: "s", Text: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	requests := 0
	count := func(context.Context) error { requests++; return nil }
	var got []graphmail.MessageTrace
	deadline := time.Now().Add(time.Minute) // an upper bound (CI shares two cores under -race)
	for {
		var err error
		requests = 0 // the pages of this query only
		got, err = c.MessageTraces(ctx, graphmail.TraceQuery{Sender: itSender, From: start, To: time.Now().Add(time.Minute), Top: 2}, count)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 5 || time.Now().After(deadline) {
			break
		}
	}
	if requests != 3 {
		t.Errorf("5 traces in pages of 2 took %d requests, want 3", requests)
	}
	status := map[string]string{}
	var bounceID string
	for _, m := range got {
		status[m.RecipientAddress] = m.Status
		if m.RecipientAddress == "bounce@example.com" {
			bounceID = m.ID
		}
		if m.MessageID == "" {
			t.Errorf("trace of %s has no messageId", m.RecipientAddress)
		}
	}
	want := map[string]string{"ann@example.com": graphmail.TraceDelivered, "bounce@example.com": graphmail.TraceFailed,
		"quarantine@example.com": graphmail.TraceQuarantined, "spam@example.com": graphmail.TraceFilteredAsSpam, "pending@example.com": graphmail.TracePending}
	for k, v := range want {
		if status[k] != v {
			t.Errorf("status of %s = %q, want %q", k, status[k], v)
		}
	}
	d, err := c.TraceDetails(ctx, bounceID, "bounce@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(d) == 0 || !strings.Contains(d[len(d)-1].Description, "5.1.10") {
		t.Errorf("details of the bounce = %+v, want a Fail event with the NDR", d)
	}
	// Budget 6 per window: 3 + 1 used; the 7th request is refused with Retry-After.
	var last error
	for range 3 {
		_, last = c.MessageTraces(ctx, graphmail.TraceQuery{Sender: itSender, From: start, To: time.Now()}, nil)
	}
	ra, ok := graphmail.Throttled(last)
	if !ok || ra <= 0 {
		t.Fatalf("past the budget: err %v (Retry-After %v), want 429 with Retry-After", last, ra)
	}
	if s.MaxTraceRequestsInWindow() != 7 || s.TraceThrottled() != 1 {
		t.Errorf("fake saw %d requests in the window, %d throttled; want 7, 1", s.MaxTraceRequestsInWindow(), s.TraceThrottled())
	}

	// Without the permission: 403, and the error says which one.
	s2 := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c2 := newIntegrationClient(t, s2, graphmail.Credential{ClientSecret: itSecret})
	_, err = c2.MessageTraces(ctx, graphmail.TraceQuery{Sender: itSender, From: start, To: time.Now()}, nil)
	var te *graphmail.TraceError
	if !errors.As(err, &te) || te.Status != http.StatusForbidden || !strings.Contains(err.Error(), graphmail.MessageTraceRole) {
		t.Errorf("without the permission: %v, want 403 naming %s", err, graphmail.MessageTraceRole)
	}
}
