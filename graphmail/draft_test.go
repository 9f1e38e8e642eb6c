package graphmail_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

const chunk = 320 * 1024

func draftClient(t *testing.T, s *graphtest.Server) *graphmail.Client {
	t.Helper()
	c, err := graphmail.New(graphmail.Config{Name: "billing", TenantID: s.TenantID(), ClientID: s.ClientID(),
		AuthorityHost: s.URL(), GraphURL: s.GraphURL(), Credential: graphmail.Credential{ClientSecret: itSecret},
		HTTPClient: s.Client(), Timeout: 2 * time.Minute, UploadChunkBytes: chunk}) // an upper bound: a 4 MB request under -race on two shared cores took more than 10 s
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func rnd(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func hash(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// source streams content through Open and records the largest read, so a
// test can tell that the attachment was never read whole.
type source struct {
	mu      sync.Mutex
	data    []byte
	opens   []int64
	maxRead int
}

func (s *source) Open(_ context.Context, off int64) (io.ReadCloser, error) {
	s.mu.Lock()
	s.opens = append(s.opens, off)
	s.mu.Unlock()
	return io.NopCloser(&countingReader{s: s, r: bytes.NewReader(s.data[off:])}), nil
}

type countingReader struct {
	s *source
	r io.Reader
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.s.mu.Lock()
	c.s.maxRead = max(c.s.maxRead, n)
	c.s.mu.Unlock()
	return n, err
}

func largeMail(t *testing.T, big ...*source) graphmail.DraftMail {
	t.Helper()
	m := graphmail.DraftMail{Message: &graphmail.Message{From: itSender, To: []graphmail.Address{{Address: "a@example.com"}},
		Subject: "scans", HTML: `<img src="cid:img0">`, Headers: []graphmail.Header{{Name: contract.HeaderStampJobID, Value: "job-large"}}}}
	m.Attachments = append(m.Attachments, graphmail.DraftAttachment{Name: "small.txt", ContentType: "text/plain",
		Size: 5, Content: []byte("hello")})
	for i, b := range big {
		m.Attachments = append(m.Attachments, graphmail.DraftAttachment{Name: "big" + string(rune('0'+i)) + ".bin",
			ContentType: "image/png", Inline: true, ContentID: "img" + string(rune('0'+i)), Size: int64(len(b.data)), Open: b.Open})
	}
	return m
}

type saver struct {
	mu     sync.Mutex
	n      int
	failAt int // the save that fails (1-based); 0 = none
	p      *contract.Draft
	last   contract.Draft
}

func (s *saver) save(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	if s.n == s.failAt {
		return errors.New("KV down")
	}
	s.last = *s.p
	return nil
}

// TestDraftSendStreamsLargeAttachments: two attachments over 3 MB go through upload sessions in
// chunks streamed from their source (never read whole), the small one inside the create
// request; the mail is delivered once with every attachment byte for byte and its Message-ID.
func TestDraftSendStreamsLargeAttachments(t *testing.T) {
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := draftClient(t, s)
	a := &source{data: rnd(t, graphmail.UploadSessionMin+100_000)}
	b := &source{data: rnd(t, graphmail.UploadSessionMin+1)}
	var p contract.Draft
	sv := &saver{p: &p}
	res, err := c.SendViaDraft(context.Background(), largeMail(t, a, b), &p, sv.save)
	if err != nil {
		t.Fatalf("SendViaDraft: %v", err)
	}
	if res.Status != 202 || res.InternetMessageID == "" || res.InternetMessageID != p.InternetMessageID || res.Lookup != "" {
		t.Fatalf("result %+v, draft %+v", res, p)
	}
	if p.Done != 2 || p.SendAt == nil || sv.last.SendAt == nil {
		t.Errorf("progress %+v, last saved %+v", p, sv.last)
	}
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("delivered %d", len(msgs))
	}
	got := map[string]string{}
	for _, at := range msgs[0].Attachments {
		got[at.Name] = at.SHA256
	}
	if got["small.txt"] != hash([]byte("hello")) || got["big0.bin"] != hash(a.data) || got["big1.bin"] != hash(b.data) {
		t.Errorf("delivered attachments %+v", msgs[0].Attachments)
	}
	if msgs[0].InternetMessageID != res.InternetMessageID || msgs[0].JobID != "job-large" {
		t.Errorf("delivered %+v", msgs[0])
	}
	if a.maxRead > chunk || b.maxRead > chunk {
		t.Errorf("largest read %d/%d bytes, want at most one chunk (%d)", a.maxRead, b.maxRead, chunk)
	}
	if d := s.Drafts(); len(d) != 1 || d[0].Attachments != 3 || !d[0].Immutable {
		t.Errorf("drafts %+v", d)
	}
}

// TestDraftUploadFollowsNextExpectedRanges: a chunk Graph stored but answered 503 for is not
// sent twice blindly: the repeat gets 416, the session says where to go on, and the upload
// completes from there.
func TestDraftUploadFollowsNextExpectedRanges(t *testing.T) {
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := draftClient(t, s)
	a := &source{data: rnd(t, graphmail.UploadSessionMin+chunk/2)}
	s.ScriptDraft(graphtest.OpUpload, graphtest.Fault{}, graphtest.Fault{AcceptThenFail: true, Status: 503})
	var p contract.Draft
	if _, err := c.SendViaDraft(context.Background(), largeMail(t, a), &p, nil); err != nil {
		t.Fatalf("SendViaDraft: %v", err)
	}
	chunks := (len(a.data) + chunk - 1) / chunk
	if n := s.UploadPuts(); n != chunks {
		// the 503 chunk was stored: the session's next byte follows it, no PUT is repeated
		t.Errorf("PUTs = %d, want %d", n, chunks)
	}
	if got := s.Messages()[0].Attachments[1].SHA256; got != hash(a.data) {
		t.Errorf("attachment hash %s", got)
	}
}

// TestDraftResumesFromState: a worker that stops mid-upload (here: its state store fails) leaves
// progress that the next attempt resumes: the same draft, the same session, no byte uploaded
// twice.
func TestDraftResumesFromState(t *testing.T) {
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := draftClient(t, s)
	a := &source{data: rnd(t, graphmail.UploadSessionMin+chunk)}
	var p contract.Draft
	sv := &saver{p: &p, failAt: 5} // 1 draft, 2 session, 3.. chunks
	_, err := c.SendViaDraft(context.Background(), largeMail(t, a), &p, sv.save)
	if err == nil {
		t.Fatal("want the failed save to stop the attempt")
	}
	resumed := sv.last // what the state store holds
	if resumed.ID == "" || resumed.Upload == nil || resumed.Upload.Next == 0 {
		t.Fatalf("saved progress %+v", resumed)
	}
	sv2 := &saver{p: &resumed}
	if _, err := c.SendViaDraft(context.Background(), largeMail(t, a), &resumed, sv2.save); err != nil {
		t.Fatalf("resumed SendViaDraft: %v", err)
	}
	if d := s.Drafts(); len(d) != 1 || !d[0].Sent {
		t.Fatalf("drafts %+v, want the one draft, sent", d)
	}
	chunks := (len(a.data) + chunk - 1) / chunk
	if n := s.UploadPuts(); n > chunks+1 {
		t.Errorf("PUTs = %d for %d chunks: the resume started over", n, chunks)
	}
	if a.opens[len(a.opens)-1] == 0 {
		t.Errorf("the resume read from byte 0 (opens at %v)", a.opens)
	}
	if got := s.Messages()[0].Attachments[1].SHA256; got != hash(a.data) {
		t.Errorf("attachment hash %s", got)
	}
}

// TestDraftExpiredSessionIsRecreated: an upload session Graph no longer knows (expired) is
// created again and the attachment uploaded from its start.
func TestDraftExpiredSessionIsRecreated(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret, Now: clock,
		Drafts: graphtest.DraftOptions{UploadSessionLifetime: 5 * time.Minute}})
	c := draftClient(t, s)
	a := &source{data: rnd(t, graphmail.UploadSessionMin+chunk)}
	var p contract.Draft
	sv := &saver{p: &p, failAt: 5}
	if _, err := c.SendViaDraft(context.Background(), largeMail(t, a), &p, sv.save); err == nil {
		t.Fatal("want the failed save to stop the attempt")
	}
	mu.Lock()
	now = now.Add(6 * time.Minute)
	mu.Unlock()
	resumed := sv.last
	if _, err := c.SendViaDraft(context.Background(), largeMail(t, a), &resumed, nil); err != nil {
		t.Fatalf("resumed SendViaDraft: %v", err)
	}
	if got := s.Messages()[0].Attachments[1].SHA256; got != hash(a.data) {
		t.Errorf("attachment hash %s", got)
	}
}

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func asPending(t *testing.T, err error) *contract.PendingError {
	t.Helper()
	var pe *contract.PendingError
	if !errors.As(err, &pe) {
		t.Fatalf("error %T %v: want *contract.PendingError (not known yet)", err, err)
	}
	return pe
}

