package queue

import (
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
