package main

// The cluster fault suite (issue 19, "Done when"): three nats-server processes
// run from the shipped deploy/nats files (shipped_cluster_test.go), `mailworker
// run` replicas (the built binary) connected over TLS as user "worker" of the
// shipped accounts.conf, the fake Graph with faults, and, in a seeded random
// order: kill -9 of the jobs stream's leader node, kill -9 of a worker, and
// SIGSTOP, for longer than the consumer's ackWait, of the node that two
// workers are connected to. Graph answers a share of the sends with 503, with
// 504 after accepting the mail, or too late (past sendTimeout).
//
// It checks, from the fake's record, the status stream and the job states:
// nothing lost, no copy the fake accepted twice without possibleDuplicate on
// the job's sent event, exactly one terminal status event per job, no job left
// open (every state terminal, the consumer empty), and job states that never
// go backwards: the test tails the state bucket's stream for the whole run and
// fails a job whose state left sent or dead_lettered, or whose attempt count
// went down, in any revision.
//
// MAILWORKER_FAULT_SEED=<n> replays a run's fault order and timings (the seed
// is logged). MAILWORKER_LONG=1 runs the long form (docs/reliability.md).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// faultSeed returns MAILWORKER_FAULT_SEED, or a fresh seed, and logs it.
func faultSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("MAILWORKER_FAULT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("MAILWORKER_FAULT_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("fault seed %d (replay: MAILWORKER_FAULT_SEED=%d)", seed, seed)
	return seed
}

// clusterHarness is a harness whose NATS is the shipped cluster: the worker
// replicas connect as user "worker", the test publishes as producer_billing
// and observes as console (read-only: status, dead letters, job states).
type clusterHarness struct {
	*harness
	c       *shippedCluster
	workers map[*proc]*shippedNode // the node each replica was pointed at
	// jobConsumers are the consumers named contract.ConsumerName that
	// provision reported, {stream, consumer}: the job streams' (one shared
	// stream, or one per profile).
	jobConsumers [][2]string
}

// newClusterHarness writes the worker config (TLS, user worker, its inbox
// prefix, streams at 3 replicas, provision: false as shipped), provisions as
// user provisioner and opens the queue as user console.
func newClusterHarness(t *testing.T, c *shippedCluster, fake *graphtest.Server, w relWorker, p relProfile) *clusterHarness {
	t.Helper()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "graph-ca.pem")
	if err := os.WriteFile(caFile, fake.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "nats:\n  url: %q\n  tls:\n    caFile: %q\n  user: worker\n  inboxPrefix: _INBOX_worker\n  connectTimeout: 5s\n", c.url(), c.caFile)
	fmt.Fprintf(&b, "streams:\n  provision: false\n  replicas: 3\n")
	fmt.Fprintf(&b, "worker:\n  concurrency: %d\n  maxInFlight: %d\n  perMailboxConcurrency: 4\n  perMailboxPerMinute: 0\n"+
		"  maxAttempts: %d\n  backoffInitial: %s\n  backoffMax: %s\n  ackWait: %s\n  sendTimeout: %s\n  drainTimeout: 3s\n",
		w.concurrency, w.maxInFlight, w.maxAttempts, w.backoffInitial, w.backoffMax, w.ackWait, w.sendTimeout)
	b.WriteString("http:\n  listen: \"127.0.0.1:0\"\nlog:\n  level: debug\n  format: json\nprofiles:\n")
	fmt.Fprintf(&b, "  %s:\n    tenantId: %s\n    clientId: %s\n    authorityHost: %q\n    graphURL: %q\n    caFile: %q\n"+
		"    credential:\n      clientSecret: \"\"\n    allowedSenders: [%s]\n    onAmbiguous: %q\n",
		p.name, relTenant, relClient, fake.URL(), fake.GraphURL(), caFile, strings.Join(p.senders, ", "), p.onAmbiguous)
	cfgPath := filepath.Join(dir, "mailworker.yaml")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"MAILWORKER_NATS_PASSWORD=" + shippedPassword("worker"),
		"MAILWORKER_PROFILES_" + upperSnake(p.name) + "_CREDENTIAL_CLIENT_SECRET=" + sentinelClientSecret}

	// Provision as the runbook does: `mailworker provision` as provisioner.
	provEnv := append([]string{"MAILWORKER_CONFIG=" + cfgPath, "MAILWORKER_NATS_USER=provisioner",
		"MAILWORKER_NATS_INBOX_PREFIX=_INBOX_provisioner", "MAILWORKER_NATS_PASSWORD=" + shippedPassword("provisioner")}, env[1:]...)
	deadline := time.Now().Add(60 * time.Second)
	var provOut string
	for {
		out, errOut, code := runCmdEnv(t, provEnv, "", "provision")
		if code == 0 {
			provOut = out
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("provision exit %d:\n%s\n%s", code, out, errOut)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Observers fail over from a frozen node within seconds, not nats.go's
	// default 2 minutes of pings.
	quick := []nats.Option{nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2)}
	obs := dialUser(t, c, "console", quick...)
	js, err := jetstream.New(obs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := queue.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	prodJS, err := jetstream.New(dialUser(t, c, "producer_"+p.name, quick...))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, natsURL: c.url(), fake: fake, cfgPath: cfgPath, env: env, profiles: []relProfile{p},
		nc: obs, js: js, q: q, pub: queue.NewPublisher(prodJS)}
	ch := &clusterHarness{harness: h, c: c, workers: map[*proc]*shippedNode{}}
	_, consumers := parseProvisioned(provOut)
	for _, sc := range consumers {
		if sc[1] == contract.ConsumerName {
			ch.jobConsumers = append(ch.jobConsumers, sc)
		}
	}
	if len(ch.jobConsumers) == 0 {
		t.Fatalf("provision reported no %q consumer:\n%s", contract.ConsumerName, provOut)
	}
	return ch
}

