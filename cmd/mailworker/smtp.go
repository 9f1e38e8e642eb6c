package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/cmd/mailworker/internal/smtpd"
	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// SMTPConfig configures the SMTP submission ingress (`mailworker smtp`).
type SMTPConfig struct {
	// Listen is the submission port: plain, STARTTLS required before AUTH.
	Listen string `yaml:"listen"`
	// TLSListen is an optional implicit-TLS port (465 style); "" = off.
	TLSListen string `yaml:"tlsListen"`
	Domain    string `yaml:"domain"`
	// CertFile and KeyFile are the server certificate chain and key (PEM,
	// e.g. tls.crt/tls.key of a cert-manager Secret); re-read when they change.
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// Credentials are logins given in the config; CredentialsFile (YAML with
	// a credentials: list of the same shape) is re-read when it changes.
	Credentials     []smtpd.Credential `yaml:"credentials"`
	CredentialsFile string             `yaml:"credentialsFile"`
	// ReloadInterval: how often the credentials and certificate files are
	// checked for changes (at most; on a login or handshake). Default 10s.
	ReloadInterval        time.Duration `yaml:"reloadInterval"`
	MaxMessageBytes       int           `yaml:"maxMessageBytes"`
	MaxRecipients         int           `yaml:"maxRecipients"`
	MaxSessions           int           `yaml:"maxSessions"`
	MessagesPerConnection int           `yaml:"messagesPerConnection"`
	MessagesPerMinute     int           `yaml:"messagesPerMinute"`
	InlineMaxBytes        int           `yaml:"inlineMaxBytes"`
	ReadTimeout           time.Duration `yaml:"readTimeout"`
	PublishTimeout        time.Duration `yaml:"publishTimeout"`
	// MaxSessionsPerAddress and PreAuthTimeout keep idle or greedy clients
	// from taking every session (defaults 10 and 30s).
	MaxSessionsPerAddress int           `yaml:"maxSessionsPerAddress"`
	PreAuthTimeout        time.Duration `yaml:"preAuthTimeout"`
	// MaxSessionsPerLogin bounds one login's concurrent sessions, from any
	// addresses (default a fifth of maxSessions).
	MaxSessionsPerLogin int `yaml:"maxSessionsPerLogin"`
	// RetryWindow: how long a submission whose answer the client may not
	// have seen is recognised in its retry (default 24h).
	RetryWindow time.Duration `yaml:"retryWindow"`
	// RecordBeforeAnswer (default true): write each submission's retry
	// record before its 250, so that a retry after an ingress crash between
	// the 250 and the client's next command is the same job; false: only
	// when the answer is known to be at risk (faster; that crash then
	// makes the retry a second mail).
	RecordBeforeAnswer *bool `yaml:"recordBeforeAnswer"`
	// Password guessing: failures per connection before it is closed
	// (default 3), per address within authLockout before AUTH from it is
	// refused (default 10 in 15m), the tarpit step (default 1s).
	AuthFailuresPerConnection int           `yaml:"authFailuresPerConnection"`
	AuthFailuresPerAddress    int           `yaml:"authFailuresPerAddress"`
	AuthLockout               time.Duration `yaml:"authLockout"`
	AuthFailureDelay          time.Duration `yaml:"authFailureDelay"`
	// AuthCacheTTL: verified logins are cached this long (default 60s,
	// negative = off); a change of the credentials empties the cache.
	// AuthCacheSize: at most this many verified logins are kept, least
	// recently used dropped first (default 1000, negative = off).
	AuthCacheTTL  time.Duration `yaml:"authCacheTTL"`
	AuthCacheSize int           `yaml:"authCacheSize"`
}

func (c *cli) smtpCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "smtp",
		Short: "Run the SMTP submission ingress: authenticated SMTP in, MIME jobs on mail.send.<profile> out",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.configFor(Config.validateSMTP)
			if err != nil {
				return err
			}
			log := c.logger(cfg.Log)
			ing, err := newSMTPIngress(cmd.Context(), cfg, log, nil)
			if err != nil {
				return err
			}
			defer ing.Close()
			return ing.Run(cmd.Context())
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "hash-password",
		Short: "Read a password on stdin and print its bcrypt hash for smtp.credentials[].passwordHash",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			line, err := bufio.NewReader(c.stdin).ReadString('\n')
			if err != nil && line == "" {
				return errors.New("hash-password: no password on stdin")
			}
			pw := strings.TrimRight(line, "\r\n")
			if len(pw) < 12 {
				return errors.New("hash-password: use at least 12 characters")
			}
			h, err := smtpd.HashPassword(pw)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, h)
			return nil
		},
	})
	return cmd
}