// TestDraftAmbiguousSendIsLookedUp: after a send that may have gone out, the next attempt never
// sends: with the fake's transit on (the message stays a draft in Drafts after an accepted
// send), the look-up says "not known yet" (PendingError) while the message is in transit, then
// finds it sent — by its immutable id, or by its internetMessageId in Sent Items when the id
// changed on the send. A send that never arrived is not resent by the look-up either: only the
// worker, past the transit window, clears SendAt (decide), and then it goes out once.
func TestDraftAmbiguousSendIsLookedUp(t *testing.T) {
	ctx := context.Background()
	for _, idChanges := range []bool{false, true} {
		name := "immutable id kept"
		if idChanges {
			name = "id changes on send"
		}
		t.Run(name, func(t *testing.T) {
			clk := &testClock{t: time.Now()}
			s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret, Now: clk.Now,
				Drafts: graphtest.DraftOptions{TransitDelay: time.Minute, IDChangesOnSend: idChanges}})
			c := draftClient(t, s)
			s.ScriptDraft(graphtest.OpSend, graphtest.Fault{AcceptThenFail: true, Status: 504})
			var p contract.Draft
			_, err := c.SendViaDraft(ctx, largeMail(t), &p, nil)
			if !graphmail.IsAmbiguous(err) {
				t.Fatalf("err = %v, want ambiguous", err)
			}
			if e := asSendError(t, err); e.Op != graphmail.OpSendDraft || !strings.Contains(e.Error(), "send 504") {
				t.Errorf("error %q: want the send named", e.Error())
			}
			for range 3 { // in transit: looked up, never sent again
				_, err = c.SendViaDraft(ctx, largeMail(t), &p, nil)
				if pe := asPending(t, err); pe.InDrafts == idChanges || pe.SentAt != *p.SendAt || pe.InternetMessageID != p.InternetMessageID {
					t.Fatalf("in transit: %+v, want InDrafts=%v", pe, !idChanges)
				}
			}
			clk.Add(time.Minute)
			res, err := c.SendViaDraft(ctx, largeMail(t), &p, nil)
			if err != nil || res.Lookup != contract.LookupSent || res.InternetMessageID == "" {
				t.Fatalf("after transit: %+v %v", res, err)
			}
			if d := s.Drafts(); len(d) != 1 || d[0].Deliveries != 1 || len(s.Messages()) != 1 || s.Duplicates() != 0 {
				t.Fatalf("drafts %+v, %d messages: want one delivery", d, len(s.Messages()))
			}
		})
	}
	t.Run("a send that never arrived is not resent by the look-up", func(t *testing.T) {
		s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
		c := draftClient(t, s)
		s.ScriptDraft(graphtest.OpSend, graphtest.Fault{Status: 503})
		var p contract.Draft
		if _, err := c.SendViaDraft(ctx, largeMail(t), &p, nil); !graphmail.IsAmbiguous(err) {
			t.Fatalf("err = %v, want ambiguous", err)
		}
		_, err := c.SendViaDraft(ctx, largeMail(t), &p, nil)
		if pe := asPending(t, err); !pe.InDrafts {
			t.Fatalf("%+v: want InDrafts", pe)
		}
		if n := len(s.Messages()); n != 0 {
			t.Fatalf("delivered %d, want 0: the look-up sent it", n)
		}
		p.SendAt = nil // the worker's decision past the transit window (decide: proven unsent)
		res, err := c.SendViaDraft(ctx, largeMail(t), &p, nil)
		if err != nil || res.Status != 202 || res.Lookup != "" {
			t.Fatalf("resend: %+v %v", res, err)
		}
		if n := len(s.Messages()); n != 1 {
			t.Fatalf("delivered %d", n)
		}
	})
	t.Run("202 with Retry-After is kept", func(t *testing.T) {
		s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
		c := draftClient(t, s)
		s.ScriptDraft(graphtest.OpSend, graphtest.Fault{Status: 202, RetryAfter: "12"})
		var p contract.Draft
		res, err := c.SendViaDraft(ctx, largeMail(t), &p, nil)
		if err != nil || res.Status != 202 || res.RetryAfter != 12*time.Second {
			t.Fatalf("send: %+v %v, want 202 with RetryAfter 12s", res, err)
		}
	})
	t.Run("a 429 on the look-up is throttling with its Retry-After", func(t *testing.T) {
		s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
		c := draftClient(t, s)
		s.ScriptDraft(graphtest.OpSend, graphtest.Fault{Reset: true})
		var p contract.Draft
		if _, err := c.SendViaDraft(ctx, largeMail(t), &p, nil); !graphmail.IsAmbiguous(err) {
			t.Fatalf("err = %v, want ambiguous", err)
		}
		s.ScriptDraft(graphtest.OpGet, graphtest.Fault{Status: 429})
		_, err := c.SendViaDraft(ctx, largeMail(t), &p, nil)
		if e := asSendError(t, err); e.Class != contract.ClassThrottled || e.RetryAfter != 0 || e.Op != graphmail.OpGetMessage {
			t.Fatalf("429 on the look-up: %v, want throttled without Retry-After", err)
		}
	})
}

