package smtpd

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/smtp"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// jobMIME is the message of a job (inline or by reference).
func (b *bundle) jobMIME(j *contract.Job) string {
	b.t.Helper()
	if j.MIME.ObjectRef != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := queue.NewAttachments(b.js).Get(ctx, testProfile, j.MIME.ObjectRef)
		if err != nil {
			b.t.Fatal(err)
		}
		return string(got)
	}
	m, _ := base64.StdEncoding.DecodeString(j.MIME.ContentBase64)
	return string(m)
}

// cmd sends one command line and returns the reply's code and text.
func cmd(t *testing.T, c *smtp.Client, format string, args ...any) (int, string) {
	t.Helper()
	id, err := c.Text.Cmd(format, args...)
	if err != nil {
		t.Fatal(err)
	}
	c.Text.StartResponse(id)
	defer c.Text.EndResponse(id)
	code, msg, _ := c.Text.ReadResponse(0)
	return code, msg
}

// TestSplitTransactions: a message whose recipients come in several
// transactions (as Postfix splits them) becomes one job per transaction that
// reaches exactly that transaction's recipients (issue 20 item 1).
func TestSplitTransactions(t *testing.T) {
	b := setup(t, Config{})
	c, err := b.dial(testPassword)
	if err != nil {
		t.Fatal(err)
	}
	msg := crlf(`From: Billing <billing@contoso.com>
To: Ann <ann@example.com>, bob@example.com,
 Carl <carl@example.com>
Cc: dora@example.com
Subject: split

body
`)
	parts := [][]string{{"ann@example.com", "carl@example.com"}, {"bob@example.com", "dora@example.com", "eve@example.com"}}
	want := []struct{ to, cc, bcc, header string }{
		{"ann@example.com,carl@example.com", "", "", "To: \"Ann\" <ann@example.com>,\r\n \"Carl\" <carl@example.com>\r\nFrom:"},
		{"bob@example.com", "dora@example.com", "eve@example.com", "To: bob@example.com\r\nCc: dora@example.com\r\nBcc: eve@example.com\r\nFrom:"},
	}
	for i, rcpts := range parts {
		if code, text, err := send(c, testSender, rcpts, msg); code != 250 {
			t.Fatalf("part %d: %d %s %v", i, code, text, err)
		}
		j := b.lastJob(testProfile)
		w := want[i]
		if strings.Join(j.To, ",") != w.to || strings.Join(j.Cc, ",") != w.cc || strings.Join(j.Bcc, ",") != w.bcc {
			t.Fatalf("part %d: job to=%v cc=%v bcc=%v, want %+v", i, j.To, j.Cc, j.Bcc, w)
		}
		m := b.jobMIME(j)
		if !strings.HasPrefix(m, w.header) || strings.Count("\n"+m, "\nTo:") != 1 || strings.Count("\n"+m, "\nCc:") > 1 {
			t.Fatalf("part %d: message header\n%s\nwant it to start %q with one To and no other Cc", i, m, w.header)
		}
		if !strings.HasSuffix(m, "Subject: split\r\n\r\nbody\r\n") {
			t.Fatalf("part %d: the rest of the message changed:\n%s", i, m)
		}
	}
}

// TestRecipientLimit: the default limit is Exchange's 500 per message, and a
// profile's maxRecipientsPerMessage caps it.
func TestRecipientLimit(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want int
	}{{Config{}, 500}, {Config{ProfileMaxRecipients: map[string]int{testProfile: 120}}, 120}} {
		b := setup(t, tc.cfg)
		c, _ := b.dial(testPassword)
		if err := c.Mail(testSender); err != nil {
			t.Fatal(err)
		}
		for i := range tc.want {
			if err := c.Rcpt(fmt.Sprintf("r%d@example.com", i)); err != nil {
				t.Fatalf("recipient %d: %v", i+1, err)
			}
		}
		if err := c.Rcpt("one-more@example.com"); smtpCode(err) != 452 {
			t.Fatalf("recipient %d: %v, want 452", tc.want+1, err)
		}
	}
}

