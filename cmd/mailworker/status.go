package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/queue/contract"
)

func (c *cli) statusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status <job-id>",
		Short: "Show a job's current state and its event history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id := args[0]
			nc, q, err := c.openQueue(ctx)
			if err != nil {
				return err
			}
			defer nc.Close()
			st, _, err := q.States.Get(ctx, id)
			if err != nil && !errors.Is(err, contract.ErrNoState) {
				return err
			}
			events, err := q.Events.History(ctx, id)
			if err != nil {
				return err
			}
			if errors.Is(err, contract.ErrNoState) && len(events) == 0 {
				return &exitError{code: 1, msg: fmt.Sprintf("job %s: no state and no events (unknown id, or older than the retention)", id)}
			}
			if asJSON {
				return json.NewEncoder(c.stdout).Encode(struct {
					State  *contract.JobState `json:"state,omitempty"`
					Events []contract.Event   `json:"events"`
				}{stateOrNil(st), events})
			}
			if st.JobID != "" {
				fmt.Fprintf(c.stdout, "job %s  profile %s  state %s  attempts %d  updated %s\n", st.JobID, st.Profile, st.State,
					st.Attempts, st.UpdatedAt.UTC().Format(time.RFC3339))
				if st.LastError != nil {
					fmt.Fprintf(c.stdout, "last error: %s: %s\n", st.LastError.Reason, st.LastError.Message)
				}
				if st.Ambiguous {
					fmt.Fprintln(c.stdout, "an attempt's outcome was ambiguous: the recipient may get the mail twice")
				}
			}
			tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "AT\tEVENT\tATTEMPT\tGRAPH\tREQUEST ID\tDETAIL")
			for _, ev := range events {
				status, reqID, detail := "", "", ""
				if ev.Graph != nil {
					if ev.Graph.Status != 0 {
						status = fmt.Sprint(ev.Graph.Status)
					}
					reqID = ev.Graph.RequestID
				}
				if ev.Error != nil {
					detail = string(ev.Error.Reason) + ": " + ev.Error.Message
				}
				if ev.RetryAt != nil {
					detail += " (due " + ev.RetryAt.UTC().Format(time.RFC3339) + ")"
				}
				if ev.PossibleDuplicate {
					detail += " possible duplicate"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", ev.At.UTC().Format(time.RFC3339), ev.Event, ev.Attempt, status, reqID, detail)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func stateOrNil(st contract.JobState) *contract.JobState {
	if st.JobID == "" {
		return nil
	}
	return &st
}
