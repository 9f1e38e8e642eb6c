package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

// Config sizes the JetStream assets. The zero value plus WithDefaults is usable.
type Config struct {
	Replicas     int           // 1 or 3 (default 1)
	JobsMaxAge   time.Duration // 0 = unlimited
	StatusMaxAge time.Duration // default 7*24h
	DLQMaxAge    time.Duration // 0 = unlimited
	StateTTL     time.Duration // default 7*24h
	// AttachmentsMaxAge is how long objectRef attachments are kept in
	// MAIL_ATTACHMENTS, default 30 days: long enough for retries, deferrals
	// and a replay from the DLQ, short enough that the store does not grow
	// for ever (nothing else deletes them).
	AttachmentsMaxAge time.Duration
	// AttachmentsMaxBytes caps each profile's attachment object store
	// (default DefaultAttachmentsMaxBytes; the stream's max_bytes, discard
	// new): a producer can fill its own store, never the server's disk.
	// Each store reserves replicas × this much of the account's max_file
	// (deploy/nats/accounts.conf).
	AttachmentsMaxBytes int64
	// AuditMaxAge is how long MAIL_AUDIT keeps support's recorded actions,
	// 0 = for ever (default).
	AuditMaxAge time.Duration
	// Profiles are the profiles served: each gets its own attachment object
	// store, AttachmentsBucket(profile).
	Profiles []string
	AckWait  time.Duration // consumers, default 60s
	// MaxAckPending is each profile's consumer capacity (its ingress
	// consumer and its due consumer each), default 1000: one profile's
	// backlog cannot take another's.
	MaxAckPending int
	// Jobs are the server-enforced limits of every profile's ingress stream
	// MAIL_JOBS_<profile>; ProfileJobs overrides them per profile (zero
	// fields take Jobs').
	Jobs        JobsLimits
	ProfileJobs map[string]JobsLimits
	// WorkersTTL is how long a replica counts as live after its last
	// heartbeat (KV MAIL_WORKERS), default 15s; workers beat every third of it.
	WorkersTTL time.Duration
}

// DefaultAttachmentsMaxBytes is the default cap of one profile's attachment
// object store: 1,000 MB.
const DefaultAttachmentsMaxBytes = 1000 * 1000 * 1000

// JobsLimits bound one profile's ingress stream; the server refuses a publish
// over them (the producer's publish fails), so one profile cannot fill the
// broker for the others.
type JobsLimits struct {
	// MaxMsgs is how many jobs may wait, default 100,000.
	MaxMsgs int64
	// MaxBytes is how many bytes of jobs may wait, default 512 MiB. A file
	// stream reserves its max_bytes from the account's (or server's)
	// JetStream file storage when it is created, so the sum over all
	// profiles must fit there (docs/operations.md, "Broker sizing").
	MaxBytes int64
	// MaxMsgSize is the largest job accepted, in bytes; 0 = the server's
	// max_payload.
	MaxMsgSize int32
	// MaxAckPending overrides Config.MaxAckPending for this profile.
	MaxAckPending int
}

// Default ingress stream limits of a profile (JobsLimits).
const (
	DefaultJobsMaxMsgs  = 100_000
	DefaultJobsMaxBytes = 512 << 20
)

// DuplicateWindow is the Nats-Msg-Id dedupe window of every stream (each
// profile's ingress stream has its own).
const DuplicateWindow = 2 * time.Minute

