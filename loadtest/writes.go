package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The writes scenario measures the broker side of a job's record on the
// happy path, in the shapes issue 17 item 10 weighed, on one stream that
// holds both a per-job state subject and the job's status subject (the
// layout an atomic batch needs), with nothing else running:
//
//   - three: the worker today — the `sending` mark (create, expected last
//     subject sequence 0), the terminal state (compare-and-set on the mark's
//     sequence) and the terminal event (expected last subject sequence 0 on
//     its own subject, Nats-Msg-Id), three acked publishes one after the
//     other;
//   - batch: the mark, then the terminal state and its event as ONE atomic
//     batch (nats-server 2.12+, Nats-Batch-Id / -Sequence / -Commit: the
//     first message sent without a reply, the commit as a request), two
//     round trips;
//   - fast batch: the mark, then the terminal state and its event as one
//     fast batch (nats-server 2.14+, AllowBatchPublish; not atomic: messages
//     are stored one by one, in order, and in gap mode "fail" a refused
//     first message ends the batch, so the event is stored only after the
//     state), two round trips;
//   - two: the mark and the terminal state only, the floor any two-write
//     design could reach.
//
// The two batch shapes run once more with the event on final.<id>, which a
// second stream, STATUS, copies server-side (a source with a subject
// transform to mail.status.<id>): the layout that would keep MAIL_STATUS's
// readers unchanged. Their clock stops when STATUS holds every event.
//
// Each shape runs on an R1 file stream (one embedded server, as `dev` and
// loadtest's other scenarios run) and on an R3 file stream (three embedded
// servers), n jobs (default 4,000) by 32 writers. Before measuring, it checks
// the batch's semantics on each stream: a batch whose state compare-and-set
// is stale stores neither message, a fresh one stores both.
//
//	go run ./loadtest -n 4000 writes
//
// CPU is this process's (servers and clients together) per job.
type writesRow struct {
	Stream   string  `json:"stream"`
	Shape    string  `json:"shape"`
	Jobs     int     `json:"jobs"`
	Failed   int     `json:"failed"`
	FirstErr string  `json:"firstError,omitempty"`
	JobsPerS float64 `json:"jobsPerSec"`
	CPUUsJob float64 `json:"cpuMicrosPerJob"`
}

const writesConcurrency = 32

func runWrites(ctx context.Context, opts Options, stdout, stderr io.Writer) error {
	n := opts.N
	if n <= 0 {
		n = 4000
	}
	var rows []writesRow
	for _, replicas := range []int{1, 3} {
		rs, err := writesOn(ctx, replicas, n, opts.Keep, stderr)
		if err != nil {
			return fmt.Errorf("stream with %d replicas: %w", replicas, err)
		}
		rows = append(rows, rs...)
	}
	if opts.JSON {
		enc := json.NewEncoder(stdout)
		for _, r := range rows {
			_ = enc.Encode(r)
		}
		return nil
	}
	sep := "  "
	if opts.Markdown {
		fmt.Fprintln(stdout, "| stream | shape | jobs | failed | jobs/s | CPU µs/job |")
		fmt.Fprintln(stdout, "|---|---|---|---|---|---|")
		sep = " | "
	}
	for _, r := range rows {
		line := fmt.Sprintf("%s%s%s%s%d%s%d%s%.0f%s%.0f", r.Stream, sep, r.Shape, sep, r.Jobs, sep, r.Failed, sep, r.JobsPerS, sep, r.CPUUsJob)
		if opts.Markdown {
			line = "| " + line + " |"
		}
		fmt.Fprintln(stdout, line)
	}
	return nil
}