// TestRepeatsAndRetries (issue 19 item 5): a submission repeated after its
// answer was read is a new mail; one repeated after a connection lost after
// the 250 (the client may not have seen it) is the same job, once.
func TestRepeatsAndRetries(t *testing.T) {
	b := setup(t, Config{})
	rcpts := []string{"ann@example.com", "cc@example.com"}
	c1, _ := b.dial(testPassword)
	_, t1, _ := send(c1, testSender, rcpts, plainMsg)
	_ = c1.Quit() // the client read the answer
	c2, _ := b.dial(testPassword)
	_, t2, _ := send(c2, testSender, rcpts, plainMsg)
	if t1 == t2 {
		t.Fatalf("a repeat after a read answer got the same job: %s", t1)
	}
	// The connection drops right after the 250: no further command.
	_ = c2.Close()
	waitFor(t, "the retry record", func() bool { return b.recorded(t2) })
	c3, _ := b.dial(testPassword)
	_, t3, _ := send(c3, testSender, rcpts, plainMsg)
	if t3 != t2 {
		t.Fatalf("retry after a lost answer: %q, want the same job as %q", t3, t2)
	}
	if testutil.ToFloat64(b.m.RetriesMatched) != 1 {
		t.Fatal("retry not counted")
	}
	_ = c3.Quit() // read: the record goes, and a later repeat is a new mail
	c4, _ := b.dial(testPassword)
	if _, t4, _ := send(c4, testSender, rcpts, plainMsg); t4 == t2 {
		t.Fatalf("a repeat after the retry's answer was read is the same job %s", t4)
	}
}

// recorded reports whether a retry record in the store names the job of a
// "Queued as <job id>" reply.
func (b *bundle) recorded(reply string) bool {
	b.t.Helper()
	id := reply[strings.Index(reply, "smtp-"):]
	obs, err := b.js.ObjectStore(context.Background(), queue.AttachmentsBucket(testProfile))
	if err != nil {
		b.t.Fatal(err)
	}
	list, _ := obs.List(context.Background())
	for _, o := range list {
		if _, got, _ := parseMark(o.Metadata["value"]); strings.HasPrefix(o.Name, "mark/"+markSubmission) && got == id {
			return true
		}
	}
	return false
}

func waitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // an upper bound: CI's two cores are shared under -race
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ackLost publishes, then reports a timeout: the publish landed, its ack
// did not come back in time (issue 19 item 4).
type ackLost struct {
	p    Publisher
	lost bool
}

func (a *ackLost) Publish(ctx context.Context, profile string, job *contract.Job) (string, error) {
	id, err := a.p.Publish(ctx, profile, job)
	if err == nil && a.lost {
		a.lost = false
		return "", fmt.Errorf("queue: publish job %s: %w", job.ID, context.DeadlineExceeded)
	}
	return id, err
}

// ackLostAsync is ackLost on the door's asynchronous path (AsyncPublisher).
type ackLostAsync struct{ ackLost }

func (a *ackLostAsync) PublishJobAsync(profile string, job *contract.Job) (func(context.Context) (queue.Published, error), error) {
	wait, err := a.p.(AsyncPublisher).PublishJobAsync(profile, job)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) (queue.Published, error) {
		p, err := wait(ctx)
		if err == nil && a.lost {
			a.lost = false
			return queue.Published{}, fmt.Errorf("queue: publish job %s: %w", job.ID, context.DeadlineExceeded)
		}
		return p, err
	}, nil
}

// TestPublishAckLost (issue 19 item 4): after a 451 for a publish that did
// land, the stored object is still there for the job, and the client's
// retry is the same job (which the worker then sends once).
// Both ways of publishing: the job and its record awaited together
// (AsyncPublisher, as deployed) and one after the other.
func TestPublishAckLost(t *testing.T) {
	for _, async := range []bool{true, false} {
		t.Run(fmt.Sprint("async=", async), func(t *testing.T) { testPublishAckLost(t, async) })
	}
}

func testPublishAckLost(t *testing.T, async bool) {
	b := setup(t, Config{InlineMaxBytes: 1024})
	b.srv.pub = &ackLost{p: b.srv.pub, lost: true}
	if async {
		b.srv.pub = &ackLostAsync{ackLost{p: b.srv.pub.(*ackLost).p, lost: true}}
	}
	c, _ := b.dial(testPassword)
	rcpts := []string{"ann@example.com", "cc@example.com"}
	msg := plainMsg + strings.Repeat("0123456789abcdef\r\n", 200) // stored by reference
	if _, _, err := send(c, testSender, rcpts, msg); smtpCode(err) != 451 {
		t.Fatalf("lost ack: %v, want 451", err)
	}
	first := b.lastJob(testProfile)
	if got := b.jobMIME(first); got != msg { // fails if the object was deleted
		t.Fatalf("the landed job's object differs or is gone")
	}
	code, text, err := send(c, testSender, rcpts, msg)
	if code != 250 || !strings.Contains(text, first.ID) {
		t.Fatalf("retry: %d %q %v, want 250 with job %s", code, text, err, first.ID)
	}
}