// JobsLimitsOf returns the limits of profile's ingress stream: its
// override, else the defaults.
func (c Config) JobsLimitsOf(profile string) JobsLimits {
	l, d := c.ProfileJobs[profile], c.Jobs
	if l.MaxMsgs == 0 {
		l.MaxMsgs = d.MaxMsgs
	}
	if l.MaxBytes == 0 {
		l.MaxBytes = d.MaxBytes
	}
	if l.MaxMsgSize == 0 {
		l.MaxMsgSize = d.MaxMsgSize
	}
	if l.MaxAckPending == 0 {
		l.MaxAckPending = d.MaxAckPending
	}
	if l.MaxAckPending == 0 {
		l.MaxAckPending = c.MaxAckPending
	}
	return l
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.StatusMaxAge == 0 {
		c.StatusMaxAge = 7 * 24 * time.Hour
	}
	if c.StateTTL == 0 {
		c.StateTTL = 7 * 24 * time.Hour
	}
	if c.AttachmentsMaxAge == 0 {
		c.AttachmentsMaxAge = 30 * 24 * time.Hour
	}
	if c.AttachmentsMaxBytes == 0 {
		c.AttachmentsMaxBytes = DefaultAttachmentsMaxBytes
	}
	if c.AckWait == 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 1000
	}
	if c.Jobs.MaxMsgs == 0 {
		c.Jobs.MaxMsgs = DefaultJobsMaxMsgs
	}
	if c.Jobs.MaxBytes == 0 {
		c.Jobs.MaxBytes = DefaultJobsMaxBytes
	}
	if c.WorkersTTL == 0 {
		c.WorkersTTL = 15 * time.Second
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Replicas != 1 && c.Replicas != 3:
		return fmt.Errorf("queue: config replicas: %d, want 1 or 3", c.Replicas)
	case c.JobsMaxAge < 0, c.StatusMaxAge < 0, c.DLQMaxAge < 0, c.AuditMaxAge < 0:
		return errors.New("queue: config stream max ages must not be negative")
	case c.StateTTL < 0:
		return errors.New("queue: config stateTTL must not be negative")
	case c.AttachmentsMaxAge < 0:
		return errors.New("queue: config attachmentsMaxAge must not be negative")
	case c.AttachmentsMaxBytes < 1<<20:
		return fmt.Errorf("queue: config attachmentsMaxBytes: %d, want at least 1 MiB", c.AttachmentsMaxBytes)
	case slices.ContainsFunc(c.Profiles, func(p string) bool { return !validBucketProfile(p) }):
		return errors.New("queue: config profiles: a profile name is letters, digits, - and _ only")
	case c.WorkersTTL < time.Second:
		return fmt.Errorf("queue: config workersTTL: %s, want at least 1s", c.WorkersTTL)
	case c.AckWait < time.Second:
		return fmt.Errorf("queue: config ackWait: %s, want at least 1s", c.AckWait)
	case c.MaxAckPending < 1:
		return fmt.Errorf("queue: config maxAckPending: %d, want at least 1", c.MaxAckPending)
	}
	for _, p := range c.Profiles {
		l := c.JobsLimitsOf(p)
		switch {
		case l.MaxMsgs < 1 && l.MaxMsgs != -1:
			return fmt.Errorf("queue: config profile %s jobs maxMsgs: %d, want at least 1 (or -1, unlimited)", p, l.MaxMsgs)
		case l.MaxBytes < 1 && l.MaxBytes != -1:
			return fmt.Errorf("queue: config profile %s jobs maxBytes: %d, want at least 1 (or -1, unlimited)", p, l.MaxBytes)
		case l.MaxMsgSize < 0:
			return fmt.Errorf("queue: config profile %s jobs maxMsgSize: %d, want 0 (max_payload) or more", p, l.MaxMsgSize)
		case l.MaxAckPending < 1:
			return fmt.Errorf("queue: config profile %s maxAckPending: %d, want at least 1", p, l.MaxAckPending)
		}
	}
	return nil
}

// ErrLegacyJobsStream is returned by Provision while the single stream
// MAIL_JOBS of older releases exists: its subjects (mail.send.>) overlap every
// profile's ingress stream, and its message schedules are what producers
// could abuse. Drain it and delete it first (docs/runbook.md, "Upgrading to
// per-profile streams").
var ErrLegacyJobsStream = errors.New("queue: stream MAIL_JOBS of an older release (one stream for every profile, mail.send.> and mail.schedule.>) still exists: " +
	"drain it and delete it, then provision again (docs/runbook.md, \"Upgrading to per-profile streams\")")

// ErrIncompatible is returned (wrapped, naming the asset and field) when an
// existing asset's config cannot be brought in line without recreating it.
var ErrIncompatible = errors.New("queue: existing asset has an incompatible config")

