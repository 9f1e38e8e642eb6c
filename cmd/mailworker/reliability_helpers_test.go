package main

// Shared harness of the reliability suite (reliability_*_test.go, issue 4):
// embedded JetStream servers that can be stopped and restarted on the same
// port and store, the TLS fake of Entra + Graph, `mailworker run` replicas
// (the built binary) that can be SIGKILLed, and the checks every fault ends
// with: each job in exactly one terminal state, nothing lost, no copy the
// fake accepted twice unless the job's sent event says possibleDuplicate, and
// no secret in logs, events, dead letters or job states.
//
// Short forms run in the default `go test ./...`; MAILWORKER_LONG=1 runs the
// long forms (docs/reliability.md).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// Sentinel secrets: they must never show up in anything the worker writes.
const (
	sentinelClientSecret = "SENTINEL-client-secret-q7Zx3"
	sentinelNATSPassword = "SENTINEL-nats-password-K9w2v"
	relNATSUser          = "mailworker"
	relTenant            = "rel-tenant"
	relClient            = "rel-client"
)

// settleMin is the least time a run is given to settle after its last
// fault (every job terminal, nothing outstanding). It is an upper bound, not
// a figure: on CI's two cores under -race, beside the other tests, a run
// that settles in 20 s alone can take minutes; the figures are logged.
const settleMin = 3 * time.Minute

// longRun reports whether the long forms were asked for (MAILWORKER_LONG=1).
func longRun() bool { b, _ := strconv.ParseBool(os.Getenv("MAILWORKER_LONG")); return b }

// pick returns short, or long under MAILWORKER_LONG=1.
func pick[T any](short, long T) T {
	if longRun() {
		return long
	}
	return short
}

// freePort returns a loopback TCP port that was free a moment ago, for a
// server that a test starts (and restarts) on a port chosen beforehand.
func freePort(t *testing.T) int {
	t.Helper()
	return pickPort(t, "127.0.0.1")
}

var (
	portsMu     sync.Mutex
	portsPicked = map[int]bool{}
)

// pickPort returns a TCP port free on every ip a moment ago, never one it
// returned before in this run. It picks below the kernel's ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range) where it can: a port chosen
// beforehand and bound later, or freed by a kill and bound again by a
// restart, is then never taken meanwhile by one of the servers the tests in
// parallel start on port 0, nor by an outgoing connection (a restarted SMTP
// ingress's port was once taken by another test's nats-server).
func pickPort(t *testing.T, ips ...string) int {
	t.Helper()
	lo, hi := 10000, 0
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if start, err := strconv.Atoi(f[0]); err == nil && start > lo+1000 {
				hi = start
			}
		}
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		var port int
		if hi > 0 {
			port = lo + rand.IntN(hi-lo)
		} else { // no room below the ephemeral range: the kernel's choice
			ln, err := net.Listen("tcp", ips[0]+":0")
			if err != nil {
				t.Fatalf("listen on %s: %v", ips[0], err)
			}
			port = ln.Addr().(*net.TCPAddr).Port
			ln.Close()
		}
		if portsPicked[port] {
			continue
		}
		free := true
		for _, ip := range ips {
			ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			portsPicked[port] = true
			return port
		}
	}
	t.Fatalf("no free port on %v", ips)
	return 0
}

// relNATS is one embedded nats-server that keeps its port and store across
// restarts.
type relNATS struct {
	t    *testing.T
	mk   func() *server.Options
	port int
	mu   sync.Mutex
	srv  *server.Server
}

// startRelNATS starts a JetStream server with file storage in a temp dir and
// user/password auth (the password is a sentinel).
func startRelNATS(t *testing.T) *relNATS {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	n := &relNATS{t: t, port: port, mk: func() *server.Options {
		return &server.Options{ServerName: "rel", Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir,
			NoLog: true, NoSigs: true,
			Users: []*server.User{{Username: relNATSUser, Password: sentinelNATSPassword}}}
	}}
	n.start()
	t.Cleanup(n.stop)
	return n
}