// smtpIngress is a running `mailworker smtp`: NATS, the SMTP server and
// the HTTP listener for /metrics, /healthz and /readyz.
type smtpIngress struct {
	cfg     SMTPConfig
	log     zerolog.Logger
	nc      *nats.Conn
	srv     *smtpd.Server
	reg     *prometheus.Registry
	lns     []net.Listener // submission, then implicit TLS if any
	httpLn  net.Listener
	httpSrv *http.Server
	once    sync.Once
}

// newSMTPIngress connects to NATS and binds the listeners. tlsCfg, when
// not nil, replaces the certificate files (dev's self-signed certificate).
func newSMTPIngress(ctx context.Context, cfg Config, log zerolog.Logger, tlsCfg *tls.Config) (*smtpIngress, error) {
	sc := cfg.SMTP
	if len(cfg.Profiles) == 0 {
		return nil, errors.New("profiles: the SMTP ingress needs the profiles its logins belong to")
	}
	if sc.Listen == "" {
		sc.Listen = ":587"
	}
	if sc.ReloadInterval == 0 {
		sc.ReloadInterval = 10 * time.Second
	}
	in := &smtpIngress{cfg: sc, log: log, reg: prometheus.NewRegistry()}
	ok := false
	defer func() {
		if !ok {
			in.Close()
		}
	}()
	in.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(in.reg)
	names := make([]string, 0, len(cfg.Profiles))
	senders := map[string][]string{}
	maxRcpt := map[string]int{}
	maxSize := map[string]int64{}
	for n, p := range cfg.Profiles {
		names = append(names, n)
		senders[n] = p.AllowedSenders
		maxRcpt[n] = p.MaxRecipientsPerMessage // 0: Exchange's default 500
		if p.DeliveryMode == string(graphmail.ModeDraft) {
			// Large MIME goes out through a draft: the door takes what the
			// mailbox takes (the worker holds the job to the same limit).
			maxSize[n] = p.MaxMessageBytes()
		}
	}
	sort.Strings(names)
	m := smtpd.NewMetrics(in.reg, names)

	creds, err := smtpd.NewCredentials(sc.Credentials, sc.CredentialsFile, sc.ReloadInterval, senders, func(ok bool, err error) {
		if ok {
			m.CredReloads.WithLabelValues("ok").Inc()
			log.Info().Msg("smtp credentials reloaded")
			return
		}
		m.CredReloads.WithLabelValues("error").Inc()
		log.Error().Err(err).Msg("smtp credentials file changed but does not load; the previous credentials stay")
	})
	if err != nil {
		return nil, err
	}
	if tlsCfg == nil {
		if sc.CertFile == "" || sc.KeyFile == "" {
			return nil, errors.New("smtp.certFile and smtp.keyFile: required (AUTH is only offered over TLS)")
		}
		kp, err := smtpd.NewKeyPair(sc.CertFile, sc.KeyFile, sc.ReloadInterval, func(err error) {
			log.Error().Err(err).Msg("smtp certificate files changed but do not load; the previous certificate stays")
		})
		if err != nil {
			return nil, err
		}
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.GetCertificate}
	}

	// No reconnect buffer: a publish while NATS is away fails at once
	// instead of being sent after the client was told 451 (and retried).
	if in.nc, err = connectNATS(cfg.NATS, "mailworker-smtp", log, nats.ReconnectBufSize(-1)); err != nil {
		return nil, err
	}
	// A job and its retry record are published without waiting (one write,
	// both answers awaited together, within smtp.publishTimeout); an answer
	// that never comes is forgotten after the async timeout.
	js, err := jetstream.New(in.nc, jetstream.WithPublishAsyncTimeout(time.Minute+sc.PublishTimeout))
	if err != nil {
		return nil, err
	}
	store := queue.NewAttachments(js) // each profile's own MAIL_ATTACHMENTS_<profile>
	in.srv, err = smtpd.New(smtpd.Config{Domain: sc.Domain, MaxMessageBytes: sc.MaxMessageBytes, MaxRecipients: sc.MaxRecipients,
		MaxSessions: sc.MaxSessions, MessagesPerConnection: sc.MessagesPerConnection, MessagesPerMinute: sc.MessagesPerMinute,
		InlineMaxBytes: sc.InlineMaxBytes, ReadTimeout: sc.ReadTimeout, PublishTimeout: sc.PublishTimeout, Senders: senders,
		MaxSessionsPerAddress: sc.MaxSessionsPerAddress, MaxSessionsPerLogin: sc.MaxSessionsPerLogin, PreAuthTimeout: sc.PreAuthTimeout, RetryWindow: sc.RetryWindow,
		AuthFailuresPerConnection: sc.AuthFailuresPerConnection, AuthFailuresPerAddress: sc.AuthFailuresPerAddress,
		AuthLockout: sc.AuthLockout, AuthFailureDelay: sc.AuthFailureDelay, AuthCacheTTL: sc.AuthCacheTTL, AuthCacheSize: sc.AuthCacheSize, ProfileMaxRecipients: maxRcpt,
		ProfileMaxMessageBytes: maxSize,
		NoRecordBeforeAnswer:   sc.RecordBeforeAnswer != nil && !*sc.RecordBeforeAnswer},
		creds, faultLosePublishAcks(queue.NewPublisher(js), log), store, smtpd.Options{Logger: log, Metrics: m, TLS: tlsCfg})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", sc.Listen)
	if err != nil {
		return nil, fmt.Errorf("smtp.listen: %w", err)
	}
	in.lns = append(in.lns, ln)
	if sc.TLSListen != "" {
		tln, err := net.Listen("tcp", sc.TLSListen)
		if err != nil {
			return nil, fmt.Errorf("smtp.tlsListen: %w", err)
		}
		in.lns = append(in.lns, tln)
	}
	if cfg.HTTP.Listen != "" {
		if in.httpLn, err = net.Listen("tcp", cfg.HTTP.Listen); err != nil {
			return nil, fmt.Errorf("http.listen: %w", err)
		}
		in.httpSrv = &http.Server{Handler: in.handler(cfg.HTTP), ReadHeaderTimeout: 5 * time.Second}
	}
	ok = true
	return in, nil
}

