package console

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailworker/mailworker/queue/contract"
)

// BenchmarkConsole100k seeds 100,000 dead letters (1% of them with a rare
// reason, 10 senders, 2 profiles) and measures the console's pages over
// them. docs/benchmarks.md has the figures:
//
//	go test -run '^$' -bench Console100k -benchtime 20x ./cmd/mailworker/internal/console/
func BenchmarkConsole100k(b *testing.B) {
	const n = 100_000
	q, js := openQueue(b)
	ctx := context.Background()
	start := time.Now()
	for i := range n {
		id := fmt.Sprintf("job-%06d", i)
		profile := []string{"billing", "hr"}[i%2]
		reason := contract.ReasonMailboxNotFound
		if i%100 == 7 {
			reason = contract.ReasonAuthFailed
		}
		body := fmt.Sprintf(`{"id":%q,"from":"sender%d@contoso.example","to":["person%d@example.com"],"subject":"Invoice %d","text":"Dear customer, your invoice is attached. Regards.","metadata":{"invoice":"%d"}}`, id, i%10, i, i, i)
		h := nats.Header{}
		h.Set(contract.HeaderJobID, id)
		h.Set(contract.HeaderProfile, profile)
		h.Set(contract.HeaderReason, string(reason))
		h.Set(contract.HeaderError, "Graph 404 ErrorInvalidUser: the mailbox was not found")
		h.Set(contract.HeaderAttempts, "1")
		h.Set(contract.HeaderFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
		if _, err := js.PublishMsgAsync(&nats.Msg{Subject: contract.DLQSubject(profile), Header: h, Data: []byte(body)}); err != nil {
			b.Fatal(err)
		}
		if i%5000 == 4999 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	// One more dead letter with its job state, as the worker leaves them:
	// its page finds the record from the state's time, not by a scan.
	if _, err := q.States.Create(ctx, contract.JobState{JobID: "with-state", Profile: "billing", State: contract.StateDeadLettered}); err != nil {
		b.Fatal(err)
	}
	if err := q.DLQ.Put(ctx, contract.DeadLetter{JobID: "with-state", Profile: "billing", Reason: contract.ReasonAccessDenied,
		Body: []byte(`{"from":"sender1@contoso.example","to":["x@example.com"]}`)}); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d dead letters in %s", n, time.Since(start).Round(time.Millisecond))

	s, err := New(Config{PublicURL: "http://console.test", Authority: "http://127.0.0.1:1/t", ClientID: "c", ClientSecret: "x",
		Secret: []byte(strings.Repeat("s", 32))}, q)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	v, _ := s.seal.seal("session", session{Sub: "s", Roles: []string{RoleSupport}, CSRF: "t", Exp: time.Now().Add(time.Hour).Unix(), SID: "bench", Boot: s.boot})
	cookie := &http.Cookie{Name: sessionCookie, Value: v}
	get := func(b *testing.B, path string) {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		r.AddCookie(cookie)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			b.Fatalf("GET %s: %d", path, w.Code)
		}
	}
	get(b, "/dlq") // counts the first time
	st, _ := q.DLQStream(ctx)
	info, _ := st.Info(ctx)
	mid := strconv.FormatUint(info.State.FirstSeq+n/2, 10)
	for _, c := range []struct{ name, path string }{
		{"list first page", "/dlq"},
		{"list page at record 50000", "/dlq?after=" + mid},
		{"list filtered by profile", "/dlq?profile=hr&after=" + mid},
		{"list filtered by a 1% reason", "/dlq?reason=auth_failed"},
		{"list filtered by sender (reads bodies)", "/dlq?from=sender3@contoso.example&after=" + mid},
		{"job page, dead letter found from its state's time", "/jobs/billing/with-state"},
		{"job page without a state (record 50000, full scan)", fmt.Sprintf("/jobs/billing/job-%06d", n/2)},
		{"bulk replay confirmation (fresh count)", "/dlq/bulk?action=replay&reason=auth_failed"},
		{"search by metadata (all bodies)", "/search?kind=meta&q=99999&hours=1"},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				get(b, c.path)
			}
		})
	}
	b.Run("count per profile and reason (headers only)", func(b *testing.B) {
		for b.Loop() {
			if _, err := q.DLQ.Counts(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