// jobsStream is the job stream of profile: the one whose name ends in the
// profile's name if provision made one per profile, else the shared one.
func (h *clusterHarness) jobsStream(profile string) string {
	for _, sc := range h.jobConsumers {
		if strings.HasSuffix(sc[0], "_"+profile) {
			return sc[0]
		}
	}
	return h.jobConsumers[0][0]
}

// outstanding sums, over the job consumers, the messages not yet delivered
// and those awaiting an ack.
func (h *clusterHarness) outstanding() (pending, ackPending uint64, err error) {
	for _, sc := range h.jobConsumers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := h.js.Consumer(ctx, sc[0], sc[1])
		var info *jetstream.ConsumerInfo
		if err == nil {
			info, err = c.Info(ctx)
		}
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("consumer %s > %s: %w", sc[0], sc[1], err)
		}
		pending += info.NumPending
		ackPending += uint64(info.NumAckPending)
	}
	return pending, ackPending, nil
}

// dialUser connects to every node of c as user, with its inbox prefix.
func dialUser(t *testing.T, c *shippedCluster, user string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.UserInfo(user, shippedPassword(user)), nats.RootCAs(c.caFile),
		nats.CustomInboxPrefix("_INBOX_" + user), nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})}, opts...)
	nc, err := nats.Connect(c.url(), opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// startReplicaOn starts a replica whose configured URL is node n only (it
// learns the others from the cluster, as a pod does).
func (h *clusterHarness) startReplicaOn(n *shippedNode) *proc {
	h.t.Helper()
	p := startProc(h.t, append([]string{"MAILWORKER_CONFIG=" + h.cfgPath, "MAILWORKER_NATS_URL=" + n.clientURL()}, h.env...), "run")
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.workers[p] = n
	h.mu.Unlock()
	return p
}

// workerConns counts the connections of user "worker" on each running node
// (monitoring /connz).
func (c *shippedCluster) workerConns() map[*shippedNode]int {
	out := map[*shippedNode]int{}
	for _, n := range c.nodes {
		var connz struct {
			Conns []struct {
				User string `json:"authorized_user"`
			} `json:"connections"`
		}
		if c.getJSON(n, "/connz?auth=true&limit=1024", &connz) != nil {
			continue
		}
		for _, cn := range connz.Conns {
			if cn.User == "worker" {
				out[n]++
			}
		}
	}
	return out
}

// stateRev is one revision of a job state as the tail saw it.
type stateRev struct {
	Seq      uint64
	State    contract.State
	Attempts int
	Deleted  bool
}

// stateTail follows the job-state bucket's stream from its start and records
// every revision it reads, per key. Revisions superseded before the tail
// reached them are not seen (the bucket keeps one per key); the tail reads as
// fast as a direct get answers, so it keeps up with the workers.
type stateTail struct {
	mu   sync.Mutex
	revs map[string][]stateRev // key: <profile>.<job id>
	n    int
	stop context.CancelFunc
	done chan struct{}
}

func tailStates(t *testing.T, js jetstream.JetStream) *stateTail {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := &stateTail{revs: map[string][]stateRev{}, stop: cancel, done: make(chan struct{})}
	prefix := "$KV." + contract.BucketState + "."
	go func() {
		defer close(st.done)
		var s jetstream.Stream
		next := uint64(1)
		for ctx.Err() == nil {
			if s == nil {
				c, cc := context.WithTimeout(ctx, 5*time.Second)
				var err error
				s, err = js.Stream(c, "KV_"+contract.BucketState)
				cc()
				if err != nil {
					s = nil
					time.Sleep(100 * time.Millisecond) // a leader election: look again
					continue
				}
			}
			c, cc := context.WithTimeout(ctx, 2*time.Second)
			m, err := s.GetMsg(c, next, jetstream.WithGetMsgSubject(prefix+">"))
			cc()
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgNotFound) && ctx.Err() == nil {
					s = nil // a timeout or a node away: rebind
				}
				time.Sleep(20 * time.Millisecond) // caught up (or a node away): poll again
				continue
			}
			next = m.Sequence + 1
			key := strings.TrimPrefix(m.Subject, prefix)
			rev := stateRev{Seq: m.Sequence}
			if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
				rev.Deleted = true
			} else {
				var js contract.JobState
				if json.Unmarshal(m.Data, &js) == nil {
					rev.State, rev.Attempts = js.State, js.Attempts
				}
			}
			st.mu.Lock()
			st.revs[key] = append(st.revs[key], rev)
			st.n++
			st.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-st.done })
	return st
}