// TestDraftErrors: failures of the other calls are never ambiguous, a 403 names the
// Mail.ReadWrite role, and an upload failure never shows the pre-authenticated URL.
func TestDraftErrors(t *testing.T) {
	ctx := context.Background()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret, Drafts: graphtest.DraftOptions{ReadWriteScope: []string{"other@contoso.com"}}})
	c := draftClient(t, s)
	var p contract.Draft
	_, err := c.SendViaDraft(ctx, largeMail(t), &p, nil)
	e := asSendError(t, err)
	if e.Reason != contract.ReasonAccessDenied || e.Ambiguous || !strings.Contains(e.Error(), "Application Mail.ReadWrite") {
		t.Errorf("create outside the Mail.ReadWrite scope: %v", err)
	}

	s2 := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c2 := draftClient(t, s2)
	for range 10 {
		s2.ScriptDraft(graphtest.OpUpload, graphtest.Fault{Status: 500})
	}
	a := &source{data: rnd(t, graphmail.UploadSessionMin)}
	p = contract.Draft{}
	_, err = c2.SendViaDraft(ctx, largeMail(t, a), &p, nil)
	e = asSendError(t, err)
	if e.Op != graphmail.OpUpload || e.Ambiguous || e.Class != contract.ClassRetryable {
		t.Errorf("upload 500s: %v", err)
	}
	if p.Upload == nil || strings.Contains(err.Error(), "authtoken") || strings.Contains(err.Error(), p.Upload.URL) {
		t.Errorf("upload error %q shows the upload URL", err)
	}
	if len(s2.Messages()) != 0 {
		t.Error("a mail went out")
	}
}

