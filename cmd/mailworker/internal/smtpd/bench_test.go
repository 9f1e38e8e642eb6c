package smtpd

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// BenchmarkSubmit is the per-message path of the loadtest's smtp scenario:
// eight clients, each logged in once, submit small messages one after the
// other. Profile it with -cpuprofile; figures go to docs/benchmarks.md by
// loadtest, not from here.
func BenchmarkSubmit(b *testing.B) {
	bd := setup(b, Config{MessagesPerMinute: -1, MessagesPerConnection: 1 << 30})
	const conns = 8
	var wg sync.WaitGroup
	per := b.N/conns + 1
	b.ResetTimer()
	for i := range conns {
		c, err := bd.dial(testPassword)
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range per {
				msg := crlf(fmt.Sprintf("From: billing@contoso.com\nTo: ann@example.com\nSubject: load %d-%d\n\nbody\n", i, j))
				if code, _, err := send(c, testSender, []string{"ann@example.com"}, msg); code != 250 {
					b.Error(code, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkLogin is a device that connects and logs in for each message:
// connect, STARTTLS, AUTH PLAIN, QUIT, with the verified-login cache and
// without it (bcrypt per login).
func BenchmarkLogin(b *testing.B) {
	for _, c := range []struct {
		name string
		ttl  time.Duration
	}{{"cache", 0}, {"nocache", -1}} {
		b.Run(c.name, func(b *testing.B) {
			bd := setup(b, Config{AuthCacheTTL: c.ttl})
			h, err := HashPassword(testPassword) // the default cost, as deployed
			if err != nil {
				b.Fatal(err)
			}
			y := "credentials:\n  - username: " + testUser + "\n    passwordHash: \"" + h + "\"\n    profile: " + testProfile + "\n"
			if err := os.WriteFile(bd.creds, []byte(y), 0o600); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				cl, err := bd.dial(testPassword)
				if err != nil {
					b.Fatal(err)
				}
				_ = cl.Quit()
			}
		})
	}
}
