package smtpd

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailworker/mailworker/queue"
)

// countingStore counts the retry record writes (Mark) and removals
// (Unmark) that reach the broker.
type countingStore struct {
	*queue.Attachments
	mu            sync.Mutex
	marks, unmark int
}

func (c *countingStore) Mark(ctx context.Context, profile, key, value string) (uint64, error) {
	c.mu.Lock()
	c.marks++
	c.mu.Unlock()
	return c.Attachments.Mark(ctx, profile, key, value)
}

func (c *countingStore) Unmark(ctx context.Context, profile, key, value string, rev uint64) error {
	c.mu.Lock()
	c.unmark++
	c.mu.Unlock()
	return c.Attachments.Unmark(ctx, profile, key, value, rev)
}

func (c *countingStore) MarkAsync(ctx context.Context, profile, key, value string) (func(context.Context) (uint64, error), error) {
	c.mu.Lock()
	c.marks++
	c.mu.Unlock()
	return c.Attachments.MarkAsync(ctx, profile, key, value)
}

func (c *countingStore) UnmarkAsync(ctx context.Context, profile, key, value string, rev uint64) (func(context.Context) error, error) {
	c.mu.Lock()
	c.unmark++
	c.mu.Unlock()
	return c.Attachments.UnmarkAsync(ctx, profile, key, value, rev)
}

func (c *countingStore) counts() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.marks, c.unmark
}

// records lists the names of the retry records in the store.
func (b *bundle) records() []string {
	b.t.Helper()
	obs, err := b.js.ObjectStore(context.Background(), queue.AttachmentsBucket(testProfile))
	if err != nil {
		b.t.Fatal(err)
	}
	list, _ := obs.List(context.Background())
	var out []string
	for _, o := range list {
		if strings.HasPrefix(o.Name, "mark/"+markSubmission) {
			out = append(out, o.Name)
		}
	}
	return out
}