// close stops the tail once it has read up to the stream's last sequence.
func (st *stateTail) close(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // an upper bound
	defer cancel()
	s, err := js.Stream(ctx, "KV_"+contract.BucketState)
	if err == nil {
		var info *jetstream.StreamInfo
		if info, err = s.Info(ctx); err == nil {
			last := info.State.LastSeq
			eventually(t, 30*time.Second, "the state tail to reach the bucket's last revision", func() bool {
				st.mu.Lock()
				defer st.mu.Unlock()
				var max uint64
				for _, rs := range st.revs {
					if n := len(rs); n > 0 && rs[n-1].Seq > max {
						max = rs[n-1].Seq
					}
				}
				return max >= last
			})
		}
	}
	if err != nil {
		t.Errorf("state tail: %v", err)
	}
	st.stop()
	<-st.done
}

// checkMonotonic fails every job whose recorded states went backwards: a
// revision after a terminal one (sent, dead_lettered) that is not the same
// terminal state, or an attempt count lower than an earlier revision's. It
// returns the number of jobs that went backwards.
func (st *stateTail) checkMonotonic(t *testing.T, profile string, ids []string) (backwards, revisions int) {
	t.Helper()
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, id := range ids {
		revs := st.revs[profile+"."+id]
		revisions += len(revs)
		var term contract.State
		maxAttempts := 0
		bad := ""
		for _, r := range revs {
			switch {
			case r.Deleted:
				bad = fmt.Sprintf("deleted at revision %d", r.Seq)
			case term != "" && r.State != term:
				bad = fmt.Sprintf("%s after %s at revision %d", r.State, term, r.Seq)
			case r.Attempts < maxAttempts:
				bad = fmt.Sprintf("attempts %d after %d at revision %d", r.Attempts, maxAttempts, r.Seq)
			}
			if bad != "" {
				break
			}
			if terminal(r.State) {
				term = r.State
			}
			maxAttempts = max(maxAttempts, r.Attempts)
		}
		if bad != "" {
			backwards++
			t.Errorf("job %s: state went backwards: %s (revisions %s)", id, bad, revString(revs))
		}
	}
	return backwards, revisions
}

func revString(revs []stateRev) string {
	var parts []string
	for _, r := range revs {
		if r.Deleted {
			parts = append(parts, fmt.Sprintf("%d:deleted", r.Seq))
			continue
		}
		parts = append(parts, fmt.Sprintf("%d:%s/%d", r.Seq, r.State, r.Attempts))
	}
	return strings.Join(parts, " ")
}