// writesOn starts `replicas` embedded servers (a cluster when 3), creates
// the stream, checks the batch's semantics and measures each shape.
func writesOn(ctx context.Context, replicas, n int, keep bool, stderr io.Writer) ([]writesRow, error) {
	dir, err := os.MkdirTemp("", "mailworker-writes-")
	if err != nil {
		return nil, err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	var routes []*url.URL
	ports := make([]int, replicas)
	for i := range ports {
		ports[i] = freeTCPPort()
		routes = append(routes, &url.URL{Scheme: "nats", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i]))})
	}
	var srvs []*server.Server
	defer func() {
		for _, s := range srvs {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}()
	for i := range replicas {
		o := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, NoLog: true, NoSigs: true,
			StoreDir: fmt.Sprintf("%s/n%d", dir, i), ServerName: fmt.Sprintf("n%d", i)}
		if replicas > 1 {
			o.Cluster = server.ClusterOpts{Name: "writes", Host: "127.0.0.1", Port: ports[i]}
			o.Routes = routes
		}
		s, err := server.NewServer(o)
		if err != nil {
			return nil, err
		}
		go s.Start()
		srvs = append(srvs, s)
	}
	for _, s := range srvs {
		if !s.ReadyForConnections(30 * time.Second) {
			return nil, errors.New("nats server not ready")
		}
	}
	nc, err := nats.Connect(srvs[0].ClientURL())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	cfg := jetstream.StreamConfig{Name: "WRITES", Subjects: []string{"state.>", "status.>", "final.>"}, Storage: jetstream.FileStorage,
		Replicas: replicas, Duplicates: 2 * time.Minute, AllowAtomicPublish: true, AllowBatchPublish: true}
	deadline := time.Now().Add(time.Minute)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = js.CreateStream(cctx, cfg)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("create stream: %w", err)
		}
		time.Sleep(200 * time.Millisecond) // the cluster's meta leader is being elected
	}
	// STATUS: the status stream readers know, copying the terminal events
	// from WRITES server-side (final.<id> → mail.status.<id>).
	status, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "STATUS", Storage: jetstream.FileStorage, Replicas: replicas,
		Sources: []*jetstream.StreamSource{{Name: "WRITES", SubjectTransforms: []jetstream.SubjectTransformConfig{
			{Source: "final.>", Destination: "mail.status.>"}}}}})
	if err != nil {
		return nil, fmt.Errorf("create the sourcing stream: %w", err)
	}
	w := &writer{js: js, nc: nc, inbox: nc.NewInbox(), waiting: map[string]chan []byte{}}
	sub, err := nc.Subscribe(w.inbox+".>", w.reply)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	stream := "R" + strconv.Itoa(replicas) + " file"
	if err := w.checkBatch(ctx, "atomic", w.commit); err != nil {
		return nil, fmt.Errorf("atomic batch semantics: %w", err)
	}
	if err := w.checkBatch(ctx, "fast", w.fastCommit); err != nil {
		return nil, fmt.Errorf("fast batch semantics: %w", err)
	}
	fmt.Fprintf(stderr, "writes: %s: the atomic batch stores both messages or neither, the fast batch no event after a refused state (stale state compare-and-set: no event)\n", stream)
	sourced := func() error { // every sourced event is in STATUS
		deadline := time.Now().Add(2 * time.Minute)
		for {
			si, err := status.Info(ctx)
			if err != nil {
				return err
			}
			if si.State.Msgs >= w.sourced.Load() {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("STATUS holds %d of %d sourced events", si.State.Msgs, w.sourced.Load())
			}
			time.Sleep(20 * time.Millisecond) // polling the stream's count
		}
	}
	shapes := []struct {
		name   string
		job    func(ctx context.Context, id string) error
		settle func() error
	}{
		{"three acked writes (today)", w.three, nil},
		{"mark + atomic batch (state + event)", w.batch, nil},
		{"mark + atomic batch, event sourced into a status stream", w.batchSourced, sourced},
		{"mark + fast batch (state, then event)", w.fast, nil},
		{"mark + fast batch, event sourced into a status stream", w.fastSourced, sourced},
		{"two acked writes (mark + state, no event)", w.two, nil},
	}
	var rows []writesRow
	for round := range 2 {
		for _, sh := range shapes {
			r, err := measureWrites(ctx, n, func(ctx context.Context, i int) error {
				return sh.job(ctx, "r"+strconv.Itoa(round)+strconv.Itoa(len(sh.name))+"-"+strconv.Itoa(i))
			}, sh.settle)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", sh.name, err)
			}
			r.Stream, r.Shape = stream, sh.name
			fmt.Fprintf(stderr, "writes: %s, %s: %.0f jobs/s, %.0f µs CPU/job, %d failed %s\n", stream, sh.name, r.JobsPerS, r.CPUUsJob, r.Failed, r.FirstErr)
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// measureWrites runs job n times by writesConcurrency writers, then settle
// (may be nil) before the clock stops.
func measureWrites(ctx context.Context, n int, job func(context.Context, int) error, settle func() error) (writesRow, error) {
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	cpu0 := processCPU()
	start := time.Now()
	for range writesConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > n || ctx.Err() != nil {
					return
				}
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := job(cctx, i); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	if settle != nil {
		if err := settle(); err != nil {
			return writesRow{}, err
		}
	}
	el := time.Since(start)
	r := writesRow{Jobs: n, Failed: int(failed.Load()), JobsPerS: float64(n) / el.Seconds(),
		CPUUsJob: float64((processCPU() - cpu0).Microseconds()) / float64(n)}
	if e, ok := firstErr.Load().(string); ok {
		r.FirstErr = e
	}
	return r, nil
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type writer struct {
	js    jetstream.JetStream
	nc    *nats.Conn
	inbox string // fast batches' replies: <inbox>.<batch id>.<flow>.<gap mode>.<seq>.<op>.$FI

	batches atomic.Uint64
	sourced atomic.Uint64 // events published for STATUS to copy
	mu      sync.Mutex
	waiting map[string]chan []byte // batch id → its replies
}

// reply hands a fast batch's reply to its publisher.
func (w *writer) reply(m *nats.Msg) {
	rest := m.Subject[len(w.inbox)+1:]
	bid := rest[:max(0, strings.IndexByte(rest, '.'))]
	w.mu.Lock()
	ch := w.waiting[bid]
	w.mu.Unlock()
	if ch != nil {
		select {
		case ch <- m.Data:
		default:
		}
	}
}

var writesBody = []byte(`{"jobId":"x","profile":"lt","state":"sent","attempts":1,"generation":1,"updatedAt":"2026-12-07T23:00:00Z","graph":{"status":202,"requestId":"5f7c6c8e-6b1e-4c1a-9a57-1f1f2d2e3f40","clientRequestId":"0b8e2b6a-2f52-4c8e-8f4a-6f0f1d2c3b4a","date":"Mon, 07 Dec 2026 23:00:00 GMT"}}`)

// put publishes one acked message with an expected last sequence on its
// subject and returns its stream sequence.
func (w *writer) put(ctx context.Context, subject string, expect uint64, msgID string) (uint64, error) {
	m := &nats.Msg{Subject: subject, Data: writesBody, Header: nats.Header{}}
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(expect, 10))
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	ack, err := w.js.PublishMsg(ctx, m)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

func (w *writer) three(ctx context.Context, id string) error {
	seq, err := w.put(ctx, "state."+id, 0, "")
	if err != nil {
		return err
	}
	rev, err := w.put(ctx, "state."+id, seq, "")
	if err != nil {
		return err
	}
	_, err = w.put(ctx, "status."+id, 0, id+"-"+strconv.FormatUint(rev, 10))
	return err
}

func (w *writer) two(ctx context.Context, id string) error {
	seq, err := w.put(ctx, "state."+id, 0, "")
	if err != nil {
		return err
	}
	_, err = w.put(ctx, "state."+id, seq, "")
	return err
}

func (w *writer) batch(ctx context.Context, id string) error {
	seq, err := w.put(ctx, "state."+id, 0, "")
	if err != nil {
		return err
	}
	return w.commit(ctx, id, seq)
}

// commit publishes the terminal state (compare-and-set against stateSeq)
// and the terminal event as one atomic batch and waits for the commit's ack.
func (w *writer) batchSourced(ctx context.Context, id string) error {
	seq, err := w.put(ctx, "state."+id, 0, "")
	if err != nil {
		return err
	}
	if err := w.commitTo(ctx, id, seq, "final."); err != nil {
		return err
	}
	w.sourced.Add(1)
	return nil
}

func (w *writer) commit(ctx context.Context, id string, stateSeq uint64) error {
	return w.commitTo(ctx, id, stateSeq, "status.")
}

// commitTo is commit with the event on evPrefix + id.
func (w *writer) commitTo(ctx context.Context, id string, stateSeq uint64, evPrefix string) error {
	bid := "b-" + id
	m := &nats.Msg{Subject: "state." + id, Data: writesBody, Header: nats.Header{}}
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(stateSeq, 10))
	m.Header.Set("Nats-Batch-Id", bid)
	m.Header.Set("Nats-Batch-Sequence", "1")
	if err := w.nc.PublishMsg(m); err != nil {
		return err
	}
	e := &nats.Msg{Subject: evPrefix + id, Data: writesBody, Header: nats.Header{}}
	e.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	e.Header.Set(jetstream.MsgIDHeader, id+"-final")
	e.Header.Set("Nats-Batch-Id", bid)
	e.Header.Set("Nats-Batch-Sequence", "2")
	e.Header.Set("Nats-Batch-Commit", "1")
	r, err := w.nc.RequestMsgWithContext(ctx, e)
	if err != nil {
		return err
	}
	var ack struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Seq      uint64 `json:"seq"`
		BatchID  string `json:"batch"`
		BatchLen int    `json:"count"`
	}
	if err := json.Unmarshal(r.Data, &ack); err != nil {
		return fmt.Errorf("batch ack %q: %w", r.Data, err)
	}
	if ack.Error != nil {
		return fmt.Errorf("batch refused: %d %s", ack.Error.ErrCode, ack.Error.Description)
	}
	if ack.BatchID != bid || ack.BatchLen != 2 {
		return fmt.Errorf("batch ack %s: not the batch's commit", r.Data)
	}
	return nil
}

