package smtpd

import (
	"bytes"
	"fmt"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"
)

// countCompares makes b's server count its bcrypt comparisons.
func countCompares(b *bundle) *atomic.Int64 {
	var n atomic.Int64
	b.srv.compare = func(hash, password []byte) error {
		n.Add(1)
		return bcrypt.CompareHashAndPassword(hash, password)
	}
	return &n
}

// TestAuthCacheSkipsBcrypt (issue 20 item 16): after one verified login the
// same username and password log in without a bcrypt comparison; another
// password (wrong, or the old one after a rotation) is compared every time
// and never taken from the cache.
func TestAuthCacheSkipsBcrypt(t *testing.T) {
	b := setup(t, Config{AuthFailuresPerConnection: 100, AuthFailuresPerAddress: 100})
	n := countCompares(b)
	for i := range 3 {
		if _, err := b.dial(testPassword); err != nil {
			t.Fatal(err)
		}
		if n.Load() != 1 {
			t.Fatalf("after %d logins: %d bcrypt comparisons, want 1", i+1, n.Load())
		}
	}
	if got := testutil.ToFloat64(b.m.AuthCacheHits); got != 2 {
		t.Fatalf("cache hits %v, want 2", got)
	}
	// A wrong password: compared (and refused) each time, never a hit.
	for i := range 3 {
		if _, err := b.dial(testPassword + "x"); smtpCode(err) != 535 {
			t.Fatalf("wrong password: %v, want 535", err)
		}
		if n.Load() != int64(2+i) {
			t.Fatalf("wrong password %d: %d comparisons in all, want %d", i+1, n.Load(), 2+i)
		}
	}
	// A prefix of the right password, and the right password with another
	// username's case: not hits either.
	if _, err := b.dial(testPassword[:len(testPassword)-1]); smtpCode(err) != 535 {
		t.Fatalf("prefix of the password: %v, want 535", err)
	}
	if got := testutil.ToFloat64(b.m.AuthCacheHits); got != 2 {
		t.Fatalf("cache hits %v after wrong passwords, want 2", got)
	}
	// The password changes (the credentials file is rewritten): the old
	// password, verified a moment ago, is compared again and refused; the
	// new one is verified once, then cached.
	before := n.Load()
	b.writeCreds("rotated-" + testPassword)
	if _, err := b.dial(testPassword); smtpCode(err) != 535 {
		t.Fatalf("old password after the change: %v, want 535", err)
	}
	if n.Load() != before+1 {
		t.Fatalf("old password after the change: %d comparisons, want 1", n.Load()-before)
	}
	for range 2 {
		if _, err := b.dial("rotated-" + testPassword); err != nil {
			t.Fatalf("new password: %v", err)
		}
	}
	if n.Load() != before+2 {
		t.Fatalf("new password twice: %d comparisons, want 1", n.Load()-before-1)
	}
}

// TestAuthCacheOff: with authCacheTTL negative every login is compared.
func TestAuthCacheOff(t *testing.T) {
	b := setup(t, Config{AuthCacheTTL: -1})
	n := countCompares(b)
	for range 2 {
		if _, err := b.dial(testPassword); err != nil {
			t.Fatal(err)
		}
	}
	if n.Load() != 2 {
		t.Fatalf("%d comparisons, want 2", n.Load())
	}
}

func testCred(user, password string) *credential {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return &credential{Credential: Credential{Username: user, PasswordHash: string(h), Profile: testProfile}}
}

// verifyCounting runs c.verify with bcrypt and counts the comparisons in n.
func verifyCounting(c *authCache, n *int, gen uint64, cred *credential, user, password string) bool {
	ok, _ := c.verify(gen, cred, user, password, func() bool {
		*n++
		return bcrypt.CompareHashAndPassword([]byte(cred.PasswordHash), []byte(password)) == nil
	})
	return ok
}

