package queue

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestWatchMarks: the watch reports marks written before it and after it,
// their removal, and marks written without the value headers (by an earlier
// version: only the object info's JSON), with their values.
func TestWatchMarks(t *testing.T) {
	b := setup(t)
	a := NewAttachments(b.js)
	if _, err := a.Mark(b.ctx, "billing", "before", "w1/job-1"); err != nil {
		t.Fatal(err)
	}
	// A mark as an earlier version wrote it: JSON only.
	bucket := AttachmentsBucket("billing")
	data, _ := json.Marshal(jetstream.ObjectInfo{Bucket: bucket, NUID: "x", ObjectMeta: jetstream.ObjectMeta{Name: markPrefix + "old", Metadata: map[string]string{"value": "w0/job-0"}}})
	if _, err := b.js.PublishMsg(b.ctx, &nats.Msg{Subject: metaSubject(bucket, markPrefix+"old"), Data: data, Header: nats.Header{"Nats-Rollup": []string{"sub"}}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]MarkUpdate{}
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done, err := a.WatchMarks(ctx, "billing", func(u MarkUpdate) {
		mu.Lock()
		seen[u.Key] = u
		mu.Unlock()
	}, func() { close(ready) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); <-done }()
	<-ready
	rev, err := a.Mark(b.ctx, "billing", "after", "w1/job-2")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Unmark(b.ctx, "billing", "before", "w1/", 0); err != nil {
		t.Fatal(err)
	}
	get := func(k string) MarkUpdate { mu.Lock(); defer mu.Unlock(); return seen[k] }
	deadline := time.Now().Add(10 * time.Second)
	for !get("before").Deleted || get("after").Rev != rev {
		if time.Now().After(deadline) {
			t.Fatalf("updates not seen: %+v", seen)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if u := get("after"); u.Value != "w1/job-2" || u.Deleted || u.At.IsZero() {
		t.Fatalf("after: %+v", u)
	}
	if u := get("before"); u.Value != "w1/" {
		t.Fatalf("removal: %+v, want the value given to Unmark", u)
	}
	if u := get("old"); u.Value != "w0/job-0" || u.Deleted {
		t.Fatalf("mark without headers: %+v", u)
	}
}