func (n *relNATS) start() {
	n.t.Helper()
	srv, err := server.NewServer(n.mk())
	if err != nil {
		n.t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(minWait) {
		n.t.Fatal("nats-server not ready")
	}
	n.mu.Lock()
	n.srv = srv
	n.mu.Unlock()
}

func (n *relNATS) stop() {
	n.mu.Lock()
	srv := n.srv
	n.srv = nil
	n.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

func (n *relNATS) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// relCluster is a 3-node JetStream cluster on loopback.
type relCluster struct {
	t     *testing.T
	nodes []*relNATS
}

func startRelCluster(t *testing.T) *relCluster {
	t.Helper()
	const size = 3
	clientPorts, routePorts := make([]int, size), make([]int, size)
	var routes []string
	for i := range size {
		clientPorts[i], routePorts[i] = freePort(t), freePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", routePorts[i]))
	}
	c := &relCluster{t: t}
	for i := range size {
		dir := t.TempDir()
		name := fmt.Sprintf("n%d", i+1)
		i := i
		n := &relNATS{t: t, port: clientPorts[i], mk: func() *server.Options {
			return &server.Options{ServerName: name, Host: "127.0.0.1", Port: clientPorts[i], JetStream: true,
				StoreDir: dir, NoLog: true, NoSigs: true,
				Users:   []*server.User{{Username: relNATSUser, Password: sentinelNATSPassword}},
				Cluster: server.ClusterOpts{Name: "rel", Host: "127.0.0.1", Port: routePorts[i]},
				Routes:  server.RoutesFromStr(strings.Join(routes, ","))}
		}}
		c.nodes = append(c.nodes, n)
	}
	// Start all three before waiting: a node is only ready once it has peers.
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.start() }()
	}
	wg.Wait()
	for _, n := range c.nodes {
		t.Cleanup(n.stop)
	}
	return c
}

func (c *relCluster) url() string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, n.url())
	}
	return strings.Join(urls, ",")
}

// node returns the node called name (n1..n3).
func (c *relCluster) node(name string) *relNATS {
	for i, n := range c.nodes {
		if fmt.Sprintf("n%d", i+1) == name {
			return n
		}
	}
	c.t.Fatalf("no node %q", name)
	return nil
}

// relProfile is one sending profile of the harness's worker config.
type relProfile struct {
	name        string
	onAmbiguous string
	senders     []string
	// deliveryMode and draftWhen as in the config ("": the defaults).
	deliveryMode, draftWhen string
	// maxMessageSize as in the config ("": the default, 35 MB).
	maxMessageSize string
}

// relWorker tunes the replicas; zero fields take quick test values.
type relWorker struct {
	replicas                 int // stream replicas
	concurrency, maxInFlight int
	maxAttempts              int
	backoffInitial           time.Duration
	backoffMax               time.Duration
	ackWait, sendTimeout     time.Duration
	// draftTransitWait, draftLookupEvery: worker.draftTransitWait and
	// draftLookupEvery (0: the defaults).
	draftTransitWait, draftLookupEvery time.Duration
}

// harness is one reliability run: NATS, the fake, a config and replicas.
type harness struct {
	t        *testing.T
	natsURL  string
	fake     *graphtest.Server
	cfgPath  string
	env      []string
	profiles []relProfile

	nc  *nats.Conn
	js  jetstream.JetStream
	q   *queue.Queue
	pub *queue.Publisher

	mu    sync.Mutex
	procs []*proc // every replica ever started (their stderr is checked for secrets)
}

