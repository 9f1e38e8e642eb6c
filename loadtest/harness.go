package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

const (
	profile    = "lt"
	tenantID   = "loadtest-tenant"
	clientID   = "loadtest-client"
	badMailbox = "bad@loadtest.example"
	// floodProfile and floodMailbox send the deferral scenario's flood.
	floodProfile = "flood"
	floodMailbox = "flood@loadtest.example"

	// The bare loop's own stream, so that it never shares a consumer or
	// leftovers with the worker's MAIL_JOBS_<profile>.
	bareStream   = "LOADTEST_BARE"
	bareSubject  = "loadtest.bare."
	bareConsumer = "bare"
	bareDone     = "loadtest.bare.done"
)

// harness owns the temp dir and the binaries; every run gets a fresh
// embedded JetStream server (or purged streams on --nats-url) and a fresh fake.
type harness struct {
	opts      Options
	log       io.Writer
	dir       string
	workerBin string
	bareBin   string
	seq       int
}

func newHarness(ctx context.Context, opts Options, log io.Writer) (*harness, error) {
	dir, err := os.MkdirTemp("", "mailworker-loadtest-")
	if err != nil {
		return nil, err
	}
	h := &harness{opts: opts, log: log, dir: dir, workerBin: opts.WorkerBin, bareBin: opts.BareBin}
	if h.bareBin == "" {
		if h.bareBin, err = os.Executable(); err != nil {
			h.Close()
			return nil, err
		}
	}
	if h.workerBin == "" {
		root, err := moduleRoot()
		if err != nil {
			h.Close()
			return nil, err
		}
		h.workerBin = filepath.Join(dir, "mailworker")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", h.workerBin, "./cmd/mailworker")
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Run(); err != nil {
			h.Close()
			return nil, fmt.Errorf("go build ./cmd/mailworker: %w", err)
		}
	}
	return h, nil
}

// Close removes the temp dir unless --keep.
func (h *harness) Close() {
	if h.opts.Keep {
		fmt.Fprintf(h.log, "loadtest: kept %s (configs, worker logs, profiles)\n", h.dir)
		return
	}
	_ = os.RemoveAll(h.dir)
}

// moduleRoot is the nearest directory above the working directory with a go.mod.
func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		up := filepath.Dir(d)
		if up == d {
			return "", errors.New("no go.mod above the working directory: run from the mailworker module")
		}
		d = up
	}
}

// env is one run's broker and fake.
type env struct {
	ns     *server.Server // nil with --nats-url
	url    string
	nc     *nats.Conn
	js     jetstream.JetStream
	fake   *graphtest.Server
	secret string
	caFile string
}

func (e *env) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.fake != nil {
		e.fake.Close()
	}
	if e.ns != nil {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	}
}

