package contract

import (
	"net/mail"
	"testing"
)

// FuzzParseSimpleAddress checks the fast path against net/mail: whatever it
// accepts, net/mail parses to the same name and address.
func FuzzParseSimpleAddress(f *testing.F) {
	for _, s := range []string{"a@x.com", "Name <a@x.com>", "Recipient 5 <rcpt5@example.com>", "a.b+c@x-y.z",
		"a..b@x.com", ".a@x.com", "a@x..com", "A  B <a@x.com>", "<a@x.com>", "a@x.com>", "Ünï <a@x.com>",
		"a@[127.0.0.1]", `"q q"@x.com`, "a@x.com ", " a@x.com", "N <a@x.com> ", "=?utf-8?q?x?= <a@x.com>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, addr, ok := parseSimpleAddress(s)
		if !ok {
			return
		}
		a, err := mail.ParseAddress(s)
		if err != nil {
			t.Fatalf("fast path accepted %q, net/mail rejects it: %v", s, err)
		}
		if a.Name != name || a.Address != addr {
			t.Fatalf("%q: fast path %q %q, net/mail %q %q", s, name, addr, a.Name, a.Address)
		}
	})
}

func BenchmarkParseAddress(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = ParseAddress("Recipient 5 <rcpt5@example.com>")
		_, _, _ = ParseAddress("box001@loadtest.example")
	}
}
