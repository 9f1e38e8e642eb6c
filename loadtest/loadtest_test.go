package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The harness re-executes its own binary as the bare baseline worker.
	if len(os.Args) > 1 && os.Args[1] == bareSMTPCommand {
		if err := bareSMTPMain(os.Args[2:]); err != nil {
			os.Stderr.WriteString("bare-smtp: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == bareCommand {
		if err := bareMain(os.Args[2:]); err != nil {
			os.Stderr.WriteString("bare-worker: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// jsonKeys are the keys issue 3 fixes for every scenario object.
var jsonKeys = []string{"scenario", "jobs", "sent", "dead_lettered", "lost", "duplicates",
	"throughput_per_s", "bare_throughput_per_s", "ratio_vs_bare", "p50_ms", "p95_ms", "p99_ms",
	"cpu_us_per_job", "peak_rss_mb", "token_requests", "graph_requests", "throttled_responses",
	"requests_in_retry_after"}

// TestSmokeMax runs the max scenario and its bare baseline with a small N:
// the harness must account for every job and emit every figure. It asserts
// no timing.
func TestSmokeMax(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the mailworker binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"-n", "200", "--concurrency", "16", "--json", "--quiet", "--timeout", "60s", "max"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 JSON objects (max, max-bare), got %d:\n%s", len(lines), stdout.String())
	}
	var names []string
	for _, line := range lines {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		var keys []string
		for k := range obj {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		want := slices.Clone(jsonKeys)
		slices.Sort(want)
		if !slices.Equal(keys, want) {
			t.Errorf("keys %v, want %v", keys, want)
		}
		name := obj["scenario"].(string)
		names = append(names, name)
		for _, k := range []string{"lost", "duplicates"} {
			if obj[k].(float64) != 0 {
				t.Errorf("%s: %s = %v, want 0", name, k, obj[k])
			}
		}
		if obj["jobs"].(float64) != 200 || obj["sent"].(float64) != 200 {
			t.Errorf("%s: jobs %v sent %v, want 200 and 200", name, obj["jobs"], obj["sent"])
		}
		if obj["graph_requests"].(float64) < 200 {
			t.Errorf("%s: graph_requests %v, want at least 200", name, obj["graph_requests"])
		}
	}
	if !slices.Equal(names, []string{"max", "max-bare"}) {
		t.Errorf("scenarios %v, want [max max-bare]", names)
	}
}

func TestFlags(t *testing.T) {
	var stderr bytes.Buffer
	if _, err := parseFlags([]string{"nope"}, &stderr); err == nil {
		t.Error("unknown scenario accepted")
	}
	o, err := parseFlags([]string{"-n", "5", "--concurrency", "3", "--pprof", "scale"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.N != 5 || o.Concurrency != 3 || !o.Keep || !slices.Equal(o.Scenarios, []string{"scale"}) {
		t.Errorf("parsed %+v", o)
	}
	o, err = parseFlags(nil, &stderr)
	if err != nil || !slices.Equal(o.Scenarios, allScenarios) {
		t.Errorf("default scenarios %v, %v", o.Scenarios, err)
	}
}

// TestSmokeSMTP runs the smtp scenario small: both rows, every 250 stored.
func TestSmokeSMTP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"-n", "40", "--concurrency", "2", "--json", "--quiet", "smtp"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.Sent != 40 || r.Lost != 0 {
			t.Errorf("%s: %d accepted, %d lost", r.Scenario, r.Sent, r.Lost)
		}
		names = append(names, r.Scenario)
	}
	if !slices.Equal(names, []string{"smtp", "smtp-norecord", "smtp-ratelimit", "smtp-bare"}) {
		t.Errorf("scenarios %v", names)
	}
}

// TestFailoverWindowCheck: the failover figure is refused when the backlog
// ran out inside its window (issue 19 item 7: the error was overwritten).
func TestFailoverWindowCheck(t *testing.T) {
	killed := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	done := map[string]time.Time{}
	for i := range 120 { // one job a second from the kill on
		done[fmt.Sprint(i)] = killed.Add(time.Duration(i) * time.Second)
	}
	t.Run("covered", func(t *testing.T) {
		rate, err := failoverWindow(done, killed, killed.Add(119*time.Second))
		if err != nil || rate != 1 {
			t.Fatalf("rate %v, err %v; want 1 job/s and no error", rate, err)
		}
	})
	t.Run("ran out", func(t *testing.T) {
		_, err := failoverWindow(done, killed, killed.Add(50*time.Second))
		if err == nil || !strings.Contains(err.Error(), "backlog ran out") {
			t.Fatalf("err %v; want the backlog-ran-out error", err)
		}
	})
}

// TestSmokeWrites runs the writes scenario small: on R1 and R3 the atomic
// batch's semantics hold (a stale state compare-and-set stores no event; a
// fresh batch stores both) and every shape reports a row. It asserts no
// timing.
func TestSmokeWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"-n", "40", "--json", "writes"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	rows := 0
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r writesRow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.Jobs != 40 || r.JobsPerS <= 0 {
			t.Errorf("%s %s: %+v", r.Stream, r.Shape, r)
		}
		rows++
	}
	if rows != 24 { // 2 streams × 6 shapes × 2 rounds
		t.Errorf("%d rows:\n%s", rows, stdout.String())
	}
	if !strings.Contains(stderr.String(), "R3 file: the atomic batch stores both messages or neither, the fast batch no event after a refused state") {
		t.Errorf("no semantics check on R3:\n%s", stderr.String())
	}
}