// handler serves the ingress's metrics, health and (http.pprof) profiles.
func (in *smtpIngress) handler(hc HTTPConfig) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(in.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !in.nc.IsConnected() {
			http.Error(w, "not ready: NATS not connected", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if hc.Pprof {
		handlePprof(mux)
	}
	return mux
}

// FaultLosePublishAcksEnv is a FAULT INJECTION for tests, never for
// production: MAILWORKER_FAULT_SMTP_LOSE_PUBLISH_ACKS=N makes the first N
// publishes of `mailworker smtp` land in JetStream and then report a timeout,
// as when the broker's ack is lost on the way back (issue 19 item 4). The
// ingress logs a warning at start when it is set.
const FaultLosePublishAcksEnv = "MAILWORKER_FAULT_SMTP_LOSE_PUBLISH_ACKS"

func faultLosePublishAcks(p smtpd.Publisher, log zerolog.Logger) smtpd.Publisher {
	n, err := strconv.Atoi(os.Getenv(FaultLosePublishAcksEnv))
	if err != nil || n <= 0 {
		return p
	}
	log.Warn().Int("publishes", n).Msg("FAULT INJECTION " + FaultLosePublishAcksEnv + ": the first publishes land and report a lost ack (tests only)")
	f := &lostAcks{p: p}
	f.left.Store(int64(n))
	return f
}

type lostAcks struct {
	p    smtpd.Publisher
	left atomic.Int64
}

func (f *lostAcks) Publish(ctx context.Context, profile string, job *contract.Job) (string, error) {
	id, err := f.p.Publish(ctx, profile, job)
	if err == nil && f.left.Add(-1) >= 0 {
		return "", fmt.Errorf("queue: publish job %s: fault injection (%s): ack dropped: %w", job.ID, FaultLosePublishAcksEnv, context.DeadlineExceeded)
	}
	return id, err
}

// PublishJobAsync keeps the ingress on its asynchronous path (the one
// deployed) with the fault on.
func (f *lostAcks) PublishJobAsync(profile string, job *contract.Job) (func(context.Context) (queue.Published, error), error) {
	ap, ok := f.p.(smtpd.AsyncPublisher)
	if !ok {
		return nil, errors.New("fault injection: the publisher has no asynchronous path")
	}
	wait, err := ap.PublishJobAsync(profile, job)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) (queue.Published, error) {
		p, err := wait(ctx)
		if err == nil && f.left.Add(-1) >= 0 {
			return queue.Published{}, fmt.Errorf("queue: publish job %s: fault injection (%s): ack dropped: %w", job.ID, FaultLosePublishAcksEnv, context.DeadlineExceeded)
		}
		return p, err
	}, nil
}

// Addr is the submission listener's address; TLSAddr the implicit-TLS one ("" when off).
func (in *smtpIngress) Addr() string { return in.lns[0].Addr().String() }

func (in *smtpIngress) TLSAddr() string {
	if len(in.lns) < 2 {
		return ""
	}
	return in.lns[1].Addr().String()
}

// HTTPAddr is the metrics listener's address ("" when off).
func (in *smtpIngress) HTTPAddr() string {
	if in.httpLn == nil {
		return ""
	}
	return in.httpLn.Addr().String()
}

// Run serves until ctx ends, then lets open sessions finish for up to 10s.
func (in *smtpIngress) Run(ctx context.Context) error {
	errc := make(chan error, 3)
	if in.httpSrv != nil {
		go func() {
			if err := in.httpSrv.Serve(in.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				in.log.Error().Err(err).Msg("http server")
			}
		}()
	}
	go func() { errc <- in.srv.Serve(in.lns[0]) }()
	if len(in.lns) > 1 {
		go func() { errc <- in.srv.ServeTLS(in.lns[1]) }()
	}
	in.log.Info().Str("addr", in.Addr()).Str("tlsAddr", in.TLSAddr()).Str("http", in.HTTPAddr()).Msg("smtp listening")
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = in.srv.Shutdown(shutCtx)
	if in.httpSrv != nil {
		_ = in.httpSrv.Shutdown(shutCtx)
	}
	return err
}

// Close releases everything. Safe to call more than once.
func (in *smtpIngress) Close() {
	in.once.Do(func() {
		if in.srv != nil {
			_ = in.srv.Close()
		}
		for _, ln := range in.lns {
			_ = ln.Close()
		}
		if in.httpSrv == nil && in.httpLn != nil {
			_ = in.httpLn.Close()
		}
		if in.nc != nil {
			in.nc.Close()
		}
	})
}

// demoSMTPUser is the SMTP login of `mailworker dev`.
const demoSMTPUser = "demo"

// devSMTP starts the SMTP ingress of `mailworker dev` on listen, with a
// self-signed certificate and one login for the demo profile (random
// password, returned). Its metrics go on a loopback port of their own.
func devSMTP(ctx context.Context, cfg Config, log zerolog.Logger, listen string) (*smtpIngress, string, error) {
	tlsCfg, err := selfSignedTLS()
	if err != nil {
		return nil, "", err
	}
	password := randomSecret()
	hash, err := smtpd.HashPassword(password)
	if err != nil {
		return nil, "", err
	}
	cfg.SMTP.Listen = listen
	cfg.SMTP.Credentials = append(cfg.SMTP.Credentials, smtpd.Credential{Username: demoSMTPUser, PasswordHash: hash, Profile: demoProfile})
	cfg.HTTP.Listen = "127.0.0.1:0"
	ing, err := newSMTPIngress(ctx, cfg, log, tlsCfg)
	if err != nil {
		return nil, "", fmt.Errorf("--smtp-listen: %w", err)
	}
	return ing, password, nil
}

// selfSignedTLS is a server TLS config with a fresh self-signed certificate
// for localhost, 127.0.0.1 and ::1 (dev only: clients must not verify it).
func selfSignedTLS() (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "mailworker dev smtp"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, nil
}
