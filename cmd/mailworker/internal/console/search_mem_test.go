package console

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestParallelRecipientSearchMemory measures what 8 recipient searches at
// once over 60 dead letters of about 900 KB each cost the process: the peak
// heap in use while they run, and how many were answered 503 (busy). Only
// with MAILWORKER_MEASURE=1 (a measurement, not an assertion; figures in
// docs/benchmarks.md):
//
//	MAILWORKER_MEASURE=1 go test -count=1 -run TestParallelRecipientSearchMemory -v ./cmd/mailworker/internal/console/
func TestParallelRecipientSearchMemory(t *testing.T) {
	if os.Getenv("MAILWORKER_MEASURE") == "" {
		t.Skip("a measurement: set MAILWORKER_MEASURE=1")
	}
	q, _ := openQueue(t)
	ctx := context.Background()
	text := strings.Repeat("x", 900<<10)
	for i := range 60 {
		body := fmt.Sprintf(`{"id":"big-%d","from":"a@contoso.example","to":["person%d@example.com"],"subject":"s","text":%q}`, i, i, text)
		if err := q.DLQ.Put(ctx, contract.DeadLetter{JobID: fmt.Sprintf("big-%d", i), Profile: "billing", Reason: contract.ReasonExpired, Body: []byte(body)}); err != nil {
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
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()
	codes := make([]int, 8)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := httptest.NewRequest(http.MethodGet, "/search?rh="+s.rcptHash(fmt.Sprintf("person%d@example.com", i)), nil)
			r.AddCookie(cookie)
			w := httptest.NewRecorder()
			s.ServeHTTP(w, r)
			codes[i] = w.Code
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(stop)
	<-sampled
	t.Logf("8 parallel recipient searches over 60 dead letters of 900 KB: peak heap in use %d MB (%d MB before), %s, answers %v",
		peak.Load()>>20, base.HeapInuse>>20, took.Round(time.Millisecond), codes)
}