// settle waits until every id is terminal and the consumer has nothing
// outstanding, or the deadline passes; unlike waitTerminal it does not stop
// the test, so that every check below reports what it sees. It returns the
// ids still open.
func (h *clusterHarness) settle(ids []string, timeout time.Duration) []string {
	h.t.Helper()
	timeout = max(timeout, settleMin)
	deadline := time.Now().Add(timeout)
	for {
		var open []string
		for _, id := range ids {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, _, err := h.stateOf(ctx, id)
			cancel()
			if err != nil || !terminal(st.State) {
				open = append(open, id)
			}
		}
		outstanding := ""
		if len(open) == 0 {
			pending, ackPending, err := h.outstanding()
			switch {
			case err != nil:
				outstanding = err.Error()
			case pending != 0 || ackPending != 0:
				outstanding = fmt.Sprintf("%d not delivered, %d awaiting ack", pending, ackPending)
			default:
				return nil
			}
		}
		if time.Now().After(deadline) {
			h.t.Errorf("after %s: %d of %d jobs not in a terminal state (e.g. %v); consumer: %s",
				timeout, len(open), len(ids), open[:min(5, len(open))], outstanding)
			return open
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestReliabilityClusterFaults is the cluster fault suite (see the file comment).
func TestReliabilityClusterFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	seed := faultSeed(t)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	jobs := pick(300, 3000)
	ackWait := 2 * time.Second
	// The freeze outlasts ackWait and the lease of a `sending` mark
	// (sendTimeout + 5 s): the frozen workers' jobs are redelivered to the
	// others and sent again while the frozen writes wait in their sockets.
	pause := pick(5*ackWait, 15*time.Second)
	c := startShippedCluster(t)
	fake := newFake(t, graphtest.Options{Latency: 250 * time.Millisecond, LatencyJitter: 250 * time.Millisecond})
	profile := relProfile{name: "billing", senders: []string{"billing@contoso.com", "invoices@contoso.com", "statements@contoso.com"}}
	// Graph faults, one kind per mailbox (the jobs go round-robin over them).
	fake.SetMailboxFault(profile.senders[0], &graphtest.Fault{Status: 503, RetryAfter: "1", Probability: 0.05})
	fake.SetMailboxFault(profile.senders[1], &graphtest.Fault{Status: 504, AcceptThenFail: true, Probability: 0.05})
	fake.SetMailboxFault(profile.senders[2], &graphtest.Fault{Delay: 1500 * time.Millisecond, Probability: 0.05}) // past sendTimeout
	h := newClusterHarness(t, c, fake, relWorker{ackWait: ackWait, sendTimeout: time.Second, concurrency: 8, maxInFlight: 16,
		maxAttempts: 10, backoffInitial: 200 * time.Millisecond, backoffMax: time.Second}, profile)
	tail := tailStates(t, h.js)
	ids := h.publish(profile.name, "cf", jobs)

	// Two replicas on one node, one on another.
	first, second := c.nodes[rng.IntN(3)], (*shippedNode)(nil)
	for second == nil || second == first {
		second = c.nodes[rng.IntN(3)]
	}
	live := []*proc{h.startReplicaOn(first), h.startReplicaOn(first), h.startReplicaOn(second)}

	faults := []string{"leader-kill", "worker-kill", "pause"}
	rng.Shuffle(len(faults), func(i, j int) { faults[i], faults[j] = faults[j], faults[i] })
	var log []string
	var pausedAt time.Time
	for i, f := range faults {
		at := jobs * (10 + 15*i) / 100 // at 10, 25 and 40 % of the sends: much is still to do after each
		eventually(t, 120*time.Second, fmt.Sprintf("%d sends before fault %s", at, f), func() bool { return len(fake.Messages()) >= at })
		switch f {
		case "leader-kill":
			jobsStream := h.jobsStream(profile.name)
			leader := streamLeader(t, h.js, jobsStream)
			n := c.node(leader)
			n.kill()
			eventually(t, 30*time.Second, "a new "+jobsStream+" leader", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				s, err := h.js.Stream(ctx, jobsStream)
				if err != nil {
					return false
				}
				info, err := s.Info(ctx)
				return err == nil && info.Cluster != nil && info.Cluster.Leader != "" && info.Cluster.Leader != leader
			})
			n.start(natsServerBinary(t)) // the pod comes back with its store
			log = append(log, "kill -9 "+leader+" (leader of "+jobsStream+") and restart")
		case "worker-kill":
			i := rng.IntN(len(live))
			n := h.workers[live[i]]
			kill(live[i])
			live[i] = h.startReplicaOn(n)
			log = append(log, fmt.Sprintf("kill -9 worker %d (on %s) and start another", i, n.name))
		case "pause":
			// The node most workers are connected to now (two, unless a
			// fault before moved them).
			var target *shippedNode
			eventually(t, 30*time.Second, "workers connected", func() bool {
				most := 0
				for n, k := range c.workerConns() {
					if k > most {
						target, most = n, k
					}
				}
				return target != nil
			})
			conns := c.workerConns()[target]
			for conns < 2 { // an earlier fault moved the workers apart: give the node a second one
				live = append(live, h.startReplicaOn(target))
				eventually(t, 30*time.Second, "a second worker on "+target.name, func() bool { return c.workerConns()[target] >= 2 })
				conns = c.workerConns()[target]
			}
			target.pause()
			pausedAt = time.Now()
			time.Sleep(pause) // the fault's length, not a wait for a condition
			target.resume()
			log = append(log, fmt.Sprintf("SIGSTOP %s (%d worker connections) for %s", target.name, conns, pause))
		}
		t.Logf("fault %d: %s (sends so far %d)", i+1, log[len(log)-1], len(fake.Messages()))
	}
	open := h.settle(ids, pick(90*time.Second, 5*time.Minute))
	h.stopLive(live)
	tail.close(t, h.js)
	r := h.check(ids)
	backwards, revisions := tail.checkMonotonic(t, profile.name, ids)
	backwards += h.checkStateAgreesWithEvents(ids)
	for _, id := range open {
		tail.mu.Lock()
		t.Logf("open job %s: state revisions %s", id, revString(tail.revs[profile.name+"."+id]))
		tail.mu.Unlock()
	}
	h.checkReplicaLogsForSecrets()
	if r.Lost != 0 {
		t.Errorf("lost %d jobs", r.Lost)
	}
	gap, gapFrom := maxSendGap(fake.Messages())
	logFigures(t, "cluster-faults", r, fmt.Sprintf("open=%d backwards=%d state_revisions=%d max_send_gap=%s (from %s after the freeze began) seed=%d faults=[%s]",
		len(open), backwards, revisions, gap.Round(100*time.Millisecond), gapFrom.Sub(pausedAt).Round(100*time.Millisecond), seed, strings.Join(log, "; ")))
}

// stopLive stops every live replica with SIGINT and expects a clean exit; a
// replica still running 30 s later gets SIGQUIT, so that its goroutines are
// in the failure (once seen in about 20 runs; not reproduced with its seed).
func (h *clusterHarness) stopLive(live []*proc) {
	h.t.Helper()
	for _, p := range live {
		_ = p.cmd.Process.Signal(os.Interrupt)
	}
	for i, p := range live {
		select {
		case <-p.done:
			if code := p.cmd.ProcessState.ExitCode(); code != 0 {
				h.t.Errorf("replica %d exited %d after SIGINT:\n%s", i, code, tail(p.stderr.String(), 2000))
			}
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
			}
			h.t.Errorf("replica %d (on %s) did not exit within 30 s of SIGINT; its goroutines at SIGQUIT:\n%s",
				i, h.workers[p].name, tail(p.stderr.String(), 30000))
		}
	}
}

