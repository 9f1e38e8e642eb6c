package tracking

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// leaseKey is the MAIL_TRACE_BUDGET key that says which replica tracks: one
// at a time, so that replicas do not query the same windows twice (the
// budget would hold either way; the lease saves it).
const leaseKey = "leader"

type leaseRecord struct {
	Holder string `json:"holder"`
	Until  int64  `json:"until"` // unix ms
}

// lease is one replica's claim on the tracking work.
type lease struct {
	kv  jetstream.KeyValue
	id  string
	ttl time.Duration
	now func() time.Time
}

func newLease(kv jetstream.KeyValue, ttl time.Duration, now func() time.Time) *lease {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &lease{kv: kv, id: hex.EncodeToString(b[:]), ttl: ttl, now: now}
}

// hold takes or renews the lease; false when another replica holds it.
func (l *lease) hold(ctx context.Context) (bool, error) {
	e, err := l.kv.Get(ctx, leaseKey)
	var rec leaseRecord
	var rev uint64
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return false, err
	default:
		rev = e.Revision()
		_ = json.Unmarshal(e.Value(), &rec)
	}
	now := l.now()
	if rec.Holder != "" && rec.Holder != l.id && rec.Until > now.UnixMilli() {
		return false, nil
	}
	b, _ := json.Marshal(leaseRecord{Holder: l.id, Until: now.Add(l.ttl).UnixMilli()})
	if rev == 0 {
		_, err = l.kv.Create(ctx, leaseKey, b)
	} else {
		_, err = l.kv.Update(ctx, leaseKey, b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return false, nil // another replica took it first
	}
	return err == nil, err
}
