package worker

// The executor (river's internal/jobexecutor): handle runs one delivery's
// attempt — reads its facts, paces it, calls the Sender — and ends with the
// one Action that decide made of what happened; carry (complete.go) records
// that action. Nothing here acks, naks, terminates or builds an Action.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// opTimeout bounds one broker operation (state, event, dead letter).
const opTimeout = 10 * time.Second

// unknownProfile labels metrics of jobs published for a profile this worker
// does not serve, so that a stray subject cannot grow label cardinality.
const unknownProfile = "_unknown"

// job is one delivery being handled.
type job struct {
	msg     Delivery
	profile string
	prof    *profileState
	id      string
	job     *contract.Job
	from    string // lower-cased sender address
	state   contract.JobState
	rev     uint64 // revision of state in the store; 0 when none was read or written
	// base is the value stored at rev: what the next write compares and
	// sets against, and must follow (contract.CheckTransition). state is
	// the value being worked on.
	base      contract.JobState
	stateRead bool   // state was read from the store (not assumed absent)
	fresh     bool   // ... from the store's leader (States.Latest), not a replica that may lag
	marked    bool   // this delivery stored state `sending`
	seq       uint64 // stream sequence of this delivery (MAIL_JOBS_<profile>, or MAIL_DEFER when due)
	origin    uint64 // stream sequence of the producer's publish (HeaderOriginSeq, else seq)
	published time.Time
	graph     *contract.GraphInfo // of the last Graph call, if any
	lookup    string              // a draft send's look-up outcome (contract.SendResult.Lookup)
	// admittedAt and uploadBytes are the pacer's reservation for this send.
	admittedAt  time.Time
	uploadBytes int64
	// rcpt recipients were taken from the allowance of rcptHour for this
	// send; they are given back unless mayHaveSent (refundRecipients).
	rcpt        int
	rcptHour    time.Time
	mayHaveSent bool
	elapsed     time.Duration // of the last Graph call
	// releaseSlots gives back the mailbox and Graph concurrency slots once
	// the Graph call is over (nil when none are held; safe to call twice).
	releaseSlots func()
	// held are what the attempt holds (recipients, the heartbeat, the
	// slots): released, last first, once the action is carried out.
	held []func()
}

// hold keeps f to run once j's action is carried out (release).
func (j *job) hold(f func()) { j.held = append(j.held, f) }

// release runs what hold kept, last first.
func (j *job) release() {
	for i := len(j.held) - 1; i >= 0; i-- {
		j.held[i]()
	}
	j.held = nil
}

func (j *job) metricProfile() string {
	if j.prof == nil {
		return unknownProfile
	}
	return j.profile
}

// policy is what decide needs to know of this pool and j's profile.
func (p *Pool) policy(j *job) Policy {
	pol := Policy{MaxAttempts: p.cfg.MaxAttempts, MaxStops: p.cfg.MaxStops, Busy: p.cfg.SendTimeout + 5*time.Second, Retry: p.retry,
		Profile: j.profile, Mailbox: j.from, TransitWait: p.cfg.DraftTransitWait, LookupEvery: p.cfg.DraftLookupEvery}
	if j.prof != nil {
		pol.OnAmbiguous = j.prof.OnAmbiguous
	}
	return pol
}

// decide asks the one decision function about j and o.
func (p *Pool) decide(j *job, o Outcome) Action {
	return decide(j.state, o, p.policy(j), p.clock.Now())
}

// handle takes one delivery to exactly one outcome: execute gathers the
// facts and returns decide's action, and carry carries it out; what the
// attempt holds (slots, heartbeat, recipients) is let go after that. stop
// ends waiting (the job is put back unspent); sendCtx ends a send in flight.
func (p *Pool) handle(stop, sendCtx context.Context, msg Delivery) {
	j := &job{msg: msg}
	defer j.release()
	defer func() {
		if r := recover(); r != nil {
			p.log.Error().Str("jobId", j.id).Str("panic", fmt.Sprint(r)).Bytes("stack", debug.Stack()).Msg("panic while handling job")
			p.carry(sendCtx, j, p.decide(j, Outcome{Kind: Panicked, Message: fmt.Sprintf("worker panic while handling the job: %v", r)}))
		}
	}()
	p.carry(sendCtx, j, p.execute(stop, sendCtx, j))
}

