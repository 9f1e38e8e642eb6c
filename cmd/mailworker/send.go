package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
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
			var seq uint64
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
				if seq, err = pub.PublishRaw(ctx, profile, data, id); err != nil {
					return duplicatePublish(err, profile, id)
				}
				if id == "" {
					id = "s" + strconv.FormatUint(seq, 10) // the worker's id for an id-less job
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
				p, err := pub.PublishJob(ctx, profile, job)
				if err != nil {
					return duplicatePublish(err, profile, job.ID)
				}
				id, seq = p.ID, p.Seq
			}
			fmt.Fprintln(c.stdout, id)
			if !wait {
				return nil
			}
			// A producer's user may read its own profile's job states
			// (deploy/nats/accounts.conf) and nothing else.
			states, err := queue.OpenStates(ctx, js)
			if err != nil {
				return fmt.Errorf("--wait reads the job state: %w", err)
			}
			return c.waitOutcome(ctx, states, profile, id, seq, timeout)
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

// duplicatePublish turns the stream's duplicate answer (Nats-Msg-Id = the job
// id, inside the profile's duplicate window) into exit 1 with a note; other
// errors pass.
func duplicatePublish(err error, profile, id string) error {
	if !errors.Is(err, queue.ErrDuplicatePublish) {
		return err
	}
	return &exitError{code: 1, msg: fmt.Sprintf("not sent: job %s of profile %s was published moments ago and is in the stream once "+
		"(JetStream's duplicate window, Nats-Msg-Id = the job id); this publish was dropped as a duplicate: publish with a new id to send again", id, profile)}
}

// waitOutcome polls the state of profile's job id until the message it
// published (stream sequence seq) is sent or dead-lettered, or another
// message of the same job id has reached an outcome first, in which case the
// worker suppresses this one as a duplicate: it reports only the outcome of
// the job it published. The state names the publish it is the outcome of
// (Origin: kept when the job waited in a message schedule).
func (c *cli) waitOutcome(ctx context.Context, states *queue.OwnStates, profile, id string, seq uint64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st, _, err := states.Get(ctx, profile, id)
		origin := st.Origin
		if origin == 0 {
			origin = st.Seq
		}
		if err == nil && origin != 0 && origin != seq && (st.State == contract.StateSent || st.State == contract.StateDeadLettered) {
			return &exitError{code: 1, msg: fmt.Sprintf("not sent: job %s of profile %s was already %s by another publish (stream sequence %d, at %s); "+
				"this one (stream sequence %d) is suppressed as a duplicate: publish with a new id to send again",
				id, profile, st.State, origin, st.UpdatedAt.UTC().Format(time.RFC3339), seq)}
		}
		if err == nil && (origin == seq || origin == 0) {
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
		}
		if err != nil && !errors.Is(err, contract.ErrNoState) && ctx.Err() == nil {
			return err
		}
		select {
		case <-ctx.Done():
			return &exitError{code: 2, msg: c.lastEventNote(queue.NewEvents(states.JetStream()), profile, id, timeout)}
		case <-tick.C:
		}
	}
}

// lastEventNote says, after --wait timed out, where the job is: its last
// status event (a retry, a deferral for a mailbox limit, …), or that no worker
// has reported on it.
func (c *cli) lastEventNote(events *queue.Events, profile, id string, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	head := fmt.Sprintf("no outcome for job %s within %s", id, timeout)
	evs, err := events.History(ctx, profile, id)
	if err != nil || len(evs) == 0 {
		return head + "; no worker has reported on it yet: is a worker running for this profile (`mailworker check`), or is the queue long (`mailworker status`)?"
	}
	ev := evs[len(evs)-1]
	note := fmt.Sprintf("%s; last event %s at %s (attempt %d)", head, ev.Event, ev.At.UTC().Format(time.RFC3339), ev.Attempt)
	if ev.Graph != nil && ev.Graph.Status != 0 {
		note += fmt.Sprintf(", Graph %d", ev.Graph.Status)
	}
	if d := eventDetail(ev); d != "" {
		note += ": " + d
	}
	return cell(note) + "; follow it with `mailworker status " + id + "`"
}