// newHarness writes the worker config, provisions the streams and opens the
// queue from the test process. The fake must be running.
func newHarness(t *testing.T, natsURL string, fake *graphtest.Server, w relWorker, profiles ...relProfile) *harness {
	t.Helper()
	if w.replicas == 0 {
		w.replicas = 1
	}
	if w.concurrency == 0 {
		w.concurrency = 32
	}
	if w.maxInFlight == 0 {
		w.maxInFlight = 64
	}
	if w.maxAttempts == 0 {
		w.maxAttempts = 8
	}
	if w.backoffInitial == 0 {
		w.backoffInitial, w.backoffMax = 200*time.Millisecond, time.Second
	}
	if w.ackWait == 0 {
		w.ackWait = 3 * time.Second
	}
	if w.sendTimeout == 0 {
		w.sendTimeout = 2 * time.Second
	}
	if len(profiles) == 0 {
		profiles = []relProfile{{name: "rel", senders: []string{"box1@rel.example", "box2@rel.example", "box3@rel.example"}}}
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "graph-ca.pem")
	if err := os.WriteFile(caFile, fake.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "nats:\n  url: %q\n  user: %s\n  connectTimeout: 5s\n", natsURL, relNATSUser)
	fmt.Fprintf(&b, "streams:\n  replicas: %d\n", w.replicas)
	fmt.Fprintf(&b, "worker:\n  concurrency: %d\n  maxInFlight: %d\n  perMailboxConcurrency: 4\n  perMailboxPerMinute: 0\n"+
		"  maxAttempts: %d\n  backoffInitial: %s\n  backoffMax: %s\n  ackWait: %s\n  sendTimeout: %s\n  drainTimeout: 3s\n",
		w.concurrency, w.maxInFlight, w.maxAttempts, w.backoffInitial, w.backoffMax, w.ackWait, w.sendTimeout)
	if w.draftTransitWait > 0 {
		fmt.Fprintf(&b, "  draftTransitWait: %s\n", w.draftTransitWait)
	}
	if w.draftLookupEvery > 0 {
		fmt.Fprintf(&b, "  draftLookupEvery: %s\n", w.draftLookupEvery)
	}
	b.WriteString("http:\n  listen: \"127.0.0.1:0\"\nlog:\n  level: debug\n  format: json\nprofiles:\n")
	env := []string{"MAILWORKER_NATS_PASSWORD=" + sentinelNATSPassword}
	for _, p := range profiles {
		fmt.Fprintf(&b, "  %s:\n    tenantId: %s\n    clientId: %s\n    authorityHost: %q\n    graphURL: %q\n    caFile: %q\n"+
			"    credential:\n      clientSecret: \"\"\n    allowedSenders: [%s]\n    onAmbiguous: %q\n",
			p.name, relTenant, relClient, fake.URL(), fake.GraphURL(), caFile, strings.Join(p.senders, ", "), p.onAmbiguous)
		if p.deliveryMode != "" {
			fmt.Fprintf(&b, "    deliveryMode: %s\n    draftWhen: %q\n", p.deliveryMode, p.draftWhen)
		}
		if p.maxMessageSize != "" {
			fmt.Fprintf(&b, "    maxMessageSize: %q\n", p.maxMessageSize)
		}
		// The secret comes from the environment, as in Kubernetes.
		env = append(env, "MAILWORKER_PROFILES_"+upperSnake(p.name)+"_CREDENTIAL_CLIENT_SECRET="+sentinelClientSecret)
	}
	cfgPath := filepath.Join(dir, "mailworker.yaml")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, natsURL: natsURL, fake: fake, cfgPath: cfgPath, env: env, profiles: profiles}

	nc, err := nats.Connect(natsURL, nats.UserInfo(relNATSUser, sentinelNATSPassword), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	h.nc = nc
	if h.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	qc := queue.Config{Replicas: w.replicas, AckWait: w.ackWait}
	for _, p := range profiles {
		qc.Profiles = append(qc.Profiles, p.name)
	}
	// A new cluster elects its meta leader in a few seconds: retry. Each
	// try may take long on a starved machine (it looks up and creates a
	// dozen streams): upper bounds, not figures.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
		err = queue.Provision(pctx, h.js, qc)
		pcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("provision: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if h.q, err = queue.Open(ctx, h.js); err != nil {
		t.Fatal(err)
	}
	h.pub = queue.NewPublisher(h.js)
	return h
}

