package worker

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestSentStateSurvivesStateStoreOutage: Graph accepted the mail, then the
// job-state bucket was unavailable for a while (a JetStream leader election in
// a cluster, found by TestReliabilityClusterNodeLoss). The worker must keep
// trying to record `sent` before it acks, or the job stays `sending` for ever:
// status lies, and a later duplicate publish is sent again instead of
// suppressed.
func TestSentStateSurvivesStateStoreOutage(t *testing.T) {
	t.Parallel()
	var b *bundle
	restored := make(chan struct{})
	sender := SenderFunc(func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
		// The bucket goes away after the sending mark and comes back 1.5s later.
		if err := b.js.DeleteKeyValue(ctx, contract.BucketState); err != nil {
			t.Errorf("delete bucket: %v", err)
		}
		go func() {
			defer close(restored)
			time.Sleep(1500 * time.Millisecond)
			if _, err := b.js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: contract.BucketState, History: 1, TTL: time.Hour}); err != nil {
				t.Errorf("recreate bucket: %v", err)
			}
		}()
		return contract.SendResult{Status: 202, RequestID: "r1", ClientRequestID: jobID}, nil
	})
	b = setup(t, Config{}, sender)
	id := b.publish(demoJob("outage-1"))
	<-restored
	st := b.waitState(id, contract.StateSent)
	if st.Attempts != 1 {
		t.Errorf("attempts %d, want 1", st.Attempts)
	}
}

// blockingDelivery counts InProgress calls; the first one blocks until released.
type blockingDelivery struct {
	Delivery
	mu      sync.Mutex
	calls   int
	entered chan struct{}
	release chan struct{}
}

func (d *blockingDelivery) InProgress() error {
	d.mu.Lock()
	d.calls++
	first := d.calls == 1
	d.mu.Unlock()
	if first {
		close(d.entered)
		<-d.release
	}
	return nil
}

func (d *blockingDelivery) n() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls
}

// TestKeepAliveStopDuringBeat: a Stop that lands while a heartbeat is being
// sent must not be undone by the beat re-arming its timer (the job would be
// kept alive for ever). Found by the broker-restart run under -race, which
// also flagged the timer being read by its first firing before it was stored.
func TestKeepAliveStopDuringBeat(t *testing.T) {
	p := &Pool{cfg: Config{AckWait: 6 * time.Millisecond}}
	d := &blockingDelivery{entered: make(chan struct{}), release: make(chan struct{})}
	hb := p.keepAlive(d)
	<-d.entered
	hb.Stop()
	close(d.release)
	// The beat under way has finished when no goroutine runs a heartbeat
	// callback; then the timer must not be armed again, and no other beat
	// may have run.
	eventually(t, 30*time.Second, "the beat under way to finish", func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), ".keepAlive.func")
	})
	hb.mu.Lock()
	armed := hb.t.Stop()
	hb.mu.Unlock()
	if n := d.n(); n != 1 || armed {
		t.Fatalf("%d InProgress calls after Stop (want 1), timer armed again: %v", n, armed)
	}
}

// TestRetryScheduledWhenStateWriteFails: a retryable failure whose job-state
// write fails is still put back with its retry delay, not left to the ack wait.
func TestRetryScheduledWhenStateWriteFails(t *testing.T) {
	t.Parallel()
	var b *bundle
	var mu sync.Mutex
	var calls []time.Time
	sender := SenderFunc(func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
		mu.Lock()
		calls = append(calls, time.Now())
		n := len(calls)
		mu.Unlock()
		if n > 1 {
			return contract.SendResult{Status: 202}, nil
		}
		// The state store is gone when the worker records the retry.
		if err := b.js.DeleteKeyValue(ctx, contract.BucketState); err != nil {
			t.Errorf("delete bucket: %v", err)
		}
		return contract.SendResult{}, &contract.SendError{Class: contract.ClassRetryable, Status: 503, Ambiguous: true}
	})
	// The first delivery's answer tells a put-back (a nak) from a delivery
	// left to the consumer's 5 s ack wait, whatever the machine's speed.
	naks := &nakLog{}
	js := startServer(t)
	b = startPool(t, js, Config{}, sender, testOptions{consumer: naks.wrap})
	b.publish(demoJob("state-write-fails"))
	eventually(t, 15*time.Second, "the first send", func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) == 1 })
	// While the store is gone the job keeps coming back (and is put back as
	// an infrastructure failure): it was naked, not left to the ack wait.
	eventually(t, 30*time.Second, "the first delivery naked", func() bool { return naks.firstNaked.Load() })
	if _, err := b.js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: contract.BucketState, History: 1, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the retry", func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) == 2 })
}

