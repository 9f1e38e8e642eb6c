package main

// One validation of MIME content whatever door a job came through (issue 17
// item 6, issue 20 items 2, 4, 5 and 8), through the built binary: MIME jobs
// published straight on NATS, and a corpus of real-world messages from public
// MIME parser test suites (testdata/mimecorpus, README.md there) submitted
// through the SMTP door.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

const mimeCorpusDir = "testdata/mimecorpus"

// corpusMessage is one message of the corpus, as an SMTP client sends it.
type corpusMessage struct {
	path  string // relative to mimeCorpusDir
	data  []byte // CRLF line ends, no mbox From_ line
	from  string // MAIL FROM
	rcpts []string
}

// loadCorpus reads every message of the corpus. A leading mbox "From "
// line (RFC 4155: a mailbox-file separator, never part of a message on the
// wire) is dropped, and lines end in CRLF, as an SMTP client sends them.
// The envelope is the message's own: MAIL FROM its From: address (the
// approved mailbox when it has none), RCPT TO every header recipient (one
// blind recipient when it has none).
func loadCorpus(t *testing.T) []corpusMessage {
	t.Helper()
	var out []corpusMessage
	err := filepath.WalkDir(mimeCorpusDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(mimeCorpusDir, p)
		if strings.HasPrefix(rel, "LICENSES") || strings.HasPrefix(d.Name(), ".") || d.Name() == "README.md" || d.Name() == "expect.tsv" {
			return nil
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.HasPrefix(raw, []byte("From ")) {
			if i := bytes.IndexByte(raw, '\n'); i >= 0 {
				raw = raw[i+1:]
			}
		}
		raw = bytes.ReplaceAll(bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
		if !bytes.HasSuffix(raw, []byte("\r\n")) {
			raw = append(raw, "\r\n"...) // DATA always ends with one
		}
		m := corpusMessage{path: filepath.ToSlash(rel), data: raw, from: smtpE2ESender}
		seen := map[string]bool{}
		if fields, err := contract.ParseHeaderSection(contract.HeaderSection(raw)); err == nil {
			for _, f := range fields {
				mbs, err := contract.ParseAddressList(f.Value)
				if err != nil {
					continue
				}
				switch strings.ToLower(f.Name) {
				case "from":
					if len(mbs) > 0 && m.from == smtpE2ESender {
						m.from = mbs[0].Addr
					}
				case "to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc":
					for _, mb := range mbs {
						if !seen[strings.ToLower(mb.Addr)] {
							seen[strings.ToLower(mb.Addr)] = true
							m.rcpts = append(m.rcpts, mb.Addr)
						}
					}
				}
			}
		}
		if len(m.rcpts) == 0 {
			m.rcpts = []string{"corpus-blind@example.com"}
		}
		out = append(out, m)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 150 {
		t.Fatalf("the corpus has %d messages, want at least 150", len(out))
	}
	return out
}

// corpusRefusal is one line of testdata/mimecorpus/expect.tsv: a message the
// door refuses, with the reply it gets.
type corpusRefusal struct {
	reply string // prefix of code and text
	why   string
}

func loadRefusals(t *testing.T) map[string]corpusRefusal {
	t.Helper()
	f, err := os.Open(filepath.Join(mimeCorpusDir, "expect.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]corpusRefusal{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, "\t")
		if len(parts) != 3 {
			t.Fatalf("expect.tsv: %q: want path, reply and why separated by tabs", line)
		}
		out[parts[0]] = corpusRefusal{reply: parts[1], why: parts[2]}
	}
	return out
}

// mimeRig is the SMTP door, a worker and the fake Graph, with every From:
// address of the corpus an approved mailbox of profile "rel".
type mimeRig struct {
	t    *testing.T
	h    *harness
	fake *graphtest.Server
	out  string
	addr string
}

func startMIMERig(t *testing.T, senders []string) *mimeRig {
	t.Helper()
	r := &mimeRig{t: t, out: t.TempDir()}
	ns := startRelNATS(t)
	r.fake = newFake(t, graphtest.Options{OutDir: r.out})
	quoted := make([]string, len(senders))
	for i, s := range senders {
		quoted[i] = strconv.Quote(s)
	}
	r.h = newHarness(t, ns.url(), r.fake, relWorker{}, relProfile{name: "rel", senders: quoted})
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeSelfSigned(t, certFile, keyFile)
	hash, err := bcrypt.GenerateFromPassword([]byte(smtpE2EPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	r.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	f, err := os.OpenFile(r.h.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "smtp:\n  listen: %q\n  certFile: %q\n  keyFile: %q\n  maxRecipients: 100\n  messagesPerMinute: -1\n"+
		"  messagesPerConnection: 1000\n  publishTimeout: 5s\n  credentials:\n    - {username: %s, passwordHash: %q, profile: rel}\n",
		r.addr, certFile, keyFile, smtpE2EUser, hash)
	f.Close()
	r.h.startReplica()
	p := startProc(t, append([]string{"MAILWORKER_CONFIG=" + r.h.cfgPath}, r.h.env...), "smtp")
	r.h.mu.Lock()
	r.h.procs = append(r.h.procs, p)
	r.h.mu.Unlock()
	eventually(t, 30*time.Second, "the SMTP port", func() bool {
		c, err := net.DialTimeout("tcp", r.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return r
}

// dial opens an authenticated SMTP session.
func (r *mimeRig) dial() *smtp.Client {
	r.t.Helper()
	c, err := smtp.Dial(r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil { //nolint:gosec // test certificate
		r.t.Fatal(err)
	}
	if err := c.Auth(smtp.PlainAuth("", smtpE2EUser, smtpE2EPassword, "127.0.0.1")); err != nil {
		r.t.Fatal(err)
	}
	return c
}

// TestMIMEOneValidation runs both doors against one worker.
func TestMIMEOneValidation(t *testing.T) {
	t.Parallel()
	corpus := loadCorpus(t)
	refusals := loadRefusals(t)
	senders := []string{smtpE2ESender}
	for _, m := range corpus {
		if !slices.ContainsFunc(senders, func(s string) bool { return strings.EqualFold(s, m.from) }) {
			senders = append(senders, m.from)
		}
	}
	r := startMIMERig(t, senders)

	t.Run("corpus through the SMTP door arrives unchanged but for the stamp", func(t *testing.T) {
		c := r.dial()
		defer c.Close()
		accepted := map[string]corpusMessage{} // job id -> message
		var ids []string
		seenRefusal := map[string]bool{}
		for _, m := range corpus {
			code, text, _ := submitData(c, m.from, m.rcpts, m.data)
			reply := fmt.Sprintf("%d %s", code, text)
			want, refused := refusals[m.path]
			switch {
			case refused:
				seenRefusal[m.path] = true
				if !strings.HasPrefix(reply, want.reply) {
					t.Errorf("%s: reply %q, want a refusal %q (%s)", m.path, reply, want.reply, want.why)
				}
			case code != 250:
				t.Errorf("%s: reply %q, want 250", m.path, reply)
			default:
				id := queuedAs.FindStringSubmatch(reply)
				if id == nil {
					t.Errorf("%s: reply %q carries no job id", m.path, reply)
					break
				}
				if prev, ok := accepted[id[1]]; ok {
					// The same envelope and bytes (a CRLF and an LF copy of
					// one message): the same job, as a client's retry is.
					if !bytes.Equal(prev.data, m.data) || !slices.Equal(prev.rcpts, m.rcpts) {
						t.Errorf("%s and %s differ but got the same job id", prev.path, m.path)
					}
					break
				}
				accepted[id[1]] = m
				ids = append(ids, id[1])
			}
			if code != 250 {
				_ = c.Reset()
			}
		}
		for p := range refusals {
			if !seenRefusal[p] {
				t.Errorf("expect.tsv lists %s, which is not in the corpus", p)
			}
		}
		r.h.waitTerminal(ids, 2*time.Minute)
		copies := map[string]int{}
		for _, m := range r.fake.Messages() {
			copies[m.JobID]++
		}
		for _, id := range ids {
			m := accepted[id]
			if copies[id] != 1 {
				t.Errorf("%s (job %s): the fake Graph accepted %d copies, want 1", m.path, id, copies[id])
				continue
			}
			eml, err := os.ReadFile(filepath.Join(r.out, id+".eml"))
			if err != nil {
				t.Errorf("%s: %v", m.path, err)
				continue
			}
			// Exchange removes Bcc fields from what recipients get (the
			// fake does too); everything else is as submitted.
			want := "X-Mailworker-Job-Id: " + id + "\r\n" + string(withoutBcc(m.data))
			if string(eml) != want {
				t.Errorf("%s: delivered message differs: %s", m.path, firstDiff(string(eml), want))
			}
		}
		t.Logf("corpus: %d messages (%d distinct jobs), delivered unchanged but for the stamp; %d refused at the door (testdata/mimecorpus/expect.tsv)",
			len(corpus)-len(refusals), len(ids), len(refusals))
	})

	t.Run("MIME jobs published on NATS get the same check", func(t *testing.T) {
		var many []string
		for i := range 900 {
			many = append(many, fmt.Sprintf("victim%d@private.example", i))
		}
		mimeJob := func(id string, to []string, msg string) []byte {
			b, _ := json.Marshal(map[string]any{"id": id, "from": smtpE2ESender, "to": to,
				"mime": map[string]string{"contentBase64": base64.StdEncoding.EncodeToString([]byte(strings.ReplaceAll(msg, "\n", "\r\n")))}})
			return b
		}
		hdr := "From: " + smtpE2ESender + "\n"
		cases := map[string]struct {
			body   []byte
			reason contract.Reason
			msg    string
		}{
			// Issue 17 item 6 as reported.
			"mime-issue17": {mimeJob("mime-issue17", []string{"victim0@private.example"},
				"From: ops@rel.example\nTo: "+strings.Join(many, ", ")+"\nX-MS-Exchange-Organization-SCL: -1\nSubject: x\n\nx\n"),
				contract.ReasonSenderNotAllowed, `the "From" header is not the job's from mailbox`},
			"mime-900-to": {mimeJob("mime-900-to", []string{"victim0@private.example"}, hdr+"To: "+strings.Join(many, ", ")+"\n\nx\n"),
				contract.ReasonInvalidJob, `the "To" header lists an address that is not among the job's to, cc and bcc`},
			"mime-scl": {mimeJob("mime-scl", []string{"victim0@private.example"}, hdr+"To: victim0@private.example\nX-MS-Exchange-Organization-SCL: -1\n\nx\n"),
				contract.ReasonInvalidJob, `header "X-MS-Exchange-Organization-SCL" is reserved`},
			"mime-second-from": {mimeJob("mime-second-from", []string{"victim0@private.example"}, hdr+"To: victim0@private.example\nFrom: ops@rel.example\n\nx\n"),
				contract.ReasonSenderNotAllowed, "more than one From: header"},
			"mime-sender": {mimeJob("mime-sender", []string{"victim0@private.example"}, hdr+"Sender: ops@rel.example\nTo: victim0@private.example\n\nx\n"),
				contract.ReasonSenderNotAllowed, `the "Sender" header is not the job's from mailbox`},
			"mime-second-cc": {mimeJob("mime-second-cc", []string{"victim0@private.example"}, hdr+"To: victim0@private.example\nCc: victim0@private.example\nCc: victim1@private.example\n\nx\n"),
				contract.ReasonInvalidJob, `the "Cc" header lists an address`},
			"mime-reply-to-empty": {mimeJob("mime-reply-to-empty", []string{"victim0@private.example"}, hdr+"To: victim0@private.example\nReply-To: \"Nobody\" <>\n\nx\n"),
				contract.ReasonInvalidJob, `the "Reply-To" header is not a list of RFC 5322 addresses`},
		}
		var ids []string
		for id, c := range cases {
			m := &nats.Msg{Subject: contract.JobSubject("rel"), Data: c.body, Header: nats.Header{contract.HeaderMsgID: []string{id}}}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // an upper bound
			if _, err := r.h.js.PublishMsg(ctx, m); err != nil {
				t.Fatalf("publish %s: %v", id, err)
			}
			cancel()
			ids = append(ids, id)
		}
		// By reference: the message is read from the object store at send
		// time, and checked then.
		ref, err := r.h.q.Attachments.Put(context.Background(), "rel", "forged.eml",
			[]byte("From: ops@rel.example\r\nTo: victim0@private.example\r\n\r\nx\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		byRef := &contract.Job{ID: "mime-objectref-from", From: smtpE2ESender, To: []string{"victim0@private.example"}, MIME: &contract.MIME{ObjectRef: ref}}
		if _, err := r.h.pub.Publish(context.Background(), "rel", byRef); err != nil {
			t.Fatal(err)
		}
		cases["mime-objectref-from"] = struct {
			body   []byte
			reason contract.Reason
			msg    string
		}{nil, contract.ReasonSenderNotAllowed, `the "From" header is not the job's from mailbox`}
		ids = append(ids, "mime-objectref-from")
		r.h.waitTerminal(ids, time.Minute)
		for id, c := range cases {
			dl, err := r.h.q.DLQ.Get(context.Background(), "", id)
			if err != nil {
				t.Errorf("%s: not dead-lettered: %v", id, err)
				continue
			}
			if dl.Reason != c.reason || !strings.Contains(dl.Error, c.msg) {
				t.Errorf("%s: dead-lettered %s %q, want %s with %q", id, dl.Reason, dl.Error, c.reason, c.msg)
			}
			if strings.Contains(dl.Error, "private.example") || strings.Contains(dl.Error, "ops@") || strings.Contains(dl.Error, "Nobody") {
				t.Errorf("%s: the dead letter's error names an address: %q", id, dl.Error)
			}
			for _, m := range r.fake.Messages() {
				if m.JobID == id {
					t.Errorf("%s reached Graph", id)
				}
			}
		}
	})
	r.h.checkNoSecrets()
}

// withoutBcc is msg without its Bcc header fields, as recipients get it.
func withoutBcc(msg []byte) []byte {
	end := len(contract.HeaderSection(msg))
	var out []byte
	skipping := false
	for off := 0; off < end; {
		next := end
		if i := bytes.IndexByte(msg[off:end], '\n'); i >= 0 {
			next = off + i + 1
		}
		line := msg[off:next]
		if len(line) == 0 || (line[0] != ' ' && line[0] != '\t') {
			k, _, ok := bytes.Cut(line, []byte(":"))
			skipping = ok && strings.EqualFold(strings.TrimSpace(string(k)), "Bcc")
		}
		if !skipping {
			out = append(out, line...)
		}
		off = next
	}
	return append(out, msg[end:]...)
}
