package smtpd

import (
	"net/netip"
	"os"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"golang.org/x/crypto/bcrypt"
	"net/smtp"
)

// TestOneLoginCannotTakeEverySession: a login holding its sessions open
// (authenticated, a NOOP now and then; from many addresses, so the
// per-address cap does not stop it) cannot take the door from every other
// login: past MaxSessionsPerLogin its AUTH is refused (421 4.7.0) and the
// connection closed, while another profile's login still gets in; a session
// it closes is its again.
func TestOneLoginCannotTakeEverySession(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{MaxSessions: 8, MaxSessionsPerAddress: 8, MaxSessionsPerLogin: 3})
	h, err := bcrypt.GenerateFromPassword([]byte("other-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := os.ReadFile(b.creds)
	if err != nil {
		t.Fatal(err)
	}
	other := "  - username: other-app\n    passwordHash: \"" + string(h) + "\"\n    profile: other\n"
	if err := os.WriteFile(b.creds, append(mine, other...), 0o600); err != nil {
		t.Fatal(err)
	}
	var held []*smtp.Client
	for i := range 3 {
		c, err := b.dial(testPassword)
		if err != nil {
			t.Fatalf("session %d of the login: %v", i+1, err)
		}
		held = append(held, c)
	}
	c, err := b.dial(testPassword)
	if code := smtpCode(err); code != 421 {
		t.Fatalf("a 4th session of one login past maxSessionsPerLogin 3: AUTH answered %d (%v), want 421", code, err)
	}
	waitFor(t, "the refused connection closed", func() bool { return c.Noop() != nil })
	if n := testutil.ToFloat64(b.m.SessionsRefusedPerLogin); n != 1 {
		t.Errorf("sessions_refused_per_login_total %v, want 1", n)
	}
	o, err := b.dialAs("other-app", "other-pw")
	if err != nil {
		t.Fatalf("another profile's login while the first holds its sessions: %v", err)
	}
	if err := o.Noop(); err != nil {
		t.Fatal(err)
	}
	// A closed session frees its place.
	if err := held[0].Quit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the login's session freed", func() bool {
		c, err := b.dial(testPassword)
		if err != nil {
			return false
		}
		held[0] = c
		return true
	})
}

// TestIPv6ClientsCountedByPrefix: every address of one IPv6 /64 is one
// client (a single host is usually given a whole /64), for the session cap
// and the failed-login lockout alike; IPv4 addresses stay apart.
func TestIPv6ClientsCountedByPrefix(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{MaxSessionsPerAddress: 2, AuthFailuresPerAddress: 2})
	if _, err := b.dial(""); err != nil { // Serve is running (Close then ends it)
		t.Fatal(err)
	}
	s := b.srv
	a1, a2, a3 := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2:ffff::9"), netip.MustParseAddr("2001:db8:1:3::1")
	if !s.addrAcquire(clientKey(a1)) || !s.addrAcquire(clientKey(a2)) {
		t.Fatal("two sessions from one /64 refused under a cap of 2")
	}
	if s.addrAcquire(clientKey(netip.MustParseAddr("2001:db8:1:2:dead:beef:0:1"))) {
		t.Error("a third address of the same /64 got a session past the cap of 2")
	}
	if !s.addrAcquire(clientKey(a3)) {
		t.Error("another /64 refused")
	}
	v4 := clientKey(netip.MustParseAddr("192.0.2.1"))
	for range 2 {
		if !s.addrAcquire(v4) {
			t.Fatal("an IPv4 address refused under the cap")
		}
	}
	if !s.addrAcquire(clientKey(netip.MustParseAddr("192.0.2.2"))) {
		t.Error("IPv4 addresses are not counted one by one")
	}
	s.authFailedFrom(clientKey(a1))
	s.authFailedFrom(clientKey(netip.MustParseAddr("2001:db8:1:2::77")))
	if s.authAllowedFrom(clientKey(a2)) {
		t.Error("a /64 with 2 failed logins from two of its addresses may still log in from a third")
	}
	if !s.authAllowedFrom(clientKey(a3)) {
		t.Error("another /64 locked out")
	}
}
