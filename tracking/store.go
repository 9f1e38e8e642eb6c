package tracking

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go/jetstream"
)

// Buckets the tracker uses; created by Open (idempotent).
const (
	BucketTracking    = "MAIL_TRACKING"
	BucketSuppression = "MAIL_SUPPRESSION"
	BucketTraceBudget = "MAIL_TRACE_BUDGET"
)

// Recipient is one recipient of a tracked job and what became of it.
type Recipient struct {
	Address string `json:"address"` // lower-cased
	// Outcome is the delivery event published for it, "" while open.
	Outcome contract.EventType `json:"outcome,omitempty"`
	// Suppressed: not sent to (suppression list); its event is `suppressed`.
	Suppressed bool `json:"suppressed,omitempty"`
}

// Record is the value of a MAIL_TRACKING key (profile.jobId): what the
// tracker needs to find a sent job's recipients in message trace.
type Record struct {
	JobID      string      `json:"jobId"`
	Profile    string      `json:"profile"`
	From       string      `json:"from"`
	Recipients []Recipient `json:"recipients"`
	// MessageID is the Message-ID when known: from the send (draft
	// delivery mode), or learned from the trace row matched by sender,
	// recipient and time (MessageIDLearned), after which the record's
	// other recipients and later passes match by it.
	MessageID        string `json:"messageId,omitempty"`
	MessageIDLearned bool   `json:"messageIdLearned,omitempty"`
	// MessageIDHint is the Message-ID field of a MIME job's own header
	// (inline MIME only). No Microsoft page says that Exchange keeps it, so
	// it only decides when a trace row carries it; a record whose hint
	// matches no row is matched by time.
	MessageIDHint string            `json:"messageIdHint,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	// Attempted is when the worker called Graph (the record is written before).
	Attempted time.Time `json:"attempted"`
	// SentAt is when the job state said `sent` (the tracker fills it in).
	SentAt time.Time `json:"sentAt,omitzero"`
	// StatusSeq: every event on the job's status subject up to this
	// MAIL_STATUS sequence is accounted for in Recipients (the tracker's
	// last publish or read of the subject; 0: not read yet).
	StatusSeq uint64 `json:"statusSeq,omitempty"`
}

// correlation is how its trace rows were found (contract.TraceInfo.Correlation).
func (r *Record) correlation() string {
	if r.MessageID != "" && !r.MessageIDLearned {
		return contract.CorrelationMessageID
	}
	return contract.CorrelationTime
}

func (r *Record) open() bool {
	for _, x := range r.Recipients {
		if x.Outcome == "" {
			return true
		}
	}
	return false
}

// Store holds the tracking records and the suppression list.
type Store struct {
	js          jetstream.JetStream
	records     jetstream.KeyValue
	suppression jetstream.KeyValue
	budget      jetstream.KeyValue
}

// Open creates (or binds) the tracker's buckets on js with replicas copies.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	if replicas <= 0 {
		replicas = 1
	}
	mk := func(name, desc string) (jetstream.KeyValue, error) {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, Description: desc,
			Storage: jetstream.FileStorage, Replicas: replicas, History: 1})
		if err != nil {
			return nil, fmt.Errorf("tracking: bucket %s: %w", name, err)
		}
		// CreateOrUpdateKeyValue turns rollups on: off again, so that no
		// publish of the console's on $KV.MAIL_SUPPRESSION.> can wipe the
		// list with a Nats-Rollup header (removals are delete markers).
		if err := queue.EnsureNoRollup(ctx, js, "KV_"+name); err != nil {
			return nil, fmt.Errorf("tracking: bucket %s: %w", name, err)
		}
		return kv, nil
	}
	var s Store
	var err error
	s.js = js
	if s.records, err = mk(BucketTracking, "mailworker: sent jobs awaiting delivery truth (message trace)"); err != nil {
		return nil, err
	}
	if s.suppression, err = mk(BucketSuppression, "mailworker: suppressed recipients per profile"); err != nil {
		return nil, err
	}
	if s.budget, err = mk(BucketTraceBudget, "mailworker: the tenant's message trace request window, shared by replicas"); err != nil {
		return nil, err
	}
	return &s, nil
}

// Bind binds the tracker's existing buckets (created by Open, which
// `mailworker provision` runs); it fails naming the bucket that is missing.
func Bind(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	s := Store{js: js}
	for _, b := range []struct {
		name string
		kv   *jetstream.KeyValue
	}{{BucketTracking, &s.records}, {BucketSuppression, &s.suppression}, {BucketTraceBudget, &s.budget}} {
		kv, err := js.KeyValue(ctx, b.name)
		if err != nil {
			return nil, fmt.Errorf("tracking: KV bucket %s: %w (run `mailworker provision`)", b.name, err)
		}
		*b.kv = kv
	}
	return &s, nil
}

// Buckets are the names of the tracker's buckets.
var Buckets = []string{BucketTracking, BucketSuppression, BucketTraceBudget}

func recordKey(profile, jobID string) string { return queue.StateKey(profile, jobID) }

// put writes r: create when rev is 0, else compare-and-set.
func (s *Store) put(ctx context.Context, r *Record, rev uint64) (uint64, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		return s.records.Create(ctx, recordKey(r.Profile, r.JobID), b)
	}
	return s.records.Update(ctx, recordKey(r.Profile, r.JobID), b, rev)
}

func (s *Store) get(ctx context.Context, key string) (*Record, uint64, error) {
	e, err := s.records.Get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	var r Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("tracking: record %s is not valid JSON: %w", key, err)
	}
	return &r, e.Revision(), nil
}

// Record returns the tracking record of a job (for `mailworker status`);
// nil when there is none (never tracked, or settled and removed).
func (s *Store) Record(ctx context.Context, profile, jobID string) (*Record, error) {
	r, _, err := s.get(ctx, recordKey(profile, jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	return r, err
}

// Suppression is one entry of a profile's suppression list.
type Suppression struct {
	Address   string    `json:"address"`
	Profile   string    `json:"profile"`
	Reason    string    `json:"reason"` // the bounce's detail from message trace
	JobID     string    `json:"jobId,omitempty"`
	At        time.Time `json:"at"`
	ExpiresAt time.Time `json:"expiresAt"`
}

func suppressionKey(profile, addr string) string { return profile + "." + queue.RecipientKey(addr) }

// Suppress adds (or renews) addr on profile's list until at+ttl.
func (s *Store) Suppress(ctx context.Context, e Suppression) error {
	e.Address = strings.ToLower(strings.TrimSpace(e.Address))
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if _, err := s.suppression.Put(ctx, suppressionKey(e.Profile, e.Address), b); err != nil {
		return fmt.Errorf("tracking: write suppression list of %s: %w", e.Profile, err)
	}
	return nil
}

// Suppressed returns the entry of addr on profile's list, nil when it is not
// there or has expired at now.
func (s *Store) Suppressed(ctx context.Context, profile, addr string, now time.Time) (*Suppression, error) {
	e, err := s.suppression.Get(ctx, suppressionKey(profile, addr))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tracking: read suppression list of %s: %w", profile, err)
	}
	var sup Suppression
	if err := json.Unmarshal(e.Value(), &sup); err != nil {
		return nil, fmt.Errorf("tracking: suppression entry is not valid JSON: %w", err)
	}
	if !now.Before(sup.ExpiresAt) {
		return nil, nil
	}
	return &sup, nil
}

// Suppressions lists profile's entries (all profiles when profile is ""),
// expired ones included (ExpiresAt says so).
func (s *Store) Suppressions(ctx context.Context, profile string) ([]Suppression, error) {
	filter := ""
	if profile != "" {
		filter = profile + ".>"
	}
	// Batch direct gets, not ListKeys: support and the console, which list
	// suppressions, may create no consumer (deploy/nats/accounts.conf).
	entries, err := queue.KVScan(ctx, s.js, BucketSuppression, filter)
	if err != nil {
		return nil, fmt.Errorf("tracking: list suppressions: %w", err)
	}
	var out []Suppression
	for _, e := range entries {
		var sup Suppression
		if json.Unmarshal(e.Value, &sup) == nil {
			out = append(out, sup)
		}
	}
	return out, nil
}

// Unsuppress removes addr from profile's list; false when it was not there.
func (s *Store) Unsuppress(ctx context.Context, profile, addr string) (bool, error) {
	return s.UnsuppressKey(ctx, profile, queue.RecipientKey(addr))
}

// SuppressionByKey returns the entry of profile's list whose address has
// key (queue.RecipientKey), expired or not; nil when there is none.
func (s *Store) SuppressionByKey(ctx context.Context, profile, key string) (*Suppression, error) {
	if !validKey(profile, key) {
		return nil, nil
	}
	e, err := s.suppression.Get(ctx, profile+"."+key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tracking: read suppression list of %s: %w", profile, err)
	}
	var sup Suppression
	if err := json.Unmarshal(e.Value(), &sup); err != nil {
		return nil, fmt.Errorf("tracking: suppression entry is not valid JSON: %w", err)
	}
	return &sup, nil
}

// UnsuppressKey removes the entry whose address has key (queue.RecipientKey)
// from profile's list; false when it was not there.
func (s *Store) UnsuppressKey(ctx context.Context, profile, key string) (bool, error) {
	if !validKey(profile, key) {
		return false, nil
	}
	k := profile + "." + key
	if _, err := s.suppression.Get(ctx, k); errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("tracking: read suppression list of %s: %w", profile, err)
	}
	if err := s.suppression.Delete(ctx, k); err != nil { // a marker: the bucket honours no rollup (Open)
		return false, fmt.Errorf("tracking: remove suppression: %w", err)
	}
	return true, nil
}

// validKey: a profile name and a recipient key, each one KV key token (no
// dots, wildcards or spaces), so that a key from a form or a request names
// one entry of one profile.
func validKey(profile, key string) bool {
	ok := func(s string) bool {
		if s == "" || len(s) > 128 {
			return false
		}
		for _, r := range s {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
		return true
	}
	return ok(profile) && ok(key)
}
