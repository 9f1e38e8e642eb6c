package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// peakRSS is the most resident memory process pid has had (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc to measure memory: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// A producer put a 150 MB object into its own store and named it in a job:
// a worker went from 33 MB to 713 MB and was OOM-killed, on sendMail and
// draft-mode profiles alike (issue 17, item 5). The built binary refuses
// every such job by the object's size before loading it: dead-lettered
// message_too_large, no Graph call, and the worker's peak memory stays far
// below the object's size.
func TestLargeObjectRefusedWithoutLoading(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	ns := startRelNATS(t)
	fake := newFake(t, graphtest.Options{})
	h := newHarness(t, ns.url(), fake, relWorker{},
		relProfile{name: "rel", senders: []string{"box1@rel.example"}},
		relProfile{name: "reldraft", senders: []string{"box1@reldraft.example"}, deliveryMode: "draft"})
	p := h.startReplica()

	const size = 150 << 20
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	refs := map[string]string{}
	for _, profile := range []string{"rel", "reldraft"} {
		// The replica provisions the profile's object store at start.
		for {
			ref, err := h.q.Attachments.PutReader(ctx, profile, "huge.eml", io.LimitReader(zeroes{}, size))
			if err == nil {
				refs[profile] = ref
				break
			}
			if !errors.Is(err, queue.ErrNoAttachmentStore) || ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Under the profile's maxMessageSize but over what its path carries:
	// refused by the path's own rule (graphmail.Sender.Check), as unread.
	mid, err := h.q.Attachments.PutReader(ctx, "rel", "mid.eml", io.LimitReader(zeroes{}, 10<<20))
	if err != nil {
		t.Fatal(err)
	}
	jobs := map[string]*contract.Job{
		"mime-mid": {From: "box1@rel.example", To: []string{"a@example.com"}, MIME: &contract.MIME{ObjectRef: mid}},
		"attachment-mid": {From: "box1@rel.example", To: []string{"a@example.com"}, Subject: "s", Text: "t",
			Attachments: []contract.Attachment{{Name: "mid.bin", ObjectRef: mid}}},
		"mime-sendmail": {From: "box1@rel.example", To: []string{"a@example.com"}, MIME: &contract.MIME{ObjectRef: refs["rel"]}},
		"mime-draft":    {From: "box1@reldraft.example", To: []string{"a@example.com"}, MIME: &contract.MIME{ObjectRef: refs["reldraft"]}},
		"attachment-sendmail": {From: "box1@rel.example", To: []string{"a@example.com"}, Subject: "s", Text: "t",
			Attachments: []contract.Attachment{{Name: "huge.bin", ObjectRef: refs["rel"]}}},
	}
	var ids []string
	for id, job := range jobs {
		job.ID = id
		profile := "rel"
		if strings.HasSuffix(id, "-draft") {
			profile = "reldraft"
		}
		if _, err := h.pub.Publish(ctx, profile, job); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	h.waitTerminal(ids, time.Minute)
	peak := peakRSS(t, p.cmd.Process.Pid)
	h.stopAll([]*proc{p})
	for _, id := range ids {
		st, _, err := h.stateOf(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != contract.StateDeadLettered || st.LastError == nil || st.LastError.Reason != contract.ReasonMessageTooLarge {
			t.Errorf("job %s: %s %+v, want dead-lettered message_too_large", id, st.State, st.LastError)
		}
	}
	if n := fake.SendRequests(); n != 0 {
		t.Errorf("%d sendMail requests for jobs refused by size", n)
	}
	t.Logf("worker peak RSS %d MB with three jobs naming a %d MB object and two a 10 MB one", peak>>20, size>>20)
	if peak > 100<<20 {
		t.Errorf("worker peak RSS %d MB: the object was loaded (the worker idles at about 33 MB)", peak>>20)
	}
}

// A job that kills the worker holding it (here SIGKILL while its sendMail
// is in flight, as an OOM kill would) came back after the ack wait and took
// the next replica down, for ever (MaxDeliver -1). After worker.maxStops (3)
// such stops it is dead-lettered worker_crashed, and no replica receives it
// again.
func TestJobThatKillsWorkersIsSetAside(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	ns := startRelNATS(t)
	// Every send hangs far beyond the kill: the job is in hand when it comes.
	fake := newFake(t, graphtest.Options{Latency: 5 * time.Minute})
	h := newHarness(t, ns.url(), fake, relWorker{ackWait: 2 * time.Second, sendTimeout: 4 * time.Second},
		relProfile{name: "rel", senders: []string{"box1@rel.example"}})
	ids := h.publish("rel", "killer", 1)
	const maxStops = 3 // worker.maxStops's default
	for kills := 1; kills <= maxStops; kills++ {
		p := h.startReplica()
		deadline := time.Now().Add(time.Minute)
		for fake.SendRequests() < kills {
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: the job's send did not start within a minute:\n%s", kills, tail(p.stderr.String(), 3000))
			}
			time.Sleep(5 * time.Millisecond)
		}
		kill(p) // the job is in hand: its state says `sending`
	}
	p := h.startReplica()
	h.waitTerminal(ids, time.Minute)
	h.stopAll([]*proc{p})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, _, err := h.stateOf(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if st.State != contract.StateDeadLettered || st.LastError == nil || st.LastError.Reason != contract.ReasonWorkerCrashed || st.Stops != maxStops {
		t.Fatalf("state %s, stops %d, error %+v; want dead-lettered worker_crashed after %d stops", st.State, st.Stops, st.LastError, maxStops)
	}
	dl, err := h.q.DLQ.Get(ctx, "rel", ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if dl.Reason != contract.ReasonWorkerCrashed || !strings.Contains(dl.Error, "stopped 3 times") || !dl.Ambiguous {
		t.Errorf("dead letter %s %q ambiguous=%v; want worker_crashed, saying how often, ambiguous", dl.Reason, dl.Error, dl.Ambiguous)
	}
	if n := fake.SendRequests(); n != maxStops {
		t.Errorf("%d sendMail requests, want %d: the job reached a worker after it was set aside", n, maxStops)
	}
	h.checkNoSecrets()
}
