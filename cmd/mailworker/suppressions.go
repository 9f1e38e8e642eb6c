package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/tracking"
)

// Audit action of `suppressions remove`.
const auditUnsuppress = "unsuppress"

func (c *cli) suppressionsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "suppressions", Short: "List and remove suppressed recipients (hard bounces from message trace)",
		Args: unknownSubcommand, RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	var profile, contains string
	var asJSON bool
	list := &cobra.Command{Use: "list", Short: "List the suppression list (all profiles, or --profile)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			nc, js, err := c.dial()
			if err != nil {
				return err
			}
			defer nc.Close()
			st, err := tracking.Bind(ctx, js)
			if err != nil {
				return err
			}
			all, err := st.Suppressions(ctx, profile)
			if err != nil {
				return err
			}
			var out []tracking.Suppression
			for _, s := range all {
				if contains == "" || strings.Contains(s.Address, strings.ToLower(contains)) {
					out = append(out, s)
				}
			}
			if asJSON {
				if out == nil {
					out = []tracking.Suppression{}
				}
				return json.NewEncoder(c.stdout).Encode(out)
			}
			tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PROFILE\tADDRESS\tSINCE\tEXPIRES\tJOB\tREASON")
			now := time.Now()
			for _, s := range out {
				exp := s.ExpiresAt.UTC().Format(time.RFC3339)
				if !now.Before(s.ExpiresAt) {
					exp += " (expired)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", cell(s.Profile), cell(s.Address), s.At.UTC().Format(time.RFC3339), exp,
					cell(s.JobID), cell(truncate(s.Reason, 120)))
			}
			return tw.Flush()
		}}
	list.Flags().StringVar(&profile, "profile", "", "only this profile")
	list.Flags().StringVar(&contains, "contains", "", "only addresses containing this text")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var rmProfile string
	remove := &cobra.Command{Use: "remove <address>", Short: "Remove an address from a profile's suppression list (audited in MAIL_AUDIT)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if rmProfile == "" {
				return errors.New("--profile: required (the suppression list is per profile)")
			}
			cfg, err := c.config()
			if err != nil {
				return err
			}
			actor := adminActor(cfg.NATS, c.env)
			if actor == "" {
				return errors.New("no actor: set MAILWORKER_ACTOR (who removes the entry is recorded in MAIL_AUDIT)")
			}
			nc, q, err := c.openQueue(ctx)
			if err != nil {
				return err
			}
			defer nc.Close()
			js := q.States.JetStream()
			st, err := tracking.Bind(ctx, js)
			if err != nil {
				return err
			}
			ok, err := st.Unsuppress(ctx, rmProfile, args[0])
			if err != nil {
				return err
			}
			if !ok {
				return &exitError{code: 1, msg: fmt.Sprintf("%s is not on the suppression list of %s", cell(args[0]), cell(rmProfile))}
			}
			// The audit record names the address's key, not the address.
			if err := q.Audit.Append(ctx, queue.AuditRecord{Actor: actor, Via: "cli", Action: auditUnsuppress, Profile: rmProfile,
				Count: 1, Detail: "recipient " + queue.RecipientKey(args[0])}); err != nil {
				return fmt.Errorf("removed, but the audit record failed: %w", err)
			}
			fmt.Fprintf(c.stdout, "removed %s from the suppression list of %s (recorded in MAIL_AUDIT)\n", cell(args[0]), cell(rmProfile))
			return nil
		}}
	remove.Flags().StringVar(&rmProfile, "profile", "", "the profile whose list it is (required)")
	cmd.AddCommand(list, remove)
	return cmd
}
