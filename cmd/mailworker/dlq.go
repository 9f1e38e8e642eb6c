package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/support"
)

func (c *cli) dlqCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dlq", Short: "Inspect, replay and purge dead-lettered jobs", Args: unknownSubcommand,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	cmd.AddCommand(c.dlqListCmd(), c.dlqShowCmd(), c.dlqReplayCmd(), c.dlqPurgeCmd())
	return cmd
}

type dlqFlags struct{ profile, reason string }

func (f *dlqFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.profile, "profile", "", "only this profile")
	cmd.Flags().StringVar(&f.reason, "reason", "", "only this reason (invalid_job, sender_not_allowed, …)")
}

func (f *dlqFlags) filter() (queue.DLQQuery, error) {
	if f.profile != "" && strings.ContainsAny(f.profile, ".*> \t\r\n\x00") {
		return queue.DLQQuery{}, fmt.Errorf("--profile: %s is not a profile name (one NATS subject token: no dots, wildcards or spaces)", cell(truncate(f.profile, 64)))
	}
	r := contract.Reason(f.reason)
	if r != "" && !r.Valid() {
		return queue.DLQQuery{}, fmt.Errorf("--reason: %s is not one of %v", strconv.Quote(truncate(f.reason, 64)), contract.Reasons)
	}
	return queue.DLQQuery{Profile: f.profile, Reason: r}, nil
}

// dlqRecord is the JSON shape of a dead letter for --json.
type dlqRecord struct {
	JobID          string               `json:"jobId"`
	Profile        string               `json:"profile"`
	Reason         contract.Reason      `json:"reason"`
	Error          string               `json:"error"`
	Attempts       int                  `json:"attempts"`
	FailedAt       time.Time            `json:"failedAt"`
	GraphRequestID string               `json:"graphRequestId,omitempty"`
	GraphCalls     []contract.GraphCall `json:"graphCalls,omitempty"`
	Ambiguous      bool                 `json:"ambiguous,omitempty"`
	From           string               `json:"from,omitempty"`
	Subject        string               `json:"subject,omitempty"`
	Seq            uint64               `json:"seq"`
	Job            json.RawMessage      `json:"job,omitempty"`
	Body           string               `json:"body,omitempty"` // the original bytes when they are not JSON
}

func toRecord(dl contract.DeadLetter, withBody bool) dlqRecord {
	r := dlqRecord{JobID: dl.JobID, Profile: dl.Profile, Reason: dl.Reason, Error: dl.Error, Attempts: dl.Attempts,
		FailedAt: dl.FailedAt, GraphRequestID: dl.GraphRequestID, GraphCalls: dl.GraphCalls, Ambiguous: dl.Ambiguous, From: dl.From, Subject: dl.Subject, Seq: dl.Seq}
	if withBody {
		if json.Valid(dl.Body) {
			r.Job = dl.Body
		} else {
			r.Body = string(dl.Body)
		}
	}
	return r
}

