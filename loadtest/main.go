// Command loadtest measures mailworker against the practical ceiling of its
// broker and of Graph: it starts an embedded JetStream server (or uses
// --nats-url) and the graphtest fake of Entra + Graph, runs R `mailworker run`
// processes against them, publishes N jobs and waits for every job's outcome
// on MAIL_STATUS, then reports throughput, latency, CPU, memory and request
// efficiency per scenario. A "bare" consume → POST sendMail → ack loop, run as
// a separate process on the same server, fake and concurrency, is the
// baseline the worker is compared with.
//
//	go run ./loadtest [flags] [max latency throttle isolation deferral failover scale smtp large] [retention tracking writes]
//
// It exits 1 when a job was lost or sent twice, 2 on a usage or setup error.
// Timings are figures, never assertions: see docs/benchmarks.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// allScenarios in the order they run by default.
var allScenarios = []string{"max", "latency", "throttle", "isolation", "deferral", "failover", "scale", "smtp", "large"}

// extraScenarios run only when named: retention and writes measure the
// broker alone (retention.go, writes.go).
var extraScenarios = []string{"retention", "tracking", "writes"}

func main() {
	if len(os.Args) > 1 && os.Args[1] == bareSMTPCommand {
		if err := bareSMTPMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bare-smtp:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == brokerCommand {
		if err := brokerMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "broker-process:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == bareCommand {
		if err := bareMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bare-worker:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run parses args, runs the scenarios and writes the report; it returns the
// process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "loadtest:", err)
		return 2
	}
	if slices.Contains(opts.Scenarios, "tracking") {
		if err := runTracking(ctx, opts, stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "loadtest: scenario tracking:", err)
			return 1
		}
		opts.Scenarios = slices.DeleteFunc(opts.Scenarios, func(s string) bool { return s == "tracking" })
		if len(opts.Scenarios) == 0 {
			return 0
		}
	}
	if slices.Contains(opts.Scenarios, "writes") {
		if err := runWrites(ctx, opts, stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "loadtest: scenario writes:", err)
			return 1
		}
		opts.Scenarios = slices.DeleteFunc(opts.Scenarios, func(s string) bool { return s == "writes" })
		if len(opts.Scenarios) == 0 {
			return 0
		}
	}
	if slices.Contains(opts.Scenarios, "retention") {
		if err := runRetention(ctx, opts, stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "loadtest: scenario retention:", err)
			return 1
		}
		opts.Scenarios = slices.DeleteFunc(opts.Scenarios, func(s string) bool { return s == "retention" })
		if len(opts.Scenarios) == 0 {
			return 0
		}
	}
	h, err := newHarness(ctx, opts, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "loadtest:", err)
		return 2
	}
	defer h.Close()

	var results []Result
	failed := false
	for _, name := range opts.Scenarios {
		rs, err := h.scenario(ctx, name)
		results = append(results, rs...)
		if err != nil {
			fmt.Fprintf(stderr, "loadtest: scenario %s: %v\n", name, err)
			failed = true
			if ctx.Err() != nil {
				break
			}
		}
	}
	if opts.JSON {
		enc := json.NewEncoder(stdout)
		for _, r := range results {
			_ = enc.Encode(r)
		}
	} else {
		writeTable(stdout, results, opts.Markdown)
	}
	if opts.JSON {
		writeTable(stderr, results, opts.Markdown) // the readable table, for a person watching
	}
	for _, r := range results {
		if r.Lost > 0 || r.Duplicates > 0 {
			fmt.Fprintf(stderr, "loadtest: FAIL %s: %d lost, %d duplicated\n", r.Scenario, r.Lost, r.Duplicates)
			failed = true
		}
	}
	if failed {
		return 1
	}
	return 0
}

// Options are the command-line settings. Zero sizes mean "the scenario's
// default".
type Options struct {
	N           int
	Concurrency int
	Latency     time.Duration
	Replicas    int
	JSON        bool
	Markdown    bool
	NATSURL     string
	Keep        bool
	Timeout     time.Duration
	Pprof       bool
	Scenarios   []string
	// WorkerBin, when set, is used instead of building cmd/mailworker.
	WorkerBin string
	// BareBin and BareArgs start the bare worker; default: this executable
	// with the hidden bare-worker subcommand.
	BareBin string
	// Quiet turns off the progress line.
	Quiet bool
}

func parseFlags(args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.N, "n", 0, "jobs per run (0 = each scenario's default)")
	fs.IntVar(&o.Concurrency, "concurrency", 0, "Graph requests in flight per worker replica and in bare (0 = scenario default)")
	fs.DurationVar(&o.Latency, "latency", 0, "fake Graph latency for latency and scale (0 = 250ms)")
	fs.IntVar(&o.Replicas, "replicas", 0, "worker replicas for max, latency, throttle and isolation (0 = 1); scale always runs 1, 2 and 4")
	fs.BoolVar(&o.JSON, "json", false, "write one JSON object per run on stdout instead of the table")
	fs.BoolVar(&o.Markdown, "out", false, "write the table as Markdown (for docs/benchmarks.md)")
	fs.StringVar(&o.NATSURL, "nats-url", "", "use this JetStream server instead of an embedded one (its MAIL_* streams are purged)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the temp dir (configs, worker logs, JetStream store) and print its path")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "deadline for one run's outcomes")
	fs.BoolVar(&o.Pprof, "pprof", false, "enable http.pprof on the workers and write a 10s CPU profile of replica 0 per worker run into the temp dir; in smtp, a 3s profile of the door and one of this process (nats-server, clients) per row (implies --keep)")
	fs.StringVar(&o.WorkerBin, "worker-bin", "", "use this mailworker binary instead of building ./cmd/mailworker")
	fs.BoolVar(&o.Quiet, "quiet", false, "no progress line")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./loadtest [flags] [%s]\n", strings.Join(allScenarios, " "))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.Scenarios = fs.Args()
	if len(o.Scenarios) == 0 {
		o.Scenarios = allScenarios
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(allScenarios, s) && !slices.Contains(extraScenarios, s) {
			return o, fmt.Errorf("unknown scenario %q (want %s)", s, strings.Join(append(allScenarios, extraScenarios...), ", "))
		}
	}
	if o.N < 0 || o.Concurrency < 0 || o.Replicas < 0 || o.Latency < 0 {
		return o, errors.New("-n, --concurrency, --replicas and --latency must not be negative")
	}
	if o.Pprof {
		o.Keep = true
	}
	return o, nil
}
