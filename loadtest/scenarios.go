package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// runSpec is one measured run: a worker run (R mailworker processes) or a
// bare run (one bare-worker process).
type runSpec struct {
	Name      string // row name: "max", "scale-r2", …
	Bare      bool
	Jobs      int // jobs to healthy mailboxes (waited for)
	Mailboxes int // healthy mailboxes, jobs spread round robin
	BadJobs   int // extra jobs to the mailbox that always answers 429 Retry-After 30 (not waited for)
	// FloodJobs are published first by a second profile, "flood": half with
	// notBefore in 2099, half with 500 recipients each to one mailbox, whose
	// 24-hour budget (10,000) they exhaust after 20. Not waited for.
	FloodJobs int
	// KillAfter > 0: SIGKILL the last replica this long after the publish
	// starts; the row's throughput is then the rate in the pacing window
	// after the survivors take its share (see "failover").
	KillAfter time.Duration
	// Timeout > 0 replaces --timeout for this run.
	Timeout     time.Duration
	Concurrency int // worker.concurrency per replica, or bare concurrency
	MaxInFlight int // worker.maxInFlight per replica
	Replicas    int
	PerMinute   int // worker.perMailboxPerMinute

	// Large mail (scenario "large"): every job carries one objectRef
	// attachment of AttachBytes, the profile is in draft mode, and HugeJobs
	// of the Jobs carry HugeBytes instead, each from its own mailbox.
	AttachBytes int64
	HugeJobs    int
	HugeBytes   int64
	// MaxMessageBytes is the mailboxes' maximum message size (Exchange's
	// MaxSendSize, the fake's and the profile's): 0 = Exchange's default,
	// 35 MB, or its maximum, 150 MB, when HugeJobs are sent.
	MaxMessageBytes int64
	UploadChunk     int // worker.uploadChunkBytes (0 = default)

	// fake Graph
	Latency          time.Duration
	Jitter           time.Duration
	FakeMaxPerBox    int // graphtest MaxConcurrentPerMailbox (-1 = unlimited)
	FakePerMinute    int // graphtest SimulatedPerMinuteThrottle: a simulated 429 past N a minute (not documented Graph behaviour)
	BadRetryAfterSec int
}

func (h *harness) size(def int) int {
	if h.opts.N > 0 {
		return h.opts.N
	}
	return def
}

func (h *harness) conc(def int) int {
	if h.opts.Concurrency > 0 {
		return h.opts.Concurrency
	}
	return def
}

func (h *harness) replicas() int {
	if h.opts.Replicas > 0 {
		return h.opts.Replicas
	}
	return 1
}

func (h *harness) latency() time.Duration {
	if h.opts.Latency > 0 {
		return h.opts.Latency
	}
	return 250 * time.Millisecond
}

