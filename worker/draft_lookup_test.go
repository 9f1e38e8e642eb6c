package worker

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// lookupSender is a draft-mode sender: its first send of a job may have gone out (504,
// SendAt saved), and the look-ups that follow say "not known yet" pending times, then find
// the mail sent.
type lookupSender struct {
	mu             sync.Mutex
	pending        int
	sends, lookups int
}

func (s *lookupSender) Send(context.Context, string, string, *contract.Job) (contract.SendResult, error) {
	panic("draft mode: SendResumable only")
}

func (s *lookupSender) UsesDraft(context.Context, string, *contract.Job) bool { return true }

func (s *lookupSender) SendResumable(ctx context.Context, _, _ string, _ *contract.Job, draft *contract.Draft,
	save func(context.Context, *contract.Draft) error) (contract.SendResult, error) {
	d := contract.Draft{}
	if draft != nil {
		d = *draft
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if d.SendAt == nil {
		now := time.Now()
		d.ID, d.InternetMessageID, d.SendAt = "AAkALg1", "<m@demo.example>", &now
		if err := save(ctx, &d); err != nil {
			return contract.SendResult{}, err
		}
		s.sends++
		return contract.SendResult{}, &contract.SendError{Class: contract.ClassRetryable, Status: 504, Ambiguous: true, Op: "send"}
	}
	s.lookups++
	if s.lookups <= s.pending {
		return contract.SendResult{}, &contract.PendingError{Profile: "demo", SentAt: *d.SendAt, InDrafts: true, InternetMessageID: d.InternetMessageID}
	}
	return contract.SendResult{Status: 200, InternetMessageID: d.InternetMessageID, Lookup: contract.LookupSent}, nil
}

func (s *lookupSender) counts() (sends, lookups int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sends, s.lookups
}

// TestDraftLookupsAreNotPaced: the look-ups after a draft send that may have gone out are
// Graph requests but not sends: they come back from their message schedule every
// draftLookupEvery and take no start from the mailbox's per-minute pace (here one a minute,
// which the send itself used). Counting them as sends held each look-up a minute; the job now
// settles in seconds, with one send.
func TestDraftLookupsAreNotPaced(t *testing.T) {
	t.Parallel()
	s := &lookupSender{pending: 3}
	b := setup(t, Config{PerMailboxPerMinute: 1, DraftLookupEvery: time.Second}, s)
	id := b.publish(demoJob("draft-lookups"))
	st := b.waitState(id, contract.StateSent)
	if sends, lookups := s.counts(); sends != 1 || lookups != 4 {
		t.Fatalf("%d sends, %d look-ups; want 1 and 4", sends, lookups)
	}
	if st.PossibleDuplicate() || st.Draft == nil || st.Draft.SendAt == nil {
		t.Fatalf("state %+v: want sent, not flagged, its draft's send recorded", st)
	}
	deferred := 0
	for _, ev := range b.history(id) {
		if ev.Event == contract.EventDeferred && ev.Cause == string(CauseAwaitingSentCopy) {
			deferred++
		}
		if ev.Event == contract.EventDeferred && ev.Cause == string(CausePace) {
			t.Errorf("a look-up was deferred by the mailbox's pace: %+v", ev)
		}
	}
	if deferred != 3 {
		t.Errorf("%d sent_items deferrals, want 3 (one per \"not known yet\")", deferred)
	}
}