func (w *writer) fast(ctx context.Context, id string) error {
	seq, err := w.put(ctx, "state."+id, 0, "")
	if err != nil {
		return err
	}
	return w.fastCommit(ctx, id, seq)
}

func (w *writer) fastSourced(ctx context.Context, id string) error {
	seq, err := w.put(ctx, "state."+id, 0, "")
	if err != nil {
		return err
	}
	if err := w.fastCommitTo(ctx, id, seq, "final."); err != nil {
		return err
	}
	w.sourced.Add(1)
	return nil
}

// fastCommit publishes the terminal state (compare-and-set against
// stateSeq) and then the terminal event as one fast batch in gap mode
// "fail", and waits for the commit's ack.
func (w *writer) fastCommit(ctx context.Context, id string, stateSeq uint64) error {
	return w.fastCommitTo(ctx, id, stateSeq, "status.")
}

// fastCommitTo is fastCommit with the event on evPrefix + id.
func (w *writer) fastCommitTo(ctx context.Context, id string, stateSeq uint64, evPrefix string) error {
	bid := "f" + strconv.FormatUint(w.batches.Add(1), 36) // never reused: a refused batch's late replies go nowhere
	ch := make(chan []byte, 4)
	w.mu.Lock()
	w.waiting[bid] = ch
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.waiting, bid)
		w.mu.Unlock()
	}()
	prefix := w.inbox + "." + bid + ".10.fail."
	m := &nats.Msg{Subject: "state." + id, Reply: prefix + "1.0.$FI", Data: writesBody, Header: nats.Header{}}
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(stateSeq, 10))
	if err := w.nc.PublishMsg(m); err != nil {
		return err
	}
	e := &nats.Msg{Subject: evPrefix + id, Reply: prefix + "2.2.$FI", Data: writesBody, Header: nats.Header{}}
	e.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	e.Header.Set(jetstream.MsgIDHeader, id+"-final")
	if err := w.nc.PublishMsg(e); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case data := <-ch:
			var r struct {
				Stream string `json:"stream"`
				Error  *struct {
					ErrCode     int    `json:"err_code"`
					Description string `json:"description"`
				} `json:"error"`
				BatchID string `json:"batch"`
				Count   int    `json:"count"`
			}
			if err := json.Unmarshal(data, &r); err != nil {
				return fmt.Errorf("fast batch reply %q: %w", data, err)
			}
			switch {
			case r.Stream == "": // flow control
				continue
			case r.Error != nil:
				return fmt.Errorf("fast batch refused: %d %s", r.Error.ErrCode, r.Error.Description)
			case r.BatchID != bid || r.Count != 2:
				return fmt.Errorf("fast batch ack %s: not the batch's commit", data)
			}
			return nil
		}
	}
}