func asSendError(t *testing.T, err error) *contract.SendError {
	t.Helper()
	var e *contract.SendError
	if !errors.As(err, &e) {
		t.Fatalf("error %T %v is not *contract.SendError", err, err)
	}
	return e
}

// TestDraftRoutesAttachmentsByRequestSize: an attachment goes by one POST only when that
// request — base64 content and its JSON — fits Graph's 4 MB. 3,145,727 bytes (just under
// 3 MiB) are 4,194,304 in base64: their POST would be answered 413, so they go by an upload
// session; 3,000,000 bytes (4,000,000 in base64) still fit one POST.
func TestDraftRoutesAttachmentsByRequestSize(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		size    int
		session bool
	}{
		{3_145_727, true},
		{3_145_728 - 40_000, true},
		{3_000_000, false},
		{graphmail.UploadSessionFloor - 1, false},
	} {
		if got := !graphmail.PostFits(int64(tc.size), "scan.pdf", "application/pdf", ""); got != tc.session {
			t.Errorf("PostFits(%d): session=%v, want %v", tc.size, got, tc.session)
		}
		for _, stored := range []bool{false, true} {
			s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
			c := draftClient(t, s)
			data := rnd(t, tc.size)
			m := largeMail(t)
			a := graphmail.DraftAttachment{Name: "scan.pdf", ContentType: "application/pdf", Size: int64(len(data))}
			if stored {
				src := &source{data: data}
				a.Open = src.Open
			} else {
				a.Content = data
			}
			// Alone after the small one: the create request holds the small one, this one
			// goes by its own request.
			m.Attachments = append(m.Attachments, a)
			var p contract.Draft
			if _, err := c.SendViaDraft(ctx, m, &p, nil); err != nil {
				t.Fatalf("%d bytes (stored=%v): %v", tc.size, stored, err)
			}
			if puts := s.UploadPuts(); (puts > 0) != tc.session {
				t.Errorf("%d bytes (stored=%v): %d upload PUTs, want session=%v", tc.size, stored, puts, tc.session)
			}
			msgs := s.Messages()
			if len(msgs) != 1 || len(msgs[0].Attachments) != 2 || msgs[0].Attachments[1].SHA256 != hash(data) {
				t.Fatalf("%d bytes: delivered %+v", tc.size, msgs)
			}
		}
	}
}

