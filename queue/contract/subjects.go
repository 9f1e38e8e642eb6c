package contract

import (
	"strconv"
	"strings"
)

// Names of the JetStream assets mailworker uses. Producers, workers and support
// tools agree on these; README.md ("Subjects, streams, buckets") describes them.
const (
	StreamJobs   = "MAIL_JOBS"
	StreamStatus = "MAIL_STATUS"
	StreamDLQ    = "MAIL_DLQ"
	// StreamAudit records support's actions (replay, purge, …): who, what,
	// when; subjects mail.audit.<profile>.
	StreamAudit  = "MAIL_AUDIT"
	ConsumerName = "mailworker"
	BucketState  = "MAIL_JOB_STATE"
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
	// job (mail.schedule.<profile>.<job-id>), in MAIL_JOBS. Only the worker
	// may publish there: a schedule fires into a job subject.
	ScheduleSubjectPrefix = "mail.schedule."
	StatusSubjectPrefix   = "mail.status."
	DLQSubjectPrefix      = "mail.dlq."
	AuditSubjectPrefix    = "mail.audit."
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
	// the MAIL_JOBS stream sequence of the producer's publish it comes from,
	// so that the job state can name the publish it is the outcome of
	// (JobState.Origin, what `send --wait` compares).
	HeaderOriginSeq = "Mail-Origin-Seq"
)

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

// ProfileFromSubject returns the profile of a job subject (mail.send.<profile>).
// It reports false for any other subject, or a profile that is not one token.
func ProfileFromSubject(subject string) (string, bool) {
	p, ok := strings.CutPrefix(subject, JobSubjectPrefix)
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