// newFake starts the fake Entra + Graph accepting the sentinel secret.
func newFake(t *testing.T, o graphtest.Options) *graphtest.Server {
	t.Helper()
	o.TenantID, o.ClientID, o.ClientSecret = relTenant, relClient, sentinelClientSecret
	if o.MaxConcurrentPerMailbox == 0 {
		o.MaxConcurrentPerMailbox = -1
	}
	fake, err := graphtest.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	return fake
}

// startReplica starts one `mailworker run` process.
func (h *harness) startReplica() *proc {
	h.t.Helper()
	p := startProc(h.t, append([]string{"MAILWORKER_CONFIG=" + h.cfgPath}, h.env...), "run")
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	return p
}

// kill SIGKILLs p and waits for it to be gone.
func kill(p *proc) {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// publish publishes n jobs for profile, ids prefix-0000…, round-robin over the
// profile's senders, and waits for every PubAck.
func (h *harness) publish(profile, prefix string, n int) []string {
	h.t.Helper()
	var senders []string
	for _, p := range h.profiles {
		if p.name == profile {
			senders = p.senders
		}
	}
	ids := make([]string, 0, n)
	var futures []jetstream.PubAckFuture
	for i := range n {
		id := fmt.Sprintf("%s-%05d", prefix, i)
		job := &contract.Job{ID: id, From: senders[i%len(senders)], To: []string{fmt.Sprintf("Customer %d <c%d@example.com>", i, i)},
			Subject: "reliability " + id, Text: "hello", Metadata: map[string]string{"run": prefix}}
		f, _, err := h.pub.PublishAsync(profile, job)
		if err != nil {
			h.t.Fatal(err)
		}
		futures = append(futures, f)
		ids = append(ids, id)
	}
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			h.t.Fatalf("publish %s: %v", ids[i], err)
		case <-time.After(30 * time.Second):
			h.t.Fatalf("publish %s: no PubAck", ids[i])
		}
	}
	return ids
}

// terminal reports whether st is a final state.
func terminal(s contract.State) bool {
	return s == contract.StateSent || s == contract.StateDeadLettered
}

