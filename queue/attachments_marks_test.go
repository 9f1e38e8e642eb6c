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
	deadline := time.Now().Add(time.Minute) // an upper bound (CI shares two cores under -race)
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

// TestCountUnder: processes counting one key (each with its own
// Attachments, as replicas) count each success once, whatever the state
// each holds from its last count and the counts it took ahead: never more
// than limit successes, and exactly limit once each has handed out what it
// took.
func TestCountUnder(t *testing.T) {
	b := setup(t)
	procs := []*Attachments{NewAttachments(b.js), NewAttachments(b.js), NewAttachments(b.js)}
	const limit = 25
	var mu sync.Mutex
	yes := 0
	var wg sync.WaitGroup
	for _, a := range procs {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					ok, err := a.CountUnder(b.ctx, "billing", "rate/w1", "rate/w0", limit)
					if err != nil {
						t.Error(err)
						return
					}
					if ok {
						mu.Lock()
						yes++
						mu.Unlock()
					}
				}
			}()
		}
	}
	wg.Wait()
	if yes > limit {
		t.Fatalf("%d counted, limit %d", yes, limit)
	}
	// Counts a process took ahead and has not handed out yet are its own:
	// each hands them out before it says no.
	for _, a := range procs {
		for {
			ok, err := a.CountUnder(b.ctx, "billing", "rate/w1", "rate/w0", limit)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			yes++
		}
	}
	if yes != limit {
		t.Fatalf("%d counted, want %d", yes, limit)
	}
	// One process alone: its own last state is right, one publish per count.
	a := NewAttachments(b.js)
	for i := range 3 {
		if ok, err := a.CountUnder(b.ctx, "billing", "rate/w2", "rate/w1", 3); !ok || err != nil {
			t.Fatalf("count %d: %v %v", i+1, ok, err)
		}
	}
	if ok, _ := a.CountUnder(b.ctx, "billing", "rate/w2", "rate/w1", 3); ok {
		t.Fatal("over the limit counted")
	}
	// Another process counted since: the stale state is caught.
	if ok, _ := procs[0].CountUnder(b.ctx, "billing", "rate/w2", "", 4); !ok {
		t.Fatal("fourth under a limit of 4 refused")
	}
	if ok, _ := a.CountUnder(b.ctx, "billing", "rate/w2", "", 4); ok {
		t.Fatal("a stale state counted a fifth under a limit of 4")
	}
}

// TestMarkAsync: MarkAsync and UnmarkAsync are Mark and Unmark sent without
// waiting: a mark's revision, and a removal at an older revision leaves the
// mark written since (the retry record of a later submission) in place.
func TestMarkAsync(t *testing.T) {
	b := setup(t)
	a := NewAttachments(b.js)
	w1, err := a.MarkAsync(b.ctx, "billing", "k", "w1/job-1")
	if err != nil {
		t.Fatal(err)
	}
	w2, err := a.MarkAsync(b.ctx, "billing", "k", "w1/job-2")
	if err != nil {
		t.Fatal(err)
	}
	rev1, err1 := w1(b.ctx)
	rev2, err2 := w2(b.ctx)
	if err1 != nil || err2 != nil || rev1 == 0 || rev2 <= rev1 {
		t.Fatalf("revisions %d %v, %d %v", rev1, err1, rev2, err2)
	}
	u, err := a.UnmarkAsync(b.ctx, "billing", "k", "w1/", rev1)
	if err != nil {
		t.Fatal(err)
	}
	if err := u(b.ctx); err != nil {
		t.Fatalf("removal at an older revision: %v, want nil (not its to remove)", err)
	}
	if v, _, found, err := a.Marked(b.ctx, "billing", "k"); err != nil || !found || v != "w1/job-2" {
		t.Fatalf("after the stale removal: %q %v %v, want the later mark", v, found, err)
	}
	u, _ = a.UnmarkAsync(b.ctx, "billing", "k", "w1/", rev2)
	if err := u(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, found, err := a.Marked(b.ctx, "billing", "k"); err != nil || found {
		t.Fatalf("after the removal: found %v %v", found, err)
	}
}
