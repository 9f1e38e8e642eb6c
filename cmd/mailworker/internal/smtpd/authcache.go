package smtpd

import (
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"
)

// authCache remembers logins that bcrypt verified, so that a device that
// logs in again within the TTL is not verified again: Dovecot's
// authentication cache (auth_cache_size, auth_cache_ttl,
// auth_cache_negative_ttl: https://doc.dovecot.org/2.4.0/core/config/auth/caching.html)
// for one process.
//
//   - It holds no password: an entry is found by an HMAC-SHA256, under a key
//     drawn at random for each process, of the username, the password and
//     the credential's bcrypt hash (so a changed password hash misses, as
//     Dovecot's key includes the password), and the entry keeps only that
//     MAC, the credential it was verified against and its expiry.
//   - Only successes are kept. A wrong password is never found (its MAC is
//     not in the cache) and always costs bcrypt and the tarpit; Dovecot's
//     auth_cache_negative_ttl (failures cached) is not built: it would make
//     repeated wrong guesses cheaper for the server, and the per-connection
//     and per-address failure limits bound them already.
//   - It is bounded: at most size entries, the least recently used dropped
//     first, and each expires ttl after its verification (not renewed by a
//     hit: a revoked credential file takes effect within ttl at worst).
//   - A reload of the credentials (a changed file, a rotated Secret) empties
//     it: entries carry the credentials' generation, and an entry of another
//     generation, or for another *credential, is never a hit.
type authCache struct {
	ttl  time.Duration // <= 0: off
	size int
	now  func() time.Time
	key  [32]byte // HMAC key, random per process

	mu       sync.Mutex
	gen      uint64                     // the credentials' generation of the entries
	lru      *list.List                 // of *authEntry, most recently used first
	entries  map[[32]byte]*list.Element // by MAC
	inflight map[[32]byte]*verification // bcrypt checks under way, by MAC
}

// authEntry is one verified login: no username, no password.
type authEntry struct {
	mac     [32]byte
	cred    *credential
	expires time.Time
}

// verification is a bcrypt check in progress; ok is set before done closes.
type verification struct {
	cred *credential
	done chan struct{}
	ok   bool
}

func newAuthCache(ttl time.Duration, size int, now func() time.Time) *authCache {
	c := &authCache{ttl: ttl, size: size, now: now, lru: list.New(),
		entries: map[[32]byte]*list.Element{}, inflight: map[[32]byte]*verification{}}
	_, _ = rand.Read(c.key[:])
	return c
}

func (c *authCache) on() bool { return c.ttl > 0 && c.size > 0 }

// mac is the cache key of a login attempt against cred.
func (c *authCache) mac(cred *credential, username, password string) [32]byte {
	h := hmac.New(sha256.New, c.key[:])
	for _, f := range []string{username, password, cred.PasswordHash} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	return [32]byte(h.Sum(nil))
}

// sync empties the cache when the credentials changed (mu held); false
// when gen is older than the entries' (a check that started before a
// reload: neither a hit nor kept).
func (c *authCache) sync(gen uint64) bool {
	if gen < c.gen {
		return false
	}
	if gen > c.gen {
		c.gen = gen
		c.lru.Init()
		clear(c.entries)
	}
	return true
}

// hit reports whether mac was verified against cred within ttl, in
// generation gen.
func (c *authCache) hit(gen uint64, cred *credential, mac [32]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.sync(gen) {
		return false
	}
	el := c.entries[mac]
	if el == nil {
		return false
	}
	e := el.Value.(*authEntry)
	if e.cred != cred || !c.now().Before(e.expires) {
		c.lru.Remove(el)
		delete(c.entries, mac)
		return false
	}
	c.lru.MoveToFront(el)
	return true
}

// add keeps mac as verified against cred (mu held).
func (c *authCache) add(gen uint64, cred *credential, mac [32]byte) {
	if !c.sync(gen) {
		return
	}
	exp := c.now().Add(c.ttl)
	if el := c.entries[mac]; el != nil {
		e := el.Value.(*authEntry)
		e.cred, e.expires = cred, exp
		c.lru.MoveToFront(el)
		return
	}
	c.entries[mac] = c.lru.PushFront(&authEntry{mac: mac, cred: cred, expires: exp})
	for c.lru.Len() > c.size {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.entries, old.Value.(*authEntry).mac)
	}
}

// len is the number of entries.
func (c *authCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// verify reports whether password is cred's (username's): from the cache,
// else by check (bcrypt), whose success is cached. Attempts with the same
// username and password that arrive while one is being checked wait for its
// result instead of running bcrypt again (clients that all connect at once,
// after a restart or an outage, cost one check); hit reports that no check
// of this attempt's own ran.
func (c *authCache) verify(gen uint64, cred *credential, username, password string, check func() bool) (ok, hit bool) {
	if !c.on() {
		return check(), false
	}
	k := c.mac(cred, username, password)
	if c.hit(gen, cred, k) {
		return true, true
	}
	c.mu.Lock()
	if v := c.inflight[k]; v != nil && v.cred == cred {
		c.mu.Unlock()
		<-v.done
		return v.ok, v.ok
	}
	v := &verification{cred: cred, done: make(chan struct{})}
	c.inflight[k] = v
	c.mu.Unlock()
	v.ok = check()
	c.mu.Lock()
	if v.ok {
		c.add(gen, cred, k)
	}
	if c.inflight[k] == v {
		delete(c.inflight, k)
	}
	c.mu.Unlock()
	close(v.done)
	return v.ok, false
}
