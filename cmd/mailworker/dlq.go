package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

func (c *cli) dlqCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dlq", Short: "Inspect, replay and purge dead-lettered jobs"}
	cmd.AddCommand(c.dlqListCmd(), c.dlqShowCmd(), c.dlqReplayCmd(), c.dlqPurgeCmd())
	return cmd
}

type dlqFlags struct{ profile, reason string }

func (f *dlqFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.profile, "profile", "", "only this profile")
	cmd.Flags().StringVar(&f.reason, "reason", "", "only this reason (invalid_job, sender_not_allowed, …)")
}

func (f *dlqFlags) filter() (queue.DLQFilter, error) {
	r := contract.Reason(f.reason)
	if r != "" && !r.Valid() {
		return queue.DLQFilter{}, fmt.Errorf("--reason: %q is not one of %v", f.reason, contract.Reasons)
	}
	return queue.DLQFilter{Profile: f.profile, Reason: r}, nil
}

// dlqRecord is the JSON shape of a dead letter for --json.
type dlqRecord struct {
	JobID          string          `json:"jobId"`
	Profile        string          `json:"profile"`
	Reason         contract.Reason `json:"reason"`
	Error          string          `json:"error"`
	Attempts       int             `json:"attempts"`
	FailedAt       time.Time       `json:"failedAt"`
	GraphRequestID string          `json:"graphRequestId,omitempty"`
	Ambiguous      bool            `json:"ambiguous,omitempty"`
	From           string          `json:"from,omitempty"`
	Subject        string          `json:"subject,omitempty"`
	Seq            uint64          `json:"seq"`
	Job            json.RawMessage `json:"job,omitempty"`
	Body           string          `json:"body,omitempty"` // the original bytes when they are not JSON
}

func toRecord(dl contract.DeadLetter, withBody bool) dlqRecord {
	r := dlqRecord{JobID: dl.JobID, Profile: dl.Profile, Reason: dl.Reason, Error: dl.Error, Attempts: dl.Attempts,
		FailedAt: dl.FailedAt, GraphRequestID: dl.GraphRequestID, Ambiguous: dl.Ambiguous, From: dl.From, Subject: dl.Subject, Seq: dl.Seq}
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
			tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB ID\tPROFILE\tREASON\tATTEMPTS\tFAILED AT\tFROM\tSUBJECT")
			for _, dl := range dls {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", dl.JobID, dl.Profile, dl.Reason, dl.Attempts,
					dl.FailedAt.UTC().Format(time.RFC3339), dl.From, truncate(dl.Subject, 60))
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
	cmd := &cobra.Command{Use: "show <job-id>", Short: "Show one dead-lettered job with its original body", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			nc, q, err := c.openQueue(cmd.Context())
			if err != nil {
				return err
			}
			defer nc.Close()
			dl, err := q.DLQ.Get(cmd.Context(), args[0])
			if errors.Is(err, queue.ErrNotInDLQ) {
				return &exitError{code: 1, msg: fmt.Sprintf("job %s is not in the dead-letter queue", args[0])}
			}
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(c.stdout).Encode(toRecord(dl, true))
			}
			fmt.Fprintf(c.stdout, "job:        %s\nprofile:    %s\nreason:     %s\nerror:      %s\nattempts:   %d\nfailed at:  %s\n",
				dl.JobID, dl.Profile, dl.Reason, dl.Error, dl.Attempts, dl.FailedAt.UTC().Format(time.RFC3339))
			if dl.Ambiguous {
				fmt.Fprintf(c.stdout, "ambiguous:  yes — a send may have delivered this mail although Graph never said so: search Exchange message trace for X-Mailworker-Job-Id %s before replaying (a replay's sent event says possibleDuplicate)\n", dl.JobID)
			}
			if dl.GraphRequestID != "" {
				fmt.Fprintf(c.stdout, "graph request-id: %s\n", dl.GraphRequestID)
			}
			fmt.Fprintf(c.stdout, "body (%d bytes):\n%s\n", len(dl.Body), dl.Body)
			return nil
		}}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (c *cli) dlqReplayCmd() *cobra.Command {
	var f dlqFlags
	var all bool
	var file string
	cmd := &cobra.Command{Use: "replay <job-id> | --all", Short: "Put dead-lettered jobs back on the queue (same job id; state reset; `replayed` event)",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) == 1) {
				return errors.New("give one job id, or --all (optionally with --profile / --reason)")
			}
			nc, q, err := c.openQueue(cmd.Context())
			if err != nil {
				return err
			}
			defer nc.Close()
			if all {
				if file != "" {
					return errors.New("--file replaces one job's body: use it with a job id, not --all")
				}
				filter, err := f.filter()
				if err != nil {
					return err
				}
				n, err := q.DLQ.ReplayAll(cmd.Context(), filter)
				if err != nil {
					return fmt.Errorf("replayed %d before: %w", n, err)
				}
				fmt.Fprintf(c.stdout, "replayed %d job(s)\n", n)
				return nil
			}
			var opts queue.ReplayOptions
			if file != "" {
				body, err := os.ReadFile(file)
				if err != nil {
					return fmt.Errorf("--file: %w", err)
				}
				opts.Body = body
			}
			if err := q.DLQ.Replay(cmd.Context(), args[0], opts); err != nil {
				if errors.Is(err, queue.ErrNotInDLQ) {
					return &exitError{code: 1, msg: fmt.Sprintf("job %s is not in the dead-letter queue", args[0])}
				}
				return err
			}
			fmt.Fprintf(c.stdout, "replayed %s\n", args[0])
			return nil
		}}
	f.add(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "replay every dead letter matching --profile/--reason")
	cmd.Flags().StringVar(&file, "file", "", "replace the job body with this fixed job (same id)")
	return cmd
}

func (c *cli) dlqPurgeCmd() *cobra.Command {
	var f dlqFlags
	var jobID string
	var yes bool
	cmd := &cobra.Command{Use: "purge", Short: "Delete dead letters (all, or by --profile / --reason / --job-id)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !yes {
				return errors.New("purge deletes dead letters for good: add --yes")
			}
			filter, err := f.filter()
			if err != nil {
				return err
			}
			filter.JobID = jobID
			nc, q, err := c.openQueue(cmd.Context())
			if err != nil {
				return err
			}
			defer nc.Close()
			n, err := q.DLQ.Purge(cmd.Context(), filter)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "purged %d dead letter(s)\n", n)
			return nil
		}}
	f.add(cmd)
	cmd.Flags().StringVar(&jobID, "job-id", "", "only this job")
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm")
	return cmd
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