// scenario runs one named scenario and returns its rows.
func (h *harness) scenario(ctx context.Context, name string) ([]Result, error) {
	switch name {
	case "max":
		c := h.conc(64)
		spec := runSpec{Name: "max", Jobs: h.size(20000), Mailboxes: max(c, 16), Concurrency: c, MaxInFlight: max(512, 2*c),
			Replicas: h.replicas(), FakeMaxPerBox: -1}
		return h.pair(ctx, spec, "bare")
	case "latency":
		c := h.conc(512)
		lat := h.latency()
		spec := runSpec{Name: "latency", Jobs: h.size(20000), Mailboxes: max(c/2, 16), Concurrency: c, MaxInFlight: 2 * c,
			Replicas: h.replicas(), FakeMaxPerBox: -1, Latency: lat, Jitter: lat / 5}
		rs, err := h.pair(ctx, spec, "bare")
		// Little's law: throughput = in flight / time in system.
		mean := lat + lat/10
		for i := range rs {
			rs[i].bound = float64(c*spec.Replicas) / mean.Seconds()
			rs[i].boundWhat = fmt.Sprintf("Little's law %d in flight / %v mean latency", c*spec.Replicas, mean)
		}
		return rs, err
	case "throttle":
		boxes, per := 4, 45
		if h.opts.N > 0 {
			per = max(h.opts.N/boxes, 1)
		}
		spec := runSpec{Name: "throttle", Jobs: boxes * per, Mailboxes: boxes, Concurrency: h.conc(64), MaxInFlight: 512,
			Replicas: h.replicas(), PerMinute: 30, FakeMaxPerBox: 4, FakePerMinute: 30}
		r, err := h.runOne(ctx, spec)
		if r == nil {
			return nil, err
		}
		pace := float64(boxes) * 30 / 60 // jobs/s the mailboxes allow in steady state
		r.RefThroughput = pace
		r.refWhat = fmt.Sprintf("Exchange pace %d mailboxes × 30/min", boxes)
		r.Ratio = ratio(r.Throughput, pace)
		r.drainIdeal = time.Duration(float64(spec.Jobs) / pace * float64(time.Second))
		// A rolling 60 s window lets the first 30 per mailbox go at once.
		r.drainWindow = time.Duration((per-1)/30) * time.Minute
		return []Result{*r}, err
	case "isolation":
		c := h.conc(64)
		n := h.size(8000)
		boxes := max(c/4, 1)
		base := runSpec{Name: "isolation-clean", Jobs: n, Mailboxes: boxes, Concurrency: c, MaxInFlight: 512,
			Replicas: h.replicas(), Latency: 50 * time.Millisecond, Jitter: 10 * time.Millisecond, FakeMaxPerBox: 4}
		bad := base
		bad.Name = "isolation"
		bad.BadJobs = max(n/10, 1)
		bad.BadRetryAfterSec = 30
		return h.againstAlone(ctx, base, bad, "healthy mailboxes without the bad one (isolation-clean)")
	case "deferral":
		// One profile floods the queue with jobs that must wait (far-future
		// notBefore, an exhausted recipient budget); another profile's
		// throughput is compared with its throughput alone.
		c := h.conc(64)
		n := h.size(4000)
		// Latency-bound (16 mailboxes × 4 in flight ÷ 250 ms), so that the
		// ratio measures capacity held, not the two cores' CPU.
		base := runSpec{Name: "deferral-clean", Jobs: n, Mailboxes: max(c/4, 1), Concurrency: c, MaxInFlight: 512,
			Replicas: h.replicas(), Latency: 250 * time.Millisecond, Jitter: 50 * time.Millisecond, FakeMaxPerBox: 4}
		flood := base
		flood.Name = "deferral"
		flood.FloodJobs = 1500 // more than the consumer's 1,000 ack-pending slots
		return h.againstAlone(ctx, base, flood, "the same profile's jobs without the other profile's flood (deferral-clean)")
	case "failover":
		// Two replicas share 4 mailboxes' 30/min; one is killed. Once the
		// survivor counts itself alone (the MAIL_WORKERS TTL, 15 s, and a
		// beat), it should send at the whole pace within one pacing window.
		// The fake's simulated per-minute 429 is off: Microsoft documents
		// none, and the survivor cannot know what the dead replica sent in
		// its last minute; the pacing alone is measured.
		boxes, per := 4, 90
		if h.opts.N > 0 {
			per = max(h.opts.N/boxes, 1)
		}
		spec := runSpec{Name: "failover", Jobs: boxes * per, Mailboxes: boxes, Concurrency: h.conc(64), MaxInFlight: 512,
			Replicas: 2, PerMinute: 30, FakeMaxPerBox: 4, KillAfter: 70 * time.Second, Timeout: 8 * time.Minute}
		r, err := h.runOne(ctx, spec)
		if r == nil {
			return nil, err
		}
		pace := float64(boxes) * 30 / 60
		r.RefThroughput = pace
		r.refWhat = fmt.Sprintf("Exchange pace %d mailboxes × 30/min; jobs/s is the rate in the minute after the survivor took the share", boxes)
		r.Ratio = ratio(r.Throughput, pace)
		return []Result{*r}, err
	case "large":
		// 25 MiB reports over 4 mailboxes and a few 115 MB ones, in draft
		// mode: attachments stream from the object store to upload
		// sessions. 115,000,000 bytes is about the largest file a mailbox
		// whose MaxSendSize is Exchange's maximum, 150 MB (157,286,400
		// bytes), sends: base64 makes it 153,333,336 bytes
		// (contract.MessageSize); a 150 MB file would be refused. The goal:
		// worker peak RSS ≤ 150 MB whatever the attachment size, and no
		// mailbox over 150 MB of upload in any 5 minutes (Outlook's limit;
		// the worker paces it).
		// Memory follows the uploads in flight × the chunk size, not the
		// attachment size: a second row with a smaller chunk.
		spec := runSpec{Name: "large", Jobs: h.size(40) + 2, Mailboxes: 4, Concurrency: h.conc(16), MaxInFlight: 64,
			Replicas: h.replicas(), FakeMaxPerBox: 4, AttachBytes: 25 << 20, HugeJobs: 2, HugeBytes: 115_000_000}
		var out []Result
		for _, chunk := range []int{0, 10 * 320 * 1024} {
			spec.UploadChunk = chunk
			if chunk > 0 {
				spec.Name = fmt.Sprintf("large-chunk%dk", chunk/1024)
			}
			r, err := h.runOne(ctx, spec)
			if r == nil {
				return out, err
			}
			out = append(out, *r)
			if err != nil {
				return out, err
			}
		}
		return out, nil
	case "scale":
		c := h.conc(64)
		lat := h.latency()
		var out []Result
		var one float64
		for _, reps := range []int{1, 2, 4} {
			spec := runSpec{Name: fmt.Sprintf("scale-r%d", reps), Jobs: h.size(4000) * reps, Mailboxes: max(c*4/2, 16),
				Concurrency: c, MaxInFlight: 2 * c, Replicas: reps, FakeMaxPerBox: -1, Latency: lat, Jitter: lat / 5}
			r, err := h.runOne(ctx, spec)
			if r == nil {
				return out, err
			}
			if reps == 1 {
				one = r.Throughput
			}
			r.RefThroughput = one * float64(reps)
			r.refWhat = fmt.Sprintf("%d × the 1-replica throughput", reps)
			r.Ratio = ratio(r.Throughput, r.RefThroughput)
			mean := lat + lat/10
			r.bound = float64(c*reps) / mean.Seconds()
			r.boundWhat = fmt.Sprintf("Little's law %d in flight / %v mean latency", c*reps, mean)
			out = append(out, *r)
			if err != nil {
				return out, err
			}
		}
		return out, nil
	}
	if name == "smtp" {
		return h.smtpScenario(ctx) // smtp.go
	}
	return nil, fmt.Errorf("unknown scenario %q", name)
}