// execute runs j's attempt up to the first decision that is not Send, and
// returns it.
func (p *Pool) execute(stop, sendCtx context.Context, j *job) Action {
	msg := j.msg
	firstDelivery := p.open(j)
	parsed, decodeErr := contract.DecodeJob(msg.Data())
	p.resolveID(j, parsed)
	if j.prof == nil {
		return p.decide(j, Outcome{Kind: Invalid, Reason: contract.ReasonInvalidJob,
			Message: fmt.Sprintf("no profile %q is configured on this worker (subject %s): publish on mail.send.<profile> for a configured profile", j.profile, msg.Subject())})
	}
	if decodeErr != nil {
		reason := contract.ReasonInvalidJob
		var inv *contract.InvalidError
		if errors.As(decodeErr, &inv) && inv.Reason != "" {
			reason = inv.Reason
		}
		return p.decide(j, Outcome{Kind: Invalid, Reason: reason, Message: "invalid job: " + decodeErr.Error()})
	}
	j.job = parsed
	j.from = senderAddress(parsed.From)

	// A job's first delivery that will go straight to sending skips the state
	// read: the compare-and-set create in send claims it, and fails if a
	// state exists after all (a re-publish after the dedupe window), and so
	// does a deferral by the pacer, which reads first. Replays, jobs back
	// from a message schedule (they have a state: it may hold a draft whose
	// send is being looked up, which the pacer must not count as a send),
	// later deliveries and every job a state could change the decision for
	// read.
	if !(firstDelivery && msg.Header(contract.HeaderReplay) == "" && msg.Header(contract.HeaderOriginSeq) == "" && p.plainlySendable(j)) {
		if a, ok := p.readState(sendCtx, j); !ok {
			return a
		}
	}
	if a := p.arrival(sendCtx, j); a.Kind != Send {
		return a
	}
	if a, ok := p.checkSize(sendCtx, j); !ok {
		return a
	}
	if a, ok := p.checked(sendCtx, j); !ok {
		return a
	}
	return p.paceAndSend(stop, sendCtx, j)
}

// checkSize holds j to its profile's maximum message size, as Exchange
// counts it (contract.MessageSize: the whole message, attachments
// base64-encoded), before any Graph call and any upload: past it Exchange
// refuses the mail (ErrorMessageSizeExceeded, in a draft's case only when
// the upload has crossed the limit), after the upload has spent the
// mailbox's 5-minute upload budget. ok is false when j must not be sent: a
// is then the action (the message is too large, or the object store was out
// of reach).
func (p *Pool) checkSize(ctx context.Context, j *job) (a Action, ok bool) {
	if j.state.Draft != nil {
		// Checked before its draft was created; the draft may have been
		// sent since, which only a look-up can tell: never dead-letter it
		// for a limit that changed in between.
		return Action{}, true
	}
	limit := j.prof.MaxMessageBytes
	if limit <= 0 {
		limit = contract.DefaultMaxMessageBytes
	}
	var storeErr error
	n, err := contract.MessageSize(j.job, func(ref string) (int64, error) {
		if p.broker.Attachments == nil {
			return 0, nil // the send dead-letters it: no attachment store
		}
		opCtx, cancel := context.WithTimeout(ctx, opTimeout)
		s, err := p.broker.Attachments.Size(opCtx, j.profile, ref)
		cancel()
		switch {
		case errors.Is(err, contract.ErrNoAttachment):
			return 0, nil // the send dead-letters it invalid_job
		case err != nil:
			storeErr = err
			return 0, err
		}
		return int64(s), nil
	})
	if err != nil {
		if storeErr == nil {
			storeErr = err
		}
		return p.unreachable(j, "read attachment sizes from the object store", storeErr), false
	}
	if n <= limit {
		return Action{}, true
	}
	return p.decide(j, Outcome{Kind: Invalid, Reason: contract.ReasonMessageTooLarge, Message: fmt.Sprintf(
		"the message is about %s as Exchange counts it (attachments base64-encoded, about 33%% larger than the files), "+
			"over profiles.%s.maxMessageSize, %s: Exchange would refuse it (ErrorMessageSizeExceeded). "+
			"Send smaller attachments, or raise the sending mailbox's MaxSendSize (Set-Mailbox, at most 150 MB) and maxMessageSize with it",
		contract.FormatMessageSize(n), j.profile, contract.FormatMessageSize(limit))}), false
}