// maxSendGap is the longest time between two sends the fake accepted, and
// when it began: a figure for how long sending stalled around the faults
// (issue 19 item 2), logged, not asserted.
func maxSendGap(msgs []graphtest.Message) (time.Duration, time.Time) {
	sort.Slice(msgs, func(i, j int) bool { return msgs[i].ReceivedAt.Before(msgs[j].ReceivedAt) })
	var gap time.Duration
	var from time.Time
	for i := 1; i < len(msgs); i++ {
		if d := msgs[i].ReceivedAt.Sub(msgs[i-1].ReceivedAt); d > gap {
			gap, from = d, msgs[i-1].ReceivedAt
		}
	}
	return gap, from
}

// checkStateAgreesWithEvents fails every job whose final state is not
// terminal although a terminal status event was published for it: its state
// went backwards after the outcome was reported, even if the tail did not
// read the terminal revision before a later write replaced it. It returns
// the number of such jobs.
func (h *clusterHarness) checkStateAgreesWithEvents(ids []string) int {
	h.t.Helper()
	events, _ := h.statusEvents()
	n := 0
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, _, err := h.stateOf(ctx, id)
		cancel()
		if err != nil || terminal(st.State) {
			continue
		}
		for _, ev := range events[id] {
			if ev.Event == contract.EventSent || ev.Event == contract.EventDeadLettered {
				n++
				h.t.Errorf("job %s: state %s after its terminal event %s: the state went backwards", id, st.State, ev.Event)
				break
			}
		}
	}
	return n
}

// checkReplicaLogsForSecrets looks for the worker's NATS password and the
// client secret in every replica's output (the observer cannot read every
// record checkNoSecrets reads; status events and dead letters are checked by
// check through the same console user).
func (h *clusterHarness) checkReplicaLogsForSecrets() {
	h.t.Helper()
	h.mu.Lock()
	procs := append([]*proc(nil), h.procs...)
	h.mu.Unlock()
	for i, p := range procs {
		for _, sec := range []string{sentinelClientSecret, shippedPassword("worker")} {
			if strings.Contains(p.stderr.String()+p.stdout.String(), sec) {
				h.t.Errorf("replica %d output holds a secret (%s…)", i, sec[:8])
			}
		}
	}
}