// checkBatch: a batch (commit: atomic or fast) whose state compare-and-set
// is stale is refused and stores no event; a fresh one stores both.
func (w *writer) checkBatch(ctx context.Context, name string, commit func(context.Context, string, uint64) error) error {
	// A broken rule is reported at once; a failure of the broker itself (a
	// publish whose ack was lost and whose retry then finds its own write,
	// an election on a loaded R3 cluster) is tried again with a fresh id.
	var err error
	for try := range 3 {
		err = w.checkBatchOnce(ctx, fmt.Sprintf("check-%s-%d", name, try), commit)
		var broken brokenRule
		if err == nil || errors.As(err, &broken) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// brokenRule is a batch semantics check that failed (not the broker).
type brokenRule struct{ error }

func (w *writer) checkBatchOnce(ctx context.Context, id string, commit func(context.Context, string, uint64) error) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := w.js.Stream(ctx, "WRITES")
	if err != nil {
		return err
	}
	seq, err := w.put(ctx, "state."+id, 0, "")
	if err != nil {
		return err
	}
	if _, err := w.put(ctx, "state."+id, seq, ""); err != nil { // another delivery moved the state on
		return err
	}
	if err := commit(ctx, id, seq); err == nil {
		return brokenRule{errors.New("a batch with a stale state compare-and-set was stored")}
	}
	if _, err := s.GetLastMsgForSubject(ctx, "status."+id); !errors.Is(err, jetstream.ErrMsgNotFound) {
		return brokenRule{fmt.Errorf("a refused batch stored its event (%v)", err)}
	}
	last, err := s.GetLastMsgForSubject(ctx, "state."+id)
	if err != nil {
		return err
	}
	if err := commit(ctx, id, last.Sequence); err != nil {
		return fmt.Errorf("a fresh batch: %w", err)
	}
	st, err := s.GetLastMsgForSubject(ctx, "state."+id)
	if err != nil || st.Sequence == last.Sequence {
		return brokenRule{fmt.Errorf("a committed batch did not store its state (%v)", err)}
	}
	if _, err := s.GetLastMsgForSubject(ctx, "status."+id); err != nil {
		return brokenRule{fmt.Errorf("a committed batch did not store its event: %w", err)}
	}
	return nil
}
