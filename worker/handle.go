package worker

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

	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/queue/contract"
)

// opTimeout bounds one broker operation (state, event, dead letter).
const opTimeout = 10 * time.Second

// finalAttemptTimeout bounds one try of a final write. Those writes are
// idempotent (a KV put of the same state, an event with a stable dedupe id),
// so a try whose reply is lost (the stream leader died with the write in
// flight) is cut short and made again rather than waited out for opTimeout.
const finalAttemptTimeout = 3 * time.Second

// terminalStateTimeout bounds how long a final write (terminal state, final
// event) is retried before the worker gives up on it.
const terminalStateTimeout = 2 * time.Minute

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

// handle takes one delivery to exactly one outcome: it gathers the facts,
// asks decide, and carries the action out (carry). stop ends waiting (the
// job is put back unspent); sendCtx ends a send in flight.
func (p *Pool) handle(stop, sendCtx context.Context, msg Delivery) {
	j := &job{msg: msg}
	defer func() {
		if r := recover(); r != nil {
			p.log.Error().Str("jobId", j.id).Str("panic", fmt.Sprint(r)).Bytes("stack", debug.Stack()).Msg("panic while handling job")
			p.carry(sendCtx, j, Action{Kind: DeadLetter, Reason: contract.ReasonInternal,
				Message: fmt.Sprintf("worker panic while handling the job: %v", r)})
		}
	}()
	firstDelivery := p.open(j)
	parsed, decodeErr := contract.DecodeJob(msg.Data())
	p.resolveID(j, parsed)
	if j.prof == nil {
		p.carry(sendCtx, j, p.decide(j, Outcome{Kind: Invalid, Reason: contract.ReasonInvalidJob,
			Message: fmt.Sprintf("no profile %q is configured on this worker (subject %s): publish on mail.send.<profile> for a configured profile", j.profile, msg.Subject())}))
		return
	}
	if decodeErr != nil {
		reason := contract.ReasonInvalidJob
		var inv *contract.InvalidError
		if errors.As(decodeErr, &inv) && inv.Reason != "" {
			reason = inv.Reason
		}
		p.carry(sendCtx, j, p.decide(j, Outcome{Kind: Invalid, Reason: reason, Message: "invalid job: " + decodeErr.Error()}))
		return
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
		if !p.readState(sendCtx, j) {
			return
		}
	}
	a, ok := p.arrival(sendCtx, j)
	if !ok {
		return
	}
	if a.Kind != Send {
		p.carry(sendCtx, j, a)
		return
	}
	if o, ok := p.checkSize(sendCtx, j); !ok {
		if o.Kind != 0 {
			p.carry(sendCtx, j, p.decide(j, o))
		}
		return
	}
	if !p.checked(sendCtx, j) {
		return
	}
	p.paceAndSend(stop, sendCtx, j)
}

// checkSize holds j to its profile's maximum message size, as Exchange
// counts it (contract.MessageSize: the whole message, attachments
// base64-encoded), before any Graph call and any upload: past it Exchange
// refuses the mail (ErrorMessageSizeExceeded, in a draft's case only when
// the upload has crossed the limit), after the upload has spent the
// mailbox's 5-minute upload budget. ok is false when j must not be sent: o
// is then the Invalid outcome to carry, or the zero Outcome when the object
// store was out of reach (j is already put back).
func (p *Pool) checkSize(ctx context.Context, j *job) (o Outcome, ok bool) {
	if j.state.Draft != nil {
		// Checked before its draft was created; the draft may have been
		// sent since, which only a look-up can tell: never dead-letter it
		// for a limit that changed in between.
		return Outcome{}, true
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
		p.unreachable(ctx, j, "read attachment sizes from the object store", storeErr)
		return Outcome{}, false
	}
	if n <= limit {
		return Outcome{}, true
	}
	return Outcome{Kind: Invalid, Reason: contract.ReasonMessageTooLarge, Message: fmt.Sprintf(
		"the message is about %s as Exchange counts it (attachments base64-encoded, about 33%% larger than the files), "+
			"over profiles.%s.maxMessageSize, %s: Exchange would refuse it (ErrorMessageSizeExceeded). "+
			"Send smaller attachments, or raise the sending mailbox's MaxSendSize (Set-Mailbox, at most 150 MB) and maxMessageSize with it",
		contract.FormatMessageSize(n), j.profile, contract.FormatMessageSize(limit))}, false
}