func incompatible(asset, field string, have, want any) error {
	return fmt.Errorf("%w: %s %s is %v, want %v (recreate or migrate it by hand)", ErrIncompatible, asset, field, have, want)
}

// jobsStreamConfig is profile's ingress stream: the only stream a producer
// writes. Every JetStream feature a header can switch on is off (message
// schedules, rollups, per-message TTL, counters, atomic and fast batches) and
// deletes and purges are denied, so whatever headers a producer sends, a
// publish can only add its own job or be refused (DESIGN.md, "Tenancy and
// the trust boundary"). The duplicate window, the limits and the consumer
// are the profile's own: Nats-Msg-Id = the job id is safe, and a full
// profile refuses its own publishes (discard new) without touching another.
func jobsStreamConfig(c Config, profile string) jetstream.StreamConfig {
	l := c.JobsLimitsOf(profile)
	dup := DuplicateWindow
	if c.JobsMaxAge > 0 && dup > c.JobsMaxAge {
		dup = c.JobsMaxAge
	}
	return jetstream.StreamConfig{
		Name: contract.JobsStream(profile), Subjects: []string{contract.JobSubject(profile)},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Replicas: c.Replicas, MaxAge: c.JobsMaxAge,
		Duplicates: dup, Discard: jetstream.DiscardNew, MaxMsgs: l.MaxMsgs, MaxBytes: l.MaxBytes, MaxMsgSize: maxMsgSize(l.MaxMsgSize),
		DenyDelete: true, DenyPurge: true,
		Description: "mailworker: mail jobs of profile " + profile + ", " + contract.JobSubject(profile) + " (producers write here only)",
	}
}

// maxMsgSize is the stream setting of a JobsLimits.MaxMsgSize: 0 (the
// server's max_payload) is -1.
func maxMsgSize(n int32) int32 {
	if n == 0 {
		return -1
	}
	return n
}

// deferStreamConfig is MAIL_DEFER, the worker's own: message schedules on
// mail.schedule.<profile>.<job-id> fire into mail.due.<profile>. Schedules
// need rollups, which is why no producer may write here.
func deferStreamConfig(c Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name: contract.StreamDefer, Subjects: []string{contract.ScheduleSubjectPrefix + ">", contract.DueSubjectPrefix + ">"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Replicas: c.Replicas, MaxAge: c.JobsMaxAge,
		Duplicates: DuplicateWindow, AllowMsgSchedules: true, AllowRollup: true,
		Description: "mailworker: deferred jobs (worker only): schedules on mail.schedule.<profile>.<job-id> fire into mail.due.<profile>",
	}
}

func streamConfigs(c Config) []jetstream.StreamConfig {
	scs := make([]jetstream.StreamConfig, 0, len(c.Profiles)+4)
	for _, p := range c.Profiles {
		scs = append(scs, jobsStreamConfig(c, p))
	}
	return append(scs, deferStreamConfig(c),
		jetstream.StreamConfig{
			Name: contract.StreamStatus, Subjects: []string{contract.StatusSubjectPrefix + ">"}, Retention: jetstream.LimitsPolicy,
			Storage: jetstream.FileStorage, Replicas: c.Replicas, MaxAge: c.StatusMaxAge, Duplicates: DuplicateWindow, AllowDirect: true,
			Description: "mailworker: status events, mail.status.<profile>.<job id>",
		},
		jetstream.StreamConfig{
			Name: contract.StreamDLQ, Subjects: []string{contract.DLQSubjectPrefix + ">"}, Retention: jetstream.LimitsPolicy,
			Storage: jetstream.FileStorage, Replicas: c.Replicas, MaxAge: c.DLQMaxAge, Duplicates: DuplicateWindow, AllowDirect: true,
			Description: "mailworker: dead letters, mail.dlq.<profile>",
		},
		jetstream.StreamConfig{
			Name: contract.StreamAudit, Subjects: []string{contract.AuditSubjectPrefix + ">"}, Retention: jetstream.LimitsPolicy,
			Storage: jetstream.FileStorage, Replicas: c.Replicas, MaxAge: c.AuditMaxAge, Duplicates: DuplicateWindow, AllowDirect: true,
			Description: "mailworker: support actions (who, what, when), mail.audit.<profile>",
		},
	)
}