// TestReplyCodes: RFC 4954 and RFC 5321 reply codes (issue 20 item 13).
func TestReplyCodes(t *testing.T) {
	b := setup(t, Config{})
	c, err := smtp.Dial(b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if code, _ := cmd(t, c, "MAIL FROM:<%s>", testSender); code != 503 {
		t.Fatalf("MAIL before EHLO: %d, want 503", code)
	}
	if code, _ := cmd(t, c, "FOO%s", "\x01bar"); code != 500 {
		t.Fatalf("unparsable command: %d, want 500", code)
	}
	if err := c.StartTLS(b.client); err != nil {
		t.Fatal(err)
	}
	id, _ := c.Text.Cmd("AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("\x00"+testUser+"\x00"+testPassword)))
	c.Text.StartResponse(id)
	code, msg, _ := c.Text.ReadResponse(235)
	c.Text.EndResponse(id)
	if code != 235 || !strings.HasPrefix(msg, "2.7.0") {
		t.Fatalf("AUTH: %d %q, want 235 2.7.0", code, msg)
	}
	if code, _ := cmd(t, c, "RCPT TO:<ann@example.com>"); code != 503 {
		t.Fatalf("RCPT before MAIL: %d, want 503", code)
	}
	if code, _ := cmd(t, c, "DATA"); code != 503 {
		t.Fatalf("DATA before RCPT: %d, want 503", code)
	}
	if code, _ := cmd(t, c, "MAIL FROM:<%s> FOO=bar", testSender); code != 555 {
		t.Fatalf("unknown MAIL parameter: %d, want 555", code)
	}
	if code, _ := cmd(t, c, "XYZZY"); code != 500 {
		t.Fatalf("unknown command: %d, want 500", code)
	}
}

// TestLongLinesAndExactSize: lines far over 998 bytes are taken without
// desynchronising the session, SMTPUTF8 is offered and a message of exactly
// the advertised SIZE is accepted (issue 20 items 3 and 6).
func TestLongLinesAndExactSize(t *testing.T) {
	b := setup(t, Config{MaxMessageBytes: 64 << 10})
	c, _ := b.dial(testPassword)
	if ok, _ := c.Extension("SMTPUTF8"); !ok {
		t.Fatal("SMTPUTF8 not offered")
	}
	rcpts := []string{"ann@example.com", "cc@example.com"}
	long := plainMsg + "<html>" + strings.Repeat("<p>unwrapped</p>", 2000) + "</html>\r\n" // one 32 KB line
	if code, text, err := send(c, testSender, rcpts, long); code != 250 {
		t.Fatalf("long line: %d %q %v", code, text, err)
	}
	if got := b.jobMIME(b.lastJob(testProfile)); got != long {
		t.Fatal("the long line did not arrive unchanged")
	}
	exact := plainMsg + strings.Repeat("x", 64<<10-len(plainMsg)-2) + "\r\n"
	if code, text, err := send(c, testSender, rcpts, exact); code != 250 {
		t.Fatalf("exactly SIZE: %d %q %v", code, text, err)
	}
	if _, _, err := send(c, testSender, rcpts, exact+"y\r\n"); smtpCode(err) != 552 {
		t.Fatalf("over SIZE: %v, want 552", err)
	}
	if err := c.Noop(); err != nil { // still in step
		t.Fatalf("after the refusal: %v", err)
	}
	if code, _ := cmd(t, c, "MAIL FROM:<%s> SMTPUTF8", testSender); code != 250 {
		t.Fatalf("MAIL SMTPUTF8: %d", code)
	}
}

// TestIdleAndGreedyClients: idle unauthenticated connections are closed
// after PreAuthTimeout, and one address cannot take every session
// (issue 20 item 9).
func TestIdleAndGreedyClients(t *testing.T) {
	t.Run("one address cannot take every session", func(t *testing.T) {
		// The default PreAuthTimeout (30 s): no session times out and frees
		// its slot while the eight connect, however slow the machine.
		b := setup(t, Config{MaxSessions: 20, MaxSessionsPerAddress: 5})
		var conns []net.Conn
		for range 8 {
			conn, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conns = append(conns, conn)
		}
		refused := 0
		for _, conn := range conns {
			_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second)) // an upper bound
			line, _ := textproto.NewReader(bufioReader(conn)).ReadLine()
			if strings.HasPrefix(line, "421 4.3.2") {
				refused++
			}
		}
		if refused != 3 || testutil.ToFloat64(b.m.SessionsRefusedPerAddress) != 3 {
			t.Fatalf("%d of 8 refused, want 3 over the per-address cap of 5", refused)
		}
	})

	t.Run("idle connections are closed, a logged-in one is not", func(t *testing.T) {
		b := setup(t, Config{MaxSessions: 20, MaxSessionsPerAddress: 5, PreAuthTimeout: 500 * time.Millisecond})
		timeouts := func() int { return int(testutil.ToFloat64(b.m.PreAuthTimeouts)) }
		// Log in; a login that a starved run did not finish within
		// PreAuthTimeout is cut (that is the rule), and tried again.
		var c *smtp.Client
		waitFor(t, "a login within PreAuthTimeout", func() bool {
			before := timeouts()
			conn, err := smtp.Dial(b.addr)
			if err == nil {
				if err = conn.StartTLS(b.client); err == nil {
					err = conn.Auth(smtp.PlainAuth("", testUser, testPassword, "127.0.0.1"))
				}
			}
			if err == nil {
				c = conn
				return true
			}
			if conn != nil {
				_ = conn.Close()
			}
			if timeouts() == before {
				t.Fatalf("login: %v", err)
			}
			return false
		})
		defer c.Close()
		base := timeouts()
		// Idle connections accepted after the login: their pre-auth timers
		// fire after the login's would have.
		var idle []net.Conn
		for range 3 {
			conn, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			idle = append(idle, conn)
		}
		for i, conn := range idle {
			_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second)) // an upper bound: the close comes after 500 ms
			if _, err := io.Copy(io.Discard, conn); err != nil {
				t.Fatalf("idle connection %d not closed: %v", i, err)
			}
		}
		waitFor(t, "the idle connections counted", func() bool { return timeouts() >= base+len(idle) })
		if err := c.Noop(); err != nil {
			t.Fatalf("logged-in session cut: %v", err)
		}
		if n := timeouts(); n != base+len(idle) {
			t.Fatalf("%d pre-auth timeouts, want %d (the idle connections only)", n, base+len(idle))
		}
	})
}

