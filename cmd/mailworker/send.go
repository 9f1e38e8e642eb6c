package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

func (c *cli) sendCmd() *cobra.Command {
	var (
		profile, file, id, from, subject, text, html string
		to, cc, bcc                                  []string
		wait, raw                                    bool
		timeout                                      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "send",
		Short: "Publish a mail job (from flags, or --file / - for stdin) and print its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if profile == "" {
				return errors.New("--profile: required")
			}
			var data []byte
			var job *contract.Job
			if file != "" {
				var err error
				if file == "-" {
					data, err = io.ReadAll(c.stdin)
				} else {
					data, err = os.ReadFile(file)
				}
				if err != nil {
					return fmt.Errorf("--file: %w", err)
				}
			} else {
				job = &contract.Job{ID: id, From: from, To: to, Cc: cc, Bcc: bcc, Subject: subject, Text: text, HTML: html}
			}
			// A producer's NATS user may publish jobs and nothing else: bind
			// to the streams only to wait for the outcome.
			nc, js, err := c.dial()
			if err != nil {
				return err
			}
			defer nc.Close()
			pub := queue.NewPublisher(js)
			switch {
			case raw && data != nil:
				// As given, unchecked: lets support reproduce what a producer sent.
				if id == "" {
					var probe struct {
						ID string `json:"id"`
					}
					if json.Unmarshal(data, &probe) == nil && contract.ValidJobID(probe.ID) {
						id = probe.ID
					}
				}
				if err := pub.PublishRaw(ctx, profile, data, id); err != nil {
					return err
				}
			default:
				if job == nil {
					if job, err = contract.DecodeJob(data); err != nil {
						return fmt.Errorf("--file: %w", err)
					}
					if id != "" {
						job.ID = id
					}
				}
				if id, err = pub.Publish(ctx, profile, job); err != nil {
					return err
				}
			}
			fmt.Fprintln(c.stdout, id)
			if !wait {
				return nil
			}
			if id == "" {
				return errors.New("--wait needs a job id: give --id or an id in the job")
			}
			q, err := queue.Open(ctx, js)
			if err != nil {
				return fmt.Errorf("--wait reads the job state: %w", err)
			}
			return c.waitOutcome(ctx, q, id, timeout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&profile, "profile", "", "sending profile (subject mail.send.<profile>)")
	f.StringVar(&file, "file", "", "job JSON file, or - for stdin")
	f.StringVar(&id, "id", "", "job id (idempotency key); generated when absent")
	f.StringVar(&from, "from", "", "approved shared mailbox to send as")
	f.StringArrayVar(&to, "to", nil, "recipient (repeat)")
	f.StringArrayVar(&cc, "cc", nil, "cc recipient (repeat)")
	f.StringArrayVar(&bcc, "bcc", nil, "bcc recipient (repeat)")
	f.StringVar(&subject, "subject", "", "subject")
	f.StringVar(&text, "text", "", "plain-text body")
	f.StringVar(&html, "html", "", "HTML body")
	f.BoolVar(&wait, "wait", false, "wait for the outcome; exit 1 when the job is dead-lettered")
	f.BoolVar(&raw, "raw", false, "with --file: publish the bytes unchecked (the worker validates and dead-letters)")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "with --wait: how long to wait")
	return cmd
}

// waitOutcome polls the job state until it is sent or dead-lettered.
func (c *cli) waitOutcome(ctx context.Context, q *queue.Queue, id string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st, _, err := q.States.Get(ctx, id)
		if err == nil {
			switch st.State {
			case contract.StateSent:
				fmt.Fprintf(c.stdout, "sent (attempts %d)\n", st.Attempts)
				return nil
			case contract.StateDeadLettered:
				msg := "dead-lettered"
				if st.LastError != nil {
					msg = fmt.Sprintf("dead-lettered: %s: %s", st.LastError.Reason, st.LastError.Message)
				}
				return &exitError{code: 1, msg: cell(msg) + "; see `mailworker dlq show " + id + "`"}
			}
		} else if !errors.Is(err, contract.ErrNoState) && ctx.Err() == nil {
			return err
		}
		select {
		case <-ctx.Done():
			return &exitError{code: 2, msg: c.lastEventNote(q, id, timeout)}
		case <-tick.C:
		}
	}
}

// lastEventNote says, after --wait timed out, where the job is: its last
// status event (a retry, a deferral for a mailbox limit, …), or that no worker
// has reported on it.
func (c *cli) lastEventNote(q *queue.Queue, id string, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	head := fmt.Sprintf("no outcome for job %s within %s", id, timeout)
	events, err := q.Events.History(ctx, id)
	if err != nil || len(events) == 0 {
		return head + "; no worker has reported on it yet: is a worker running for this profile (`mailworker check`), or is the queue long (`mailworker status`)?"
	}
	ev := events[len(events)-1]
	note := fmt.Sprintf("%s; last event %s at %s (attempt %d)", head, ev.Event, ev.At.UTC().Format(time.RFC3339), ev.Attempt)
	if ev.Graph != nil && ev.Graph.Status != 0 {
		note += fmt.Sprintf(", Graph %d", ev.Graph.Status)
	}
	if d := eventDetail(ev); d != "" {
		note += ": " + d
	}
	return cell(note) + "; follow it with `mailworker status " + id + "`"
}