// waitTerminal polls until every id is sent or dead-lettered and the
// profiles' consumers have nothing outstanding. A terminal state alone is not
// the end of a job: the worker stores it before the final status event, and
// a job whose event could not be published yet (a stream leader that died
// with the publish in flight) is put back for another delivery to report it.
// Only an ack or a term ends a job, so only then may the replicas be stopped.
func (h *harness) waitTerminal(ids []string, timeout time.Duration) {
	h.t.Helper()
	timeout = max(timeout, settleMin)
	left := append([]string(nil), ids...)
	deadline := time.Now().Add(timeout)
	for len(left) > 0 {
		var still []string
		for _, id := range left {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, _, err := h.stateOf(ctx, id)
			cancel()
			if err != nil || !terminal(st.State) {
				still = append(still, id)
			}
		}
		left = still
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("after %s, %d of %d jobs are not in a terminal state, e.g. %v", timeout, len(left), len(ids), left[:min(5, len(left))])
		}
		time.Sleep(200 * time.Millisecond)
	}
	for {
		outstanding := h.outstanding()
		if outstanding == "" {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("after %s, every job is terminal but the worker's consumers still have work: %s", timeout, outstanding)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// outstanding says which of the profiles' consumers (ingress and due) still
// have messages not delivered or not acked; "" when none.
func (h *harness) outstanding() string {
	var out []string
	for _, p := range h.profiles {
		for _, sc := range [][2]string{{contract.JobsStream(p.name), contract.ConsumerName}, {contract.StreamDefer, contract.DueConsumer(p.name)}} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := h.js.Consumer(ctx, sc[0], sc[1])
			var info *jetstream.ConsumerInfo
			if err == nil {
				info, err = c.Info(ctx)
			}
			cancel()
			switch {
			case err != nil:
				out = append(out, sc[0]+"/"+sc[1]+": "+err.Error())
			case info.NumPending != 0 || info.NumAckPending != 0:
				out = append(out, fmt.Sprintf("%s/%s: %d not delivered, %d awaiting ack", sc[0], sc[1], info.NumPending, info.NumAckPending))
			}
		}
	}
	return strings.Join(out, "; ")
}

// report is the figures of one run (docs/reliability.md).
type report struct {
	Jobs, Sent, DeadLettered, Lost int
	Duplicated                     int // jobs the fake accepted more than once
	ExtraCopies                    int // accepted copies beyond the first
	PossibleDuplicate              int // jobs whose sent event says possibleDuplicate
	Ambiguous                      int // jobs with an ambiguous attempt (event flag or ambiguous dead letter)
	MissingTerminalEvent           int // KV terminal, but no sent/dead_lettered event (must stay 0)
	Reasons                        map[contract.Reason]int
	GraphRequests                  int
}

func (r report) String() string {
	var reasons []string
	for k, v := range r.Reasons {
		reasons = append(reasons, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(reasons)
	return fmt.Sprintf("jobs=%d sent=%d dead_lettered=%d lost=%d duplicated=%d extra_copies=%d possible_duplicate=%d ambiguous=%d missing_terminal_event=%d graph_requests=%d reasons=[%s]",
		r.Jobs, r.Sent, r.DeadLettered, r.Lost, r.Duplicated, r.ExtraCopies, r.PossibleDuplicate, r.Ambiguous, r.MissingTerminalEvent, r.GraphRequests,
		strings.Join(reasons, " "))
}

// statusEvents reads the whole MAIL_STATUS stream, grouped by job id, the
// way support and the console read it: batch direct gets (queue.BrowseDirect),
// which ask again where a node stopped answering and end only on the
// stream leader's word. (The cluster harness observes as the console user,
// which may create no consumer: an ordered consumer's create is a publish
// permission violation that nobody answers, and it waited for its 60 s.)
func (h *harness) statusEvents() (map[string][]contract.Event, [][]byte) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, contract.StreamStatus)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string][]contract.Event{}
	var raw [][]byte
	err = queue.BrowseDirect(ctx, h.js, contract.StreamStatus, queue.BrowseOptions{}, func(m jetstream.Msg) (bool, error) {
		raw = append(raw, m.Data())
		var ev contract.Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			h.t.Errorf("status event %q: %v", m.Data(), err)
			return true, nil
		}
		out[ev.JobID] = append(out[ev.JobID], ev)
		return true, nil
	})
	if err != nil {
		h.t.Fatalf("read %d of %d status events: %v", len(raw), info.State.Msgs, err)
	}
	if uint64(len(raw)) < info.State.Msgs {
		h.t.Fatalf("read %d status events; the stream held %d before the read", len(raw), info.State.Msgs)
	}
	return out, raw
}

