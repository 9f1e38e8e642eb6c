package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one run's figures. The JSON keys are the ones issue 3 fixes;
// the unexported fields only feed the table notes.
type Result struct {
	Scenario        string        `json:"scenario"`
	Jobs            int           `json:"jobs"`
	Sent            int           `json:"sent"`
	DeadLettered    int           `json:"dead_lettered"`
	Lost            int           `json:"lost"`
	Duplicates      int           `json:"duplicates"`
	Throughput      float64       `json:"throughput_per_s"`
	RefThroughput   float64       `json:"bare_throughput_per_s"`
	Ratio           float64       `json:"ratio_vs_bare"`
	P50ms           float64       `json:"p50_ms"`
	P95ms           float64       `json:"p95_ms"`
	P99ms           float64       `json:"p99_ms"`
	CPUusPerJob     float64       `json:"cpu_us_per_job"`
	PeakRSSMB       float64       `json:"peak_rss_mb"`
	TokenRequests   int           `json:"token_requests"`
	GraphRequests   int           `json:"graph_requests"`
	Throttled       int           `json:"throttled_responses"`
	InRetryAfter    int           `json:"requests_in_retry_after"`
	pending         int           // jobs to the bad mailbox still deferred at the end (isolation)
	badSent         int           // jobs to the bad mailbox that finished anyway
	elapsed         time.Duration // first publish → last outcome of a waited-for job
	replicas        int
	concurrency     int
	refWhat         string
	bound           float64 // Little's-law bound, jobs/s (latency, scale)
	boundWhat       string
	drainIdeal      time.Duration // throttle: jobs ÷ (mailboxes × 30/min)
	drainWindow     time.Duration // throttle: the rolling-window bound
	publishErrors   int
	hostCPUusPerJob float64 // loadtest process (nats-server, fake, publisher, watcher) from first publish to last outcome
	dupSentEvents   int
	uploadNotes     string // large: the upload volume figures
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	i = min(max(i, 0), len(sorted)-1)
	return float64(sorted[i].Microseconds()) / 1000
}

func latencies(r *Result, lat []time.Duration) {
	slices.Sort(lat)
	r.P50ms, r.P95ms, r.P99ms = percentile(lat, 50), percentile(lat, 95), percentile(lat, 99)
}

// writeTable prints the rows, as aligned text or as Markdown.
func writeTable(w io.Writer, rs []Result, markdown bool) {
	head := []string{"scenario", "R×conc", "jobs", "sent", "dl", "lost", "dup", "jobs/s", "ref/s", "ratio",
		"p50 ms", "p95 ms", "p99 ms", "CPU µs/job", "RSS MB", "tokens", "graph req", "429s", "in R-A"}
	rows := [][]string{head}
	for _, r := range rs {
		rows = append(rows, []string{r.Scenario, fmt.Sprintf("%d×%d", r.replicas, r.concurrency),
			fmt.Sprint(r.Jobs), fmt.Sprint(r.Sent), fmt.Sprint(r.DeadLettered), fmt.Sprint(r.Lost), fmt.Sprint(r.Duplicates),
			fmt.Sprintf("%.0f", r.Throughput), fmt.Sprintf("%.0f", r.RefThroughput), fmt.Sprintf("%.2f", r.Ratio),
			fmt.Sprintf("%.0f", r.P50ms), fmt.Sprintf("%.0f", r.P95ms), fmt.Sprintf("%.0f", r.P99ms),
			fmt.Sprintf("%.0f", r.CPUusPerJob), fmt.Sprintf("%.1f", r.PeakRSSMB), fmt.Sprint(r.TokenRequests),
			fmt.Sprint(r.GraphRequests), fmt.Sprint(r.Throttled), fmt.Sprint(r.InRetryAfter)})
	}
	if markdown {
		for i, row := range rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
			if i == 0 {
				fmt.Fprintf(w, "|%s\n", strings.Repeat("---|", len(row)))
			}
		}
	} else {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		for _, row := range rows {
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		_ = tw.Flush()
	}
	fmt.Fprintln(w)
	for _, r := range rs {
		var notes []string
		if r.refWhat != "" {
			notes = append(notes, "ref = "+r.refWhat)
		}
		if r.bound > 0 {
			notes = append(notes, fmt.Sprintf("%s = %.0f/s; measured %.2f of it", r.boundWhat, r.bound, r.Throughput/r.bound))
		}
		if r.drainIdeal > 0 {
			notes = append(notes, fmt.Sprintf("drain %.1fs vs jobs ÷ (mailboxes × 30/min) = %.1fs (%.2f×); rolling-window bound %.0fs",
				r.elapsed.Seconds(), r.drainIdeal.Seconds(), r.elapsed.Seconds()/r.drainIdeal.Seconds(), r.drainWindow.Seconds()))
		}
		if r.pending > 0 || r.badSent > 0 {
			notes = append(notes, fmt.Sprintf("bad mailbox: %d jobs still deferred at the end (not lost), %d finished", r.pending, r.badSent))
		}
		if r.publishErrors > 0 {
			notes = append(notes, fmt.Sprintf("%d publish errors", r.publishErrors))
		}
		if r.uploadNotes != "" {
			notes = append(notes, r.uploadNotes)
		}
		if r.dupSentEvents > 0 {
			notes = append(notes, fmt.Sprintf("%d jobs had more than one terminal event", r.dupSentEvents))
		}
		notes = append(notes, fmt.Sprintf("elapsed %.2fs; host process (nats-server + fake + publisher) %.0f µs CPU/job", r.elapsed.Seconds(), r.hostCPUusPerJob))
		prefix := "- "
		if markdown {
			prefix = "- **" + r.Scenario + "**: "
		} else {
			prefix = "  " + r.Scenario + ": "
		}
		fmt.Fprintln(w, prefix+strings.Join(notes, "; "))
	}
}