func (h *harness) newEnv(ctx context.Context, spec runSpec, dir string) (*env, error) {
	e := &env{url: h.opts.NATSURL, secret: randomHex(16)}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	if e.url == "" {
		ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
			StoreDir: filepath.Join(dir, "jetstream"), NoLog: true, NoSigs: true, ServerName: "loadtest"})
		if err != nil {
			return nil, fmt.Errorf("embedded nats-server: %w", err)
		}
		go ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			ns.Shutdown()
			return nil, errors.New("embedded nats-server did not start")
		}
		e.ns, e.url = ns, ns.ClientURL()
	}
	var err error
	if e.nc, err = nats.Connect(e.url, nats.Name("loadtest")); err != nil {
		return nil, fmt.Errorf("connect %s: %w", e.url, err)
	}
	if e.js, err = jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(2048)); err != nil {
		return nil, err
	}
	if h.opts.NATSURL != "" {
		// A profile's job stream denies purges (a producer's trust
		// boundary): it is deleted and provisioned again below.
		for _, p := range []string{profile, floodProfile} {
			if err := e.js.DeleteStream(ctx, contract.JobsStream(p)); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil, fmt.Errorf("delete %s: %w", contract.JobsStream(p), err)
			}
		}
		for _, s := range []string{contract.StreamDefer, contract.StreamStatus, bareStream} {
			if st, err := e.js.Stream(ctx, s); err == nil {
				if err := st.Purge(ctx); err != nil {
					return nil, fmt.Errorf("purge %s: %w", s, err)
				}
			}
		}
	}
	maxAck := max(spec.MaxInFlight*spec.Replicas, spec.Concurrency, 1000)
	if spec.Bare {
		if _, err := e.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: bareStream, Subjects: []string{bareSubject + "*"},
			Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Duplicates: queue.DuplicateWindow}); err != nil {
			return nil, fmt.Errorf("bare stream: %w", err)
		}
		if _, err := e.js.CreateOrUpdateConsumer(ctx, bareStream, jetstream.ConsumerConfig{Durable: bareConsumer,
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, MaxAckPending: maxAck, FilterSubject: bareSubject + profile}); err != nil {
			return nil, fmt.Errorf("bare consumer: %w", err)
		}
	} else if err := queue.Provision(ctx, e.js, queue.Config{MaxAckPending: maxAck, Profiles: []string{profile, floodProfile}}); err != nil {
		return nil, err
	}

	e.fake, err = graphtest.New(graphtest.Options{TenantID: tenantID, ClientID: clientID, ClientSecret: e.secret,
		Latency: spec.Latency, LatencyJitter: spec.Jitter, MaxConcurrentPerMailbox: spec.FakeMaxPerBox,
		SimulatedPerMinuteThrottle: spec.FakePerMinute, MaxMessageSize: spec.maxMessageBytes()})
	if err != nil {
		return nil, err
	}
	if spec.BadRetryAfterSec > 0 {
		e.fake.SetMailboxFault(badMailbox, &graphtest.Fault{Status: http.StatusTooManyRequests, Code: "ApplicationThrottled",
			RetryAfter: strconv.Itoa(spec.BadRetryAfterSec)})
	}
	e.caFile = filepath.Join(dir, "fake-ca.pem")
	if err := os.WriteFile(e.caFile, e.fake.CACertPEM(), 0o600); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

// proc is one started worker or bare process.
type proc struct {
	cmd      *exec.Cmd
	httpAddr string
	logFile  *os.File
	done     chan struct{}
	err      error
	// peakRSSKiB is VmHWM read just before SIGTERM. rusage's Maxrss is not
	// used: on Linux a child started with vfork+exec also reports the
	// parent's RSS at spawn time, which grows run after run here.
	peakRSSKiB int64
}

// vmHWM is the peak resident set size of pid in KiB (0 if unknown).
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func (p *proc) stop(grace time.Duration) {
	p.peakRSSKiB = vmHWM(p.cmd.Process.Pid)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	_ = p.logFile.Close()
}

func (p *proc) rusage() (cpu time.Duration, maxRSSKiB int64) {
	if p.cmd.ProcessState == nil {
		return 0, 0
	}
	ru, ok := p.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, 0
	}
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if p.peakRSSKiB > 0 {
		return cpu, p.peakRSSKiB
	}
	return cpu, ru.Maxrss
}

