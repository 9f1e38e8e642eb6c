package tracking_test

import (
	"context"
	"encoding/base64"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/tracking"
	"github.com/rs/zerolog"
)

// traceRows is a hand-written Tracer (our own interface): the rows the
// test puts there, filtered by sender and window as message trace filters
// them.
type traceRows struct {
	mu   sync.Mutex
	rows []graphmail.MessageTrace
}

func (f *traceRows) add(rows ...graphmail.MessageTrace) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rows = append(f.rows, rows...)
}

func (f *traceRows) MessageTraces(ctx context.Context, q graphmail.TraceQuery, onRequest func(context.Context) error) ([]graphmail.MessageTrace, error) {
	if err := onRequest(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []graphmail.MessageTrace
	for _, r := range f.rows {
		if strings.EqualFold(r.SenderAddress, q.Sender) && !r.ReceivedDateTime.Before(q.From) && !r.ReceivedDateTime.After(q.To) {
			out = append(out, r)
		}
	}
	return out, nil
}

func (f *traceRows) TraceDetails(context.Context, string, string) ([]graphmail.TraceDetail, error) {
	return []graphmail.TraceDetail{{Event: "Fail", Description: "550 5.1.1 not found"}}, nil
}

// clocked is a bundle whose sends, job states and tracker run on a clock
// the test moves, against rows the test writes.
type clocked struct {
	bundle
	now   time.Time
	rows  *traceRows
	send  tracking.Sender
	track *tracking.Tracker
}

func newClocked(t *testing.T) *clocked {
	b := setup(t, graphtest.TraceOptions{})
	c := &clocked{bundle: b, now: time.Now().Add(-time.Hour).Truncate(time.Second), rows: &traceRows{}}
	clock := func() time.Time { return c.now }
	inner := senderFunc(func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
		_, err := b.q.States.Create(ctx, contract.JobState{JobID: jobID, Profile: profile, State: contract.StateSent, UpdatedAt: c.now})
		return contract.SendResult{Status: 202}, err
	})
	c.send = tracking.Wrap(inner, b.st, clock)
	c.track = tracking.New(tracking.Config{Skew: 2 * time.Minute, Now: clock}, b.st, b.q.States, b.q.Events, c.rows, zerolog.Nop(), nil, []string{"billing"})
	return c
}

func (c *clocked) sendAt(t *testing.T, at time.Duration, id string, to ...string) time.Time {
	t.Helper()
	c.now = c.now.Truncate(time.Hour).Add(at)
	if _, err := c.send.Send(c.ctx, "billing", id, &contract.Job{From: sender, To: to, Subject: "s", Text: "t"}); err != nil {
		t.Fatal(err)
	}
	return c.now
}

func (c *clocked) pass(t *testing.T, at time.Duration) {
	t.Helper()
	c.now = c.now.Truncate(time.Hour).Add(at)
	if err := c.track.Pass(c.ctx); err != nil {
		t.Fatal(err)
	}
}

func row(mid, rcpt string, at time.Time, status string) graphmail.MessageTrace {
	return graphmail.MessageTrace{ID: "trace-" + mid, MessageID: "<" + mid + "@contoso.com>", ReceivedDateTime: at,
		RecipientAddress: rcpt, SenderAddress: sender, Status: status}
}

// want checks that job id's recipient rcpt has exactly one event ev from
// the row of Message-ID mid ("" = none yet).
func (c *clocked) want(t *testing.T, id, rcpt string, ev contract.EventType, mid string) {
	t.Helper()
	got := c.deliveryEvents(t, id)[rcpt]
	if ev == "" {
		if len(got) != 0 {
			t.Errorf("%s %s: %d event(s) (%s from %s), want none yet", id, rcpt, len(got), got[0].Event, got[0].Trace.MessageID)
		}
		return
	}
	if len(got) != 1 || got[0].Event != ev || got[0].Trace == nil || got[0].Trace.MessageID != "<"+mid+"@contoso.com>" ||
		got[0].Trace.Correlation != contract.CorrelationTime {
		t.Errorf("%s %s: %+v, want one %s from the row of %s (correlation time)", id, rcpt, got, ev, mid)
	}
}

