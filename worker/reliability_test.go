package worker

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue"
)

// TestSentStateSurvivesStateStoreOutage: Graph accepted the mail, then the
// job-state bucket was unavailable for a while (a JetStream leader election in
// a cluster, found by TestReliabilityClusterNodeLoss). The worker must keep
// trying to record `sent` before it acks, or the job stays `sending` for ever:
// status lies, and a later duplicate publish is sent again instead of
// suppressed.
func TestSentStateSurvivesStateStoreOutage(t *testing.T) {
	var b *bundle
	restored := make(chan struct{})
	sender := SenderFunc(func(ctx context.Context, profile, jobID string, job *queue.Job) (SendResult, error) {
		// The bucket goes away after the sending mark and comes back 1.5s later.
		if err := b.js.DeleteKeyValue(ctx, queue.BucketState); err != nil {
			t.Errorf("delete bucket: %v", err)
		}
		go func() {
			defer close(restored)
			time.Sleep(1500 * time.Millisecond)
			if _, err := b.js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: queue.BucketState, History: 1, TTL: time.Hour}); err != nil {
				t.Errorf("recreate bucket: %v", err)
			}
		}()
		return SendResult{Status: 202, RequestID: "r1", ClientRequestID: jobID}, nil
	})
	b = setup(t, Config{}, sender)
	id := b.publish(demoJob("outage-1"))
	<-restored
	st := b.waitState(id, queue.StateSent)
	if st.Attempts != 1 {
		t.Errorf("attempts %d, want 1", st.Attempts)
	}
}
