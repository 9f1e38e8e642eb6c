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
	remove := &cobra.Command{Use: "remove <address>", Short: "Remove an address from a profile's suppression list (through the worker; audited in MAIL_AUDIT)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if rmProfile == "" {
				return errors.New("--profile: required (the suppression list is per profile)")
			}
			// Like dlq replay and purge: a request the worker carries out
			// and records (mail.admin.<actor>.unsuppress), so support needs
			// no write right on the bucket. Only the address's key travels.
			reply, err := c.admin(cmd.Context(), "unsuppress", adminRequest{Profile: rmProfile, Key: queue.RecipientKey(args[0])})
			if err != nil {
				return err
			}
			if reply.NotFound {
				return &exitError{code: 1, msg: fmt.Sprintf("%s is not on the suppression list of %s", cell(args[0]), cell(rmProfile))}
			}
			if reply.Error != "" {
				return errors.New(reply.Error)
			}
			fmt.Fprintf(c.stdout, "removed %s from the suppression list of %s (recorded in MAIL_AUDIT)\n", cell(args[0]), cell(rmProfile))
			return nil
		}}
	remove.Flags().StringVar(&rmProfile, "profile", "", "the profile whose list it is (required)")
	cmd.AddCommand(list, remove)
	return cmd
}
