package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/tracking"
)

// The tracking scenario measures delivery tracking in one process: N mails
// (default 10,000; one recipient each, 1% to bounce@…) from 10 mailboxes go
// through the tracking sender wrapper and the real Graph client (MSAL, TLS
// fake) at a fixed rate, and a tracker (interval 1 s) reads the fake's message
// trace (Lag 1 s, Settle 2 s: the fake's, not Exchange's, which lags minutes).
// It reports the message trace requests the tracker made per 10,000 mails,
// the most in any 5-minute window against the budget, and the delay from the
// job's `sent` to its delivery event. The delay is the fake's lag + settle +
// up to one pass interval: it measures the tracker's overhead, not Exchange.
//
//	go run ./loadtest -n 10000 tracking
func runTracking(ctx context.Context, opts Options, stdout, stderr io.Writer) error {
	n := opts.N
	if n <= 0 {
		n = 10000
	}
	const boxes = 10
	const rate = 200 // mails per second, all mailboxes together
	dir, err := os.MkdirTemp("", "mailworker-tracking-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, NoLog: true, NoSigs: true,
		StoreDir: dir})
	if err != nil {
		return err
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		return errors.New("nats not ready")
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if err := queue.Provision(ctx, js, queue.Config{Profiles: []string{"lt"}}); err != nil {
		return err
	}
	q, err := queue.Open(ctx, js)
	if err != nil {
		return err
	}
	st, err := tracking.Open(ctx, js, 1)
	if err != nil {
		return err
	}
	const secret = "loadtest-tracking"
	fake, err := graphtest.New(graphtest.Options{ClientSecret: secret, Roles: []string{graphtest.TraceRole}, MaxConcurrentPerMailbox: -1,
		Trace: graphtest.TraceOptions{Lag: time.Second, Settle: 2 * time.Second}})
	if err != nil {
		return err
	}
	defer fake.Close()
	c, err := graphmail.New(graphmail.Config{Name: "lt", TenantID: fake.TenantID(), ClientID: fake.ClientID(), AuthorityHost: fake.URL(),
		GraphURL: fake.GraphURL(), Credential: graphmail.Credential{ClientSecret: secret}, HTTPClient: fake.Client(), Timeout: 30 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close()

	var sentMu sync.Mutex
	sentAt := map[string]time.Time{}
	inner := senderFunc(func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
		m := &graphmail.Message{From: job.From, To: []graphmail.Address{{Address: job.To[0]}}, Subject: "s", Text: "t"}
		if _, err := c.Send(ctx, m); err != nil {
			return contract.SendResult{}, err
		}
		now := time.Now()
		sentMu.Lock()
		sentAt[jobID] = now
		sentMu.Unlock()
		_, err := q.States.Create(ctx, contract.JobState{JobID: jobID, Profile: profile, State: contract.StateSent, UpdatedAt: now})
		return contract.SendResult{Status: 202}, err
	})
	send := tracking.Wrap(inner, st, nil)

	var delays []time.Duration
	var delMu sync.Mutex
	var settled atomic.Int64
	sub, err := nc.Subscribe(contract.StatusSubjectPrefix+"lt.>", func(m *nats.Msg) {
		var ev contract.Event
		if json.Unmarshal(m.Data, &ev) != nil || ev.Recipient == "" {
			return
		}
		now := time.Now()
		sentMu.Lock()
		t0 := sentAt[ev.JobID]
		sentMu.Unlock()
		delMu.Lock()
		delays = append(delays, now.Sub(t0))
		delMu.Unlock()
		settled.Add(1)
	})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()

	tr := tracking.New(tracking.Config{Interval: time.Second, Skew: 10 * time.Second}, st, q.States, q.Events, c, zerolog.Nop(), nil, []string{"lt"})
	tctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { tr.Run(tctx); close(done) }()
	defer func() { stop(); <-done }()

	start := time.Now()
	tick := time.NewTicker(time.Second / rate)
	for i := range n {
		<-tick.C
		to := fmt.Sprintf("user%d@example.com", i)
		if i%100 == 0 {
			to = fmt.Sprintf("bounce%d@example.com", i)
		}
		job := &contract.Job{From: fmt.Sprintf("box%02d@loadtest.example", i%boxes), To: []string{to}, Subject: "s", Text: "t"}
		if _, err := send.Send(ctx, "lt", fmt.Sprintf("t%06d", i), job); err != nil {
			tick.Stop()
			return err
		}
	}
	tick.Stop()
	sending := time.Since(start)
	deadline := time.Now().Add(15 * time.Minute)
	for settled.Load() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // a measurement loop, not a test
	}
	total := time.Since(start)
	reqs := len(fake.TraceRequests())
	delMu.Lock()
	slices.Sort(delays)
	pct := func(p float64) time.Duration {
		if len(delays) == 0 {
			return 0
		}
		return delays[min(len(delays)-1, int(p*float64(len(delays))))]
	}
	fmt.Fprintf(stdout, "| mails | mailboxes | send rate | sending | all settled | delivery events | trace requests | per 10,000 mails | most in a 5-min window | throttled | sent→event p50 | p95 | max |\n")
	fmt.Fprintf(stdout, "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(stdout, "| %d | %d | %d/s | %.1f s | %.1f s | %d | %d | %.0f | %d | %d | %.1f s | %.1f s | %.1f s |\n",
		n, boxes, rate, sending.Seconds(), total.Seconds(), len(delays), reqs, float64(reqs)*10000/float64(n),
		fake.MaxTraceRequestsInWindow(), fake.TraceThrottled(), pct(0.5).Seconds(), pct(0.95).Seconds(), pct(1).Seconds())
	delMu.Unlock()
	if settled.Load() < int64(n) {
		return fmt.Errorf("%d of %d recipients settled within 15 minutes", settled.Load(), n)
	}
	return nil
}

type senderFunc func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error)

func (f senderFunc) Send(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
	return f(ctx, profile, jobID, job)
}
