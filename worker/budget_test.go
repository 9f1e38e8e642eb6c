package worker

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// limitSender refuses, as graphmail does before any Graph call, a job of
// more than max recipients; with check it also implements Checker (the
// pre-flight refusal), without it the refusal comes from Send, after the
// worker charged the budget. answer, when set, answers every job it does
// not refuse.
type limitSender struct {
	max    int
	sent   atomic.Int32
	calls  atomic.Int32
	answer func(job *contract.Job) (contract.SendResult, error)
}

func (s *limitSender) refuse(job *contract.Job) error {
	if n := len(job.To) + len(job.Cc) + len(job.Bcc); n > s.max {
		return &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob,
			Message: fmt.Sprintf("%d recipients, over this profile's maxRecipientsPerMessage of %d", n, s.max)}
	}
	return nil
}

func (s *limitSender) Send(_ context.Context, _, jobID string, job *contract.Job) (contract.SendResult, error) {
	s.calls.Add(1)
	if err := s.refuse(job); err != nil {
		return contract.SendResult{}, err
	}
	if s.answer != nil {
		return s.answer(job)
	}
	s.sent.Add(1)
	return contract.SendResult{Status: 202, RequestID: "req-" + jobID}, nil
}

type checkingSender struct{ *limitSender }

func (s checkingSender) Check(_ context.Context, _ string, job *contract.Job) error {
	return s.refuse(job)
}

func recipients(n int) []string {
	to := make([]string, n)
	for i := range to {
		to[i] = fmt.Sprintf("r%d@example.com", i)
	}
	return to
}

// Only a send that may have reached Graph counts against the mailbox's daily
// recipient budget (issue 17, item 8): 17 jobs of 600 recipients refused
// before any Graph call (profile limit 500) charged about 10,000 to the
// shared ledger, and the mailbox could send nothing more for 24 hours.
func TestRefusedJobsSpendNoRecipients(t *testing.T) {
	t.Parallel()
	const budget, refused, over = 10_000, 17, 600
	run := func(t *testing.T, sender Sender, ls *limitSender, wantUsed func(used int) bool, want string) {
		js := startServer(t)
		b := startPool(t, js, Config{PerMailboxRecipientsPerDay: budget}, sender, testOptions{})
		for i := range refused {
			job := demoJob(fmt.Sprintf("big-%02d", i))
			job.To = recipients(over)
			b.waitState(b.publish(job), contract.StateDeadLettered)
		}
		used, err := b.q.Pacing.Used(context.Background(), "noreply@demo.example", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if !wantUsed(used) {
			t.Fatalf("the ledger counts %d recipients after %d refused jobs of %d; want %s", used, refused, over, want)
		}
		ok := demoJob("valid")
		ok.To = recipients(500)
		b.waitState(b.publish(ok), contract.StateSent)
		if got := ls.sent.Load(); got != 1 {
			t.Fatalf("%d sends, want the valid job's", got)
		}
	}
	t.Run("refused by the pre-flight check: the ledger is not touched", func(t *testing.T) {
		t.Parallel()
		ls := &limitSender{max: 500}
		run(t, checkingSender{ls}, ls, func(used int) bool { return used == 0 }, "0")
		if n := ls.calls.Load(); n != 1 {
			t.Errorf("Send called %d times, want once (the valid job): refused jobs never reach the sender", n)
		}
	})
	t.Run("refused inside the send: the recipients are refunded", func(t *testing.T) {
		t.Parallel()
		// The first job's lease stays as this replica's allowance; nothing
		// more is charged.
		ls := &limitSender{max: 500}
		run(t, ls, ls, func(used int) bool { return used <= over }, fmt.Sprintf("at most one lease of %d", over))
	})
	t.Run("a definite 4xx from Graph is refunded", func(t *testing.T) {
		t.Parallel()
		ls := &limitSender{max: 1000}
		ls.answer = func(job *contract.Job) (contract.SendResult, error) {
			if len(job.To) == over {
				return contract.SendResult{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonRecipientInvalid,
					Status: 400, Code: "ErrorInvalidRecipients"}
			}
			ls.sent.Add(1)
			return contract.SendResult{Status: 202}, nil
		}
		run(t, ls, ls, func(used int) bool { return used <= over }, fmt.Sprintf("at most one lease of %d", over))
	})
}

// A send that may have delivered the mail (a 5xx: ambiguous) keeps counting.
func TestAmbiguousSendKeepsItsRecipients(t *testing.T) {
	t.Parallel()
	js := startServer(t)
	ls := &limitSender{max: 1000, answer: func(*contract.Job) (contract.SendResult, error) {
		return contract.SendResult{}, &contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonGraphRejected,
			Status: 502, Ambiguous: true}
	}}
	b := startPool(t, js, Config{PerMailboxRecipientsPerDay: 1000}, ls, testOptions{})
	job := demoJob("maybe-sent")
	job.To = recipients(300)
	b.waitState(b.publish(job), contract.StateDeadLettered)
	b.stop() // gives back what this replica holds unspent
	used, err := b.q.Pacing.Used(context.Background(), "noreply@demo.example", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if used != 300 {
		t.Fatalf("the ledger counts %d after an ambiguous send of 300 recipients, want 300", used)
	}
}

func TestMayHaveReachedExchange(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		se   contract.SendError
		want bool
	}{
		{"refused before the call", contract.SendError{Class: contract.ClassPermanent, Reason: contract.ReasonInvalidJob}, false},
		{"token endpoint down", contract.SendError{Class: contract.ClassUnavailable}, false},
		{"400 from Graph", contract.SendError{Class: contract.ClassPermanent, Status: 400}, false},
		{"401 after the refresh", contract.SendError{Class: contract.ClassRetryable, Status: 401}, false},
		{"429 of sendMail", contract.SendError{Class: contract.ClassThrottled, Status: 429}, true},
		{"503 of sendMail", contract.SendError{Class: contract.ClassRetryable, Status: 503}, true},
		{"timeout after the request was written", contract.SendError{Class: contract.ClassRetryable, Ambiguous: true}, true},
		{"429 of a draft's upload", contract.SendError{Class: contract.ClassThrottled, Status: 429, Op: "upload", SendsNothing: true}, false},
		{"503 of a draft's create", contract.SendError{Class: contract.ClassRetryable, Status: 503, Op: "createDraft", SendsNothing: true}, false},
		{"429 of a draft's send", contract.SendError{Class: contract.ClassThrottled, Status: 429, Op: "send"}, true},
		{"504 of a draft's send", contract.SendError{Class: contract.ClassRetryable, Status: 504, Op: "send", Ambiguous: true}, true},
	} {
		if got := mayHaveReachedExchange(&c.se); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
