package graphtest_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// clock is a settable clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func newClock() *clock               { return &clock{t: time.Now()} }
func sum(b []byte) string            { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, r.body)
	}
	return m
}

func (r resp) code(t *testing.T) string {
	t.Helper()
	var ge graphError
	if err := json.Unmarshal(r.body, &ge); err != nil {
		t.Fatalf("error body is not Graph-shaped: %s", r.body)
	}
	return ge.Error.Code
}

func do(t *testing.T, s *graphtest.Server, method, u, tok string, hdr map[string]string, body []byte) resp {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body = http.NoBody
		req.ContentLength = 0
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := s.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}

var immutable = map[string]string{"Prefer": `IdType="ImmutableId"`, "Content-Type": "application/json"}

func msgURL(s *graphtest.Server, id string) string {
	return s.GraphURL() + "/v1.0/users/" + url.PathEscape(mailbox) + "/messages/" + url.PathEscape(id)
}

func createDraft(t *testing.T, s *graphtest.Server, tok string, hdr map[string]string, inline []byte) (id, imid string) {
	t.Helper()
	m := map[string]any{
		"subject":                "Scanned invoice",
		"body":                   map[string]string{"contentType": "HTML", "content": `<p>see <img src="cid:logo"></p>`},
		"toRecipients":           rcpt("a@example.com"),
		"internetMessageHeaders": []map[string]string{{"name": "X-Mailworker-Job-Id", "value": "job-draft-1"}},
	}
	if inline != nil {
		m["attachments"] = []map[string]any{{"@odata.type": "#microsoft.graph.fileAttachment", "name": "logo.png",
			"contentType": "image/png", "contentBytes": base64.StdEncoding.EncodeToString(inline), "isInline": true, "contentId": "logo"}}
	}
	body, _ := json.Marshal(m)
	r := do(t, s, http.MethodPost, s.GraphURL()+"/v1.0/users/"+url.PathEscape(mailbox)+"/messages", tok, hdr, body)
	if r.status != http.StatusCreated {
		t.Fatalf("create draft: %d %s", r.status, r.body)
	}
	j := r.json(t)
	if j["isDraft"] != true {
		t.Fatalf("created message isDraft = %v, want true", j["isDraft"])
	}
	id, _ = j["id"].(string)
	imid, _ = j["internetMessageId"].(string)
	if id == "" || !strings.HasPrefix(imid, "<") {
		t.Fatalf("create draft: id %q internetMessageId %q", id, imid)
	}
	return id, imid
}

func createSession(t *testing.T, s *graphtest.Server, tok, id string, item map[string]any) resp {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"AttachmentItem": item})
	return do(t, s, http.MethodPost, msgURL(s, id)+"/attachments/createUploadSession", tok,
		map[string]string{"Content-Type": "application/json"}, body)
}

func put(t *testing.T, s *graphtest.Server, uploadURL string, data []byte, start, total int, hdr map[string]string) resp {
	t.Helper()
	h := map[string]string{"Content-Type": "application/octet-stream",
		"Content-Range": fmt.Sprintf("bytes %d-%d/%d", start, start+len(data)-1, total)}
	for k, v := range hdr {
		h[k] = v
	}
	return do(t, s, http.MethodPut, uploadURL, "", h, data)
}

func uploadAll(t *testing.T, s *graphtest.Server, uploadURL string, data []byte, chunk int) resp {
	t.Helper()
	var last resp
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		last = put(t, s, uploadURL, data[off:end], off, len(data), nil)
		if end < len(data) {
			if last.status != http.StatusOK {
				t.Fatalf("PUT %d-%d: %d %s", off, end-1, last.status, last.body)
			}
			if got := last.json(t)["nextExpectedRanges"]; fmt.Sprint(got) != fmt.Sprintf("[%d]", end) {
				t.Fatalf("PUT %d-%d: nextExpectedRanges %v, want [%d]", off, end-1, got, end)
			}
		}
	}
	return last
}