func startProc(bin string, args []string, logPath string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = os.Environ()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, logFile: f, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// workerConfig is the YAML of one worker replica.
func workerConfig(spec runSpec, e *env, httpAddr string, pprof bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nats:\n  url: %q\n", e.url)
	fmt.Fprintf(&b, "streams:\n  provision: true\n  maxAckPending: %d\n", max(spec.MaxInFlight*spec.Replicas, spec.Concurrency, 1000))
	fmt.Fprintf(&b, "worker:\n  concurrency: %d\n  maxInFlight: %d\n  perMailboxConcurrency: 4\n  perMailboxPerMinute: %d\n  drainTimeout: 5s\n",
		spec.Concurrency, spec.MaxInFlight, spec.PerMinute)
	if spec.UploadChunk > 0 {
		fmt.Fprintf(&b, "  uploadChunkBytes: %d\n", spec.UploadChunk)
	}
	fmt.Fprintf(&b, "http:\n  listen: %q\n", httpAddr)
	if pprof {
		b.WriteString("  pprof: true\n")
	}
	b.WriteString("log:\n  level: info\n  format: json\n")
	fmt.Fprintf(&b, "profiles:\n  %s:\n    tenantId: %s\n    clientId: %s\n    authorityHost: %q\n    graphURL: %q\n    caFile: %q\n",
		profile, tenantID, clientID, e.fake.URL(), e.fake.GraphURL(), e.caFile)
	fmt.Fprintf(&b, "    credential:\n      clientSecret: %q\n    allowedSenders:\n", e.secret)
	for i := range spec.Mailboxes + spec.HugeJobs {
		fmt.Fprintf(&b, "      - %s\n", mailbox(i))
	}
	if spec.AttachBytes > 0 {
		b.WriteString("    deliveryMode: draft\n    draftWhen: large\n")
		fmt.Fprintf(&b, "    maxMessageSize: %q\n", fmt.Sprintf("%dB", spec.maxMessageBytes()))
	}
	if spec.BadJobs > 0 {
		fmt.Fprintf(&b, "      - %s\n", badMailbox)
	}
	if spec.FloodJobs > 0 {
		fmt.Fprintf(&b, "  %s:\n    tenantId: %s\n    clientId: %s\n    authorityHost: %q\n    graphURL: %q\n    caFile: %q\n",
			floodProfile, tenantID, clientID, e.fake.URL(), e.fake.GraphURL(), e.caFile)
		fmt.Fprintf(&b, "    credential:\n      clientSecret: %q\n    allowedSenders:\n      - %s\n", e.secret, floodMailbox)
	}
	return b.String()
}

func mailbox(i int) string { return fmt.Sprintf("box%03d@loadtest.example", i) }

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// outcomes tracks publish times and terminal events per job id.
type outcomes struct {
	mu        sync.Mutex
	pub       map[string]time.Time
	bad       map[string]bool
	done      map[string]time.Time
	terminal  map[string]int
	sent, dl  int
	badDone   int
	waitFor   int // healthy jobs
	finished  chan struct{}
	closed    bool
	lastDone  time.Time
	firstPub  time.Time
	published atomic.Int64
}

func newOutcomes(waitFor int) *outcomes {
	return &outcomes{pub: map[string]time.Time{}, bad: map[string]bool{}, done: map[string]time.Time{},
		terminal: map[string]int{}, waitFor: waitFor, finished: make(chan struct{})}
}

func (o *outcomes) published1(id string, bad bool, at time.Time) {
	o.mu.Lock()
	if o.firstPub.IsZero() {
		o.firstPub = at
	}
	o.pub[id] = at
	if bad {
		o.bad[id] = true
	}
	o.mu.Unlock()
	o.published.Add(1)
}

func (o *outcomes) outcome(id, event string, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.pub[id]; !ok {
		return // not ours (or published after this event: impossible)
	}
	o.terminal[id]++
	if o.terminal[id] > 1 {
		return
	}
	if event == "sent" {
		o.sent++
	} else {
		o.dl++
	}
	o.done[id] = at
	if o.bad[id] {
		o.badDone++
		return
	}
	o.lastDone = at
	if !o.closed && o.sent+o.dl-o.badDone >= o.waitFor {
		o.closed = true
		close(o.finished)
	}
}

func (o *outcomes) progress() (pub, done int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return int(o.published.Load()), o.sent + o.dl
}

// runOne performs one measured run. It returns the row even when the run
// failed part way (lost jobs are then counted), plus the error.
func (h *harness) runOne(ctx context.Context, spec runSpec) (*Result, error) {
	h.seq++
	dir := filepath.Join(h.dir, fmt.Sprintf("%02d-%s", h.seq, spec.Name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	e, err := h.newEnv(ctx, spec, dir)
	if err != nil {
		return nil, err
	}
	defer e.close()

	oc := newOutcomes(spec.Jobs)
	// Outcome watcher: status events (worker) or the bare loop's done subject.
	if spec.Bare {
		sub, err := e.nc.Subscribe(bareDone, func(m *nats.Msg) { oc.outcome(string(m.Data), "sent", time.Now()) })
		if err != nil {
			return nil, err
		}
		_ = sub.SetPendingLimits(-1, -1)
		defer func() { _ = sub.Unsubscribe() }()
	} else {
		oc2, err := e.js.OrderedConsumer(ctx, contract.StreamStatus, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{"mail.status." + profile + ".>"}, DeliverPolicy: jetstream.DeliverNewPolicy})
		if err != nil {
			return nil, fmt.Errorf("status consumer: %w", err)
		}
		cc, err := oc2.Consume(func(m jetstream.Msg) {
			var ev struct {
				JobID string `json:"jobId"`
				Event string `json:"event"`
			}
			if json.Unmarshal(m.Data(), &ev) != nil {
				return
			}
			if ev.Event == string(contract.EventSent) || ev.Event == string(contract.EventDeadLettered) {
				oc.outcome(ev.JobID, ev.Event, time.Now())
			}
		})
		if err != nil {
			return nil, fmt.Errorf("status consume: %w", err)
		}
		defer cc.Stop()
	}

	// Start the processes and wait until they consume.
	var procs []*proc
	defer func() {
		for _, p := range procs {
			select {
			case <-p.done:
			default:
				p.stop(time.Second)
			}
		}
	}()
	if spec.Bare {
		tokURL := e.fake.TokenEndpoint()
		args := []string{bareCommand, "--nats-url", e.url, "--stream", bareStream, "--consumer", bareConsumer,
			"--done", bareDone, "--graph-url", e.fake.GraphURL(), "--token-url", tokURL, "--ca-file", e.caFile,
			"--client-id", clientID, "--client-secret-env", "LOADTEST_BARE_SECRET", "--concurrency", strconv.Itoa(spec.Concurrency)}
		os.Setenv("LOADTEST_BARE_SECRET", e.secret)
		p, err := startProc(h.bareBin, args, filepath.Join(dir, "bare.log"))
		os.Unsetenv("LOADTEST_BARE_SECRET")
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
		if err := waitUntil(ctx, 30*time.Second, func() bool {
			c, err := e.js.Consumer(ctx, bareStream, bareConsumer)
			return err == nil && c.CachedInfo().NumWaiting > 0
		}, p); err != nil {
			return nil, fmt.Errorf("bare worker not consuming (log %s): %w", p.logFile.Name(), err)
		}
	} else {
		for i := range spec.Replicas {
			addr, err := freeAddr()
			if err != nil {
				return nil, err
			}
			cfgPath := filepath.Join(dir, fmt.Sprintf("cfg-%d.yaml", i))
			if err := os.WriteFile(cfgPath, []byte(workerConfig(spec, e, addr, h.opts.Pprof)), 0o600); err != nil {
				return nil, err
			}
			p, err := startProc(h.workerBin, []string{"run", "--config", cfgPath}, filepath.Join(dir, fmt.Sprintf("worker-%d.log", i)))
			if err != nil {
				return nil, err
			}
			p.httpAddr = addr
			procs = append(procs, p)
		}
		for _, p := range procs {
			if err := waitUntil(ctx, 30*time.Second, func() bool { return httpOK("http://" + p.httpAddr + "/readyz") }, p); err != nil {
				return nil, fmt.Errorf("worker not ready (log %s): %w", p.logFile.Name(), err)
			}
		}
	}

	// Progress line.
	stopProgress := make(chan struct{})
	var progressDone sync.WaitGroup
	if !h.opts.Quiet {
		progressDone.Add(1)
		go func() {
			defer progressDone.Done()
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			total := spec.Jobs + spec.BadJobs
			for {
				select {
				case <-stopProgress:
					pub, done := oc.progress()
					fmt.Fprintf(h.log, "\r%-18s published %d/%d  outcomes %d/%d\n", spec.Name, pub, total, done, total)
					return
				case <-t.C:
					pub, done := oc.progress()
					fmt.Fprintf(h.log, "\r%-18s published %d/%d  outcomes %d/%d", spec.Name, pub, total, done, total)
				}
			}
		}()
	}
	var profDone chan struct{}
	if h.opts.Pprof && !spec.Bare {
		profDone = make(chan struct{})
		go func() {
			defer close(profDone)
			_ = fetchTo("http://"+procs[0].httpAddr+"/debug/pprof/profile?seconds=10", filepath.Join(dir, "cpu.pprof"))
		}()
	}

	hostStart := selfCPU()
	var killedAt time.Time
	killed := make(chan struct{})
	if spec.KillAfter > 0 && len(procs) > 1 {
		victim := procs[len(procs)-1]
		go func() {
			defer close(killed)
			select {
			case <-time.After(spec.KillAfter):
				killedAt = time.Now()
				_ = victim.cmd.Process.Kill()
			case <-ctx.Done():
			}
		}()
	} else {
		close(killed)
	}
	pubErrs, perr := h.publish(ctx, e, spec, oc)
	var waitErr error
	if perr == nil {
		timeout := h.opts.Timeout
		if spec.Timeout > 0 {
			timeout = spec.Timeout
		}
		deadline := time.NewTimer(timeout)
		select {
		case <-oc.finished:
		case <-deadline.C:
			waitErr = fmt.Errorf("deadline %v: not every job had an outcome", timeout)
		case <-ctx.Done():
			waitErr = ctx.Err()
		}
		deadline.Stop()
	}
	hostCPU := selfCPU() - hostStart
	<-killed
	close(stopProgress)
	progressDone.Wait()
	if profDone != nil {
		<-profDone
	}

	// Stop the processes and read their rusage.
	var cpu time.Duration
	var rss int64
	for _, p := range procs {
		p.stop(15 * time.Second)
		c, r := p.rusage()
		cpu += c
		rss = max(rss, r)
	}
	procs = nil

	oc.mu.Lock()
	defer oc.mu.Unlock()
	r := &Result{Scenario: spec.Name, Jobs: spec.Jobs + spec.BadJobs, replicas: spec.Replicas, concurrency: spec.Concurrency,
		publishErrors: pubErrs}
	var lat []time.Duration
	for id, at := range oc.done {
		lat = append(lat, at.Sub(oc.pub[id]))
	}
	for _, n := range oc.terminal {
		if n > 1 {
			r.dupSentEvents++
		}
	}
	latencies(r, lat)
	r.Sent, r.DeadLettered = oc.sent, oc.dl
	healthyDone := oc.sent + oc.dl - oc.badDone
	r.Lost = spec.Jobs - healthyDone
	r.badSent = oc.badDone
	r.pending = spec.BadJobs - oc.badDone
	if !oc.lastDone.IsZero() {
		r.elapsed = oc.lastDone.Sub(oc.firstPub)
		r.Throughput = float64(healthyDone) / r.elapsed.Seconds()
	}
	if !killedAt.IsZero() {
		var werr error
		r.Throughput, werr = failoverWindow(oc.done, killedAt, oc.lastDone)
		err = errors.Join(err, werr)
	}
	if jobsDone := oc.sent + oc.dl; jobsDone > 0 {
		r.CPUusPerJob = float64(cpu.Microseconds()) / float64(jobsDone)
	}
	r.PeakRSSMB = float64(rss) / 1024
	if jobsDone := oc.sent + oc.dl; jobsDone > 0 {
		r.hostCPUusPerJob = float64(hostCPU.Microseconds()) / float64(jobsDone)
	}
	if spec.AttachBytes > 0 {
		r.uploadNotes = uploadFigures(e.fake.Messages(), r.elapsed)
	}
	st := e.fake.Stats()
	r.TokenRequests, r.GraphRequests, r.Throttled, r.InRetryAfter = st.TokenRequests, st.SendRequests, st.Throttled, st.InRetryAfter
	r.Duplicates = max(st.Duplicates, r.dupSentEvents)
	err = errors.Join(err, perr, waitErr) // err: the replica-loss window check above
	if pubErrs > 0 {
		err = errors.Join(err, fmt.Errorf("%d publishes failed", pubErrs))
	}
	return r, err
}

// failoverWindow is the failover scenario's throughput: jobs done per second
// in the pacing minute that starts once the survivor stops counting the dead
// replica (the MAIL_WORKERS TTL, 15 s, and its next beat, 5 s, after
// killedAt). It fails when the last job was done before that minute ended:
// the backlog ran out, and the figure would be too low.
func failoverWindow(done map[string]time.Time, killedAt, lastDone time.Time) (float64, error) {
	from := killedAt.Add(20 * time.Second)
	to := from.Add(time.Minute)
	n := 0
	for _, at := range done {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	if lastDone.Before(to) {
		return float64(n) / time.Minute.Seconds(), fmt.Errorf("the backlog ran out before the window after the replica loss ended: publish more jobs")
	}
	return float64(n) / time.Minute.Seconds(), nil
}

// publish sends every job asynchronously and waits for the acks.
func (h *harness) publish(ctx context.Context, e *env, spec runSpec, oc *outcomes) (int, error) {
	pub := queue.NewPublisher(e.js)
	var errCount atomic.Int64
	total := spec.Jobs + spec.BadJobs
	// Bad-mailbox jobs are interleaved evenly among the healthy ones.
	every := 0
	if spec.BadJobs > 0 {
		every = max(total/spec.BadJobs, 1)
	}
	healthy, bad := 0, 0
	futures := make([]jetstream.PubAckFuture, 0, 4096)
	// The flood goes first, so that it is ahead of every measured job.
	farFuture := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	many := make([]string, contract.MaxRecipients)
	for i := range many {
		many[i] = fmt.Sprintf("r%d@example.com", i)
	}
	for i := range spec.FloodJobs {
		job := &contract.Job{ID: fmt.Sprintf("r%d-flood-%06d", h.seq, i), From: floodMailbox, Subject: "flood", Text: "wait"}
		if i%2 == 0 {
			job.To, job.NotBefore = []string{"later@example.com"}, &farFuture
		} else {
			job.To = many
		}
		f, _, err := pub.PublishAsync(floodProfile, job)
		if err != nil {
			return int(errCount.Load()), fmt.Errorf("publish %s: %w", job.ID, err)
		}
		futures = append(futures, f)
	}
	check := func(all bool) {
		keep := futures[:0]
		for _, f := range futures {
			select {
			case <-f.Ok():
			case <-f.Err():
				errCount.Add(1)
			default:
				if all {
					select {
					case <-f.Ok():
					case err := <-f.Err():
						_ = err
						errCount.Add(1)
					case <-time.After(30 * time.Second):
						errCount.Add(1)
					}
					continue
				}
				keep = append(keep, f)
			}
		}
		futures = keep
	}
	var refAttach, refHuge string
	if spec.AttachBytes > 0 {
		q, err := queue.Open(ctx, e.js)
		if err != nil {
			return 0, err
		}
		// Streamed in: the publisher never holds an attachment whole.
		if refAttach, err = q.Attachments.PutReader(ctx, profile, "report.pdf", io.LimitReader(mrand.NewChaCha8([32]byte{1}), spec.AttachBytes)); err != nil {
			return 0, err
		}
		if spec.HugeJobs > 0 {
			if refHuge, err = q.Attachments.PutReader(ctx, profile, "export.zip", io.LimitReader(mrand.NewChaCha8([32]byte{2}), spec.HugeBytes)); err != nil {
				return 0, err
			}
		}
	}
	for i := range total {
		if ctx.Err() != nil {
			return int(errCount.Load()), ctx.Err()
		}
		isBad := every > 0 && bad < spec.BadJobs && i%every == every-1
		var from string
		if isBad {
			from = badMailbox
			bad++
		} else {
			from = mailbox(healthy % spec.Mailboxes)
			healthy++
		}
		job := &contract.Job{ID: fmt.Sprintf("r%d-%07d", h.seq, i), From: from,
			To:      []string{fmt.Sprintf("Recipient %d <rcpt%d@example.com>", i, i%1000)},
			Subject: fmt.Sprintf("loadtest %s job %d", spec.Name, i),
			Text:    "Hello,\n\nthis is a load test message of a realistic small size: a few lines of text, one recipient, no attachments.\n\n-- \nmailworker loadtest\n"}
		if refAttach != "" {
			a := contract.Attachment{Name: "report.pdf", ContentType: "application/pdf", ObjectRef: refAttach}
			if i >= total-spec.HugeJobs {
				a = contract.Attachment{Name: "export.zip", ContentType: "application/zip", ObjectRef: refHuge}
				job.From = mailbox(spec.Mailboxes + i - (total - spec.HugeJobs))
			}
			job.Attachments = []contract.Attachment{a}
		}
		oc.published1(job.ID, isBad, time.Now())
		var f jetstream.PubAckFuture
		var err error
		for attempt := 0; ; attempt++ {
			if spec.Bare {
				var data []byte
				if data, err = json.Marshal(job); err == nil {
					f, err = e.js.PublishMsgAsync(&nats.Msg{Subject: bareSubject + profile, Data: data,
						Header: nats.Header{contract.HeaderMsgID: []string{job.ID}}})
				}
			} else {
				f, _, err = pub.PublishAsync(profile, job)
			}
			if err == nil || !errors.Is(err, jetstream.ErrTooManyStalledMsgs) || attempt > 100 {
				break
			}
		}
		if err != nil {
			return int(errCount.Load()), fmt.Errorf("publish %s: %w", job.ID, err)
		}
		futures = append(futures, f)
		if len(futures) >= 4096 {
			check(false)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
	}
	check(true)
	return int(errCount.Load()), nil
}

// waitUntil polls cond until it holds, the process exits or d passes.
func waitUntil(ctx context.Context, d time.Duration, cond func() bool, p *proc) error {
	deadline := time.Now().Add(d)
	for !cond() {
		select {
		case <-p.done:
			return fmt.Errorf("process exited: %v", p.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v", d)
		}
	}
	return nil
}

func httpOK(url string) bool {
	c := http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func fetchTo(url, path string) error {
	c := http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// selfCPU is this process's CPU time so far: the embedded nats-server, the
// fake Graph, the publisher and the outcome watcher.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// uploadFigures sums the attachment bytes the fake received: the rate, and
// the most any one mailbox received in a rolling 5 minutes (Outlook's
// 150 MB per 5 minutes per app and mailbox, which the worker paces), taking
// each message's bytes at its send.
func uploadFigures(msgs []graphtest.Message, elapsed time.Duration) string {
	byBox := map[string][]graphtest.Message{}
	var total int64
	for _, m := range msgs {
		byBox[m.From] = append(byBox[m.From], m)
		for _, a := range m.Attachments {
			total += int64(a.Size)
		}
	}
	// worst counts windows of several messages (the pacer's business);
	// a single attachment over the limit goes alone and is reported apart.
	var worst, single int64
	worstBox := ""
	for box, ms := range byBox {
		sort.Slice(ms, func(i, j int) bool { return ms[i].ReceivedAt.Before(ms[j].ReceivedAt) })
		var sum int64
		lo := 0
		for i, m := range ms {
			for _, a := range m.Attachments {
				sum += int64(a.Size)
			}
			for m.ReceivedAt.Sub(ms[lo].ReceivedAt) >= 5*time.Minute {
				for _, a := range ms[lo].Attachments {
					sum -= int64(a.Size)
				}
				lo++
			}
			if i == lo {
				single = max(single, sum)
			} else if sum > worst {
				worst, worstBox = sum, box
			}
		}
	}
	rate := 0.0
	if elapsed > 0 {
		rate = float64(total) / 1e6 / elapsed.Seconds()
	}
	return fmt.Sprintf("attachments %.0f MB in total, %.1f MB/s; most in any 5 minutes to one mailbox %.1f MB over several messages (%s; limit 150 MB), %.1f MB in one message (goes alone)",
		float64(total)/1e6, rate, float64(worst)/1e6, worstBox, float64(single)/1e6)
}