// TestDraftClientRequestIDs: every client-request-id a draft-flow call reports is the GUID
// that call sent (the fake received it), on success and on failure alike; a failure before
// any request (no token, the job state could not be saved) reports none — never the job id.
func TestDraftClientRequestIDs(t *testing.T) {
	ctx := context.Background()
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := draftClient(t, s)
	received := func(what, crid string) {
		t.Helper()
		if crid == "" || !s.ReceivedClientRequestID(crid) || strings.Contains(crid, "job") {
			t.Errorf("%s: client-request-id %q was not sent to Graph", what, crid)
		}
	}
	for _, op := range []graphtest.DraftOp{graphtest.OpCreate, graphtest.OpSession, graphtest.OpUpload, graphtest.OpSend} {
		s.ScriptDraft(op, graphtest.Fault{Status: 400, Code: "ErrorInvalidRequest"})
		var p contract.Draft
		_, err := c.SendViaDraft(ctx, largeMail(t, &source{data: rnd(t, graphmail.UploadSessionMin)}), &p, nil)
		received(string(op)+" refused", asSendError(t, err).ClientRequestID)
	}
	var p contract.Draft
	res, err := c.SendViaDraft(ctx, largeMail(t), &p, nil)
	if err != nil {
		t.Fatal(err)
	}
	received("send accepted", res.ClientRequestID)
	for _, m := range s.Messages() {
		received("the fake's record", m.ClientRequestID)
	}

	// Nothing sent: no client-request-id to report.
	sv := &saver{failAt: 1}
	p = contract.Draft{}
	sv.p = &p
	_, err = c.SendViaDraft(ctx, largeMail(t), &p, sv.save)
	if e := asSendError(t, err); e.ClientRequestID != "" {
		t.Errorf("state save failed before any request: client-request-id %q, want none", e.ClientRequestID)
	}
	s2 := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c2 := draftClient(t, s2)
	s2.SetTokenEndpointDown(true)
	p = contract.Draft{}
	_, err = c2.SendViaDraft(ctx, largeMail(t), &p, nil)
	if e := asSendError(t, err); e.ClientRequestID != "" || e.Op != graphmail.OpCreateDraft {
		t.Errorf("no token: client-request-id %q op %q, want none and createDraft", e.ClientRequestID, e.Op)
	}
}