// TestDraftFlow follows Microsoft's "Immutable ID with sending mail" with a large attachment:
// create a draft (immutable id), attach a file over 3 MB through an upload session, send, find
// the Sent Items copy by the same id once it exists, and the delivered .eml carries both
// attachments byte for byte.
func TestDraftFlow(t *testing.T) {
	clk := newClock()
	out := t.TempDir()
	s := newServer(t, graphtest.Options{Now: clk.Now, OutDir: out,
		Drafts: graphtest.DraftOptions{TransitDelay: 30 * time.Second}})
	tok := token(t, s)
	logo := randomBytes(t, 1000)
	big := randomBytes(t, graphtest.MinUploadSessionBytes+123_457)

	id, imid := createDraft(t, s, tok, immutable, logo)
	if !strings.HasPrefix(id, "AAkALg") {
		t.Errorf("immutable id %q: want the AAkALg shape", id)
	}
	r := createSession(t, s, tok, id, map[string]any{"attachmentType": "file", "name": "scan.pdf",
		"size": len(big), "contentType": "application/pdf"})
	if r.status != http.StatusCreated {
		t.Fatalf("createUploadSession: %d %s", r.status, r.body)
	}
	sess := r.json(t)
	if fmt.Sprint(sess["nextExpectedRanges"]) != "[0-]" || sess["expirationDateTime"] == "" {
		t.Fatalf("upload session: %v", sess)
	}
	uploadURL := sess["uploadUrl"].(string)
	last := uploadAll(t, s, uploadURL, big, 1<<20)
	if last.status != http.StatusCreated || !strings.Contains(last.header.Get("Location"), "/Attachments('") || len(last.body) != 0 {
		t.Fatalf("final PUT: %d Location=%q body=%q", last.status, last.header.Get("Location"), last.body)
	}

	if r := do(t, s, http.MethodGet, msgURL(s, id), tok, immutable, nil); r.status != 200 || r.json(t)["isDraft"] != true {
		t.Fatalf("GET draft before send: %d %s", r.status, r.body)
	}
	if r := do(t, s, http.MethodPost, msgURL(s, id)+"/send", tok, nil, nil); r.status != http.StatusAccepted {
		t.Fatalf("send: %d %s", r.status, r.body)
	}
	// In transit: still a draft in Drafts, not in Sent Items.
	if r := do(t, s, http.MethodGet, msgURL(s, id), tok, immutable, nil); r.status != 200 || r.json(t)["isDraft"] != true || r.json(t)["parentFolderId"] != "Drafts" {
		t.Fatalf("GET in transit: %d %s, want the draft", r.status, r.body)
	}
	if got := findSent(t, s, tok, imid); len(got) != 0 {
		t.Fatalf("Sent Items search in transit: %v, want none", got)
	}
	clk.Add(31 * time.Second)
	if got := findSent(t, s, tok, imid); len(got) != 1 || got[0]["id"] != id || got[0]["isDraft"] != false {
		t.Fatalf("Sent Items search after transit: %v, want the copy", got)
	}
	r = do(t, s, http.MethodGet, msgURL(s, id), tok, immutable, nil)
	if r.status != 200 {
		t.Fatalf("GET Sent Items copy: %d %s", r.status, r.body)
	}
	if j := r.json(t); j["isDraft"] != false || j["id"] != id || j["internetMessageId"] != imid {
		t.Fatalf("Sent Items copy: %v", j)
	}
	// A second send does not deliver again.
	if r := do(t, s, http.MethodPost, msgURL(s, id)+"/send", tok, nil, nil); r.status != http.StatusNotFound {
		t.Fatalf("second send: %d, want 404", r.status)
	}

	msgs := s.Messages()
	if len(msgs) != 1 || s.Duplicates() != 0 {
		t.Fatalf("delivered %d messages (%d duplicates), want 1", len(msgs), s.Duplicates())
	}
	m := msgs[0]
	if m.JobID != "job-draft-1" || m.InternetMessageID != imid || !m.Draft || len(m.Attachments) != 2 {
		t.Fatalf("delivered message: %+v", m)
	}
	if m.Attachments[1].SHA256 != sum(big) || m.Attachments[1].Size != len(big) || m.Attachments[0].SHA256 != sum(logo) {
		t.Errorf("attachment hashes: %+v", m.Attachments)
	}
	eml, err := os.ReadFile(filepath.Join(out, "job-draft-1.eml"))
	if err != nil {
		t.Fatal(err)
	}
	parts := emlParts(t, eml)
	if parts["logo.png"] != sum(logo) || parts["scan.pdf"] != sum(big) {
		t.Errorf(".eml attachments by hash: %v", parts)
	}
	if !bytes.Contains(eml, []byte("Message-ID: "+imid)) {
		t.Errorf(".eml has no Message-ID %s", imid)
	}
}

// emlParts returns the SHA-256 of each attachment of an .eml, by file name.
func emlParts(t *testing.T, eml []byte) map[string]string {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(eml))
	if err != nil {
		t.Fatal(err)
	}
	_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if p.FileName() == "" {
			continue
		}
		b, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
		if err != nil {
			t.Fatal(err)
		}
		out[p.FileName()] = sum(b)
	}
}