// TestFinalEventNotLostAtShutdown: a replica that recorded "sent" but could
// not publish the final event before its drain timeout puts the job back
// rather than acking it, and the next replica publishes the event — the mail
// is not sent again.
func TestFinalEventNotLostAtShutdown(t *testing.T) {
	t.Parallel()
	js := startServer(t)
	var calls atomic.Int32
	sender := SenderFunc(func(ctx context.Context, profile, jobID string, job *contract.Job) (contract.SendResult, error) {
		calls.Add(1)
		// The status stream is unavailable from now until it is provisioned again.
		if err := js.DeleteStream(ctx, contract.StreamStatus); err != nil {
			t.Errorf("delete stream: %v", err)
		}
		return contract.SendResult{Status: 202, RequestID: "r1"}, nil
	})
	first := startPool(t, js, Config{DrainTimeout: 300 * time.Millisecond}, sender, testOptions{})
	first.publish(demoJob("event-at-shutdown"))
	first.waitState("event-at-shutdown", contract.StateSent)
	first.stop() // the drain timeout cuts the event's retries short

	if err := queue.Provision(context.Background(), js, queue.Config{AckWait: 5 * time.Second, WorkersTTL: 3 * time.Second, Profiles: []string{"demo"}}); err != nil {
		t.Fatal(err)
	}
	second := startPool(t, js, Config{}, sender, testOptions{})
	ev := second.waitEvent("event-at-shutdown", contract.EventSent)
	if ev.Graph == nil || ev.Graph.RequestID != "r1" {
		t.Fatalf("sent event = %+v", ev)
	}
	eventually(t, 5*time.Second, "the job acked", func() bool { return second.pending() == 0 })
	if n := calls.Load(); n != 1 {
		t.Fatalf("sender called %d times, want 1", n)
	}
}

// nakLog wraps a Consumer and records whether a first delivery was naked
// (with or without a delay).
type nakLog struct{ firstNaked atomic.Bool }

func (l *nakLog) wrap(c Consumer) Consumer { return nakConsumer{c, l} }

type nakConsumer struct {
	Consumer
	log *nakLog
}

func (c nakConsumer) Messages(prefetch int) (Messages, error) {
	m, err := c.Consumer.Messages(prefetch)
	if err != nil {
		return nil, err
	}
	return nakMessages{m, c.log}, nil
}

type nakMessages struct {
	Messages
	log *nakLog
}

func (m nakMessages) Next() (Delivery, error) {
	d, err := m.Messages.Next()
	if err != nil {
		return nil, err
	}
	return nakDelivery{d, m.log}, nil
}

type nakDelivery struct {
	Delivery
	log *nakLog
}

func (d nakDelivery) first() bool {
	_, delivered, _, ok := d.Meta()
	return ok && delivered == 1
}

func (d nakDelivery) Nak() error {
	if d.first() {
		d.log.firstNaked.Store(true)
	}
	return d.Delivery.Nak()
}

func (d nakDelivery) NakWithDelay(delay time.Duration) error {
	if d.first() {
		d.log.firstNaked.Store(true)
	}
	return d.Delivery.NakWithDelay(delay)
}
