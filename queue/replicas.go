package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

// Workers is the replica registry (KV MAIL_WORKERS): each running worker
// puts its own key every few seconds, and a key that is not renewed expires
// with the bucket's TTL (Config.WorkersTTL).
type Workers struct {
	kv     jetstream.KeyValue
	stream jetstream.Stream
}

// Beat records that replica id is alive. It returns an error when the bucket
// cannot be written.
func (w *Workers) Beat(ctx context.Context, id string) error {
	if _, err := w.kv.Put(ctx, id, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("queue: replica heartbeat: %w", err)
	}
	return nil
}

// Live returns how many replicas beat within the TTL: the keys of the bucket
// (one stream info request; expired and left keys are gone from the stream).
func (w *Workers) Live(ctx context.Context) (int, error) {
	info, err := w.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("queue: count replicas: %w", err)
	}
	return int(info.State.NumSubjects), nil
}

// Leave removes replica id at once (a clean shutdown), rather than after the
// TTL. It purges the key's messages so that it leaves no delete marker to be
// counted.
func (w *Workers) Leave(ctx context.Context, id string) error {
	if err := w.stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+contract.BucketWorkers+"."+id)); err != nil {
		return fmt.Errorf("queue: replica leave: %w", err)
	}
	return nil
}