// TestUploadSessionRules: the pre-authenticated URL refuses a bearer token, bytes go in order
// (416 otherwise, and GET on the URL says where to resume), at most 4 MB per PUT, at least 3 MB
// per session, and a session expires.
func TestUploadSessionRules(t *testing.T) {
	clk := newClock()
	s := newServer(t, graphtest.Options{Now: clk.Now, Drafts: graphtest.DraftOptions{UploadSessionLifetime: 10 * time.Minute}})
	tok := token(t, s)
	id, _ := createDraft(t, s, tok, immutable, nil)
	data := randomBytes(t, graphtest.MaxChunkBytes+1)

	if r := createSession(t, s, tok, id, map[string]any{"attachmentType": "file", "name": "small", "size": graphtest.MinUploadSessionBytes - 1}); r.status != 400 ||
		r.code(t) != "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize" {
		t.Errorf("session under 3 MB: %d %s", r.status, r.body)
	}
	r := createSession(t, s, tok, id, map[string]any{"attachmentType": "file", "name": "f.bin", "size": len(data)})
	if r.status != http.StatusCreated {
		t.Fatalf("createUploadSession: %d %s", r.status, r.body)
	}
	u := r.json(t)["uploadUrl"].(string)

	if r := put(t, s, u, data[:1024], 0, len(data), map[string]string{"Authorization": "Bearer " + tok}); r.status != http.StatusUnauthorized {
		t.Errorf("PUT with Authorization: %d, want 401", r.status)
	}
	if r := put(t, s, u, data, 0, len(data), nil); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("PUT over 4 MB: %d, want 413", r.status)
	}
	if r := put(t, s, u, data[:327680], 0, len(data), nil); r.status != 200 {
		t.Fatalf("first PUT: %d %s", r.status, r.body)
	}
	// The same range again (a client unsure whether it arrived): 416.
	if r := put(t, s, u, data[:327680], 0, len(data), nil); r.status != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("repeated range: %d, want 416", r.status)
	}
	st := do(t, s, http.MethodGet, u, "", nil, nil)
	if st.status != 200 || fmt.Sprint(st.json(t)["nextExpectedRanges"]) != "[327680]" {
		t.Fatalf("GET uploadUrl: %d %s", st.status, st.body)
	}
	clk.Add(11 * time.Minute)
	if r := put(t, s, u, data[327680:655360], 327680, len(data), nil); r.status != http.StatusNotFound {
		t.Errorf("PUT after expiry: %d, want 404", r.status)
	}
	if n := s.UploadPuts(); n != 5 {
		t.Errorf("UploadPuts = %d, want 5", n)
	}
}

// TestDraftIDs: without Prefer: IdType="ImmutableId" the id changes when the message moves to
// Sent Items, so the draft's id finds nothing after the send; DELETE removes a draft; the
// Mail.ReadWrite scope is checked.
func TestDraftIDs(t *testing.T) {
	s := newServer(t, graphtest.Options{Drafts: graphtest.DraftOptions{ReadWriteScope: []string{mailbox}}})
	tok := token(t, s)
	id, _ := createDraft(t, s, tok, map[string]string{"Content-Type": "application/json"}, nil)
	if !strings.HasPrefix(id, "AAMkAD") {
		t.Errorf("REST id %q", id)
	}
	if r := do(t, s, http.MethodPost, msgURL(s, id)+"/send", tok, nil, nil); r.status != http.StatusAccepted {
		t.Fatalf("send: %d %s", r.status, r.body)
	}
	if r := do(t, s, http.MethodGet, msgURL(s, id), tok, nil, nil); r.status != http.StatusNotFound {
		t.Errorf("GET by the REST id after send: %d, want 404", r.status)
	}

	id2, _ := createDraft(t, s, tok, immutable, nil)
	if r := do(t, s, http.MethodDelete, msgURL(s, id2), tok, nil, nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if r := do(t, s, http.MethodGet, msgURL(s, id2), tok, nil, nil); r.status != http.StatusNotFound {
		t.Errorf("GET after DELETE: %d, want 404", r.status)
	}
	if d := s.Drafts(); len(d) != 2 || !d[0].Sent || !d[1].Deleted || d[1].IsDraft {
		t.Errorf("Drafts() = %+v", d)
	}

	other := s.GraphURL() + "/v1.0/users/other@contoso.com/messages"
	if r := do(t, s, http.MethodPost, other, tok, immutable, []byte(`{"subject":"x"}`)); r.status != http.StatusForbidden {
		t.Errorf("create outside the Mail.ReadWrite scope: %d, want 403", r.status)
	}
}

// TestDraftSendAcceptThenFail: a send that takes effect and then answers 504 delivers once;
// the draft is then in transit or in Sent Items, never sent again.
func TestDraftSendAcceptThenFail(t *testing.T) {
	s := newServer(t, graphtest.Options{})
	tok := token(t, s)
	id, _ := createDraft(t, s, tok, immutable, nil)
	s.ScriptDraft(graphtest.OpSend, graphtest.Fault{AcceptThenFail: true, Status: 504})
	if r := do(t, s, http.MethodPost, msgURL(s, id)+"/send", tok, nil, nil); r.status != http.StatusGatewayTimeout {
		t.Fatalf("send: %d, want the scripted 504", r.status)
	}
	if r := do(t, s, http.MethodGet, msgURL(s, id), tok, immutable, nil); r.status != 200 || r.json(t)["isDraft"] != false {
		t.Fatalf("GET after an accepted send: %d %s", r.status, r.body)
	}
	if n := len(s.Messages()); n != 1 {
		t.Fatalf("delivered %d, want 1", n)
	}
}

// findSent searches the mailbox's Sent Items by internetMessageId, as the client does.
func findSent(t *testing.T, s *graphtest.Server, tok, imid string) []map[string]any {
	t.Helper()
	q := url.Values{"$filter": {"internetMessageId eq '" + strings.ReplaceAll(imid, "'", "''") + "'"}, "$select": {"id,isDraft"}}
	r := do(t, s, http.MethodGet, s.GraphURL()+"/v1.0/users/"+url.PathEscape(mailbox)+"/mailFolders/sentitems/messages?"+q.Encode(), tok, immutable, nil)
	if r.status != 200 {
		t.Fatalf("Sent Items search: %d %s", r.status, r.body)
	}
	var v struct {
		Value []map[string]any `json:"value"`
	}
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatal(err)
	}
	return v.Value
}