func (c *cli) dlqListCmd() *cobra.Command {
	var f dlqFlags
	var asJSON bool
	cmd := &cobra.Command{Use: "list", Short: "List dead-lettered jobs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := f.filter()
			if err != nil {
				return err
			}
			nc, q, err := c.openQueue(cmd.Context())
			if err != nil {
				return err
			}
			defer nc.Close()
			dls, err := q.DLQ.List(cmd.Context(), filter)
			if err != nil {
				return err
			}
			if asJSON {
				out := make([]dlqRecord, 0, len(dls))
				for _, dl := range dls {
					out = append(out, toRecord(dl, false))
				}
				return json.NewEncoder(c.stdout).Encode(out)
			}
			// Every field but the numbers came from a producer or from
			// Graph: cell() escapes what would break the table or steer
			// the terminal.
			tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB ID\tPROFILE\tREASON\tATTEMPTS\tFAILED AT\tERROR\tFROM\tSUBJECT")
			for _, dl := range dls {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", cell(dl.JobID), cell(dl.Profile), cell(string(dl.Reason)), dl.Attempts,
					dl.FailedAt.UTC().Format(time.RFC3339), cell(truncate(dl.Error, 60)), cell(dl.From), cell(truncate(dl.Subject, 60)))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%d dead-lettered job(s)\n", len(dls))
			return nil
		}}
	f.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (c *cli) dlqShowCmd() *cobra.Command {
	var asJSON bool
	var profile string
	cmd := &cobra.Command{Use: "show <job-id>", Short: "Show one dead-lettered job with its original body",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &exitError{code: 2, msg: fmt.Sprintf("dlq show takes one job id (got %d arguments)\nusage: mailworker dlq show <job-id> [--profile P] [--json]\nnext: `mailworker dlq list` lists the dead-lettered jobs with their ids", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			nc, q, err := c.openQueue(cmd.Context())
			if err != nil {
				return err
			}
			defer nc.Close()
			dl, err := q.DLQ.Get(cmd.Context(), profile, args[0])
			if err != nil {
				return notInDLQ(args[0], err)
			}
			if asJSON {
				return json.NewEncoder(c.stdout).Encode(toRecord(dl, true))
			}
			fmt.Fprintf(c.stdout, "job:        %s\nprofile:    %s\nreason:     %s\nerror:      %s\nattempts:   %d\nfailed at:  %s\n",
				cell(dl.JobID), cell(dl.Profile), cell(string(dl.Reason)), cell(dl.Error), dl.Attempts, dl.FailedAt.UTC().Format(time.RFC3339))
			if dl.Ambiguous {
				fmt.Fprintf(c.stdout, "ambiguous:  yes — a send may have delivered this mail although Graph never said so: search Exchange message trace for X-Mailworker-Job-Id %s before replaying (a replay's sent event says possibleDuplicate)\n", cell(dl.JobID))
			}
			for _, call := range dl.GraphCalls {
				fmt.Fprintf(c.stdout, "graph call:  %d request-id %s client-request-id %s date %s\n", call.Status,
					cell(call.RequestID), cell(call.ClientRequestID), cell(call.Date))
			}
			if dl.GraphRequestID != "" && len(dl.GraphCalls) == 0 {
				fmt.Fprintf(c.stdout, "graph request-id: %s\n", cell(dl.GraphRequestID))
			}
			if dl.Truncated > 0 {
				fmt.Fprintf(c.stdout, "body TRUNCATED: the job was %d bytes, too large to store whole with the failure; the first %d are kept (replay it with --file)\n", dl.Truncated, len(dl.Body))
			}
			fmt.Fprintf(c.stdout, "body (%d bytes):\n%s\n", len(dl.Body), termSafe(string(dl.Body)))
			return nil
		}}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&profile, "profile", "", "the job's profile (needed when two profiles used the same id)")
	return cmd
}

// notInDLQ turns a failed dead-letter lookup into an exit 1 that says what
// to try next.
func notInDLQ(id string, err error) error {
	if errors.Is(err, queue.ErrNotInDLQ) {
		return &exitError{code: 1, msg: fmt.Sprintf("job %s is not in the dead-letter queue (replayed, purged, never dead-lettered, or a wrong id); try `mailworker status %s` for its history, or `mailworker dlq list`", cell(id), cell(id))}
	}
	return err
}

// printMatches lists dead letters, one line each: id, profile, reason.
func (c *cli) printMatches(dls []contract.DeadLetter) {
	tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
	for _, dl := range dls {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", cell(dl.JobID), cell(dl.Profile), cell(string(dl.Reason)))
	}
	_ = tw.Flush()
}

