package smtpd

import (
	"net"
	"net/smtp"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailworker/mailworker/queue"
)

// replica starts a second server on b's JetStream and credentials (another
// replica of the ingress) and returns its address and metrics.
func (b *bundle) replica(cfg Config) (*Server, string) {
	b.t.Helper()
	return b.replicaWith(cfg, queue.NewAttachments(b.js))
}

// replicaWith is replica with its own store.
func (b *bundle) replicaWith(cfg Config, store Store) (*Server, string) {
	b.t.Helper()
	creds, err := NewCredentials(nil, b.creds, 0, b.srv.cfg.Senders, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	cfg.Senders = b.srv.cfg.Senders
	if cfg.AuthFailureDelay == 0 {
		cfg.AuthFailureDelay = -1
	}
	srv, err := New(cfg, creds, queue.NewPublisher(b.js), store, Options{Logger: zerolog.New(b.logs),
		Metrics: NewMetrics(prometheus.NewRegistry(), []string{testProfile, "other"}), TLS: b.srv.tls})
	if err != nil {
		b.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	b.t.Cleanup(func() { _ = srv.Close(); <-done })
	return srv, ln.Addr().String()
}

func (b *bundle) dialAt(addr string) *smtp.Client {
	b.t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { c.Close() })
	cfg := b.client.Clone()
	if err := c.StartTLS(cfg); err != nil {
		b.t.Fatal(err)
	}
	if err := c.Auth(smtp.PlainAuth("", testUser, testPassword, "127.0.0.1")); err != nil {
		b.t.Fatal(err)
	}
	return c
}

func marksReady(s *Server) bool {
	_, _, known := s.marks[testProfile].get("none")
	return known
}

// TestRetryOnAnotherReplica (issue 20 item 16, issue 19 item 4): a
// submission answered 451 after a publish that landed is retried by the
// client on another replica of the ingress: the same job. Neither replica
// looks retry records up in the object store per message: each keeps a
// copy that the broker keeps current.
func TestRetryOnAnotherReplica(t *testing.T) {
	b := setup(t, Config{})
	other, addr := b.replica(Config{})
	waitFor(t, "the records loaded", func() bool { return marksReady(b.srv) && marksReady(other) })
	rcpts := []string{"ann@example.com", "cc@example.com"}

	// Ordinary traffic: no look-up in the store.
	c := b.dialAt(b.addr)
	for range 5 {
		if code, _, err := send(c, testSender, rcpts, plainMsg); code != 250 {
			t.Fatal(code, err)
		}
	}
	_ = c.Quit()

	b.srv.pub = &ackLostAsync{ackLost{p: b.srv.pub, lost: true}}
	c1 := b.dialAt(b.addr)
	if _, _, err := send(c1, testSender, rcpts, plainMsg); smtpCode(err) != 451 {
		t.Fatalf("lost ack: %v, want 451", err)
	}
	first := b.lastJob(testProfile)
	_ = c1.Quit()
	// The other replica learns the record from the broker, as a client's
	// retry seconds later finds it; this test retries at once, so it waits
	// for that first.
	waitFor(t, "the record on the other replica", func() bool { return submissionKeyOf(other, first.ID) != "" })
	c2 := b.dialAt(addr)
	code, text, err := send(c2, testSender, rcpts, plainMsg)
	if code != 250 || !strings.Contains(text, first.ID) {
		t.Fatalf("retry on the other replica: %d %q %v, want 250 with job %s", code, text, err, first.ID)
	}
	_ = c2.Quit()
	if n := testutil.ToFloat64(b.m.RetryLookups) + testutil.ToFloat64(other.m.RetryLookups); n != 0 {
		t.Fatalf("%v retry records looked up in the store, want 0 (the watched copy answers)", n)
	}
	if testutil.ToFloat64(other.m.RetriesMatched) != 1 {
		t.Fatal("the retry was not counted on the replica that matched it")
	}
}

// TestConcurrentLoginsOneCheck (issue 20 item 16): clients that log in with
// the same credentials at the same moment (a fleet after a restart) cost one
// bcrypt check; the others wait for its result.
func TestConcurrentLoginsOneCheck(t *testing.T) {
	b := setup(t, Config{})
	h, err := bcrypt.GenerateFromPassword([]byte(testPassword), 12) // slow enough for the logins to overlap
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.creds, []byte("credentials:\n  - username: "+testUser+"\n    passwordHash: \""+string(h)+"\"\n    profile: "+testProfile+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const n = 6
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(b.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.StartTLS(b.client.Clone()); err != nil {
				errs <- err
				return
			}
			errs <- c.Auth(smtp.PlainAuth("", testUser, testPassword, "127.0.0.1"))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := testutil.ToFloat64(b.m.AuthCacheHits); got != n-1 {
		t.Fatalf("%v logins without their own bcrypt check, want %d", got, n-1)
	}
}

// TestMessagesPerMinuteAcrossReplicas (issue 20 item 12): a login's
// messages per minute hold across replicas: with a limit of 4, eight
// concurrent submissions over two replicas get four 250s, and the rest 450
// at MAIL FROM.
func TestMessagesPerMinuteAcrossReplicas(t *testing.T) {
	b := setup(t, Config{MessagesPerMinute: 4})
	other, addr := b.replica(Config{MessagesPerMinute: 4})
	at := time.Date(2026, 12, 7, 12, 0, 30, 0, time.UTC) // the middle of one minute
	b.srv.now = func() time.Time { return at }
	other.now = b.srv.now
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for i := range 8 {
		c := b.dialAt([]string{b.addr, addr}[i%2])
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, err := send(c, testSender, []string{"ann@example.com", "cc@example.com"}, plainMsg)
			if code == 0 {
				code = smtpCode(err)
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[250] != 4 || codes[450] != 4 {
		t.Fatalf("replies %v, want four 250 and four 450", codes)
	}
	// The next minute starts a new count.
	at = at.Add(time.Minute)
	if code, _, err := send(b.dialAt(addr), testSender, []string{"ann@example.com", "cc@example.com"}, plainMsg); code != 250 {
		t.Fatalf("next minute: %v", err)
	}
}
