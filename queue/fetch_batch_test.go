package queue

import (
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestJobsFetchInBatches: a worker that takes its jobs one at a time, as a
// busy pool does (each job it takes gives one token back), does not settle
// into one pull request per job; it asks for a quarter of its prefetch at a
// time while it still has that many waiting. One pull request per job
// doubled the CPU per job of the worker and of nats-server in loadtest max
// (docs/benchmarks.md, "Worker CPU per job").
func TestJobsFetchInBatches(t *testing.T) {
	b := setup(t)
	p := NewPublisher(b.js)
	const jobs, prefetch = 400, 32
	for range jobs {
		if _, err := p.Publish(b.ctx, "billing", &contract.Job{From: "billing@contoso.com", To: []string{"a@x.com"}, Text: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	// Every pull request of billing's consumer, as the server receives it.
	var pulls atomic.Int64
	sub, err := b.nc.Subscribe("$JS.API.CONSUMER.MSG.NEXT."+contract.JobsStream("billing")+"."+contract.ConsumerName,
		func(*nats.Msg) { pulls.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	js, err := b.q.Jobs(b.ctx, []string{"billing"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := js.Messages(prefetch)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Drain()
	for range jobs {
		d := next(t, m)
		_ = d.Ack()
		// The job's work: the next job is taken a moment later, as a pool
		// with every slot busy does (not a wait for a condition).
		time.Sleep(time.Millisecond)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, most := pulls.Load(), int64(jobs/(prefetch/8)); got > most {
		t.Fatalf("%d pull requests for %d jobs taken one at a time (prefetch %d), want at most %d", got, jobs, prefetch, most)
	}
	t.Logf("%d pull requests for %d jobs", pulls.Load(), jobs)
}

// TestIdleConsumerWaitsWithOneToken: a consumer with nothing to fetch (an
// idle profile, a deferral consumer with nothing due) asks for one message
// while it waits out its pull request, so it holds one token of the
// prefetch, not all of it: a waiting request holds its tokens until it
// expires (fetchWait), and an idle consumer that asked for the whole
// prefetch left a busy profile one token, one pull request per job.
func TestIdleConsumerWaitsWithOneToken(t *testing.T) {
	b := setup(t)
	batches := make(chan int, 16)
	sub, err := b.nc.Subscribe("$JS.API.CONSUMER.MSG.NEXT.>", func(msg *nats.Msg) {
		var req struct {
			Batch int `json:"batch"`
		}
		if err := json.Unmarshal(msg.Data, &req); err != nil {
			req.Batch = -1 // unreadable: fails below
		}
		select {
		case batches <- req.Batch:
		default: // more than the test reads
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	js, err := b.q.Jobs(b.ctx, []string{"billing"}) // its jobs and its due deferrals: both empty
	if err != nil {
		t.Fatal(err)
	}
	m, err := js.Messages(32)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Drain()
	for range len(js.sources) {
		select {
		case n := <-batches:
			if n != 1 {
				t.Fatalf("an idle consumer asked for %d messages (prefetch 32), want 1", n)
			}
		case <-time.After(60 * time.Second): // an upper bound (CI shares two cores under -race)
			t.Fatal("no pull request within 60s")
		}
	}
	// The waiting request still serves a job that comes.
	if _, err := NewPublisher(b.js).Publish(b.ctx, "billing", &contract.Job{From: "billing@contoso.com", To: []string{"a@x.com"}, Text: "t"}); err != nil {
		t.Fatal(err)
	}
	_ = next(t, m).Ack()
}