// TestCorrelationSameRecipient: two sendMail jobs of one sender to one
// address close in time, correlated by sender, recipient and time, get
// each its own row:
//   - the later job's row appears in the trace first: neither is matched
//     until both rows are there (the earlier job does not take it);
//   - a job sent 30 s after an earlier one to the same address, once the
//     earlier one is settled: the earlier row (inside the later job's
//     window) stays the earlier job's (its learned Message-ID claims it);
//   - a job to two addresses learns its Message-ID from the address only
//     it mails, and with it its row to the shared address, though
//     Exchange's clock put that row before the other job's send.
func TestCorrelationSameRecipient(t *testing.T) {
	t.Run("later row first", func(t *testing.T) {
		c := newClocked(t)
		tA := c.sendAt(t, 0, "a", "x@example.com")
		tB := c.sendAt(t, 10*time.Second, "b", "x@example.com")
		c.rows.add(row("b", "x@example.com", tB.Add(time.Second), graphmail.TraceDelivered))
		c.pass(t, 20*time.Second)
		c.want(t, "a", "x@example.com", "", "")
		c.want(t, "b", "x@example.com", "", "")
		c.rows.add(row("a", "x@example.com", tA.Add(time.Second), graphmail.TraceQuarantined))
		c.pass(t, 40*time.Second)
		c.want(t, "a", "x@example.com", contract.EventQuarantined, "a")
		c.want(t, "b", "x@example.com", contract.EventDelivered, "b")
	})
	t.Run("earlier job settled", func(t *testing.T) {
		c := newClocked(t)
		tA := c.sendAt(t, 0, "a", "x@example.com")
		c.rows.add(row("a", "x@example.com", tA.Add(time.Second), graphmail.TraceDelivered))
		c.pass(t, 10*time.Second)
		c.want(t, "a", "x@example.com", contract.EventDelivered, "a")
		tB := c.sendAt(t, 30*time.Second, "b", "x@example.com")
		c.rows.add(row("b", "x@example.com", tB.Add(time.Second), graphmail.TraceQuarantined))
		c.pass(t, 40*time.Second)
		c.want(t, "b", "x@example.com", contract.EventQuarantined, "b")
		// Once no job of the sender can see their rows, both records go.
		c.pass(t, 20*time.Minute)
		for _, id := range []string{"a", "b"} {
			if r, err := c.st.Record(c.ctx, "billing", id); err != nil || r != nil {
				t.Errorf("record %s kept: %+v %v", id, r, err)
			}
		}
	})
	t.Run("learned from another recipient", func(t *testing.T) {
		c := newClocked(t)
		tB := c.sendAt(t, 0, "b", "x@example.com")
		c.sendAt(t, time.Second, "a", "x@example.com", "y@example.com")
		c.rows.add(row("a", "x@example.com", tB.Add(500*time.Millisecond), graphmail.TraceDelivered),
			row("a", "y@example.com", tB.Add(500*time.Millisecond), graphmail.TraceDelivered),
			row("b", "x@example.com", tB.Add(2*time.Second), graphmail.TraceQuarantined))
		c.pass(t, 20*time.Second)
		c.want(t, "b", "x@example.com", contract.EventQuarantined, "b")
		c.want(t, "a", "x@example.com", contract.EventDelivered, "a")
		c.want(t, "a", "y@example.com", contract.EventDelivered, "a")
	})
}

