package smtpd

import (
	"fmt"
	"sync"
	"testing"
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