// checked asks the sender (Checker) to refuse what j's path cannot send
// before the mailbox's recipient budget is charged and before any content
// is loaded; ok is false when j was refused: a is then the action.
func (p *Pool) checked(ctx context.Context, j *job) (a Action, ok bool) {
	c, ok := p.sender.(Checker)
	if !ok {
		return Action{}, true
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	err := c.Check(opCtx, j.profile, j.job)
	cancel()
	if err == nil {
		return Action{}, true
	}
	se := contract.AsSendError(err)
	if se.Class != contract.ClassPermanent {
		return Action{}, true // the send meets it again, and retries
	}
	if !j.stateRead { // a duplicate is suppressed, not dead-lettered
		if a, ok := p.readState(ctx, j); !ok {
			return a, false
		}
		if a := p.decide(j, p.arrived(j)); a.Kind != Send {
			return a, false
		}
	}
	return p.decide(j, Outcome{Kind: Failed, Err: se}), false
}

// mayHaveReachedExchange reports whether a failed send may have delivered
// the mail, and so counts against the mailbox's recipient budget: an
// ambiguous outcome, or a 5xx or 429 of sendMail or of a draft's send (per
// Microsoft staff a 429 is not strictly proof of non-delivery:
// docs/microsoft.md). The draft flow's other calls (create, attach, upload,
// look-up) send nothing (SendError.SendsNothing).
func mayHaveReachedExchange(se *contract.SendError) bool {
	switch {
	case se.Ambiguous:
		return true
	case se.SendsNothing:
		return false
	}
	return se.Status == 429 || se.Status >= 500
}

// open reads the delivery's metadata and profile into j; it reports whether
// this is the message's first delivery.
func (p *Pool) open(j *job) (first bool) {
	msg := j.msg
	seq, delivered, published, ok := msg.Meta()
	if ok {
		j.seq, j.published = seq, published
		first = delivered == 1
	}
	// The producer's publish this delivery comes from: itself, or the one a
	// message schedule carries forward.
	j.origin = j.seq
	if o, err := strconv.ParseUint(msg.Header(contract.HeaderOriginSeq), 10, 64); err == nil && o != 0 {
		j.origin = o
	}
	profile, okSubject := contract.ProfileFromSubject(msg.Subject())
	if !okSubject {
		profile = strings.ReplaceAll(strings.TrimPrefix(msg.Subject(), contract.JobSubjectPrefix), ".", "_")
	}
	j.profile = profile
	j.prof = p.profiles[profile]
	return first
}

// resolveID gives j its id: the job's own, the message's headers, or one
// from the stream sequence. An invalid job keeps the id its producer gave it
// when that can be read, so that support finds it under the id the producer
// knows.
func (p *Pool) resolveID(j *job, parsed *contract.Job) {
	if parsed == nil {
		parsed = &contract.Job{ID: sniffID(j.msg.Data())}
	}
	j.id = contract.ResolveJobID(parsed, j.msg.Header, j.seq)
	if !contract.ValidJobID(j.id) {
		j.id = fmt.Sprintf("s%d", j.seq)
	}
	j.state = contract.JobState{JobID: j.id, Profile: j.profile, Origin: j.origin}
}

// arrived is the Arrived outcome of j.
func (p *Pool) arrived(j *job) Outcome {
	return Outcome{Kind: Arrived, Job: j.job, SenderAllowed: j.prof.allows(j.from),
		Redelivered: j.state.Seq != 0 && j.state.Seq == j.seq}
}

// readState loads j's state; ok is false when the broker failed: a is then
// the action (put back).
func (p *Pool) readState(ctx context.Context, j *job) (a Action, ok bool) {
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	st, rev, err := p.broker.States.Get(opCtx, j.profile, j.id)
	cancel()
	if err != nil && !errors.Is(err, contract.ErrNoState) {
		return p.unreachable(j, "read job state", err), false
	}
	p.adopt(j, st, rev, err == nil)
	j.fresh = false
	return Action{}, true
}

// readLatest loads j's state from the store's leader; ok is false when the
// broker failed: a is then the action (put back).
func (p *Pool) readLatest(ctx context.Context, j *job) (a Action, ok bool) {
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	st, rev, err := p.broker.States.Latest(opCtx, j.profile, j.id)
	cancel()
	if err != nil && !errors.Is(err, contract.ErrNoState) {
		return p.unreachable(j, "read job state", err), false
	}
	p.adopt(j, st, rev, err == nil)
	return Action{}, true
}

// adopt makes st, stored at rev (exists false: none is), j's state.
func (p *Pool) adopt(j *job, st contract.JobState, rev uint64, exists bool) {
	if !exists {
		st, rev = contract.JobState{JobID: j.id, Profile: j.profile}, 0
	}
	j.base, j.rev, j.state = st, rev, st
	if j.state.Origin == 0 { // no state, or a replay's fresh state: this publish is its origin
		j.state.Origin = j.origin
	}
	j.stateRead, j.fresh = true, true
}

// arrival decides on j as it arrived. A decision to drop the delivery as a
// duplicate is never taken on a read that a lagging replica may have
// served: it is confirmed from the leader first (a replay of the job may
// have moved it on since).
func (p *Pool) arrival(ctx context.Context, j *job) Action {
	a := p.decide(j, p.arrived(j))
	if a.Kind == SuppressDuplicate && !j.fresh {
		if a, ok := p.readLatest(ctx, j); !ok {
			return a
		}
		a = p.decide(j, p.arrived(j))
	}
	return a
}

// plainlySendable reports whether a job without state would go straight to
// pacing and sending: not expired, not held by notBefore, sender allowed.
func (p *Pool) plainlySendable(j *job) bool {
	return p.decide(j, p.arrived(j)).Kind == Send
}

// paceAndSend waits for the mailbox's pace and slots, then sends. A draft
// whose send was attempted is looked up, not sent (graphmail resumeSend): the
// look-up takes the mailbox's concurrency slots (it is Graph requests) but
// not its pace, recipients or upload volume, which the send already counted.
// Shutdown (stop) during the waits is the Interrupted outcome.
func (p *Pool) paceAndSend(stop, sendCtx context.Context, j *job) Action {
	var upload int64
	var adm Admission
	rcpt := 0
	if d := j.state.Draft; d != nil && d.SendAt != nil {
		adm = p.pacer.admitLookup(j.from)
	} else {
		upload = p.uploadBytes(sendCtx, j.profile, j.msg.Data(), j.job)
		rcpt = len(j.job.To) + len(j.job.Cc) + len(j.job.Bcc)
		var err error
		adm, err = p.admit(sendCtx, j.from, rcpt, upload)
		if err != nil {
			// The recipient ledger is out of reach: never send blind.
			return p.unreachable(j, "lease recipients from the shared ledger", err)
		}
	}
	if adm.Defer > 0 {
		return p.paced(sendCtx, j, adm.Defer, adm.Cause)
	}
	j.admittedAt, j.uploadBytes = adm.At, upload
	// Every way out from here that cannot have reached Graph gives the
	// recipients back (carry does, and release after it).
	j.rcpt, j.rcptHour = rcpt, adm.Hour
	j.hold(func() { p.refundRecipients(sendCtx, j) })
	j.hold(p.keepAlive(j.msg).Stop)
	if err := p.pacer.acquire(stop, j.from, adm.At); err != nil {
		return p.decide(j, Outcome{Kind: Interrupted})
	}
	select {
	case p.sends <- struct{}{}:
	case <-stop.Done():
		p.pacer.release(j.from)
		return p.decide(j, Outcome{Kind: Interrupted})
	}
	// The slots bound Graph requests: they are given back as soon as the
	// call returns, not after the state write, ack and event that follow.
	j.releaseSlots = sync.OnceFunc(func() {
		<-p.sends
		p.pacer.release(j.from)
	})
	j.hold(j.releaseSlots)
	if stop.Err() != nil {
		return p.decide(j, Outcome{Kind: Interrupted})
	}
	// Graph may have answered another job of this mailbox with Retry-After
	// while this one waited for its slots: sending now would land inside
	// that window.
	if d := p.pacer.pausedFor(j.from); d > 0 {
		return p.paced(sendCtx, j, d, CauseRetryAfter)
	}
	return p.send(sendCtx, j)
}

// paced defers j for the mailbox. A job whose state was not read reads it
// first: a duplicate is suppressed at once, not after waiting for the pace.
func (p *Pool) paced(ctx context.Context, j *job, d time.Duration, cause Cause) Action {
	if !j.stateRead {
		if a, ok := p.readState(ctx, j); !ok {
			return a
		}
		if a := p.arrival(ctx, j); a.Kind != Send {
			return a
		}
	}
	return p.decide(j, Outcome{Kind: Paced, Delay: d, Cause: cause})
}

// uploadBytes estimates the size of the job's sendMail request for the
// mailbox's upload volume: the job itself (inline attachments are base64 in
// both), plus its objectRef attachments as they will be sent, base64-encoded.
// An attachment whose size cannot be read counts as the most one request can
// carry; a missing one counts nothing (the send will fail without uploading).
func (p *Pool) uploadBytes(ctx context.Context, profile string, data []byte, job *contract.Job) int64 {
	if p.cfg.PerMailboxUploadBytes <= 0 {
		return 0
	}
	n := int64(len(data))
	for _, a := range job.Attachments {
		if a.ObjectRef == "" {
			continue
		}
		n += int64(base64.StdEncoding.EncodedLen(p.objectSize(ctx, profile, a.ObjectRef, contract.MaxInlineAttachmentBytes)))
	}
	if job.MIME != nil && job.MIME.ObjectRef != "" { // a large MIME message (SMTP ingress)
		n += int64(base64.StdEncoding.EncodedLen(p.objectSize(ctx, profile, job.MIME.ObjectRef, contract.MaxMIMEBytes)))
	}
	return n
}

// objectSize is the size of an object by reference: 0 when it is missing
// (the send will fail without uploading), def when it cannot be read.
func (p *Pool) objectSize(ctx context.Context, profile, ref string, def int) int {
	if p.broker.Attachments == nil {
		return def
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	s, err := p.broker.Attachments.Size(opCtx, profile, ref)
	cancel()
	switch {
	case errors.Is(err, contract.ErrNoAttachment):
		return 0
	case err == nil:
		return s
	}
	return def
}

// send claims the job (state `sending`, compare-and-set), calls the Sender
// and returns what decide makes of the result.
func (p *Pool) send(sendCtx context.Context, j *job) Action {
	if rs, ok := p.sender.(ResumableSender); ok && j.state.Draft == nil {
		opCtx, cancel := context.WithTimeout(sendCtx, opTimeout)
		if rs.UsesDraft(opCtx, j.profile, j.job) {
			j.state.Draft = &contract.Draft{} // stored with `sending` by mark
		}
		cancel()
	}
	if a, ok := p.mark(sendCtx, j); !ok {
		return a
	}
	ctx, cancel := context.WithTimeout(sendCtx, p.cfg.SendTimeout)
	if j.state.Draft != nil {
		// A draft send is many calls (a 150 MB upload is dozens of PUTs),
		// each bounded by the same timeout in graphmail; its progress
		// saves renew the claim on the job (decide: busy).
		cancel()
		ctx, cancel = context.WithCancel(sendCtx)
	}
	p.m.InflightSends.Inc()
	start := time.Now()
	var res contract.SendResult
	var err error
	if rs, ok := p.sender.(ResumableSender); ok {
		res, err = rs.SendResumable(ctx, j.profile, j.id, j.job, j.state.Draft, func(ctx context.Context, d *contract.Draft) error {
			return p.saveDraft(ctx, j, d)
		})
	} else {
		res, err = p.sender.Send(ctx, j.profile, j.id, j.job)
	}
	j.elapsed = time.Since(start)
	// A draft found sent by its look-up was sent, and counted, by an
	// earlier attempt: this one sent nothing.
	j.mayHaveSent = err == nil && res.Lookup == "" || err != nil && mayHaveReachedExchange(contract.AsSendError(err))
	if j.state.Draft != nil && j.uploadBytes > 0 {
		// A draft's bytes flow for the whole upload, not at its start: the
		// mailbox's upload window counts them from the end.
		p.pacer.uploadEnded(j.from, j.admittedAt, j.uploadBytes, p.clock.Now())
	}
	if err == nil && j.releaseSlots != nil {
		// On failure the slots are held until handle returns, so that a
		// Retry-After pause is recorded before another job takes them.
		j.releaseSlots()
	}
	p.m.InflightSends.Dec()
	cancel()
	j.prof.hot.sendDuration.Observe(j.elapsed.Seconds())

	return p.decide(j, p.sendOutcome(sendCtx, j, res, err))
}

// sendOutcome is the outcome of the Sender's answer (res, err), noting the
// Graph call in j and the metrics.
func (p *Pool) sendOutcome(sendCtx context.Context, j *job, res contract.SendResult, err error) Outcome {
	if err == nil {
		if res.Status == 202 {
			j.prof.hot.accepted.Inc()
		} else {
			p.m.GraphRequests.WithLabelValues(j.profile, statusLabel(res.Status)).Inc()
		}
		j.graph = &contract.GraphInfo{Status: res.Status, RequestID: res.RequestID, ClientRequestID: res.ClientRequestID,
			Date: contract.GraphDate(res.Date), EarlierCalls: res.EarlierCalls}
		j.lookup = res.Lookup
		return Outcome{Kind: Sent, RetryAfter: res.RetryAfter}
	}
	var pending *contract.PendingError
	if errors.As(err, &pending) {
		// Not a failure: a draft's send may have gone out and the look-up
		// cannot tell yet. decide says when to look again, or what to do
		// once the transit window has passed.
		return Outcome{Kind: Pending, Pending: pending}
	}
	se := contract.AsSendError(err)
	p.m.GraphRequests.WithLabelValues(j.profile, statusLabel(se.Status)).Inc()
	j.graph = &contract.GraphInfo{Status: se.Status, Code: se.Code, RequestID: se.RequestID, ClientRequestID: se.ClientRequestID,
		Date: contract.GraphDate(se.Date), EarlierCalls: se.EarlierCalls}
	j.state.LastError = &contract.ErrorInfo{Reason: se.Reason, Message: se.Error()}
	kind := Failed
	if sendCtx.Err() != nil {
		kind = Interrupted
	}
	if se.Class == contract.ClassThrottled {
		p.m.GraphThrottled.WithLabelValues(j.profile).Inc()
	}
	return Outcome{Kind: kind, Err: se}
}

// saveDraft stores a job's draft progress in its state with a
// compare-and-set on the revision this delivery holds; it also renews
// UpdatedAt, so that a long upload keeps other deliveries of the job waiting
// (decide: busy) while it makes progress.
func (p *Pool) saveDraft(ctx context.Context, j *job, d *contract.Draft) error {
	cp := *d
	if d.Upload != nil {
		u := *d.Upload
		cp.Upload = &u
	}
	st := j.state
	st.Draft = &cp
	st.UpdatedAt = p.clock.Now()
	return p.store(ctx, j, st, opTimeout, nil)
}

// mark stores state `sending` with a compare-and-set, claiming the job for
// this delivery. When another delivery moved the job on first, the state is
// read again and decided on at once (a duplicate is suppressed without a
// detour); ok is false when the job is not to be sent now: a is then the
// action.
func (p *Pool) mark(ctx context.Context, j *job) (a Action, ok bool) {
	for try := 0; ; try++ {
		st := j.state
		st.State = contract.StateSending
		st.Profile = j.profile
		st.UpdatedAt = p.clock.Now()
		err := p.store(ctx, j, st, opTimeout, nil)
		switch {
		case err == nil:
			j.marked = true
			return Action{}, true
		case errors.Is(err, errMoved) && try == 0:
			// j holds the state as the leader has it now.
			if a := p.decide(j, p.arrived(j)); a.Kind != Send {
				return a, false
			}
		case errors.Is(err, errMoved):
			// Moved on twice under us: look again shortly.
			return p.decide(j, Outcome{Kind: Contended}), false
		default:
			return p.unreachable(j, "write job state", err), false
		}
	}
}

// unreachable logs that the broker failed op and returns decide's action
// for the Unreachable outcome.
func (p *Pool) unreachable(j *job, op string, err error) Action {
	p.log.Error().Str("jobId", j.id).Str("profile", j.profile).Err(err).Msgf("%s failed; job put back", op)
	return p.decide(j, Outcome{Kind: Unreachable})
}

// keepAlive tells the server the job is being worked on every third of the
// ack wait until stopped, so that slow waits and sends are not redelivered.
func (p *Pool) keepAlive(msg Delivery) *heartbeat {
	every := p.cfg.AckWait / 3
	hb := &heartbeat{}
	hb.mu.Lock()
	defer hb.mu.Unlock()
	hb.t = time.AfterFunc(every, func() {
		_ = msg.InProgress()
		hb.mu.Lock()
		defer hb.mu.Unlock()
		if !hb.stopped {
			hb.t.Reset(every)
		}
	})
	return hb
}

// heartbeat is a running keepAlive. The mutex orders the timer's creation
// before its first firing, and a Stop during a firing before the re-arm, which
// would otherwise keep a finished job's heartbeat going for ever.
type heartbeat struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

// Stop ends the heartbeat; no InProgress is sent after it returns but one
// already under way.
func (hb *heartbeat) Stop() {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	hb.stopped = true
	hb.t.Stop()
}

// sniffID reads the id field of a job body, valid or not, if it has one.
func sniffID(data []byte) string {
	var probe struct {
		ID json.RawMessage `json:"id"`
	}
	var id string
	if json.Unmarshal(data, &probe) != nil || json.Unmarshal(probe.ID, &id) != nil || !contract.ValidJobID(id) {
		return ""
	}
	return id
}

func senderAddress(from string) string {
	if _, addr, err := contract.ParseAddress(from); err == nil {
		return strings.ToLower(addr)
	}
	return strings.ToLower(strings.TrimSpace(from))
}
