package queue

import (
	"context"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/mailworker/mailworker/worker/ledger"
	"github.com/nats-io/nats.go/jetstream"
)

// RecipientWindow is how long Exchange counts a mailbox's recipients:
// 10,000 per rolling 24 hours. The ledger counts in whole hours and keeps an
// hour for LedgerSpan, so that a recipient sent at any time in the hour it was
// leased in stays counted for at least RecipientWindow after it was sent.
const (
	RecipientWindow = 24 * time.Hour
	LedgerSpan      = RecipientWindow + time.Hour
)

// maxLeaseTries bounds the compare-and-set retries of one Lease.
const maxLeaseTries = 16

// pacingRecord is the value of a MAIL_PACING key: recipients leased per hour.
type pacingRecord struct {
	Hours []hourCount `json:"hours"`
}

type hourCount struct {
	Start int64 `json:"start"` // unix seconds of the hour's start (UTC)
	N     int   `json:"n"`
}

// lease applies l to rec and returns the new record, the recipients granted,
// and, when fewer than Need were available, when Need will fit (the oldest
// hours age out). It is pure: Pacing.Lease wraps it in a compare-and-set.
//
// Granted is Want when it fits, else what is left if that is at least Need,
// and never more than a quarter of what is left unless Need asks for more
// (leases shrink near the limit, so that replicas share the tail instead of
// one holding it). An empty window always grants Need, even past Limit: a
// job with more recipients than the whole budget could not be sent at all.
func (rec pacingRecord) lease(l ledger.Lease) (next pacingRecord, granted int, freeAt time.Time) {
	now := l.Now.Unix()
	span := int64(LedgerSpan / time.Second)
	for _, h := range rec.Hours {
		if h.Start+span > now {
			next.Hours = append(next.Hours, h)
		}
	}
	if l.GiveBack > 0 {
		gb := l.GiveBackHour.Unix()
		for i := range next.Hours {
			if next.Hours[i].Start == gb {
				next.Hours[i].N = max(next.Hours[i].N-min(l.GiveBack, next.Hours[i].N), 0)
			}
		}
	}
	next.Hours = slices.DeleteFunc(next.Hours, func(h hourCount) bool { return h.N == 0 })
	used := 0
	for _, h := range next.Hours {
		used += h.N
	}
	left := l.Limit - used
	switch {
	case l.Need <= 0 && l.Want <= 0:
		return next, 0, time.Time{}
	case used == 0:
		granted = max(min(l.Want, l.Limit/4), l.Need)
	case left >= l.Need:
		granted = max(min(l.Want, left/4), l.Need)
	default:
		// Need does not fit: it will when enough of the oldest hours have aged out.
		slices.SortFunc(next.Hours, func(a, b hourCount) int { return int(a.Start - b.Start) })
		for _, h := range next.Hours {
			used -= h.N
			if l.Limit-used >= l.Need || used == 0 {
				return next, 0, time.Unix(h.Start+span, 0)
			}
		}
		return next, 0, l.Now // unreachable: an empty window fits
	}
	hour := l.Hour.Unix()
	i := slices.IndexFunc(next.Hours, func(h hourCount) bool { return h.Start == hour })
	if i < 0 {
		next.Hours = append(next.Hours, hourCount{Start: hour})
		i = len(next.Hours) - 1
	}
	next.Hours[i].N += granted
	return next, granted, time.Time{}
}

// Pacing is the recipient ledger shared by all replicas (KV MAIL_PACING):
// one key per sending mailbox holding the recipients leased in each of the
// last LedgerSpan hours.
type Pacing struct {
	kv jetstream.KeyValue
	// js lists the ledger (Mailboxes) by direct gets: no consumer.
	js jetstream.JetStream
}

// PacingKey is the MAIL_PACING key of mailbox: its lower-cased address in
// base32 without padding (KV keys allow only [-/_=.a-zA-Z0-9]). From a shell:
// printf %s billing@contoso.com | base32 -w0 | tr -d =
func PacingKey(mailbox string) string {
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString([]byte(strings.ToLower(strings.TrimSpace(mailbox))))
}

// Lease takes recipients from l.Mailbox's budget (see Lease and
// pacingRecord.lease for how many), after giving back l.GiveBack. It reads the
// mailbox's record and writes it back with compare-and-set, re-reading on a
// conflict with another replica. When fewer than l.Need are left it grants 0
// and returns when l.Need will fit. It returns an error when the bucket cannot
// be read or written (a lease whose write may have landed is then lost: the
// budget is under-used, never over-spent).
func (p *Pacing) Lease(ctx context.Context, l ledger.Lease) (granted int, freeAt time.Time, err error) {
	key := PacingKey(l.Mailbox)
	for range maxLeaseTries {
		var rec pacingRecord
		var rev uint64
		e, err := p.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return 0, time.Time{}, fmt.Errorf("queue: read recipient ledger of %s: %w", l.Mailbox, err)
		default:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				return 0, time.Time{}, fmt.Errorf("queue: recipient ledger of %s is not valid JSON: %w", l.Mailbox, err)
			}
		}
		next, granted, freeAt := rec.lease(l)
		if granted == 0 && l.GiveBack <= 0 {
			return 0, freeAt, nil // nothing to write
		}
		b, err := json.Marshal(next)
		if err != nil {
			return 0, time.Time{}, err
		}
		if rev == 0 {
			_, err = p.kv.Create(ctx, key, b)
		} else {
			_, err = p.kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			return granted, freeAt, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, time.Time{}, fmt.Errorf("queue: write recipient ledger of %s: %w", l.Mailbox, err)
		}
		// Another replica leased first: read again.
		select {
		case <-time.After(time.Duration(rand.Int64N(int64(5 * time.Millisecond)))):
		case <-ctx.Done():
			return 0, time.Time{}, ctx.Err()
		}
	}
	return 0, time.Time{}, fmt.Errorf("queue: recipient ledger of %s: %d compare-and-set conflicts in a row", l.Mailbox, maxLeaseTries)
}

// Used returns the recipients counted for mailbox at now (for support and tests).
func (p *Pacing) Used(ctx context.Context, mailbox string, now time.Time) (int, error) {
	e, err := p.kv.Get(ctx, PacingKey(mailbox))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("queue: read recipient ledger of %s: %w", mailbox, err)
	}
	var rec pacingRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return 0, fmt.Errorf("queue: recipient ledger of %s is not valid JSON: %w", mailbox, err)
	}
	next, _, _ := rec.lease(ledger.Lease{Now: now})
	n := 0
	for _, h := range next.Hours {
		n += h.N
	}
	return n, nil
}
