package graphmail_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// sizedStore is an AttachmentStore of objects that exist only as sizes: it
// counts every byte handed out by Get (read whole) and Open (streamed), so
// a test can tell what a send loaded, and never allocates an object itself.
type sizedStore struct {
	sizes map[string]int

	mu       sync.Mutex
	whole    int // bytes returned by Get
	streamed int // bytes read through Open
	gets     int
}

func (s *sizedStore) Size(_ context.Context, _, ref string) (int, error) {
	n, ok := s.sizes[ref]
	if !ok {
		return 0, contract.ErrNoAttachment
	}
	return n, nil
}

func (s *sizedStore) Get(_ context.Context, _, ref string) ([]byte, error) {
	n, ok := s.sizes[ref]
	if !ok {
		return nil, contract.ErrNoAttachment
	}
	s.mu.Lock()
	s.whole += n
	s.gets++
	s.mu.Unlock()
	return make([]byte, n), nil
}

func (s *sizedStore) Open(_ context.Context, _, ref string, off int64) (io.ReadCloser, int64, error) {
	n, ok := s.sizes[ref]
	if !ok {
		return nil, 0, contract.ErrNoAttachment
	}
	return &zeroReader{s: s, left: int64(n) - off}, int64(n), nil
}

func (s *sizedStore) read() (whole, streamed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.whole, s.streamed
}

type zeroReader struct {
	s    *sizedStore
	left int64
}

func (r *zeroReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.left))
	clear(p[:n])
	r.left -= int64(n)
	r.s.mu.Lock()
	r.s.streamed += n
	r.s.mu.Unlock()
	return n, nil
}

func (r *zeroReader) Close() error { return nil }

const mb = 1024 * 1024

// A producer's 150 MB object named by a job (issue 17, item 5) took a worker
// from 33 MB to 713 MB and the pod was OOM-killed. Whatever a job names, the
// size is read from the store's metadata first and what the job's path
// cannot send is refused before a byte is loaded: by Check (the worker's
// pre-flight, before the recipient budget is charged) and by the send
// itself, with no Graph call.
func TestObjectsOverThePathAreRefusedUnread(t *testing.T) {
	t.Parallel()
	mime := func(ref string) *contract.Job {
		return &contract.Job{From: itSender, To: []string{"a@example.com"}, MIME: &contract.MIME{ObjectRef: ref}}
	}
	attached := func(refs ...string) *contract.Job {
		j := &contract.Job{From: itSender, To: []string{"a@example.com"}, Subject: "s", Text: "t"}
		for _, r := range refs {
			j.Attachments = append(j.Attachments, contract.Attachment{Name: r + ".bin", ObjectRef: r})
		}
		return j
	}
	withText := func(j *contract.Job, n int) *contract.Job { j.Text = strings.Repeat("x", n); return j }
	bigText := func(n int) *contract.Job { return withText(attached(), n) }
	sendMail := graphmail.Mode{}
	draft := graphmail.Mode{Via: graphmail.ModeDraft}
	many := make([]string, 160) // 160 × 1 MB: each small, 160 MB together
	sizes := map[string]int{"huge": 150 * mb, "big1": 100 * mb, "big2": 100 * mb, "four": 4 * mb}
	for i := range many {
		many[i] = fmt.Sprintf("small%03d", i)
		sizes[many[i]] = mb
	}
	for _, c := range []struct {
		name   string
		mode   graphmail.Mode
		job    *contract.Job
		reason contract.Reason
	}{
		{"MIME objectRef of 150 MB", sendMail, mime("huge"), contract.ReasonMessageTooLarge},
		{"MIME objectRef of 150 MB on a draft-mode profile", draft, mime("huge"), contract.ReasonMessageTooLarge},
		// In draft mode a 4 MB MIME message goes through a draft (mimedraft_test.go).
		{"MIME objectRef of 4 MB (over one request in base64) in sendMail mode", sendMail, mime("four"), contract.ReasonMessageTooLarge},
		{"attachment of 150 MB in sendMail mode", sendMail, attached("huge"), contract.ReasonMessageTooLarge},
		{"attachments over one request in sendMail mode", sendMail, attached(many[:4]...), contract.ReasonMessageTooLarge},
		{"two attachments of 100 MB in draft mode (over 150 MB)", draft, attached("big1", "big2"), contract.ReasonMessageTooLarge},
		{"160 small attachments in draft mode (over 150 MB)", draft, attached(many...), contract.ReasonMessageTooLarge},
		{"an objectRef that is not there", draft, attached("small000", "gone"), contract.ReasonInvalidJob},
		{"a 5 MB text body (over any one request)", draft, bigText(5 * mb), contract.ReasonMessageTooLarge},
		{"a 2 MB body and 2 MB of attachments in sendMail mode", sendMail, withText(attached(many[:2]...), 2*mb), contract.ReasonMessageTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
			store := &sizedStore{sizes: sizes}
			jobs := graphmail.NewSender(store)
			jobs.Add("p", draftClient(t, s), false)
			jobs.SetMode("p", c.mode)
			for _, step := range []struct {
				name string
				run  func() error
			}{
				{"Check", func() error { return jobs.Check(context.Background(), "p", c.job) }},
				{"Send", func() error {
					_, err := jobs.SendResumable(context.Background(), "p", "job-1", c.job, nil, nil)
					return err
				}},
			} {
				err := step.run()
				var se *contract.SendError
				if !errors.As(err, &se) || se.Class != contract.ClassPermanent || se.Reason != c.reason {
					t.Fatalf("%s: %v, want a permanent %s", step.name, err, c.reason)
				}
			}
			if whole, streamed := store.read(); whole+streamed != 0 {
				t.Errorf("%d bytes loaded whole and %d streamed from the store for a job refused by its size", whole, streamed)
			}
			if st := s.Stats(); st.SendRequests+st.TokenRequests != 0 || len(s.Messages()) != 0 {
				t.Errorf("Graph or Entra was called for a refused job: %+v", st)
			}
		})
	}
}

// In draft mode small attachments go into the create request while they fit
// it; the others are read one at a time when they are added: what is held
// whole is bounded by one request, whatever the number of attachments.
func TestDraftReadsSmallAttachmentsWithinOneRequest(t *testing.T) {
	t.Parallel()
	sizes := map[string]int{}
	job := &contract.Job{From: itSender, To: []string{"a@example.com"}, Subject: "s", Text: "t"}
	for i := range 20 { // 20 MB of 1 MB files (within the fake mailbox's 35 MB default, base64 counted)
		ref := fmt.Sprintf("f%02d", i)
		sizes[ref] = mb
		job.Attachments = append(job.Attachments, contract.Attachment{Name: ref + ".bin", ObjectRef: ref})
	}
	store := &sizedStore{sizes: sizes}
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	jobs := graphmail.NewSender(store)
	jobs.Add("p", draftClient(t, s), false)
	jobs.SetMode("p", graphmail.Mode{Via: graphmail.ModeDraft, When: graphmail.DraftAlways})
	if err := jobs.Check(context.Background(), "p", job); err != nil {
		t.Fatal(err)
	}
	if _, err := jobs.SendResumable(context.Background(), "p", "job-many", job, nil, nil); err != nil {
		t.Fatal(err)
	}
	whole, streamed := store.read()
	if whole > 4*mb {
		t.Errorf("%d bytes read whole before the draft was created, want at most one request (4 MB)", whole)
	}
	if whole+streamed != 20*mb {
		t.Errorf("%d bytes read in all, want the 20 MB sent", whole+streamed)
	}
	if n := len(s.Messages()); n != 1 {
		t.Fatalf("%d messages sent, want 1", n)
	}
}
