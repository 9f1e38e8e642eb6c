package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// A connection to a server that is frozen (SIGSTOP, a VM pause, a network
// that drops packets without a reset) stays open: TCP keeps it, and nats.go
// notices only when its pings go unanswered. Every PingInterval it sends a
// PING; when more than MaxPingsOut are unanswered it drops the connection as
// stale and reconnects to another server of the cluster (nats.go nats.go:
// processPingTimer). nats.go's defaults, 2 minutes and 2, take 4 to 6
// minutes: the worker's acks, state writes and pulls sit in the frozen
// server's socket all that time (issue 19, defect 2). 2 s and 2 take 4 to 6
// s. A server answers PING from its read loop, so a healthy server under
// load is not mistaken for a frozen one; the cost is a PING/PONG every 2 s
// per connection.
const (
	pingInterval = 2 * time.Second
	maxPingsOut  = 2
)

// connectNATS dials NATS with the configured authentication: a credentials
// file (JWT + nkey), an nkey seed file, user/password or a token, and TLS with
// a custom CA and optional client certificate, and an optional custom inbox
// prefix. It reconnects for ever.
func connectNATS(c NATSConfig, name string, log zerolog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(maxPingsOut),
		nats.MaxReconnects(-1),
		nats.Timeout(c.ConnectTimeout),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err == nil || nc.IsClosed() || nc.IsDraining() {
				// Our own Close or Drain at shutdown: not a warning.
				log.Debug().Msg("nats connection closed")
				return
			}
			log.Warn().Err(err).Msg("nats disconnected")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
	}
	if c.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	switch {
	case c.CredsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	case c.NkeySeedFile != "":
		opt, err := nats.NkeyOptionFromSeed(c.NkeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nats.nkeySeedFile: %w", err)
		}
		opts = append(opts, opt)
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	}
	if c.TLS.CAFile != "" || c.TLS.CertFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.TLS.CAFile != "" {
			pem, err := os.ReadFile(c.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("nats.tls.caFile: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("nats.tls.caFile: %s holds no PEM certificate", c.TLS.CAFile)
			}
			tc.RootCAs = pool
		}
		if c.TLS.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("nats.tls.certFile/keyFile: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(tc))
	}
	nc, err := nats.Connect(c.URL, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redactURL(c.URL), err)
	}
	return nc, nil
}

// redactURL hides a password or token embedded in a NATS URL.
func redactURL(u string) string {
	scheme, rest, ok := stringsCut(u, "://")
	if !ok {
		return u
	}
	if at := lastIndex(rest, '@'); at >= 0 {
		return scheme + "://[redacted]@" + rest[at+1:]
	}
	return u
}

func stringsCut(s, sep string) (string, string, bool) {
	for i := 0; i+len(sep) <= len(s); i++ {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

func lastIndex(s string, c byte) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == c {
			return i
		}
	}
	return -1
}