func (c *cli) dlqReplayCmd() *cobra.Command {
	var f dlqFlags
	var all, dryRun bool
	var file string
	cmd := &cobra.Command{Use: "replay <job-id> | --all", Short: "Put dead-lettered jobs back on the queue (same job id; state reset; `replayed` event)",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if all == (len(args) == 1) {
				return errors.New("give one job id, or --all (optionally with --profile / --reason)")
			}
			if all && file != "" {
				return errors.New("--file replaces one job's body: use it with a job id, not --all")
			}
			var body []byte
			if file != "" {
				var err error
				if body, err = os.ReadFile(file); err != nil {
					return fmt.Errorf("--file: %w", err)
				}
				if _, err := contract.DecodeJob(body); err != nil {
					return fmt.Errorf("--file %s: %w (nothing replayed)", file, err)
				}
			}
			filter, err := f.filter()
			if err != nil {
				return err
			}
			// Reads are support's own; the replay itself goes through the
			// worker, which records it in MAIL_AUDIT (admin.go).
			if !all {
				id := args[0]
				if dryRun {
					nc, q, err := c.openQueue(ctx)
					if err != nil {
						return err
					}
					defer nc.Close()
					dl, err := q.DLQ.Get(ctx, filter.Profile, id)
					if err != nil {
						return notInDLQ(id, err)
					}
					fmt.Fprintf(c.stdout, "would replay 1 job (--dry-run: nothing replayed):\n")
					c.printMatches([]contract.DeadLetter{dl})
					return nil
				}
				reply, err := c.admin(ctx, "replay", adminRequest{Profile: filter.Profile, JobID: id, Body: body})
				if err != nil {
					return err
				}
				if reply.NotFound {
					return notInDLQ(id, queue.ErrNotInDLQ)
				}
				if reply.Error != "" {
					if file != "" {
						return fmt.Errorf("--file %s: %s (nothing replayed)", file, cell(reply.Error))
					}
					return errors.New(cell(reply.Error))
				}
				fmt.Fprintf(c.stdout, "replayed %s; follow it with `mailworker status %s`\n", cell(id), cell(id))
				return nil
			}
			nc, q, err := c.openQueue(ctx)
			if err != nil {
				return err
			}
			defer nc.Close()
			// The console shows the same preview and warning (package
			// support).
			p, err := support.New(q, support.Options{}).Preview(ctx, filter)
			if err != nil {
				return err
			}
			jobs := p.Jobs
			if w := p.Warning(); w != "" {
				fmt.Fprintf(c.stderr, "mailworker: warning: %s\n", w)
			}
			if dryRun {
				fmt.Fprintf(c.stdout, "would replay %d job(s) (--dry-run: nothing replayed):\n", len(jobs))
				c.printMatches(jobs)
				return nil
			}
			reply, err := c.admin(ctx, "replay", adminRequest{Profile: filter.Profile, Reason: filter.Reason, All: true})
			if err != nil {
				return err
			}
			if reply.Error != "" {
				return fmt.Errorf("replayed %d before: %s", reply.Count, cell(reply.Error))
			}
			fmt.Fprintf(c.stdout, "replayed %d job(s)\n", reply.Count)
			return nil
		}}
	f.add(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "replay every dead letter matching --profile/--reason")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only print how many jobs and which ids would be replayed")
	cmd.Flags().StringVar(&file, "file", "", "replace the job body with this fixed job (same id)")
	return cmd
}

func (c *cli) dlqPurgeCmd() *cobra.Command {
	var f dlqFlags
	var jobID string
	var yes, dryRun bool
	cmd := &cobra.Command{Use: "purge", Short: "Delete dead letters (all, or by --profile / --reason / --job-id): shows them, deletes with --yes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			filter, err := f.filter()
			if err != nil {
				return err
			}
			if jobID != "" && !contract.ValidJobID(jobID) {
				return fmt.Errorf("--job-id: %s is not a job id (1 to 128 of A-Z a-z 0-9 _ -)", cell(truncate(jobID, 64)))
			}
			filter.JobID = jobID
			nc, q, err := c.openQueue(ctx)
			if err != nil {
				return err
			}
			defer nc.Close()
			dls, err := q.DLQ.List(ctx, filter)
			if err != nil {
				return err
			}
			if len(dls) == 0 {
				fmt.Fprintln(c.stdout, "no dead letters match: nothing to purge")
				return nil
			}
			switch {
			case dryRun:
				fmt.Fprintf(c.stdout, "would purge %d dead letter(s) (--dry-run: nothing deleted):\n", len(dls))
				c.printMatches(dls)
				return nil
			case !yes:
				fmt.Fprintf(c.stdout, "%d dead letter(s) match:\n", len(dls))
				c.printMatches(dls)
				return &exitError{code: 1, msg: fmt.Sprintf("purge deletes these %d dead letter(s) for good: run it again with --yes", len(dls))}
			}
			fmt.Fprintf(c.stdout, "purging %d dead letter(s):\n", len(dls))
			c.printMatches(dls)
			// Through the worker, recorded in MAIL_AUDIT (admin.go).
			reply, err := c.admin(ctx, "purge", adminRequest{Profile: filter.Profile, Reason: filter.Reason, JobID: jobID})
			if err != nil {
				return err
			}
			if reply.Error != "" {
				return fmt.Errorf("purged %d before: %s", reply.Count, cell(reply.Error))
			}
			fmt.Fprintf(c.stdout, "purged %d dead letter(s)\n", reply.Count)
			return nil
		}}
	f.add(cmd)
	cmd.Flags().StringVar(&jobID, "job-id", "", "only this job")
	cmd.Flags().BoolVar(&yes, "yes", false, "delete (without it, purge only lists what it would delete and exits 1)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only print how many dead letters and which ids would be deleted")
	return cmd
}

// truncate shortens s to at most n bytes, on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - 1
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