// check verifies the invariants for ids and returns the figures. maxCopies is
// the most copies the fake may hold of a job flagged possibleDuplicate (0: any).
func (h *harness) check(ids []string) report {
	h.t.Helper()
	t := h.t
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	events, _ := h.statusEvents()
	dls, err := h.q.DLQ.List(ctx, queue.DLQQuery{})
	if err != nil {
		t.Fatal(err)
	}
	dlByID := map[string]contract.DeadLetter{}
	for _, dl := range dls {
		if _, dup := dlByID[dl.JobID]; dup {
			t.Errorf("job %s has two dead-letter records", dl.JobID)
		}
		dlByID[dl.JobID] = dl
	}
	copies := map[string]int{}
	for _, m := range h.fake.Messages() {
		copies[m.JobID]++
	}
	r := report{Jobs: len(ids), Reasons: map[contract.Reason]int{}, GraphRequests: h.fake.SendRequests()}
	for _, id := range ids {
		st, _, err := h.stateOf(ctx, id)
		if err != nil {
			t.Errorf("job %s: no state: %v", id, err)
			r.Lost++
			continue
		}
		var term []contract.Event
		ambiguous := false
		for _, ev := range events[id] {
			if ev.Event == contract.EventSent || ev.Event == contract.EventDeadLettered {
				term = append(term, ev)
			}
			if ev.Ambiguous || ev.PossibleDuplicate {
				ambiguous = true
			}
		}
		switch {
		case len(term) > 1:
			t.Errorf("job %s: %d terminal status events (%v), want exactly 1; state %s", id, len(term), eventNames(events[id]), st.State)
		case len(term) == 0:
			// The final event is published before the ack, retried like the
			// final state, and re-published on redelivery: none may be missing.
			r.MissingTerminalEvent++
			t.Errorf("job %s: no terminal status event (%v); state %s", id, eventNames(events[id]), st.State)
		}
		n := copies[id]
		if n > 1 {
			r.Duplicated++
			r.ExtraCopies += n - 1
		}
		switch st.State {
		case contract.StateSent:
			r.Sent++
			if n == 0 {
				t.Errorf("job %s: state sent but the fake never accepted it", id)
				r.Lost++
			}
			if len(term) > 0 && term[len(term)-1].Event != contract.EventSent {
				t.Errorf("job %s: state sent but the terminal event is %s", id, term[len(term)-1].Event)
			}
			pd := len(term) > 0 && term[len(term)-1].PossibleDuplicate
			if pd {
				r.PossibleDuplicate++
			}
			if n > 1 && !pd {
				t.Errorf("job %s: the fake accepted it %d times but its sent event does not say possibleDuplicate (events %v)", id, n, eventNames(events[id]))
			}
		case contract.StateDeadLettered:
			r.DeadLettered++
			dl, ok := dlByID[id]
			if !ok {
				t.Errorf("job %s: state dead_lettered but no MAIL_DLQ record", id)
				r.Lost++
			} else {
				r.Reasons[dl.Reason]++
				if strings.Contains(dl.Error, "onAmbiguous=deadletter") {
					ambiguous = true
				}
			}
			if n > 1 {
				t.Errorf("job %s: dead-lettered but the fake accepted it %d times", id, n)
			}
		default:
			t.Errorf("job %s: state %s is not terminal", id, st.State)
			r.Lost++
		}
		if ambiguous {
			r.Ambiguous++
		}
	}
	return r
}

func eventNames(evs []contract.Event) []string {
	var out []string
	for _, ev := range evs {
		s := string(ev.Event)
		if ev.Ambiguous {
			s += "(ambiguous)"
		}
		if ev.PossibleDuplicate {
			s += "(possibleDuplicate)"
		}
		out = append(out, s)
	}
	return out
}

