package graphmail

import (
	"context"
	"strings"
	"testing"
)

// BenchmarkToken measures a cache-hit AcquireTokenByCredential, which Send
// makes once per call.
func BenchmarkToken(b *testing.B) {
	f := newFake(b)
	c, err := New(f.config())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Token(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Token(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkGraphJSON(b *testing.B) {
	msg := benchMsg()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := graphJSON(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSend is a whole Send against the local TLS fake: it includes the
// fake server's own CPU and loopback HTTP, so it is an upper bound.
func BenchmarkSend(b *testing.B) {
	f := newFake(b)
	c, err := New(f.config())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := benchMsg()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Send(ctx, msg); err != nil {
			b.Fatal(err)
		}
	}
}

func benchMsg() *Message {
	return &Message{
		From:    "billing@contoso.com",
		To:      []Address{{Name: "Ann Example", Address: "ann@example.com"}},
		Cc:      []Address{{Address: "cc@example.com"}},
		Subject: "Your invoice 2025-0042",
		HTML:    "<html><body>" + strings.Repeat("<p>Thank you for your business.</p>", 30) + "</body></html>",
		Headers: []Header{{Name: "X-Mailworker-Job-Id", Value: "01JABCDEF"}},
	}
}