// TestAuthCacheUnit holds the cache's rules without a server: TTL, size,
// the credentials' generation and the identity of the credential.
func TestAuthCacheUnit(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	ann := testCred("ann", "pw-ann")

	t.Run("ttl", func(t *testing.T) {
		c, n := newAuthCache(time.Minute, 10, clock), 0
		verifyCounting(c, &n, 0, ann, "ann", "pw-ann")
		now = now.Add(59 * time.Second)
		verifyCounting(c, &n, 0, ann, "ann", "pw-ann")
		if n != 1 {
			t.Fatalf("within the TTL: %d comparisons, want 1", n)
		}
		now = now.Add(time.Second) // 60 s after the verification: expired (a hit does not renew it)
		if !verifyCounting(c, &n, 0, ann, "ann", "pw-ann") || n != 2 {
			t.Fatalf("at the TTL: %d comparisons, want 2", n)
		}
	})

	t.Run("size bound, least recently used first", func(t *testing.T) {
		c, n := newAuthCache(time.Hour, 3, clock), 0
		creds := make([]*credential, 5)
		for i := range creds {
			creds[i] = testCred(fmt.Sprint("u", i), fmt.Sprint("p", i))
			verifyCounting(c, &n, 0, creds[i], creds[i].Username, fmt.Sprint("p", i))
			if i == 2 {
				verifyCounting(c, &n, 0, creds[0], "u0", "p0") // u0 used: u1 is now the oldest
			}
			if c.len() > 3 {
				t.Fatalf("%d entries, bound 3", c.len())
			}
		}
		// Kept: u0 (used again), u3, u4; u1 and u2 were dropped.
		n = 0
		for _, i := range []int{0, 3, 4} {
			verifyCounting(c, &n, 0, creds[i], creds[i].Username, fmt.Sprint("p", i))
		}
		if n != 0 {
			t.Fatalf("recently used entries: %d comparisons, want 0", n)
		}
		verifyCounting(c, &n, 0, creds[1], "u1", "p1")
		if n != 1 {
			t.Fatalf("the least recently used entry was not dropped (%d comparisons)", n)
		}
	})

	t.Run("failures are not kept", func(t *testing.T) {
		c, n := newAuthCache(time.Hour, 10, clock), 0
		for range 3 {
			if verifyCounting(c, &n, 0, ann, "ann", "wrong") {
				t.Fatal("wrong password accepted")
			}
		}
		if n != 3 || c.len() != 0 {
			t.Fatalf("wrong password: %d comparisons, %d entries; want 3, 0", n, c.len())
		}
	})

	t.Run("reload empties", func(t *testing.T) {
		c, n := newAuthCache(time.Hour, 10, clock), 0
		verifyCounting(c, &n, 0, ann, "ann", "pw-ann")
		verifyCounting(c, &n, 1, ann, "ann", "pw-ann") // a reload, same credential
		if n != 2 {
			t.Fatalf("after a reload: %d comparisons, want 2", n)
		}
		// A check that began before the reload is neither a hit nor kept.
		verifyCounting(c, &n, 0, ann, "ann", "pw-ann")
		if c.len() != 1 || n != 3 {
			t.Fatalf("stale generation: %d entries, %d comparisons", c.len(), n)
		}
		// Another credential of the same username and password hash (a
		// reloaded set) does not take this one's entry.
		same := &credential{Credential: ann.Credential}
		verifyCounting(c, &n, 1, same, "ann", "pw-ann")
		if n != 4 {
			t.Fatalf("other credential: %d comparisons, want 4", n)
		}
	})

	t.Run("changed password hash misses", func(t *testing.T) {
		c, n := newAuthCache(time.Hour, 10, clock), 0
		verifyCounting(c, &n, 0, ann, "ann", "pw-ann")
		rehashed := testCred("ann", "pw-ann")
		if c.mac(ann, "ann", "pw-ann") == c.mac(rehashed, "ann", "pw-ann") {
			t.Fatal("the key does not include the password hash")
		}
		if c.mac(ann, "ann", "pw-ann") == c.mac(ann, "ann", "pw-anN") || c.mac(ann, "ann", "pw-ann") == c.mac(ann, "anN", "pw-ann") {
			t.Fatal("the key does not depend on the username and password")
		}
	})

	t.Run("keys differ per process", func(t *testing.T) {
		a, b := newAuthCache(time.Hour, 10, clock), newAuthCache(time.Hour, 10, clock)
		if a.mac(ann, "ann", "pw-ann") == b.mac(ann, "ann", "pw-ann") {
			t.Fatal("two caches share their HMAC key")
		}
	})
}

// TestAuthCacheHoldsNoPassword: an entry is a MAC, a credential and an
// expiry (its type has no other field), and nothing the cache holds
// contains the password's bytes.
func TestAuthCacheHoldsNoPassword(t *testing.T) {
	want := map[string]reflect.Type{"mac": reflect.TypeOf([32]byte{}), "cred": reflect.TypeOf(&credential{}),
		"expires": reflect.TypeOf(time.Time{})}
	et := reflect.TypeOf(authEntry{})
	if et.NumField() != len(want) {
		t.Fatalf("authEntry has %d fields, want only %v", et.NumField(), want)
	}
	for i := range et.NumField() {
		f := et.Field(i)
		if want[f.Name] != f.Type {
			t.Fatalf("authEntry.%s %v: not one of %v", f.Name, f.Type, want)
		}
	}
	const password = "SENTINEL-cache-password-41x"
	c := newAuthCache(time.Hour, 10, time.Now)
	cred := testCred("ann", password)
	if ok, _ := c.verify(0, cred, "ann", password, func() bool { return true }); !ok {
		t.Fatal("not verified")
	}
	var dump bytes.Buffer
	for el := c.lru.Front(); el != nil; el = el.Next() {
		e := el.Value.(*authEntry)
		fmt.Fprintf(&dump, "%x %+v %v\n", e.mac, *e.cred, e.expires)
	}
	for k := range c.entries {
		fmt.Fprintf(&dump, "%x\n", k)
	}
	if bytes.Contains(dump.Bytes(), []byte(password)) || bytes.Contains(dump.Bytes(), []byte(fmt.Sprintf("%x", password))) {
		t.Fatal("the cache holds the password")
	}
}
