package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// The retention scenario measures what retained jobs cost the broker: the
// resident memory (RSS) of a nats-server process of its own and the disk of
// its store, after writing N job states (KV MAIL_JOB_STATE), N status events
// (MAIL_STATUS) and N/4 dead letters (MAIL_DLQ), as the worker writes them,
// in two halves. The cost per million is the marginal cost of the second half
// (measured after a restart of the broker, so that write buffers and caches
// do not count) scaled to 1,000,000: linear extrapolation, which the two
// halves let one check (see docs/benchmarks.md).
//
//	go run ./loadtest -n 200000 retention
const brokerCommand = "broker-process"

// brokerMain runs a bare embedded JetStream server on 127.0.0.1 until
// SIGTERM: args are the store dir and the port.
func brokerMain(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: broker-process <store dir> <port>")
	}
	port, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: args[0],
		NoLog: true, NoSigs: true, MaxPayload: 8 << 20})
	if err != nil {
		return err
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		return errors.New("not ready")
	}
	fmt.Println("ready", ns.ClientURL())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	ns.Shutdown()
	ns.WaitForShutdown()
	return nil
}

// broker is a running broker-process.
type broker struct {
	cmd *exec.Cmd
	url string
}

func startBroker(ctx context.Context, dir string, port int) (*broker, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, brokerCommand, dir, strconv.Itoa(port))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("broker did not start: %q %v", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return &broker{cmd: cmd, url: strings.TrimSpace(strings.TrimPrefix(line, "ready "))}, nil
}

func (b *broker) stop() {
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	_ = b.cmd.Wait()
}