// checked asks the sender (Checker) to refuse what j's path cannot send
// before the mailbox's recipient budget is charged and before any content
// is loaded; false when j was refused (and dead-lettered).
func (p *Pool) checked(ctx context.Context, j *job) bool {
	c, ok := p.sender.(Checker)
	if !ok {
		return true
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	err := c.Check(opCtx, j.profile, j.job)
	cancel()
	if err == nil {
		return true
	}
	se := contract.AsSendError(err)
	if se.Class != contract.ClassPermanent {
		return true // the send meets it again, and retries
	}
	if !j.stateRead { // a duplicate is suppressed, not dead-lettered
		if !p.readState(ctx, j) {
			return false
		}
		if a := p.decide(j, p.arrived(j)); a.Kind != Send {
			p.carry(ctx, j, a)
			return false
		}
	}
	p.carry(ctx, j, p.decide(j, Outcome{Kind: Failed, Err: se}))
	return false
}

// refundRecipients gives back the recipients j's admission took when its
// send cannot have reached Graph (refused before the call, deferred or put
// back after the admission, a definite 4xx): only a send that may have been
// delivered counts against the mailbox's 24-hour budget.
func (p *Pool) refundRecipients(ctx context.Context, j *job) {
	if j.rcpt == 0 || j.mayHaveSent {
		return
	}
	l, toLedger := p.pacer.refund(j.from, j.rcpt, j.rcptHour)
	j.rcpt = 0
	if !toLedger {
		return
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	if _, _, err := p.broker.Ledger.Lease(opCtx, l); err != nil {
		p.log.Warn().Str("jobId", j.id).Err(err).Int("recipients", l.GiveBack).Msg("could not give unsent recipients back to the ledger; they age out")
	}
}

// mayHaveReachedExchange reports whether a failed send may have delivered
// the mail, and so counts against the mailbox's recipient budget: an
// ambiguous outcome, or a 5xx or 429 of sendMail or of a draft's send (per
// Microsoft staff a 429 is not strictly proof of non-delivery:
// docs/microsoft.md). The draft flow's other calls (create, attach, upload,
// look-up) send nothing.
func mayHaveReachedExchange(se *contract.SendError) bool {
	switch {
	case se.Ambiguous:
		return true
	case se.Op != "" && se.Op != contract.OpSendDraft:
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

// readState loads j's state; false when the broker failed (the job is put back).
func (p *Pool) readState(ctx context.Context, j *job) bool {
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	st, rev, err := p.broker.States.Get(opCtx, j.profile, j.id)
	cancel()
	if err != nil && !errors.Is(err, contract.ErrNoState) {
		p.unreachable(ctx, j, "read job state", err)
		return false
	}
	p.adopt(j, st, rev, err == nil)
	j.fresh = false
	return true
}

// readLatest loads j's state from the store's leader; false when the broker
// failed (the job is put back).
func (p *Pool) readLatest(ctx context.Context, j *job) bool {
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	st, rev, err := p.broker.States.Latest(opCtx, j.profile, j.id)
	cancel()
	if err != nil && !errors.Is(err, contract.ErrNoState) {
		p.unreachable(ctx, j, "read job state", err)
		return false
	}
	p.adopt(j, st, rev, err == nil)
	return true
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
func (p *Pool) arrival(ctx context.Context, j *job) (Action, bool) {
	a := p.decide(j, p.arrived(j))
	if a.Kind == SuppressDuplicate && !j.fresh {
		if !p.readLatest(ctx, j) {
			return Action{}, false
		}
		a = p.decide(j, p.arrived(j))
	}
	return a, true
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
func (p *Pool) paceAndSend(stop, sendCtx context.Context, j *job) {
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
			p.unreachable(sendCtx, j, "lease recipients from the shared ledger", err)
			return
		}
	}
	if adm.Defer > 0 {
		p.paced(sendCtx, j, adm.Defer, adm.Cause)
		return
	}
	j.admittedAt, j.uploadBytes = adm.At, upload
	// Every way out from here that cannot have reached Graph gives the
	// recipients back.
	j.rcpt, j.rcptHour = rcpt, adm.Hour
	defer p.refundRecipients(sendCtx, j)
	hb := p.keepAlive(j.msg)
	defer hb.Stop()
	if err := p.pacer.acquire(stop, j.from, adm.At); err != nil {
		_ = j.msg.Nak()
		return
	}
	select {
	case p.sends <- struct{}{}:
	case <-stop.Done():
		p.pacer.release(j.from)
		_ = j.msg.Nak()
		return
	}
	// The slots bound Graph requests: they are given back as soon as the
	// call returns, not after the state write, ack and event that follow.
	j.releaseSlots = sync.OnceFunc(func() {
		<-p.sends
		p.pacer.release(j.from)
	})
	defer j.releaseSlots()
	if stop.Err() != nil {
		_ = j.msg.Nak()
		return
	}
	// Graph may have answered another job of this mailbox with Retry-After
	// while this one waited for its slots: sending now would land inside
	// that window.
	if d := p.pacer.pausedFor(j.from); d > 0 {
		p.paced(sendCtx, j, d, CauseRetryAfter)
		return
	}
	p.send(sendCtx, j)
}

// paced defers j for the mailbox. A job whose state was not read reads it
// first: a duplicate is suppressed at once, not after waiting for the pace.
func (p *Pool) paced(ctx context.Context, j *job, d time.Duration, cause Cause) {
	if !j.stateRead {
		if !p.readState(ctx, j) {
			return
		}
		a, ok := p.arrival(ctx, j)
		if !ok {
			return
		}
		if a.Kind != Send {
			p.carry(ctx, j, a)
			return
		}
	}
	p.carry(ctx, j, p.decide(j, Outcome{Kind: Paced, Delay: d, Cause: cause}))
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
// and carries out what decide makes of the result.
func (p *Pool) send(sendCtx context.Context, j *job) {
	if rs, ok := p.sender.(ResumableSender); ok && j.state.Draft == nil {
		opCtx, cancel := context.WithTimeout(sendCtx, opTimeout)
		if rs.UsesDraft(opCtx, j.profile, j.job) {
			j.state.Draft = &contract.Draft{} // stored with `sending` by mark
		}
		cancel()
	}
	if !p.mark(sendCtx, j) {
		return
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
	p.m.SendDuration.WithLabelValues(j.profile).Observe(j.elapsed.Seconds())

	if err == nil {
		p.m.GraphRequests.WithLabelValues(j.profile, statusLabel(res.Status)).Inc()
		j.graph = &contract.GraphInfo{Status: res.Status, RequestID: res.RequestID, ClientRequestID: res.ClientRequestID,
			Date: contract.GraphDate(res.Date), EarlierCalls: res.EarlierCalls}
		j.lookup = res.Lookup
		p.carry(sendCtx, j, p.decide(j, Outcome{Kind: Sent, RetryAfter: res.RetryAfter}))
		return
	}
	var pending *contract.PendingError
	if errors.As(err, &pending) {
		// Not a failure: a draft's send may have gone out and the look-up
		// cannot tell yet. decide says when to look again, or what to do
		// once the transit window has passed.
		p.carry(sendCtx, j, p.decide(j, Outcome{Kind: Pending, Pending: pending}))
		return
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
	p.carry(sendCtx, j, p.decide(j, Outcome{Kind: kind, Err: se}))
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

// deleteDraft deletes the job's draft when it was never sent, before the
// job is dead-lettered, and forgets it (a replay then starts a new one). A
// draft that cannot be deleted is kept in the state and logged; `mailworker
// check` reports drafts left behind.
func (p *Pool) deleteDraft(ctx context.Context, j *job) {
	d := j.state.Draft
	dd, ok := p.sender.(DraftDeleter)
	if d == nil || d.SendAt != nil || !ok {
		return
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.SendTimeout)
	defer cancel()
	if err := dd.DeleteDraft(opCtx, j.profile, j.id, d); err != nil {
		p.m.DraftsLeft.WithLabelValues(j.metricProfile()).Inc()
		p.log.Warn().Str("jobId", j.id).Str("profile", j.profile).Err(err).Msg("could not delete the job's draft; it is left in the mailbox's Drafts")
		return
	}
	j.state.Draft = nil
}

// mark stores state `sending` with a compare-and-set, claiming the job for
// this delivery. When another delivery moved the job on first, the state is
// read again and decided on at once (a duplicate is suppressed without a
// detour); false when the job is not to be sent now.
func (p *Pool) mark(ctx context.Context, j *job) bool {
	for try := 0; ; try++ {
		st := j.state
		st.State = contract.StateSending
		st.Profile = j.profile
		st.UpdatedAt = p.clock.Now()
		err := p.store(ctx, j, st, opTimeout, nil)
		switch {
		case err == nil:
			j.marked = true
			return true
		case errors.Is(err, errMoved) && try == 0:
			// j holds the state as the leader has it now.
			if a := p.decide(j, p.arrived(j)); a.Kind != Send {
				p.carry(ctx, j, a)
				return false
			}
		case errors.Is(err, errMoved):
			// Moved on twice under us: look again shortly.
			p.carry(ctx, j, Action{Kind: Defer, Delay: time.Second, Cause: CauseBusy, Message: "job state changed concurrently"})
			return false
		default:
			p.unreachable(ctx, j, "write job state", err)
			return false
		}
	}
}

// unreachable carries out the Unreachable outcome: the broker failed us.
func (p *Pool) unreachable(ctx context.Context, j *job, op string, err error) {
	p.log.Error().Str("jobId", j.id).Str("profile", j.profile).Err(err).Msgf("%s failed; job put back", op)
	p.carry(ctx, j, p.decide(j, Outcome{Kind: Unreachable}))
}

// carry carries out one action: the only place that spends an attempt, and
// the only place that acks, naks or terminates after a decision.
func (p *Pool) carry(ctx context.Context, j *job, a Action) {
	// Recipients of a send that cannot have reached Graph go back before the
	// outcome is recorded: whoever sees the outcome sees the budget as it is
	// (a no-op when nothing was admitted; handle's deferred call is the
	// fallback for the ways out that carry nothing).
	p.refundRecipients(ctx, j)
	if a.SpendsAttempt {
		j.state.Attempts++
	}
	if a.Stopped {
		j.state.Stops++
	}
	if a.Ambiguous {
		j.state.Ambiguous = true
		p.m.Ambiguous.WithLabelValues(j.metricProfile()).Inc()
	}
	if a.Pause > 0 && j.from != "" {
		p.pacer.pause(j.from, a.Pause) // the mailbox was told to wait
	}
	if a.Lookup != "" {
		j.lookup = a.Lookup
	}
	if a.ResendDraft && j.state.Draft != nil {
		// Proven unsent (decide): the next attempt sends the draft again.
		d := *j.state.Draft
		d.SendAt = nil
		j.state.Draft = &d
	}
	switch a.Kind {
	case AckSent:
		p.sent(ctx, j)
	case DeadLetter:
		p.deleteDraft(ctx, j)
		p.deadLetter(ctx, j, a.Reason, a.Message)
	case Retry:
		j.state.State = contract.StateRetrying
		j.state.LastError = &contract.ErrorInfo{Reason: a.Reason, Message: a.Message}
		// A failed write is logged; the retry is scheduled all the same (the
		// next delivery then sees `sending` and treats the attempt as lost).
		if !p.putState(ctx, j) {
			return
		}
		retryAt := p.clock.Now().Add(a.Delay)
		reason := a.Reason
		p.m.Retries.WithLabelValues(j.profile, string(reason)).Inc()
		p.later(ctx, j, a.Delay)
		p.emit(ctx, j, contract.Event{Event: contract.EventRetrying, Graph: j.graph, RetryAt: &retryAt,
			Error: &contract.ErrorInfo{Reason: reason, Message: a.Message}, Ambiguous: a.Ambiguous,
			LatencyMs: j.elapsed.Milliseconds()})
		p.outcomeLog(zerolog.WarnLevel, j, "retrying").Str("error", a.Message).Dur("delay", a.Delay).Bool("ambiguous", a.Ambiguous).Send()
	case Defer:
		if j.marked {
			// The state says `sending`: say what it is now.
			j.state.State = contract.StateDeferred
			if !p.putState(ctx, j) {
				return
			}
		}
		if a.Cause.throttle() {
			p.m.ThrottleDeferrals.WithLabelValues(j.metricProfile(), string(a.Cause)).Inc()
		}
		at := p.clock.Now().Add(a.Delay)
		if p.later(ctx, j, a.Delay) && a.Cause == CausePace {
			p.plans.add(j.from, j.profile, j.id, at)
		}
		var graph *contract.GraphInfo
		if a.Cause == CauseRetryAfter && j.marked {
			graph = j.graph
		}
		p.emit(ctx, j, contract.Event{Event: contract.EventDeferred, Graph: graph, RetryAt: &at, Cause: string(a.Cause)})
		p.outcomeLog(zerolog.DebugLevel, j, "deferred").Str("why", a.Message).Str("cause", string(a.Cause)).Dur("delay", a.Delay).Send()
	case SuppressDuplicate:
		_ = j.msg.Ack()
		p.m.Jobs.WithLabelValues(j.profile, string(contract.EventDuplicateSuppressed), "").Inc()
		p.emit(ctx, j, contract.Event{Event: contract.EventDuplicateSuppressed})
		p.outcomeLog(zerolog.InfoLevel, j, "duplicate_suppressed").Str("why", a.Message).Send()
	case FinishAgain:
		p.finishAgain(ctx, j)
	case PutBack:
		if j.marked {
			j.state.State = contract.StateRetrying
			if !p.putState(context.WithoutCancel(ctx), j) {
				return
			}
		}
		if a.Delay > 0 {
			_ = j.msg.NakWithDelay(a.Delay)
		} else {
			_ = j.msg.Nak()
			p.log.Info().Str("jobId", j.id).Bool("ambiguous", a.Ambiguous).Msg("send cancelled by shutdown; job put back")
		}
	default:
		p.log.Error().Str("jobId", j.id).Str("action", a.Kind.String()).Msg("no way to carry out this action; job put back")
		_ = j.msg.NakWithDelay(p.retry.Broker())
	}
}

// scheduleMin is the shortest wait that becomes a message schedule: the
// schedule's resolution is a second.
const scheduleMin = time.Second

// later gives j back to the queue for d. A wait of a second or more becomes a
// message schedule and the delivery is acked, so that a deferral or a retry,
// however long and however many, holds no ack-pending slot of the consumer
// that every profile shares. Shorter waits, and any wait when the schedule
// cannot be stored, are naks with a delay. It reports whether the job was
// scheduled.
func (p *Pool) later(ctx context.Context, j *job, d time.Duration) bool {
	if d < scheduleMin || p.broker.Scheduler == nil {
		_ = j.msg.NakWithDelay(d)
		return false
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	err := p.broker.Scheduler.Schedule(opCtx, j.profile, j.id, j.msg.Data(), j.msg.Header(contract.HeaderReplay), j.origin, p.clock.Now().Add(d))
	cancel()
	if err != nil {
		p.log.Warn().Str("jobId", j.id).Err(err).Msg("could not schedule the job; it waits holding its delivery instead")
		_ = j.msg.NakWithDelay(d)
		return false
	}
	_ = j.msg.Ack()
	return true
}

func (p *Pool) sent(ctx context.Context, j *job) {
	j.state.State = contract.StateSent
	j.state.LastError = nil
	j.state.Graph = j.graph
	j.state.UpdatedAt = p.clock.Now()
	j.state.Seq = j.seq
	if !p.finish(ctx, j) {
		return
	}
	p.m.Jobs.WithLabelValues(j.profile, string(contract.EventSent), "").Inc()
	p.observeLatency(j)
	ev := p.outcomeLog(zerolog.InfoLevel, j, "sent").
		Bool("possibleDuplicate", j.state.PossibleDuplicate()).Dur("latency", j.elapsed)
	if j.lookup != "" {
		ev = ev.Str("lookup", j.lookup) // found sent by a look-up: nothing sent again
		p.m.DraftLookups.WithLabelValues(j.profile, j.lookup).Inc()
	}
	ev.Send()
}

// internetMessageID is the Message-ID of a job sent through a draft, "" otherwise.
func internetMessageID(st contract.JobState) string {
	if st.Draft == nil {
		return ""
	}
	return st.Draft.InternetMessageID
}

// deadLetter records the job in MAIL_DLQ with its original bytes, then
// terminates the delivery. If the record cannot be written the job is put back
// instead: nothing is dropped.
func (p *Pool) deadLetter(ctx context.Context, j *job, reason contract.Reason, message string) {
	now := p.clock.Now()
	// The generation names the record (its Nats-Msg-Id): a replay's job that
	// is dead-lettered before its state was read (invalid again) takes it
	// from the replay's Mail-Replay header, or its record would carry the
	// original's id and be dropped inside the duplicate window.
	gen := j.state.Generation
	if g, err := strconv.Atoi(j.msg.Header(contract.HeaderReplay)); err == nil && g > gen {
		gen = g
	}
	rec := contract.DeadLetter{JobID: j.id, Profile: j.profile, Reason: reason, Error: message,
		Attempts: j.state.Attempts, FailedAt: now, Generation: gen, Body: j.msg.Data(),
		Ambiguous: j.state.PossibleDuplicate()}
	if j.graph != nil {
		rec.GraphRequestID = j.graph.RequestID
		rec.GraphCalls = append(append([]contract.GraphCall(nil), j.graph.EarlierCalls...), contract.GraphCall{
			Status: j.graph.Status, RequestID: j.graph.RequestID, ClientRequestID: j.graph.ClientRequestID, Date: j.graph.Date})
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	err := p.broker.DeadLetters.Put(opCtx, rec)
	cancel()
	if err != nil {
		p.unreachable(ctx, j, "write dead letter", err)
		return
	}
	j.state.State = contract.StateDeadLettered
	j.state.LastError = &contract.ErrorInfo{Reason: reason, Message: message}
	j.state.Graph = j.graph
	j.state.UpdatedAt = now
	j.state.Seq = j.seq
	if !p.finish(ctx, j) {
		return
	}
	p.m.Jobs.WithLabelValues(j.metricProfile(), string(contract.EventDeadLettered), string(reason)).Inc()
	p.observeLatency(j)
	p.outcomeLog(zerolog.WarnLevel, j, "dead_lettered").Str("reason", string(reason)).Str("error", message).Send()
}

func (p *Pool) emit(ctx context.Context, j *job, ev contract.Event) {
	ev.JobID, ev.Profile, ev.Attempt = j.id, j.profile, j.state.Attempts
	ev.At = p.clock.Now()
	if j.job != nil {
		ev.Metadata = j.job.Metadata
	}
	// Asynchronous: the job's queue action is already taken, and the ack is
	// checked by watchEvents, so the handler does not wait a round trip.
	wait, err := p.broker.Events.PublishAsync(ev)
	if err == nil {
		p.events <- pendingEvent{wait: wait, jobID: j.id, event: ev.Event}
		return
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	if err := p.broker.Events.Publish(opCtx, ev); err != nil {
		p.log.Error().Str("jobId", j.id).Str("event", string(ev.Event)).Err(err).Msg("publish status event failed")
	}
}

// pendingEvent is a status event published without waiting for its ack.
type pendingEvent struct {
	wait  func(time.Duration) error
	jobID string
	event contract.EventType
}

// watchEvents logs status events the server did not store, until events is
// closed and every pending ack has been seen (or timed out).
func (p *Pool) watchEvents() {
	for pe := range p.events {
		if err := pe.wait(opTimeout); err != nil {
			p.log.Error().Str("jobId", pe.jobID).Str("event", string(pe.event)).Err(err).Msg("publish status event failed")
		}
	}
}

func (p *Pool) observeLatency(j *job) {
	if !j.published.IsZero() {
		p.m.JobLatency.WithLabelValues(j.metricProfile()).Observe(p.clock.Now().Sub(j.published).Seconds())
	}
}

func (p *Pool) outcomeLog(level zerolog.Level, j *job, outcome string) *zerolog.Event {
	e := p.log.WithLevel(level).Str("jobId", j.id).Str("profile", j.profile).Str("outcome", outcome).
		Int("attempt", j.state.Attempts)
	if j.from != "" {
		e = e.Str("from", j.from)
	}
	if g := j.graph; g != nil {
		e = e.Int("graphStatus", g.Status).Str("requestId", g.RequestID).Str("clientRequestId", g.ClientRequestID).Str("graphDate", g.Date)
		if len(g.EarlierCalls) > 0 {
			e = e.Interface("earlierCalls", g.EarlierCalls)
		}
	}
	if p.cfg.LogRecipients && j.job != nil {
		e = e.Strs("to", j.job.To).Strs("cc", j.job.Cc).Strs("bcc", j.job.Bcc)
	}
	return e
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