// TestPasswordGuessing: a connection is closed after 3 failures, an address
// is locked out after 10 (even the right password is refused unchecked), the
// failures are counted for the alert (issue 20 item 11).
func TestPasswordGuessing(t *testing.T) {
	b := setup(t, Config{AuthFailuresPerAddress: 6})
	c, _ := b.dial("")
	plain := func(pw string) string {
		return base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + pw))
	}
	for i := range 2 { // net/smtp gives up after one failure: raw commands
		if code, _ := cmd(t, c, "AUTH PLAIN %s", plain(fmt.Sprint("guess", i))); code != 535 {
			t.Fatalf("guess %d: %d, want 535", i, code)
		}
	}
	if code, _ := cmd(t, c, "AUTH PLAIN %s", plain("guess3")); code != 421 {
		t.Fatalf("third guess: %d, want 421 and a close", code)
	}
	waitFor(t, "the connection closed", func() bool { return c.Noop() != nil })
	if testutil.ToFloat64(b.m.AuthFailures.WithLabelValues(AuthBadPassword)) != 3 {
		t.Fatal("failures not counted")
	}
	c2, _ := b.dial("")
	for i := range 3 {
		_, _ = cmd(t, c2, "AUTH PLAIN %s", plain(fmt.Sprint("more", i)))
	}
	c3, _ := b.dial("")
	err := c3.Auth(smtp.PlainAuth("", testUser, testPassword, "127.0.0.1"))
	if smtpCode(err) != 454 {
		t.Fatalf("right password from a locked-out address: %v, want 454", err)
	}
	if testutil.ToFloat64(b.m.AuthLockouts.WithLabelValues("address")) != 1 || testutil.ToFloat64(b.m.AuthFailures.WithLabelValues(AuthLockedOut)) != 1 {
		t.Fatal("lockout not counted")
	}
	// After the lockout window the right password works again.
	b.srv.now = func() time.Time { return time.Now().Add(b.srv.cfg.AuthLockout + time.Second) }
	if _, err := b.dial(testPassword); err != nil {
		t.Fatalf("after the lockout: %v", err)
	}
}