// rss is the broker process's resident set size in bytes (Linux /proc).
func (b *broker) rss() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// diskUsage is the space allocated to the files under dir, in bytes.
func diskUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			} else {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// retentionRow is one measured component.
type retentionRow struct {
	What             string  `json:"what"`
	Entries          int     `json:"entries"` // written in each half
	RSSPerMillionMB  float64 `json:"rssPerMillionMB"`
	DiskPerMillionMB float64 `json:"diskPerMillionMB"`
	RSSHalf1MB       float64 `json:"rssHalf1MB"` // marginal cost of the first half, same scale, to check linearity
	DiskHalf1MB      float64 `json:"diskHalf1MB"`
}

// runRetention writes the retained records of n jobs in two halves and
// reports the marginal broker cost per million of each kind.
func runRetention(ctx context.Context, opts Options, stdout, stderr io.Writer) error {
	n := opts.N
	if n <= 0 {
		n = 200_000
	}
	dir, err := os.MkdirTemp("", "mailworker-retention-")
	if err != nil {
		return err
	}
	if !opts.Keep {
		defer os.RemoveAll(dir)
	}
	port := freeTCPPort()
	store := filepath.Join(dir, "jetstream")
	var b *broker
	restart := func() error {
		if b != nil {
			b.stop()
		}
		var err error
		b, err = startBroker(ctx, store, port)
		return err
	}
	if err := restart(); err != nil {
		return err
	}
	defer func() { b.stop() }()
	measure := func() (rss, disk int64, err error) {
		// After a restart: what the retained data costs at rest.
		if err := restart(); err != nil {
			return 0, 0, err
		}
		time.Sleep(2 * time.Second) // let the server finish loading the stores before reading RSS
		rss, err = b.rss()
		return rss, diskUsage(store), err
	}
	connect := func() (*nats.Conn, jetstream.JetStream, error) {
		nc, err := nats.Connect(b.url)
		if err != nil {
			return nil, nil, err
		}
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
		return nc, js, err
	}
	{
		nc, js, err := connect()
		if err != nil {
			return err
		}
		err = queue.Provision(ctx, js, queue.Config{Profiles: []string{"lt"}})
		nc.Close()
		if err != nil {
			return err
		}
	}
	kinds := []struct {
		what  string
		count int
		write func(js jetstream.JetStream, i int) error
	}{
		{"job state (KV MAIL_JOB_STATE)", n, writeState},
		{"status events (MAIL_STATUS)", n, writeEvent},
		{"dead letters (MAIL_DLQ, 2 KB job)", n / 4, writeDeadLetter},
	}
	var rows []retentionRow
	for _, k := range kinds {
		half := k.count / 2
		var rss, disk [3]int64
		if rss[0], disk[0], err = measure(); err != nil {
			return err
		}
		for h := 0; h < 2; h++ {
			nc, js, err := connect()
			if err != nil {
				return err
			}
			start := time.Now()
			for i := h * half; i < (h+1)*half; i++ {
				if i%2000 == 0 { // bound the acks in flight
					select {
					case <-js.PublishAsyncComplete():
					case <-time.After(time.Minute):
						nc.Close()
						return errors.New("publish acks timed out")
					}
				}
				if err := k.write(js, i); err != nil {
					nc.Close()
					return fmt.Errorf("%s #%d: %w", k.what, i, err)
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(5 * time.Minute):
				nc.Close()
				return errors.New("publish acks timed out")
			}
			nc.Close()
			if !opts.Quiet {
				fmt.Fprintf(stderr, "retention: %s: %d written in %s\n", k.what, half, time.Since(start).Round(time.Millisecond))
			}
			if rss[h+1], disk[h+1], err = measure(); err != nil {
				return err
			}
		}
		perM := func(a, b int64) float64 { return float64(b-a) / float64(half) * 1e6 / (1 << 20) }
		rows = append(rows, retentionRow{What: k.what, Entries: half,
			RSSPerMillionMB: perM(rss[1], rss[2]), DiskPerMillionMB: perM(disk[1], disk[2]),
			RSSHalf1MB: perM(rss[0], rss[1]), DiskHalf1MB: perM(disk[0], disk[1])})
	}
	if opts.JSON {
		enc := json.NewEncoder(stdout)
		for _, r := range rows {
			_ = enc.Encode(r)
		}
		return nil
	}
	fmt.Fprintf(stdout, "| retained, per 1,000,000 | RSS MB (2nd half) | disk MB (2nd half) | RSS MB (1st half) | disk MB (1st half) | entries per half |\n|---|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(stdout, "| %s | %.0f | %.0f | %.0f | %.0f | %d |\n", r.What, r.RSSPerMillionMB, r.DiskPerMillionMB, r.RSSHalf1MB, r.DiskHalf1MB, r.Entries)
	}
	return nil
}

// freeTCPPort picks a free loopback port here: port -1 would pick one in
// the child, which a restart could not find again.
func freeTCPPort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 24222
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// The records below are shaped like the worker's: a sent job's state, its
// sent event, and a dead letter of a 2 KB job with the failure headers.

func jobID(i int) string { return fmt.Sprintf("order-%012d-confirmation", i) }

func writeState(js jetstream.JetStream, i int) error {
	now := time.Now().UTC()
	st := contract.JobState{JobID: jobID(i), Profile: "lt", State: contract.StateSent, Attempts: 1, UpdatedAt: now,
		Graph: &contract.GraphInfo{Status: 202, RequestID: "6b3f1c2e-8a4d-4f0e-9c1b-2d7e5a9f0c31", ClientRequestID: "0f9e8d7c-6b5a-4f3e-2d1c-0b9a8f7e6d5c"},
		Seq:   uint64(i + 1)}
	b, _ := json.Marshal(st)
	_, err := js.PublishAsync("$KV."+contract.BucketState+"."+queue.StateKey("lt", st.JobID), b)
	return err
}

func writeEvent(js jetstream.JetStream, i int) error {
	ev := contract.Event{JobID: jobID(i), Profile: "lt", Event: contract.EventSent, Attempt: 1, At: time.Now().UTC(),
		Graph:     &contract.GraphInfo{Status: 202, RequestID: "6b3f1c2e-8a4d-4f0e-9c1b-2d7e5a9f0c31", ClientRequestID: "0f9e8d7c-6b5a-4f3e-2d1c-0b9a8f7e6d5c"},
		LatencyMs: 180, Metadata: map[string]string{"tenant": "acme", "order": strconv.Itoa(i)}}
	b, _ := json.Marshal(ev)
	m := &nats.Msg{Subject: contract.StatusSubject("lt", ev.JobID), Data: b, Header: nats.Header{}}
	m.Header.Set(contract.HeaderMsgID, queue.EventMsgID(&ev))
	_, err := js.PublishMsgAsync(m)
	return err
}

var dlqBody = []byte(`{"from":"billing@contoso.example","to":["someone@example.com"],"subject":"Your invoice","text":"` +
	strings.Repeat("Dear customer, please find your invoice. ", 48) + `"}`)

func writeDeadLetter(js jetstream.JetStream, i int) error {
	m := &nats.Msg{Subject: contract.DLQSubject("lt"), Data: dlqBody, Header: nats.Header{}}
	m.Header.Set(contract.HeaderMsgID, "dlq.lt."+jobID(i)+".g0")
	m.Header.Set(contract.HeaderJobID, jobID(i))
	m.Header.Set(contract.HeaderProfile, "lt")
	m.Header.Set(contract.HeaderReason, string(contract.ReasonRecipientInvalid))
	m.Header.Set(contract.HeaderError, "graph 400 ErrorInvalidRecipients: At least one recipient is not valid.")
	m.Header.Set(contract.HeaderAttempts, "1")
	m.Header.Set(contract.HeaderFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
	m.Header.Set(queue.HeaderGeneration, "0")
	m.Header.Set(contract.HeaderGraphRequestID, "6b3f1c2e-8a4d-4f0e-9c1b-2d7e5a9f0c31")
	_, err := js.PublishMsgAsync(m)
	return err
}