// TestOneRecordPerSession (issue 20 item 16): the record before each 250 is
// one broker write per message — each submission's record replaces the one
// of the submission before it in the session — and the session's record is
// removed once when it ends after its last answer was read.
func TestOneRecordPerSession(t *testing.T) {
	b := setup(t, Config{MessagesPerMinute: -1})
	cs := &countingStore{Attachments: queue.NewAttachments(b.js)}
	srv, addr := b.replicaWith(Config{MessagesPerMinute: -1}, cs)
	waitFor(t, "the records loaded", func() bool { return marksReady(srv) })
	c := b.dialAt(addr)
	const n = 5
	for i := range n {
		msg := strings.Replace(plainMsg, "Subject: invoice", "Subject: invoice "+string(rune('a'+i)), 1)
		if code, _, err := send(c, testSender, []string{"ann@example.com", "cc@example.com"}, msg); code != 250 {
			t.Fatal(code, err)
		}
		if recs := b.records(); len(recs) != 1 {
			t.Fatalf("after message %d: records %v, want one (the session's)", i+1, recs)
		}
	}
	if m, u := cs.counts(); m != n || u != 0 {
		t.Fatalf("%d messages: %d record writes and %d removals, want %d and 0", n, m, u, n)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session's record removed", func() bool { return len(b.records()) == 0 })
	if m, u := cs.counts(); m != n || u != 1 {
		t.Fatalf("after QUIT: %d record writes and %d removals, want %d and 1", m, u, n)
	}
}

// TestRecordKeptAfter451: a 451 after a publish that landed keeps its
// record although the session goes on with another message (which gets a
// record of its own, not replacing it): the client's later retry of the
// first message, on another replica, is the same job.
func TestRecordKeptAfter451(t *testing.T) {
	b := setup(t, Config{MessagesPerMinute: -1})
	other, addr := b.replica(Config{MessagesPerMinute: -1})
	waitFor(t, "the records loaded", func() bool { return marksReady(b.srv) && marksReady(other) })
	b.srv.pub = &ackLostAsync{ackLost{p: b.srv.pub, lost: true}}
	rcpts := []string{"ann@example.com", "cc@example.com"}
	c := b.dialAt(b.addr)
	if _, _, err := send(c, testSender, rcpts, plainMsg); smtpCode(err) != 451 {
		t.Fatalf("lost ack: %v, want 451", err)
	}
	first := b.lastJob(testProfile)
	second := strings.Replace(plainMsg, "Subject: invoice", "Subject: another", 1)
	for range 2 {
		if code, _, err := send(c, testSender, rcpts, second); code != 250 {
			t.Fatal(code, err)
		}
	}
	_ = c.Quit()
	// The other replica learns the record from the broker (a client retries
	// seconds later; this test at once).
	waitFor(t, "the record on the other replica", func() bool { return submissionKeyOf(other, first.ID) != "" })
	c2 := b.dialAt(addr)
	code, text, err := send(c2, testSender, rcpts, plainMsg)
	if code != 250 || !strings.Contains(text, first.ID) {
		t.Fatalf("retry of the 451 message on the other replica: %d %q %v, want 250 with job %s", code, text, err, first.ID)
	}
	// Its answer read, the retry's record goes: a deliberate repeat later is a new mail.
	_ = c2.Quit()
	c3 := b.dialAt(addr)
	if _, t3, _ := send(c3, testSender, rcpts, plainMsg); strings.Contains(t3, first.ID) {
		t.Fatalf("a repeat after the retry's answer was read is the same job %s", first.ID)
	}
}

// TestSessionRecordOnAnotherReplica: a client that did not get its 250
// (the replica died before the client read it, or the client gave up)
// retries on another replica while the first session's record is there:
// the other replica finds the submission in that session's record.
func TestSessionRecordOnAnotherReplica(t *testing.T) {
	b := setup(t, Config{MessagesPerMinute: -1})
	other, addr := b.replica(Config{MessagesPerMinute: -1})
	waitFor(t, "the records loaded", func() bool { return marksReady(b.srv) && marksReady(other) })
	rcpts := []string{"ann@example.com", "cc@example.com"}
	c1 := b.dialAt(b.addr)
	warm := strings.Replace(plainMsg, "Subject: invoice", "Subject: earlier", 1)
	code, tw, err := send(c1, testSender, rcpts, warm) // the session's record is then replaced
	if code != 250 {
		t.Fatal(code, err)
	}
	warmID := tw[strings.Index(tw, "smtp-"):]
	code, t1, err := send(c1, testSender, rcpts, plainMsg)
	if code != 250 {
		t.Fatal(code, err)
	}
	id := t1[strings.Index(t1, "smtp-"):]
	waitFor(t, "the other replica's copy", func() bool {
		e, found, _ := other.marks[testProfile].get(submissionKeyOf(other, id))
		return found && e.id == id
	})
	c2 := b.dialAt(addr)
	code, t2, err := send(c2, testSender, rcpts, plainMsg)
	if code != 250 || !strings.Contains(t2, id) {
		t.Fatalf("retry on the other replica: %d %q %v, want 250 with job %s", code, t2, err, id)
	}
	// The earlier message's answer was read (another transaction followed):
	// its repeat is a new mail.
	if _, t3, _ := send(c2, testSender, rcpts, warm); strings.Contains(t3, warmID) {
		t.Fatal("the replaced record still matched")
	}
}

// submissionKeyOf finds the submission key of job id in s's copy of the
// records.
func submissionKeyOf(s *Server, id string) string {
	x := s.marks[testProfile]
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, e := range x.recs {
		if e.id == id {
			return e.key
		}
	}
	return ""
}

// TestLocalRateCountBounded: the replica's own message count (the fallback
// of the shared one) keeps only the last minute, although the shared count
// answers and the local one is never asked; with no limit it keeps nothing.
func TestLocalRateCountBounded(t *testing.T) {
	for _, limit := range []int{1000, -1} {
		b := setup(t, Config{MessagesPerMinute: limit})
		at := time.Date(2026, 12, 7, 12, 0, 30, 0, time.UTC)
		b.srv.now = func() time.Time { return at }
		c := b.dialAt(b.addr)
		for i := range 4 {
			if i == 3 {
				at = at.Add(2 * time.Minute)
			}
			if code, _, err := send(c, testSender, []string{"ann@example.com", "cc@example.com"}, plainMsg); code != 250 {
				t.Fatal(code, err)
			}
		}
		b.srv.rateMu.Lock()
		n := len(b.srv.rates[testUser])
		b.srv.rateMu.Unlock()
		if want := map[int]int{1000: 1, -1: 0}[limit]; n != want {
			t.Fatalf("limit %d: %d accepts kept after 4 messages over 2 minutes, want %d", limit, n, want)
		}
	}
}

// plainStore is a store that cannot watch the records (as a replica whose
// NATS user lacks the rights): its server looks each submission up.
type plainStore struct{ Store }

// TestRetryWithoutWatch: a replica that cannot watch the records names its
// records by submission, so that its own direct look-ups and every other
// replica find them.
func TestRetryWithoutWatch(t *testing.T) {
	b := setup(t, Config{MessagesPerMinute: -1})
	plain, addr := b.replicaWith(Config{MessagesPerMinute: -1}, plainStore{queue.NewAttachments(b.js)})
	waitFor(t, "the records loaded", func() bool { return marksReady(b.srv) })
	rcpts := []string{"ann@example.com", "cc@example.com"}
	for i, retryAt := range []string{addr, b.addr} {
		msg := strings.Replace(plainMsg, "Subject: invoice", fmt.Sprint("Subject: invoice ", i), 1)
		c := b.dialAt(addr)
		code, t1, err := send(c, testSender, rcpts, msg)
		if code != 250 {
			t.Fatal(code, err)
		}
		_ = c.Close() // no command after the 250
		waitFor(t, "the submission's record", func() bool { return b.recorded(t1) })
		id := t1[strings.Index(t1, "smtp-"):]
		code, t2, err := send(b.dialAt(retryAt), testSender, rcpts, msg)
		if code != 250 || !strings.Contains(t2, id) {
			t.Fatalf("retry at %s: %d %q %v, want job %s", retryAt, code, t2, err, id)
		}
	}
	if testutil.ToFloat64(plain.m.RetryLookups) == 0 {
		t.Fatal("the replica without a watch did not look its submissions up")
	}
}