// TestAuthCache: a login verified once is taken from the cache, and a change
// of the credentials file invalidates it (issue 20 item 16).
func TestAuthCache(t *testing.T) {
	b := setup(t, Config{})
	for range 3 {
		if _, err := b.dial(testPassword); err != nil {
			t.Fatal(err)
		}
	}
	if got := testutil.ToFloat64(b.m.AuthCacheHits); got != 2 {
		t.Fatalf("cache hits %v, want 2", got)
	}
	b.writeCreds("rotated-" + testPassword)
	if _, err := b.dial(testPassword); smtpCode(err) != 535 {
		t.Fatalf("old password after rotation (cached before): %v, want 535", err)
	}
	if _, err := b.dial("wrong"); smtpCode(err) != 535 {
		t.Fatalf("wrong password: %v", err)
	}
}

var _ = errors.New

// TestSizePerProfile: the door takes what the profile's mailbox takes
// (issue 20 item 7): a draft-mode profile (ProfileMaxMessageBytes) up to its
// mailbox's maximum message size less the stamp, streamed to the store; over
// it, 552 5.3.4 with the reason, at MAIL FROM SIZE= or during DATA; a
// sendMail-mode profile what one Graph MIME request carries.
func TestSizePerProfile(t *testing.T) {
	const mailbox = 8 << 20
	rcpts := []string{"ann@example.com", "cc@example.com"}
	body := func(n int) string {
		line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
		return plainMsg + strings.Repeat(line, (n-len(plainMsg))/len(line))
	}
	t.Run("draft mode", func(t *testing.T) {
		// SIZE (said before AUTH) is the largest profile's; this login's
		// profile takes less.
		b := setup(t, Config{ProfileMaxMessageBytes: map[string]int64{testProfile: mailbox, "other": 2 * mailbox}})
		c, err := b.dial(testPassword)
		if err != nil {
			t.Fatal(err)
		}
		ok, size := c.Extension("SIZE")
		if want := strconv.Itoa(2*mailbox - stampHeadroom); !ok || size != want {
			t.Errorf("SIZE %q, want %s", size, want)
		}
		msg := body(6 << 20)
		if code, text, err := send(c, testSender, rcpts, msg); code != 250 {
			t.Fatalf("6 MB: %d %q %v", code, text, err)
		}
		j := b.lastJob(testProfile)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rc, _, err := queue.NewAttachments(b.js).Open(ctx, testProfile, j.MIME.ObjectRef, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || string(got) != msg {
			t.Fatalf("stored object differs (%v)", err)
		}
		_, _, err = send(c, testSender, rcpts, body(mailbox))
		if smtpCode(err) != 552 || !strings.Contains(err.Error(), "profiles.billing.maxMessageSize") {
			t.Fatalf("over the mailbox's size: %v, want 552 naming maxMessageSize", err)
		}
		if code, text := cmd(t, c, "MAIL FROM:<%s> SIZE=%d", testSender, mailbox); code != 552 || !strings.Contains(text, "maxMessageSize") {
			t.Fatalf("MAIL SIZE= over the limit: %d %q", code, text)
		}
		if code, _ := cmd(t, c, "MAIL FROM:<%s> SIZE=%d", testSender, 6<<20); code != 250 {
			t.Fatalf("MAIL SIZE= under the limit: %d", code)
		}
	})
	t.Run("sendMail mode", func(t *testing.T) {
		b := setup(t, Config{ProfileMaxMessageBytes: map[string]int64{"other": mailbox}})
		c, err := b.dial(testPassword)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = send(c, testSender, rcpts, body(4<<20))
		if smtpCode(err) != 552 || !strings.Contains(err.Error(), "one Graph MIME request") {
			t.Fatalf("4 MB on a sendMail profile: %v, want 552 naming the request limit", err)
		}
	})
}