// consumerConfigs are the durable pull consumers of profile: "mailworker" on
// its ingress stream and "mailworker_<profile>" on MAIL_DEFER for its due
// deferrals, each with the profile's own MaxAckPending.
func consumerConfigs(c Config, profile string) (jobs, due jetstream.ConsumerConfig) {
	base := jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: c.JobsLimitsOf(profile).MaxAckPending,
	}
	jobs, due = base, base
	jobs.Durable, jobs.FilterSubject = contract.ConsumerName, contract.JobSubject(profile)
	jobs.Description = "mailworker: jobs of profile " + profile + ", shared by all worker replicas"
	due.Durable, due.FilterSubject = contract.DueConsumer(profile), contract.DueSubject(profile)
	due.Description = "mailworker: due deferred jobs of profile " + profile + ", shared by all worker replicas"
	return jobs, due
}

// Provision creates every JetStream asset mailworker uses, or brings existing
// ones in line: per profile of cfg.Profiles the ingress stream
// MAIL_JOBS_<profile> with its consumer "mailworker", its due consumer
// "mailworker_<profile>" on MAIL_DEFER and its object store
// (AttachmentsBucket); MAIL_DEFER, MAIL_STATUS, MAIL_DLQ, MAIL_AUDIT, KV
// buckets MAIL_JOB_STATE, MAIL_WORKERS and MAIL_PACING and the object store
// MAIL_DEFERRED. It is idempotent. Updatable settings (max ages, limits,
// replicas, duplicate window, the features a producer's header could use,
// AckWait, MaxAckPending, MaxDeliver, bucket TTLs) are updated in place; a
// setting that cannot be (retention, storage, subjects, ack policy, filter,
// message schedules, TTLs or counters left on in an ingress stream) yields an
// error wrapping ErrIncompatible that names the asset and field. The single
// MAIL_JOBS of older releases yields ErrLegacyJobsStream.
func Provision(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	if _, err := js.Stream(ctx, contract.LegacyStreamJobs); err == nil {
		return ErrLegacyJobsStream
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("queue: look up stream %s: %w", contract.LegacyStreamJobs, err)
	}
	for _, sc := range streamConfigs(cfg) {
		if err := ensureStream(ctx, js, sc); err != nil {
			return err
		}
	}
	for _, p := range cfg.Profiles {
		jobs, due := consumerConfigs(cfg, p)
		if err := ensureConsumer(ctx, js, contract.JobsStream(p), jobs); err != nil {
			return err
		}
		if err := ensureConsumer(ctx, js, contract.StreamDefer, due); err != nil {
			return err
		}
	}
	if err := ensureDeferredStore(ctx, js, cfg); err != nil {
		return err
	}
	for _, kc := range kvConfigs(cfg) {
		if err := ensureKV(ctx, js, kc); err != nil {
			return err
		}
		if err := EnsureNoRollup(ctx, js, "KV_"+kc.Bucket); err != nil {
			return err
		}
	}
	for _, p := range cfg.Profiles {
		if err := ensureObjectStore(ctx, js, cfg, AttachmentsBucket(p)); err != nil {
			return err
		}
	}
	return nil
}

