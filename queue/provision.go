package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	Profiles      []string
	AckWait       time.Duration // consumer, default 60s
	MaxAckPending int           // consumer, default 1000
	// WorkersTTL is how long a replica counts as live after its last
	// heartbeat (KV MAIL_WORKERS), default 15s; workers beat every third of it.
	WorkersTTL time.Duration
}

// DefaultAttachmentsMaxBytes is the default cap of one profile's attachment
// object store: 1,000 MB.
const DefaultAttachmentsMaxBytes = 1000 * 1000 * 1000

// DuplicateWindow is the Nats-Msg-Id dedupe window of every stream.
const DuplicateWindow = 2 * time.Minute

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
	return nil
}

// ErrIncompatible is returned (wrapped, naming the asset and field) when an
// existing asset's config cannot be brought in line without recreating it.
var ErrIncompatible = errors.New("queue: existing asset has an incompatible config")

func incompatible(asset, field string, have, want any) error {
	return fmt.Errorf("%w: %s %s is %v, want %v (recreate or migrate it by hand)", ErrIncompatible, asset, field, have, want)
}

func streamConfigs(c Config) []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name: contract.StreamJobs, Subjects: []string{contract.JobSubjectPrefix + ">", contract.ScheduleSubjectPrefix + ">"},
			Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Replicas: c.Replicas, MaxAge: c.JobsMaxAge,
			Duplicates: DuplicateWindow, AllowMsgSchedules: true,
			Description: "mailworker: mail jobs, mail.send.<profile>; deferred jobs wait as message schedules on mail.schedule.<profile>.<job-id>",
		},
		{
			Name: contract.StreamStatus, Subjects: []string{contract.StatusSubjectPrefix + ">"}, Retention: jetstream.LimitsPolicy,
			Storage: jetstream.FileStorage, Replicas: c.Replicas, MaxAge: c.StatusMaxAge, Duplicates: DuplicateWindow,
			Description: "mailworker: status events, mail.status.<profile>.<job id>",
		},
		{
			Name: contract.StreamDLQ, Subjects: []string{contract.DLQSubjectPrefix + ">"}, Retention: jetstream.LimitsPolicy,
			Storage: jetstream.FileStorage, Replicas: c.Replicas, MaxAge: c.DLQMaxAge, Duplicates: DuplicateWindow,
			Description: "mailworker: dead letters, mail.dlq.<profile>",
		},
		{
			Name: contract.StreamAudit, Subjects: []string{contract.AuditSubjectPrefix + ">"}, Retention: jetstream.LimitsPolicy,
			Storage: jetstream.FileStorage, Replicas: c.Replicas, MaxAge: c.AuditMaxAge, Duplicates: DuplicateWindow,
			Description: "mailworker: support actions (who, what, when), mail.audit.<profile>",
		},
	}
}

func consumerConfig(c Config) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       contract.ConsumerName,
		Description:   "mailworker: shared by all worker replicas",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: c.MaxAckPending,
		FilterSubject: contract.JobSubjectPrefix + ">",
	}
}