// againstAlone runs alone, then with, and returns both rows: alone as its own
// reference, with's throughput as a ratio of alone's (refWhat names it).
func (h *harness) againstAlone(ctx context.Context, alone, with runSpec, refWhat string) ([]Result, error) {
	clean, err := h.runOne(ctx, alone)
	if clean == nil {
		return nil, err
	}
	r, err2 := h.runOne(ctx, with)
	clean.RefThroughput, clean.Ratio, clean.refWhat = clean.Throughput, 1, "itself"
	out := []Result{*clean}
	if r != nil {
		r.RefThroughput = clean.Throughput
		r.refWhat = refWhat
		r.Ratio = ratio(r.Throughput, clean.Throughput)
		out = append(out, *r)
	}
	return out, errors.Join(err, err2)
}

// pair runs spec with the worker, then the same with the bare loop, and
// returns the worker's row with its ratio to bare, then bare's row.
func (h *harness) pair(ctx context.Context, spec runSpec, bareSuffix string) ([]Result, error) {
	w, err := h.runOne(ctx, spec)
	if w == nil {
		return nil, err
	}
	b := spec
	b.Name = spec.Name + "-" + bareSuffix
	b.Bare = true
	b.Concurrency = spec.Concurrency * spec.Replicas
	b.Replicas = 1
	br, err2 := h.runOne(ctx, b)
	out := []Result{*w}
	if br != nil {
		out[0].RefThroughput = br.Throughput
		out[0].refWhat = "bare consume → sendMail → ack loop"
		out[0].Ratio = ratio(w.Throughput, br.Throughput)
		br.RefThroughput = br.Throughput
		br.refWhat = "itself"
		br.Ratio = 1
		out = append(out, *br)
	}
	if err == nil {
		err = err2
	}
	return out, err
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// maxMessageBytes is the spec's maximum message size (MaxMessageBytes).
func (s runSpec) maxMessageBytes() int64 {
	switch {
	case s.MaxMessageBytes > 0:
		return s.MaxMessageBytes
	case s.HugeJobs > 0:
		return contract.MaxMessageBytesLimit
	}
	return contract.DefaultMaxMessageBytes
}