// validBucketProfile: a profile name fits an object store bucket name.
func validBucketProfile(p string) bool {
	if p == "" {
		return false
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := js.CreateStream(ctx, want); err != nil {
			return fmt.Errorf("queue: create stream %s: %w", want.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: look up stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	asset := "stream " + want.Name
	if have.Retention != want.Retention {
		return incompatible(asset, "retention", have.Retention, want.Retention)
	}
	if have.Storage != want.Storage {
		return incompatible(asset, "storage", have.Storage, want.Storage)
	}
	// A stream from an older release may lack subjects this one adds: add
	// them; any other difference is someone else's stream.
	if !slices.Equal(have.Subjects, want.Subjects) && !subset(have.Subjects, want.Subjects) {
		return incompatible(asset, "subjects", have.Subjects, want.Subjects)
	}
	ingress := strings.HasPrefix(want.Name, contract.StreamJobsPrefix)
	if ingress {
		// The server cannot switch these off once on (stream.go, "can not be
		// disabled"): a producer's headers would be honoured.
		switch {
		case have.AllowMsgSchedules:
			return incompatible(asset, "allow_msg_schedules (a producer's Nats-Schedule headers would be honoured)", true, false)
		case have.AllowMsgTTL:
			return incompatible(asset, "allow_msg_ttl (a producer's Nats-TTL would be honoured)", true, false)
		case have.AllowMsgCounter:
			return incompatible(asset, "allow_msg_counter (a producer's Nats-Incr would be honoured)", true, false)
		case have.Mirror != nil || len(have.Sources) > 0:
			return incompatible(asset, "mirror/sources", "set", "none")
		}
	}
	upd := have
	upd.MaxAge, upd.Replicas, upd.Duplicates = want.MaxAge, want.Replicas, want.Duplicates
	upd.Subjects = want.Subjects
	upd.AllowMsgSchedules = have.AllowMsgSchedules || want.AllowMsgSchedules
	upd.AllowRollup = have.AllowRollup || want.AllowRollup
	// Support and the console read MAIL_STATUS, MAIL_DLQ and MAIL_AUDIT by
	// batch direct gets (BrowseDirect): switched on in place in a stream of
	// an older release.
	upd.AllowDirect = have.AllowDirect || want.AllowDirect
	if ingress {
		upd.MaxMsgs, upd.MaxBytes, upd.MaxMsgSize, upd.Discard = want.MaxMsgs, want.MaxBytes, want.MaxMsgSize, want.Discard
		upd.DenyDelete, upd.DenyPurge, upd.AllowRollup = true, true, false
		upd.AllowAtomicPublish, upd.AllowBatchPublish = false, false
		if upd.MaxMsgSize == 0 {
			upd.MaxMsgSize = -1
		}
	}
	if upd.Duplicates > upd.MaxAge && upd.MaxAge > 0 {
		upd.Duplicates = upd.MaxAge
	}
	if sameStreamSettings(upd, have) {
		return nil
	}
	if _, err := js.UpdateStream(ctx, upd); err != nil {
		return fmt.Errorf("queue: update stream %s: %w", want.Name, err)
	}
	return nil
}

// sameStreamSettings compares the settings ensureStream manages.
func sameStreamSettings(a, b jetstream.StreamConfig) bool {
	return a.MaxAge == b.MaxAge && a.Replicas == b.Replicas && a.Duplicates == b.Duplicates &&
		slices.Equal(a.Subjects, b.Subjects) && a.AllowMsgSchedules == b.AllowMsgSchedules && a.AllowRollup == b.AllowRollup &&
		a.MaxMsgs == b.MaxMsgs && a.MaxBytes == b.MaxBytes && a.MaxMsgSize == b.MaxMsgSize && a.Discard == b.Discard &&
		a.DenyDelete == b.DenyDelete && a.DenyPurge == b.DenyPurge && a.AllowDirect == b.AllowDirect &&
		a.AllowAtomicPublish == b.AllowAtomicPublish && a.AllowBatchPublish == b.AllowBatchPublish
}

// subset reports whether every subject of a is in b.
func subset(a, b []string) bool {
	for _, s := range a {
		if !slices.Contains(b, s) {
			return false
		}
	}
	return true
}

func ensureConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig) error {
	c, err := js.Consumer(ctx, stream, want.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		if _, err := js.CreateConsumer(ctx, stream, want); err != nil {
			return fmt.Errorf("queue: create consumer %s on %s: %w", want.Durable, stream, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: look up consumer %s on %s: %w", want.Durable, stream, err)
	}
	have := c.CachedInfo().Config
	asset := "consumer " + stream + "/" + want.Durable
	if have.AckPolicy != want.AckPolicy {
		return incompatible(asset, "ack policy", have.AckPolicy, want.AckPolicy)
	}
	if have.FilterSubject != want.FilterSubject || len(have.FilterSubjects) > 0 {
		return incompatible(asset, "filter subject", filterOf(have), want.FilterSubject)
	}
	if have.DeliverSubject != "" {
		return incompatible(asset, "type", "push", "pull")
	}
	if have.AckWait == want.AckWait && have.MaxAckPending == want.MaxAckPending && have.MaxDeliver == want.MaxDeliver {
		return nil
	}
	upd := have
	upd.AckWait, upd.MaxAckPending, upd.MaxDeliver = want.AckWait, want.MaxAckPending, want.MaxDeliver
	if _, err := js.UpdateConsumer(ctx, stream, upd); err != nil {
		return fmt.Errorf("queue: update consumer %s: %w", asset, err)
	}
	return nil
}

func filterOf(c jetstream.ConsumerConfig) any {
	if len(c.FilterSubjects) > 0 {
		return c.FilterSubjects
	}
	if c.FilterSubject == "" {
		return `""`
	}
	return c.FilterSubject
}

func kvConfigs(c Config) []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{
			Bucket: contract.BucketState, Description: "mailworker: job state by job id",
			History: 1, TTL: c.StateTTL, Storage: jetstream.FileStorage, Replicas: c.Replicas,
		},
		{
			Bucket: contract.BucketWorkers, Description: "mailworker: live worker replicas (heartbeats)",
			History: 1, TTL: c.WorkersTTL, Storage: jetstream.FileStorage, Replicas: c.Replicas,
		},
		{
			Bucket: contract.BucketPacing, Description: "mailworker: recipients leased per sending mailbox and hour",
			History: 1, TTL: LedgerSpan, Storage: jetstream.FileStorage, Replicas: c.Replicas,
		},
	}
}

func ensureKV(ctx context.Context, js jetstream.JetStream, want jetstream.KeyValueConfig) error {
	kv, err := js.KeyValue(ctx, want.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if _, err := js.CreateKeyValue(ctx, want); err != nil {
			return fmt.Errorf("queue: create KV bucket %s: %w", want.Bucket, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: look up KV bucket %s: %w", want.Bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return fmt.Errorf("queue: KV bucket %s status: %w", want.Bucket, err)
	}
	si := st.(*jetstream.KeyValueBucketStatus).StreamInfo()
	if si.Config.Storage != want.Storage {
		return incompatible("KV bucket "+want.Bucket, "storage", si.Config.Storage, want.Storage)
	}
	if st.TTL() == want.TTL && st.History() == int64(want.History) && si.Config.Replicas == want.Replicas {
		return nil
	}
	if _, err := js.UpdateKeyValue(ctx, want); err != nil {
		return fmt.Errorf("queue: update KV bucket %s: %w", want.Bucket, err)
	}
	return nil
}

// EnsureNoRollup turns rollups off in stream name (a KV bucket's: nats.go
// creates and updates buckets with them on). The console writes job states
// on $KV.MAIL_JOB_STATE.> (and suppressions on $KV.MAIL_SUPPRESSION.>), and
// no NATS permission can refuse a header: in a stream that honours
// Nats-Rollup, one publish of `Nats-Rollup: all` would delete every
// profile's entries. Nothing needs a rollup there: an entry is deleted with
// a delete marker (States.Delete), which History 1 keeps as the key's only
// message.
func EnsureNoRollup(ctx context.Context, js jetstream.JetStream, name string) error {
	st, err := js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("queue: look up stream %s: %w", name, err)
	}
	cfg := st.CachedInfo().Config
	if !cfg.AllowRollup {
		return nil
	}
	cfg.AllowRollup = false
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("queue: turn rollups off in stream %s: %w", name, err)
	}
	return nil
}

// ensureDeferredStore creates MAIL_DEFERRED, the worker-only object store of
// the bodies of deferred jobs too large to wait inside their schedule. Its
// objects are deleted with the job's outcome; the TTL (the jobs' max age, if
// any) only clears what a crash left behind.
func ensureDeferredStore(ctx context.Context, js jetstream.JetStream, c Config) error {
	return ensureObjectStoreConfig(ctx, js, jetstream.ObjectStoreConfig{
		Bucket: contract.BucketDeferred, Description: "mailworker: bodies of deferred jobs too large for their schedule (worker only)",
		Storage: jetstream.FileStorage, Replicas: c.Replicas, TTL: c.JobsMaxAge, MaxBytes: -1,
	})
}

func ensureObjectStore(ctx context.Context, js jetstream.JetStream, c Config, bucket string) error {
	return ensureObjectStoreConfig(ctx, js, jetstream.ObjectStoreConfig{
		Bucket: bucket, Description: "mailworker: attachments by reference of one profile",
		Storage: jetstream.FileStorage, Replicas: c.Replicas, TTL: c.AttachmentsMaxAge, MaxBytes: c.AttachmentsMaxBytes,
	})
}

func ensureObjectStoreConfig(ctx context.Context, js jetstream.JetStream, want jetstream.ObjectStoreConfig) error {
	bucket := want.Bucket
	obs, err := js.ObjectStore(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if _, err = js.CreateObjectStore(ctx, want); err != nil {
			return fmt.Errorf("queue: create object store %s: %w", bucket, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: look up object store %s: %w", bucket, err)
	}
	st, err := obs.Status(ctx)
	if err != nil {
		return fmt.Errorf("queue: object store %s status: %w", bucket, err)
	}
	maxBytes := int64(-1)
	if bs, ok := st.(*jetstream.ObjectBucketStatus); ok && bs.StreamInfo() != nil {
		maxBytes = bs.StreamInfo().Config.MaxBytes
	}
	if st.TTL() == want.TTL && st.Replicas() == want.Replicas && maxBytes == want.MaxBytes {
		return nil
	}
	if _, err := js.UpdateObjectStore(ctx, want); err != nil {
		return fmt.Errorf("queue: update object store %s: %w", bucket, err)
	}
	return nil
}

// Queue is a handle on the provisioned assets.
type Queue struct {
	States *States
	Events *Events
	// Workers counts live replicas; Pacing is the shared recipient ledger.
	Workers     *Workers
	Pacing      *Pacing
	DLQ         *DLQ
	Attachments *Attachments
	Audit       *Audit
	// Schedules holds deferred jobs in MAIL_DEFER until they are due.
	Schedules *Schedules

	js jetstream.JetStream
}

// Open binds to the existing assets; it creates nothing. A missing asset is
// an error that says to run `mailworker provision`.
func Open(ctx context.Context, js jetstream.JetStream) (*Queue, error) {
	missing := func(what string, err error) error {
		return fmt.Errorf("queue: %s: %w (run `mailworker provision`)", what, err)
	}
	for _, name := range []string{contract.StreamDefer, contract.StreamStatus, contract.StreamDLQ, contract.StreamAudit} {
		if _, err := js.Stream(ctx, name); err != nil {
			return nil, missing("stream "+name, err)
		}
	}
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return nil, missing("KV bucket "+contract.BucketState, err)
	}
	stateStream, err := js.Stream(ctx, "KV_"+contract.BucketState)
	if err != nil {
		return nil, missing("KV bucket "+contract.BucketState, err)
	}
	workersKV, err := js.KeyValue(ctx, contract.BucketWorkers)
	if err != nil {
		return nil, missing("KV bucket "+contract.BucketWorkers, err)
	}
	workersStream, err := js.Stream(ctx, "KV_"+contract.BucketWorkers)
	if err != nil {
		return nil, missing("KV bucket "+contract.BucketWorkers, err)
	}
	pacingKV, err := js.KeyValue(ctx, contract.BucketPacing)
	if err != nil {
		return nil, missing("KV bucket "+contract.BucketPacing, err)
	}
	q := &Queue{js: js, States: &States{kv: kv, stream: stateStream, js: js}, Events: &Events{js: js}, Attachments: &Attachments{js: js},
		Audit:   &Audit{js: js},
		Workers: &Workers{kv: workersKV, stream: workersStream}, Pacing: &Pacing{kv: pacingKV, js: js}}
	q.DLQ = &DLQ{js: js, states: q.States, events: q.Events}
	q.Schedules = &Schedules{js: js}
	return q, nil
}