// TestDraftTransit: a send in transit leaves the message a draft (isDraft true, in Drafts) for
// TransitDelay; a second send then is accepted and delivered again (the fake's pessimistic
// reading, so that a client's resend shows as a duplicate); with IDChangesOnSend the id answers
// 404 after the send and only the internetMessageId finds the Sent Items copy.
func TestDraftTransit(t *testing.T) {
	t.Run("resend in transit delivers twice", func(t *testing.T) {
		clk := newClock()
		s := newServer(t, graphtest.Options{Now: clk.Now, Drafts: graphtest.DraftOptions{TransitDelay: time.Minute}})
		tok := token(t, s)
		id, _ := createDraft(t, s, tok, immutable, nil)
		for i := 0; i < 2; i++ {
			if r := do(t, s, http.MethodPost, msgURL(s, id)+"/send", tok, nil, nil); r.status != http.StatusAccepted {
				t.Fatalf("send %d: %d %s", i, r.status, r.body)
			}
		}
		if d := s.Drafts(); len(d) != 1 || d[0].Deliveries != 2 || len(s.Messages()) != 2 || s.Duplicates() != 1 {
			t.Fatalf("drafts %+v, %d messages, %d duplicates: want one draft delivered twice", d, len(s.Messages()), s.Duplicates())
		}
		clk.Add(time.Minute)
		if r := do(t, s, http.MethodPost, msgURL(s, id)+"/send", tok, nil, nil); r.status != http.StatusNotFound {
			t.Fatalf("send after transit: %d, want 404", r.status)
		}
	})
	t.Run("id changes on send", func(t *testing.T) {
		clk := newClock()
		s := newServer(t, graphtest.Options{Now: clk.Now, Drafts: graphtest.DraftOptions{TransitDelay: time.Minute, IDChangesOnSend: true}})
		tok := token(t, s)
		id, imid := createDraft(t, s, tok, immutable, nil)
		if r := do(t, s, http.MethodPost, msgURL(s, id)+"/send", tok, nil, nil); r.status != http.StatusAccepted {
			t.Fatalf("send: %d %s", r.status, r.body)
		}
		if r := do(t, s, http.MethodGet, msgURL(s, id), tok, immutable, nil); r.status != http.StatusNotFound {
			t.Fatalf("GET by the old id: %d, want 404", r.status)
		}
		clk.Add(time.Minute)
		got := findSent(t, s, tok, imid)
		if len(got) != 1 || got[0]["id"] == id || got[0]["isDraft"] != false {
			t.Fatalf("Sent Items search: %v, want the copy under a new id", got)
		}
	})
	t.Run("202 with Retry-After", func(t *testing.T) {
		s := newServer(t, graphtest.Options{})
		tok := token(t, s)
		id, _ := createDraft(t, s, tok, immutable, nil)
		s.ScriptDraft(graphtest.OpSend, graphtest.Fault{Status: http.StatusAccepted, RetryAfter: "12"})
		r := do(t, s, http.MethodPost, msgURL(s, id)+"/send", tok, nil, nil)
		if r.status != http.StatusAccepted || r.header.Get("Retry-After") != "12" || len(s.Messages()) != 1 {
			t.Fatalf("send: %d Retry-After=%q, %d delivered; want 202, 12, 1", r.status, r.header.Get("Retry-After"), len(s.Messages()))
		}
	})
}