// Provision creates every JetStream asset mailworker uses, or brings existing
// ones in line: MAIL_JOBS, MAIL_STATUS, MAIL_DLQ, the durable consumer
// "mailworker", KV buckets MAIL_JOB_STATE, MAIL_WORKERS and MAIL_PACING,
// stream MAIL_AUDIT, and one object store per profile of cfg.Profiles
// (AttachmentsBucket). It is idempotent. Updatable settings (max
// ages, replicas, duplicate window, AckWait, MaxAckPending, MaxDeliver, bucket
// TTLs) are updated in place; a
// setting that cannot be (retention, storage, subjects, ack policy, filter)
// yields an error wrapping ErrIncompatible that names the asset and field.
func Provision(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	for _, sc := range streamConfigs(cfg) {
		if err := ensureStream(ctx, js, sc); err != nil {
			return err
		}
	}
	if err := ensureConsumer(ctx, js, consumerConfig(cfg)); err != nil {
		return err
	}
	for _, kc := range kvConfigs(cfg) {
		if err := ensureKV(ctx, js, kc); err != nil {
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
	// A stream from an older release lacks subjects this one adds (the
	// schedules): add them; any other difference is someone else's stream.
	if !slices.Equal(have.Subjects, want.Subjects) && !subset(have.Subjects, want.Subjects) {
		return incompatible(asset, "subjects", have.Subjects, want.Subjects)
	}
	upd := have
	upd.MaxAge, upd.Replicas, upd.Duplicates = want.MaxAge, want.Replicas, want.Duplicates
	upd.Subjects = want.Subjects
	upd.AllowMsgSchedules = have.AllowMsgSchedules || want.AllowMsgSchedules
	if upd.Duplicates > upd.MaxAge && upd.MaxAge > 0 {
		upd.Duplicates = upd.MaxAge
	}
	if upd.MaxAge == have.MaxAge && upd.Replicas == have.Replicas && upd.Duplicates == have.Duplicates &&
		slices.Equal(upd.Subjects, have.Subjects) && upd.AllowMsgSchedules == have.AllowMsgSchedules {
		return nil
	}
	if _, err := js.UpdateStream(ctx, upd); err != nil {
		return fmt.Errorf("queue: update stream %s: %w", want.Name, err)
	}
	return nil
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

func ensureConsumer(ctx context.Context, js jetstream.JetStream, want jetstream.ConsumerConfig) error {
	c, err := js.Consumer(ctx, contract.StreamJobs, want.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		if _, err := js.CreateConsumer(ctx, contract.StreamJobs, want); err != nil {
			return fmt.Errorf("queue: create consumer %s on %s: %w", want.Durable, contract.StreamJobs, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: look up consumer %s on %s: %w", want.Durable, contract.StreamJobs, err)
	}
	have := c.CachedInfo().Config
	asset := "consumer " + contract.StreamJobs + "/" + want.Durable
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
	if _, err := js.UpdateConsumer(ctx, contract.StreamJobs, upd); err != nil {
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

func ensureObjectStore(ctx context.Context, js jetstream.JetStream, c Config, bucket string) error {
	want := jetstream.ObjectStoreConfig{
		Bucket: bucket, Description: "mailworker: attachments by reference of one profile",
		Storage: jetstream.FileStorage, Replicas: c.Replicas, TTL: c.AttachmentsMaxAge, MaxBytes: c.AttachmentsMaxBytes,
	}
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
	// Schedules puts deferred jobs back on MAIL_JOBS later.
	Schedules *Schedules

	js jetstream.JetStream
}

// Open binds to the existing assets; it creates nothing. A missing asset is
// an error that says to run `mailworker provision`.
func Open(ctx context.Context, js jetstream.JetStream) (*Queue, error) {
	missing := func(what string, err error) error {
		return fmt.Errorf("queue: %s: %w (run `mailworker provision`)", what, err)
	}
	for _, name := range []string{contract.StreamJobs, contract.StreamStatus, contract.StreamDLQ, contract.StreamAudit} {
		if _, err := js.Stream(ctx, name); err != nil {
			return nil, missing("stream "+name, err)
		}
	}
	if _, err := js.Consumer(ctx, contract.StreamJobs, contract.ConsumerName); err != nil {
		return nil, missing("consumer "+contract.StreamJobs+"/"+contract.ConsumerName, err)
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
		Workers: &Workers{kv: workersKV, stream: workersStream}, Pacing: &Pacing{kv: pacingKV}}
	q.DLQ = &DLQ{js: js, states: q.States, events: q.Events}
	q.Schedules = &Schedules{js: js}
	return q, nil
}

// OpenStates binds to the job-state bucket only: what a producer waiting for
// its own job's outcome may read (`mailworker send --wait`).
func OpenStates(ctx context.Context, js jetstream.JetStream) (*States, error) {
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return nil, fmt.Errorf("queue: KV bucket %s: %w (run `mailworker provision`)", contract.BucketState, err)
	}
	return &States{kv: kv, js: js}, nil
}

// Consumer returns the shared durable pull consumer "mailworker" on MAIL_JOBS.
func (q *Queue) Consumer(ctx context.Context) (jetstream.Consumer, error) {
	c, err := q.js.Consumer(ctx, contract.StreamJobs, contract.ConsumerName)
	if err != nil {
		return nil, fmt.Errorf("queue: consumer %s/%s: %w", contract.StreamJobs, contract.ConsumerName, err)
	}
	return c, nil
}