// checkNoSecrets looks for the sentinel secrets in every replica's output,
// every status event, every dead letter (body and headers) and every job state.
func (h *harness) checkNoSecrets(extra ...string) {
	h.t.Helper()
	t := h.t
	sentinels := []string{sentinelClientSecret, sentinelNATSPassword}
	look := func(where, s string) {
		for _, sec := range sentinels {
			if strings.Contains(s, sec) {
				t.Errorf("secret %q found in %s", sec[:12]+"…", where)
			}
		}
	}
	h.mu.Lock()
	procs := append([]*proc(nil), h.procs...)
	h.mu.Unlock()
	for i, p := range procs {
		look(fmt.Sprintf("replica %d stderr", i), p.stderr.String())
		look(fmt.Sprintf("replica %d stdout", i), p.stdout.String())
	}
	for i, s := range extra {
		look(fmt.Sprintf("output %d", i), s)
	}
	_, raw := h.statusEvents()
	for _, b := range raw {
		look("a status event", string(b))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dls, err := h.q.DLQ.List(ctx, queue.DLQQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, dl := range dls {
		look("a dead letter", fmt.Sprintf("%+v %s", dl, dl.Body))
	}
	kv, err := h.js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e == nil {
			break // initial values done
		}
		look("job state "+e.Key(), string(e.Value()))
	}
}

// stopAll stops every live replica with SIGINT and expects a clean exit.
func (h *harness) stopAll(live []*proc) {
	h.t.Helper()
	for _, p := range live {
		if code := p.stop(30 * time.Second); code != 0 {
			h.t.Errorf("replica exited %d after SIGINT:\n%s", code, tail(p.stderr.String(), 2000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// logFigures writes the figures in one greppable line.
func logFigures(t *testing.T, fault string, r report, extra string) {
	t.Helper()
	t.Logf("RELIABILITY fault=%s %s %s", fault, r, extra)
}

// stateOf returns the job state of id in whichever of the harness's profiles
// holds it (job ids are per profile; the harness's ids are unique).
func (h *harness) stateOf(ctx context.Context, id string) (contract.JobState, uint64, error) {
	for _, p := range h.profiles {
		st, rev, err := h.q.States.Get(ctx, p.name, id)
		if !errors.Is(err, contract.ErrNoState) {
			return st, rev, err
		}
	}
	// A job for a profile the worker does not serve is recorded under the
	// profile of its subject.
	return stateAny(ctx, h.q, id)
}

// stateAny returns the job state of id in whichever profile holds one (the
// test's ids are unique across its profiles).
func stateAny(ctx context.Context, q *queue.Queue, id string) (contract.JobState, uint64, error) {
	ps, err := q.States.Profiles(ctx, id)
	if err != nil {
		return contract.JobState{}, 0, err
	}
	for _, p := range ps {
		st, rev, err := q.States.Get(ctx, p, id)
		if !errors.Is(err, contract.ErrNoState) {
			return st, rev, err
		}
	}
	return contract.JobState{}, 0, contract.ErrNoState
}

// guidRE is the shape of a client-request-id the worker sends.
var guidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// checkClientRequestIDs holds every client-request-id the run recorded — in
// status events, dead letters, job states and the fake's own record of
// delivered messages — to being a GUID that the fake received as a
// client-request-id header: what Microsoft support is given is what was
// sent, never a job id. It returns how many it checked.
func (h *harness) checkClientRequestIDs(ids []string) int {
	h.t.Helper()
	t := h.t
	n := 0
	check := func(where, crid string) {
		if crid == "" {
			return
		}
		n++
		if !guidRE.MatchString(crid) || !h.fake.ReceivedClientRequestID(crid) {
			t.Errorf("%s: clientRequestId %q is not a GUID the fake received", where, crid)
		}
	}
	calls := func(where string, g *contract.GraphInfo) {
		if g == nil {
			return
		}
		check(where, g.ClientRequestID)
		for _, c := range g.EarlierCalls {
			check(where+" (earlier call)", c.ClientRequestID)
		}
	}
	events, _ := h.statusEvents()
	for id, evs := range events {
		for _, ev := range evs {
			calls("event "+string(ev.Event)+" of "+id, ev.Graph)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dls, err := h.q.DLQ.List(ctx, queue.DLQQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, dl := range dls {
		for _, c := range dl.GraphCalls {
			check("dead letter of "+dl.JobID, c.ClientRequestID)
		}
	}
	for _, id := range ids {
		if st, _, err := h.stateOf(ctx, id); err == nil {
			calls("state of "+id, st.Graph)
		}
	}
	for _, m := range h.fake.Messages() {
		check("fake record of "+m.JobID, m.ClientRequestID)
	}
	return n
}
