package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

func (c *cli) statusCmd() *cobra.Command {
	var asJSON bool
	var since time.Duration
	var profile string
	cmd := &cobra.Command{
		Use:   "status [<job-id>]",
		Short: "Show a job's current state and its event history; without a job id, a per-profile summary",
		Long: `status <job-id> shows the job's current state (MAIL_JOB_STATE), every status event
(MAIL_STATUS) and, for a dead-lettered job, whether its dead letter is still in MAIL_DLQ.
It exits 1 when the id is unknown.

status without a job id summarises MAIL_STATUS per profile over --since: how many jobs had
an event, how many ended sent, dead-lettered or duplicate-suppressed, and how many are still
open (their latest event is deferred, retrying or replayed), plus the jobs waiting in each profile's MAIL_JOBS_<profile> (or due in MAIL_DEFER).
Once producers are quiet, "open 0" and "waiting 0" mean nothing was lost.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				if since <= 0 {
					return fmt.Errorf("--since: must be a positive duration such as 24h, got %s", since)
				}
				return c.statusSummary(cmd.Context(), since, profile, asJSON)
			}
			if cmd.Flags().Changed("since") {
				return errors.New("--since goes with the summary: give no job id")
			}
			return c.statusJob(cmd.Context(), args[0], profile, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&since, "since", 24*time.Hour, "summary: events of this last period (at most streams.statusMaxAge are kept)")
	cmd.Flags().StringVar(&profile, "profile", "", "summary: only this profile; with a job id: the job's profile (needed when two profiles used the same id)")
	return cmd
}

// jobStatus is `status <id> --json`.
type jobStatus struct {
	State  *contract.JobState `json:"state,omitempty"`
	Events []contract.Event   `json:"events"`
	// DeadLetter says, for a dead-lettered job, whether its record is still
	// in MAIL_DLQ ("present") or not ("gone": purged, or past dlqMaxAge).
	DeadLetter string `json:"deadLetter,omitempty"`
}

func (c *cli) statusJob(ctx context.Context, id, profile string, asJSON bool) error {
	if !contract.ValidJobID(id) {
		return fmt.Errorf("%s is not a job id (1 to 128 of A-Z a-z 0-9 _ -); `mailworker dlq list` shows the ids of dead letters", cell(truncate(id, 64)))
	}
	nc, q, err := c.openQueue(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	if profile == "" {
		// A job is identified by its profile and id: find the profiles that
		// used this id.
		ps, err := q.States.Profiles(ctx, id)
		if err != nil {
			return err
		}
		if len(ps) > 1 {
			return &exitError{code: 1, msg: fmt.Sprintf("job id %s is used by profiles %s: give --profile", id, cell(strings.Join(ps, ", ")))}
		}
		if len(ps) == 1 {
			profile = ps[0]
		}
	}
	var st contract.JobState
	err = contract.ErrNoState
	if profile != "" {
		st, _, err = q.States.Get(ctx, profile, id)
	}
	noState := errors.Is(err, contract.ErrNoState)
	if err != nil && !noState {
		return err
	}
	events, err := q.Events.History(ctx, profile, id)
	if err != nil {
		return err
	}
	if noState && len(events) == 0 {
		msg := fmt.Sprintf("job %s is unknown: no state in %s and no event in %s (a wrong id, a job not yet picked up by a worker, or older than streams.stateTTL and streams.statusMaxAge); try `mailworker dlq show %s` or `mailworker dlq list`",
			id, contract.BucketState, contract.StreamStatus, id)
		if asJSON {
			_ = json.NewEncoder(c.stdout).Encode(struct {
				JobID  string           `json:"jobId"`
				Error  string           `json:"error"`
				Events []contract.Event `json:"events"`
			}{id, msg, []contract.Event{}})
		}
		return &exitError{code: 1, msg: msg}
	}
	if st.Draft != nil && st.Draft.Upload != nil {
		// The upload URL is pre-authenticated (it carries a token).
		d, u := *st.Draft, *st.Draft.Upload
		u.URL = "(redacted)"
		d.Upload = &u
		st.Draft = &d
	}
	out := jobStatus{State: stateOrNil(st), Events: events}
	if out.Events == nil {
		out.Events = []contract.Event{}
	}
	if deadLettered(st, noState, events) {
		_, err := q.DLQ.Get(ctx, profile, id)
		switch {
		case err == nil:
			out.DeadLetter = "present"
		case errors.Is(err, queue.ErrNotInDLQ):
			out.DeadLetter = "gone"
		default:
			// A producer's NATS user may read status but not MAIL_DLQ:
			// the rest of the answer stands.
			fmt.Fprintf(c.stderr, "mailworker: could not look the job up in %s: %s\n", contract.StreamDLQ, cell(err.Error()))
		}
	}
	if asJSON {
		return json.NewEncoder(c.stdout).Encode(out)
	}
	if st.JobID != "" {
		fmt.Fprintf(c.stdout, "job %s  profile %s  state %s  attempts %d  updated %s\n", cell(st.JobID), cell(st.Profile), cell(string(st.State)),
			st.Attempts, st.UpdatedAt.UTC().Format(time.RFC3339))
		if st.LastError != nil {
			fmt.Fprintf(c.stdout, "last error: %s: %s\n", cell(string(st.LastError.Reason)), cell(st.LastError.Message))
		}
		if st.Ambiguous {
			fmt.Fprintln(c.stdout, "an attempt's outcome was ambiguous: the recipient may get the mail twice")
		}
		if d := st.Draft; d != nil && d.InternetMessageID != "" {
			fmt.Fprintf(c.stdout, "sent as a draft: Message-ID %s (Exchange message trace finds it by this id)\n", cell(d.InternetMessageID))
		}
	} else {
		fmt.Fprintf(c.stdout, "job %s: no current state (older than streams.stateTTL); its events:\n", cell(id))
	}
	switch out.DeadLetter {
	case "present":
		fmt.Fprintf(c.stdout, "dead letter: in %s; see `mailworker dlq show %s`\n", contract.StreamDLQ, id)
	case "gone":
		fmt.Fprintf(c.stdout, "dead letter: purged (`mailworker dlq purge`) or past streams.dlqMaxAge; no longer in %s, so it cannot be replayed. The job was not sent.\n", contract.StreamDLQ)
	}
	tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tEVENT\tATTEMPT\tGRAPH\tREQUEST ID\tDETAIL")
	for _, ev := range events {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", ev.At.UTC().Format(time.RFC3339), cell(string(ev.Event)), ev.Attempt,
			graphStatus(ev), cell(graphRequestID(ev)), cell(eventDetail(ev)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return printDeliveries(c.stdout, events)
}

// printDeliveries prints each recipient's delivery (the delivery events
// from Exchange message trace, package tracking); nothing when there is none.
func printDeliveries(w io.Writer, events []contract.Event) error {
	var rows []contract.Event
	for _, ev := range events {
		if ev.Recipient != "" {
			rows = append(rows, ev)
		}
	}
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(w, "delivery per recipient (Exchange message trace):")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RECIPIENT\tDELIVERY\tAT\tDETAIL")
	for _, ev := range rows {
		detail := ""
		if ev.Trace != nil {
			detail = ev.Trace.Detail
		}
		if detail == "" && ev.Error != nil {
			detail = ev.Error.Message
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cell(ev.Recipient), cell(string(ev.Event)), ev.At.UTC().Format(time.RFC3339), cell(detail))
	}
	return tw.Flush()
}

// deadLettered reports whether the job's last known outcome is a dead letter.
func deadLettered(st contract.JobState, noState bool, events []contract.Event) bool {
	if !noState {
		return st.State == contract.StateDeadLettered
	}
	for i := len(events) - 1; i >= 0; i-- {
		switch events[i].Event {
		case contract.EventDeadLettered:
			return true
		case contract.EventSent, contract.EventReplayed, contract.EventDuplicateSuppressed:
			return false
		}
	}
	return false
}

func graphStatus(ev contract.Event) string {
	if ev.Graph != nil && ev.Graph.Status != 0 {
		return fmt.Sprint(ev.Graph.Status)
	}
	return ""
}

func graphRequestID(ev contract.Event) string {
	if ev.Graph != nil {
		return ev.Graph.RequestID
	}
	return ""
}

// eventDetail is the DETAIL column of an event: its error and when it is due.
func eventDetail(ev contract.Event) string {
	detail := ""
	if ev.Error != nil {
		detail = string(ev.Error.Reason) + ": " + ev.Error.Message
	}
	if ev.Cause != "" {
		detail += " cause " + ev.Cause
	}
	if ev.RetryAt != nil {
		detail += " (due " + ev.RetryAt.UTC().Format(time.RFC3339) + ")"
	}
	if ev.PossibleDuplicate {
		detail += " possible duplicate"
	}
	if ev.InternetMessageID != "" {
		detail += " message-id " + ev.InternetMessageID
	}
	return strings.TrimSpace(detail)
}

func stateOrNil(st contract.JobState) *contract.JobState {
	if st.JobID == "" {
		return nil
	}
	return &st
}

// profileSummary counts one profile's jobs over the summary's range.
type profileSummary struct {
	Profile string `json:"profile"`
	// Jobs had at least one event in the range.
	Jobs                int `json:"jobs"`
	Sent                int `json:"sent"`
	DeadLettered        int `json:"deadLettered"`
	DuplicateSuppressed int `json:"duplicateSuppressed"`
	// Open jobs' latest event is deferred, retrying or replayed.
	Open int `json:"open"`
	// Waiting jobs are in the profile's MAIL_JOBS_<profile>, or due in
	// MAIL_DEFER (not yet acked or dead-lettered).
	Waiting uint64 `json:"waiting"`
	// Events counts every event of the range by type.
	Events map[contract.EventType]int `json:"events"`
}

type statusSummary struct {
	Since    time.Time        `json:"since"`
	Until    time.Time        `json:"until"`
	Profiles []profileSummary `json:"profiles"`
}

func (c *cli) statusSummary(ctx context.Context, since time.Duration, profile string, asJSON bool) error {
	if profile != "" && strings.ContainsAny(profile, ".*> \t\r\n\x00") {
		return fmt.Errorf("--profile: %s is not a profile name (one NATS subject token)", cell(truncate(profile, 64)))
	}
	nc, js, err := c.dial()
	if err != nil {
		return err
	}
	defer nc.Close()
	until := time.Now().UTC()
	sum := statusSummary{Since: until.Add(-since).Truncate(time.Second), Until: until.Truncate(time.Second)}
	last := map[string]map[string]contract.EventType{} // profile → job → latest event
	byProfile := map[string]*profileSummary{}
	get := func(p string) *profileSummary {
		if ps := byProfile[p]; ps != nil {
			return ps
		}
		ps := &profileSummary{Profile: p, Events: map[contract.EventType]int{}}
		byProfile[p] = ps
		last[p] = map[string]contract.EventType{}
		return ps
	}
	filter := "mail.status.>"
	if profile != "" {
		filter = contract.StatusSubject(profile, "*")
		get(profile)
	}
	err = eachEventSince(ctx, js, filter, sum.Since, func(ev contract.Event) {
		ps := get(ev.Profile)
		ps.Events[ev.Event]++
		if ev.Recipient == "" { // delivery events follow a job's outcome, they are not one
			last[ev.Profile][ev.JobID] = ev.Event
		}
	})
	if err != nil {
		return err
	}
	if err := countWaiting(ctx, js, profile, get); err != nil {
		return err
	}
	for p, jobs := range last {
		ps := byProfile[p]
		ps.Jobs = len(jobs)
		for _, ev := range jobs {
			switch ev {
			case contract.EventSent:
				ps.Sent++
			case contract.EventDeadLettered:
				ps.DeadLettered++
			case contract.EventDuplicateSuppressed:
				ps.DuplicateSuppressed++
			default:
				ps.Open++
			}
		}
	}
	for _, ps := range byProfile {
		sum.Profiles = append(sum.Profiles, *ps)
	}
	sort.Slice(sum.Profiles, func(i, j int) bool { return sum.Profiles[i].Profile < sum.Profiles[j].Profile })
	if sum.Profiles == nil {
		sum.Profiles = []profileSummary{}
	}
	if asJSON {
		return json.NewEncoder(c.stdout).Encode(sum)
	}
	fmt.Fprintf(c.stdout, "jobs per profile with status events from %s to %s (%s)\n", sum.Since.Format(time.RFC3339), sum.Until.Format(time.RFC3339), since)
	tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROFILE\tJOBS\tSENT\tDEAD-LETTERED\tDUPLICATE-SUPPRESSED\tOPEN\tWAITING\tRETRIES\tDEFERRALS\tREPLAYS")
	for _, ps := range sum.Profiles {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", cell(ps.Profile), ps.Jobs, ps.Sent, ps.DeadLettered, ps.DuplicateSuppressed,
			ps.Open, ps.Waiting, ps.Events[contract.EventRetrying], ps.Events[contract.EventDeferred], ps.Events[contract.EventReplayed])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, "SENT, DEAD-LETTERED, DUPLICATE-SUPPRESSED and OPEN count each job once, by its latest event; OPEN jobs are still deferred, retrying or replayed, WAITING jobs are in their profile's MAIL_JOBS_<profile> or due in MAIL_DEFER. Once producers are quiet, OPEN 0 and WAITING 0 mean nothing was lost.")
	return nil
}

// eachEventSince calls fn with every status event on filter stored since t,
// oldest first, up to the stream's last message when it starts.
func eachEventSince(ctx context.Context, js jetstream.JetStream, filter string, t time.Time, fn func(contract.Event)) error {
	s, err := js.Stream(ctx, contract.StreamStatus)
	if err != nil {
		return fmt.Errorf("stream %s: %w (run `mailworker provision`)", contract.StreamStatus, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	lastSeq := info.State.LastSeq
	if info.State.Msgs == 0 || info.State.LastTime.Before(t) {
		return nil
	}
	// Batch direct gets, not a consumer: support may create none.
	return queue.BrowseDirect(ctx, js, contract.StreamStatus, queue.BrowseOptions{Filter: filter, Since: t}, func(m jetstream.Msg) (bool, error) {
		var ev contract.Event
		if json.Unmarshal(m.Data(), &ev) == nil {
			fn(ev)
		}
		md, _ := m.Metadata()
		return md.Sequence.Stream < lastSeq, nil
	})
}

// countWaiting adds to each profile's Waiting the jobs in its ingress stream
// MAIL_JOBS_<profile> and its due deferrals in MAIL_DEFER (mail.due.<profile>);
// only profile's when profile is set.
func countWaiting(ctx context.Context, js jetstream.JetStream, profile string, get func(string) *profileSummary) error {
	var names []string
	if profile != "" {
		names = []string{contract.JobsStream(profile)}
	} else {
		lister := js.StreamNames(ctx, jetstream.WithStreamListSubject(contract.JobSubjectPrefix+">"))
		for n := range lister.Name() {
			if strings.HasPrefix(n, contract.StreamJobsPrefix) {
				names = append(names, n)
			}
		}
		if err := lister.Err(); err != nil {
			return fmt.Errorf("list the job streams: %w", err)
		}
	}
	for _, n := range names {
		s, err := js.Stream(ctx, n)
		if errors.Is(err, jetstream.ErrStreamNotFound) && profile != "" {
			continue // a profile without a stream has nothing waiting
		}
		if err != nil {
			return fmt.Errorf("stream %s: %w (run `mailworker provision`)", n, err)
		}
		get(strings.TrimPrefix(n, contract.StreamJobsPrefix)).Waiting += s.CachedInfo().State.Msgs
	}
	dueFilter := contract.DueSubjectPrefix + ">"
	if profile != "" {
		dueFilter = contract.DueSubject(profile)
	}
	s, err := js.Stream(ctx, contract.StreamDefer)
	if err != nil {
		return fmt.Errorf("stream %s: %w (run `mailworker provision`)", contract.StreamDefer, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(dueFilter))
	if err != nil {
		return fmt.Errorf("stream %s: %w", contract.StreamDefer, err)
	}
	for subj, n := range info.State.Subjects {
		if p, ok := contract.ProfileFromSubject(subj); ok {
			get(p).Waiting += n
		}
	}
	return nil
}
