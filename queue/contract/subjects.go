package contract

import (
	"strconv"
	"strings"
)

// Names of the JetStream assets mailworker uses. Producers, workers and support
// tools agree on these; README.md ("Subjects, streams, buckets") describes them.
const (
	// StreamJobsPrefix starts the name of each profile's ingress stream,
	// MAIL_JOBS_<profile> (JobsStream): subject mail.send.<profile>, the only
	// stream a producer writes to. It allows no message schedules, no
	// rollups, no per-message TTL, no deletes and no purges, so no header a
	// producer sends can touch another job; its duplicate window and limits
	// are the profile's own.
	StreamJobsPrefix = "MAIL_JOBS_"
	// StreamDefer holds the worker's deferrals (DeferStream): message
	// schedules on mail.schedule.<profile>.<job-id> that fire into
	// mail.due.<profile> of the same stream (a schedule's target must be in
	// its own stream). Only the worker writes it.
	StreamDefer = "MAIL_DEFER"
	// LegacyStreamJobs is the single job stream of releases before the
	// per-profile layout (mail.send.> and mail.schedule.>): provision refuses
	// to run beside it (docs/runbook.md, "Upgrading to per-profile streams").
	LegacyStreamJobs = "MAIL_JOBS"
	StreamStatus     = "MAIL_STATUS"
	StreamDLQ        = "MAIL_DLQ"
	// StreamAudit records support's actions (replay, purge, …): who, what,
	// when; subjects mail.audit.<profile>.
	StreamAudit = "MAIL_AUDIT"
	// ConsumerName is the durable pull consumer on each MAIL_JOBS_<profile>,
	// shared by all worker replicas; DueConsumer names the profile's consumer
	// of mail.due.<profile> on MAIL_DEFER.
	ConsumerName = "mailworker"
	BucketState  = "MAIL_JOB_STATE"
	// BucketDeferred is the worker-only object store that holds the body of
	// a deferred job too large to wait inside its message schedule
	// (headers + body over max_payload): the schedule then carries
	// HeaderDeferredRef, the object's name, and the object is deleted once
	// the job has its outcome.
	BucketDeferred = "MAIL_DEFERRED"
	// BucketAttachments is the prefix of the per-profile attachment object
	// stores: see AttachmentsBucket.
	BucketAttachments = "MAIL_ATTACHMENTS"
	// BucketWorkers holds one key per running worker replica (heartbeats).
	BucketWorkers = "MAIL_WORKERS"
	// BucketPacing holds one key per sending mailbox: the recipients leased
	// per hour, shared by all replicas.
	BucketPacing = "MAIL_PACING"

	JobSubjectPrefix = "mail.send."
	// ScheduleSubjectPrefix: the worker's message schedules, one subject per
	// job (mail.schedule.<profile>.<job-id>), in MAIL_DEFER. Only the worker
	// may publish there.
	ScheduleSubjectPrefix = "mail.schedule."
	// DueSubjectPrefix: where a schedule fires, mail.due.<profile> in
	// MAIL_DEFER, consumed by DueConsumer(profile).
	DueSubjectPrefix    = "mail.due."
	StatusSubjectPrefix = "mail.status."
	DLQSubjectPrefix    = "mail.dlq."
	AuditSubjectPrefix  = "mail.audit."
)

// Message headers used on job and dead-letter messages.
const (
	HeaderMsgID          = "Nats-Msg-Id"
	HeaderJobID          = "Mail-Job-Id"
	HeaderReplay         = "Mail-Replay"
	HeaderReason         = "Mail-Reason"
	HeaderError          = "Mail-Error"
	HeaderAttempts       = "Mail-Attempts"
	HeaderFailedAt       = "Mail-Failed-At"
	HeaderGraphRequestID = "Mail-Graph-Request-Id"
	// HeaderGraphCalls on a dead letter: every Graph call of the last
	// attempt, "<status> <request-id> <client-request-id> <date>" separated
	// by "; " (a 401, then the call again after a token refresh).
	HeaderGraphCalls = "Mail-Graph-Calls"
	HeaderProfile    = "Mail-Profile"
	// HeaderAmbiguous ("true") on a dead letter: a send may have delivered
	// the mail although Graph never said so.
	HeaderAmbiguous = "Mail-Ambiguous"
	// HeaderOriginSeq on a job the worker put back by a message schedule:
	// the MAIL_JOBS_<profile> stream sequence of the producer's publish it comes from,
	// so that the job state can name the publish it is the outcome of
	// (JobState.Origin, what `send --wait` compares).
	HeaderOriginSeq = "Mail-Origin-Seq"
	// HeaderDeferredRef on a message schedule (and the due message it
	// fires): the name of the object in BucketDeferred that holds the job's
	// bytes; the message body is then empty.
	HeaderDeferredRef = "Mail-Deferred-Ref"
)

// JobsStream is the ingress stream of profile, MAIL_JOBS_<profile>.
func JobsStream(profile string) string { return StreamJobsPrefix + profile }

// DueConsumer is the durable consumer of profile's due deferrals on
// MAIL_DEFER (filter DueSubject(profile)).
func DueConsumer(profile string) string { return ConsumerName + "_" + profile }

// DueSubject is where profile's message schedules fire, in MAIL_DEFER.
func DueSubject(profile string) string { return DueSubjectPrefix + profile }

// JobSubject is the subject a job for profile is published on.
func JobSubject(profile string) string { return JobSubjectPrefix + profile }

// ScheduleSubject is the subject of the message schedule that puts a
// deferred job of profile back on JobSubject(profile).
func ScheduleSubject(profile, jobID string) string {
	return ScheduleSubjectPrefix + profile + "." + jobID
}

// StatusSubject is the subject of the status events of one job.
func StatusSubject(profile, jobID string) string { return StatusSubjectPrefix + profile + "." + jobID }

// DLQSubject is the subject dead-letter records of profile are stored on.
func DLQSubject(profile string) string { return DLQSubjectPrefix + profile }

// ProfileFromSubject returns the profile of a job subject (mail.send.<profile>,
// or mail.due.<profile> where a deferred job comes back). It reports false
// for any other subject, or a profile that is not one token.
func ProfileFromSubject(subject string) (string, bool) {
	p, ok := strings.CutPrefix(subject, JobSubjectPrefix)
	if !ok {
		p, ok = strings.CutPrefix(subject, DueSubjectPrefix)
	}
	if !ok || p == "" || strings.ContainsAny(p, ".*> ") {
		return "", false
	}
	return p, true
}

// FinalEventKey is the Nats-Msg-Id of the terminal event (sent,
// dead_lettered) of a job's state stored at revision rev of generation
// generation: the same for every publisher of that one outcome, so that it
// is stored once (queue.Events.PublishFinal).
func FinalEventKey(profile, jobID string, ev EventType, generation int, rev uint64) string {
	return profile + "." + jobID + "-" + string(ev) + "-g" + strconv.Itoa(generation) + "-r" + strconv.FormatUint(rev, 10)
}