// TestTrackerDownForAnHour: jobs sent while no tracker runs (their records
// written by the send, their rows in the trace) all get their events, once
// each, from the first pass an hour later: the records, not the tracker's
// memory, say what is open, and the window reaches back to the oldest.
func TestTrackerDownForAnHour(t *testing.T) {
	c := newClocked(t)
	t1 := c.sendAt(t, 0, "j1", "ann@example.com", "bob@example.com")
	t2 := c.sendAt(t, 20*time.Second, "j2", "ann@example.com")
	t3 := c.sendAt(t, 50*time.Minute, "j3", "carl@example.com")
	c.rows.add(row("j1", "ann@example.com", t1.Add(time.Second), graphmail.TraceDelivered),
		row("j1", "bob@example.com", t1.Add(time.Second), graphmail.TraceFailed),
		row("j2", "ann@example.com", t2.Add(time.Second), graphmail.TraceQuarantined),
		row("j3", "carl@example.com", t3.Add(time.Second), graphmail.TraceDelivered))
	c.pass(t, 70*time.Minute)
	c.pass(t, 71*time.Minute)
	c.want(t, "j1", "ann@example.com", contract.EventDelivered, "j1")
	c.want(t, "j1", "bob@example.com", contract.EventBounced, "j1")
	c.want(t, "j2", "ann@example.com", contract.EventQuarantined, "j2")
	c.want(t, "j3", "carl@example.com", contract.EventDelivered, "j3")
	if sup, err := c.st.Suppressed(c.ctx, "billing", "bob@example.com", c.now); err != nil || sup == nil {
		t.Errorf("the bounce an hour ago did not suppress bob@: %v %v", sup, err)
	}
}

// TestCorrelationMIMEMessageID: a MIME job carries its own Message-ID
// field. When a trace row has it, the job takes that row (correlation
// messageId), even where time would give it another job's row (Exchange
// received the two in the other order); when no row has it (Exchange
// replaced it), the job is matched by time as any sendMail job.
func TestCorrelationMIMEMessageID(t *testing.T) {
	c := newClocked(t)
	mime := func(mid string) *contract.MIME {
		msg := "Message-ID: " + mid + "\r\nFrom: " + sender + "\r\nTo: x@example.com\r\nSubject: s\r\n\r\nbody\r\n"
		return &contract.MIME{ContentBase64: base64.StdEncoding.EncodeToString([]byte(msg))}
	}
	sendMIME := func(at time.Duration, id, mid string) time.Time {
		c.now = c.now.Truncate(time.Hour).Add(at)
		if _, err := c.send.Send(c.ctx, "billing", id, &contract.Job{From: sender, To: []string{"x@example.com"}, MIME: mime(mid)}); err != nil {
			t.Fatal(err)
		}
		return c.now
	}
	tA := sendMIME(0, "a", "<a@contoso.com>")
	sendMIME(time.Second, "b", "<b@contoso.com>")
	tC := sendMIME(30*time.Minute, "c", "<c@contoso.com>")
	c.rows.add(row("b", "x@example.com", tA.Add(200*time.Millisecond), graphmail.TraceQuarantined),
		row("a", "x@example.com", tA.Add(1500*time.Millisecond), graphmail.TraceDelivered),
		row("exchange-own-id", "x@example.com", tC.Add(time.Second), graphmail.TraceDelivered))
	c.pass(t, 31*time.Minute)
	for _, w := range []struct {
		id, mid, corr string
		ev            contract.EventType
	}{{"a", "<a@contoso.com>", contract.CorrelationMessageID, contract.EventDelivered},
		{"b", "<b@contoso.com>", contract.CorrelationMessageID, contract.EventQuarantined},
		{"c", "<exchange-own-id@contoso.com>", contract.CorrelationTime, contract.EventDelivered}} {
		got := c.deliveryEvents(t, w.id)["x@example.com"]
		if len(got) != 1 || got[0].Event != w.ev || got[0].Trace == nil || got[0].Trace.MessageID != w.mid || got[0].Trace.Correlation != w.corr {
			t.Errorf("job %s: %+v, want one %s from %s (correlation %s)", w.id, got, w.ev, w.mid, w.corr)
		}
	}
}
