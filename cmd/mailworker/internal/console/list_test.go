package console

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// openQueue starts an embedded JetStream server, provisions it and opens
// the queue; everything is closed at cleanup.
func openQueue(tb testing.TB) (*queue.Queue, jetstream.JetStream) {
	tb.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: tb.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		tb.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats not ready")
	}
	tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if err := queue.Provision(ctx, js, queue.Config{}); err != nil {
		tb.Fatal(err)
	}
	q, err := queue.Open(ctx, js)
	if err != nil {
		tb.Fatal(err)
	}
	return q, js
}

var reJobLink = regexp.MustCompile(`class="job" href="/jobs/billing/([^"]+)"`)
var reNext = regexp.MustCompile(`id="next" href="([^"]+)"`)

// TestListPagesThroughEveryRecord follows the list's "Next page" links over
// 120 dead letters with a filter and sees each matching record once.
func TestListPagesThroughEveryRecord(t *testing.T) {
	q, _ := openQueue(t)
	ctx := context.Background()
	for i := range 120 {
		reason := contract.ReasonExpired
		if i%3 == 0 {
			reason = contract.ReasonAccessDenied
		}
		id := fmt.Sprintf("j%03d", i)
		if err := q.DLQ.Put(ctx, contract.DeadLetter{JobID: id, Profile: "billing", Reason: reason, Body: []byte(`{"from":"a@contoso.example"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(Config{PublicURL: "http://console.test", Authority: "http://127.0.0.1:1/t", ClientID: "c", ClientSecret: "x",
		Secret: []byte(strings.Repeat("s", 32))}, q)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cookie := s.cookieFor(t, session{Sub: "r", Roles: []string{RoleReader}, CSRF: "t"})
	seen := map[string]bool{}
	path := "/dlq?reason=expired"
	for pages := 0; path != ""; pages++ {
		if pages > 3 {
			t.Fatal("more pages than records")
		}
		r := httptest.NewRequest(http.MethodGet, path, nil)
		r.AddCookie(cookie)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != 200 {
			t.Fatalf("GET %s: %d", path, w.Code)
		}
		body := w.Body.String()
		for _, m := range reJobLink.FindAllStringSubmatch(body, -1) {
			if seen[m[1]] {
				t.Fatalf("%s listed twice", m[1])
			}
			seen[m[1]] = true
		}
		path = ""
		if m := reNext.FindStringSubmatch(body); m != nil {
			path = html.UnescapeString(m[1])
			if !strings.Contains(path, "reason=expired") {
				t.Fatalf("the next page link lost the filter: %s", path)
			}
		}
	}
	if len(seen) != 80 {
		t.Fatalf("listed %d records, want the 80 expired ones", len(seen))
	}
}
