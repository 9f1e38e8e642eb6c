package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/tracking"
	"github.com/mailworker/mailworker/worker"
)

// App is a running worker process: NATS connection, Graph clients, the pool
// and the HTTP listener for /metrics, /healthz and /readyz. Tests start it in
// process with ":0" listeners; `mailworker run` and `dev` wrap it.
type App struct {
	cfg      Config
	log      zerolog.Logger
	nc       *nats.Conn
	js       jetstream.JetStream
	q        *queue.Queue
	pool     *worker.Pool
	clients  []*graphmail.Client
	watches  []*credWatch // profiles with a credential file to re-read
	reg      *prometheus.Registry
	httpLn   net.Listener
	httpSrv  *http.Server
	closeOne sync.Once
	tracking *appTracking // nil when delivery tracking is off (tracking.go)
}

// NewApp connects to NATS, provisions (unless disabled) and binds the
// streams, builds one Graph client per profile and the pool. It makes no Graph
// or Entra calls. Errors name the setting at fault.
func NewApp(ctx context.Context, cfg Config, log zerolog.Logger) (*App, error) {
	if len(cfg.Profiles) == 0 {
		return nil, errors.New("profiles: at least one profile is required to run a worker")
	}
	a := &App{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	ok := false
	defer func() {
		if !ok {
			a.Close()
		}
	}()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(a.reg)

	names := make([]string, 0, len(cfg.Profiles))
	for n := range cfg.Profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	metrics := worker.NewMetrics(a.reg, names)

	var err error
	for {
		// A worker started while its NATS node restarts (a rollout, a node
		// lost) waits for it, as it waits for JetStream below, instead of
		// exiting: only "no server answers" (none listening, or one that
		// accepted the connection and then said nothing in time: a frozen
		// node) is waited out; a refused login or a bad certificate fails
		// at once.
		a.nc, err = connectNATS(cfg.NATS, "mailworker", log)
		if err == nil || !noServerAnswers(err) || ctx.Err() != nil {
			break
		}
		log.Warn().Err(err).Msg("no NATS server answers yet; trying again in 1s")
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return nil, err
	}
	if a.js, err = jetstream.New(a.nc); err != nil {
		return nil, err
	}
	if cfg.Streams.Provision == nil || *cfg.Streams.Provision {
		if err := queue.Provision(ctx, a.js, cfg.queueConfig()); err != nil {
			return nil, fmt.Errorf("provision streams: %w", err)
		}
	}
	var jobs *queue.Jobs
	for {
		if a.q, err = queue.Open(ctx, a.js); err == nil {
			jobs, err = a.q.Jobs(ctx, names)
		}
		if err == nil || !jetStreamNotReady(err) || ctx.Err() != nil {
			break
		}
		// A node that is starting, catching up or without a meta leader
		// answers nothing for a while: wait for it instead of exiting (the
		// pod would be restarted with a back-off, told to run provision).
		log.Warn().Err(err).Msg("JetStream not answering yet (a node starting or a leader election); trying again in 1s")
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return nil, err
	}

	sender := graphmail.NewSender(a.q.Attachments)
	clients := map[string]*graphmail.Client{}
	for _, name := range names {
		consent := &consentWatch{profile: name, metrics: metrics, log: log}
		c, file, err := newGraphClient(name, cfg.Profiles[name], cfg.Worker.SendTimeout, cfg.Worker.UploadChunkBytes, metrics, consent.token)
		if err != nil {
			return nil, err
		}
		a.clients = append(a.clients, c)
		clients[name] = c
		sender.Add(name, c, cfg.Profiles[name].SaveToSentItems)
		sender.SetMode(name, graphmail.Mode{Via: graphmail.SendMode(cfg.Profiles[name].DeliveryMode),
			When: graphmail.DraftWhen(cfg.Profiles[name].DraftWhen)})
		w := &credWatch{profile: name, path: "profiles." + name, cfg: cfg.Profiles[name].Credential, client: c, metrics: metrics, log: log}
		w.loaded(file)
		w.logCredential("graph client ready")
		if file != nil {
			a.watches = append(a.watches, w)
		}
	}
	var jobSender worker.Sender = sender
	if a.tracking, err = setupTracking(ctx, cfg, a.js, a.q, names, clients, a.reg, metrics, log); err != nil {
		return nil, err
	}
	if a.tracking != nil {
		// Suppressed recipients are dropped and every send is recorded for
		// the tracker before its Graph call (tracking.Wrap).
		jobSender = tracking.Wrap(sender, a.tracking.store, nil).(worker.Sender)
		if !a.tracking.shared {
			a.clients = append(a.clients, a.tracking.client)
			// The tracker's own registration rotates as a profile's does.
			if w := a.tracking.watch; w != nil {
				a.watches = append(a.watches, w)
			}
		}
	}
	broker := worker.Broker{Consumer: jobsConsumer{jobs}, States: a.q.States, DeadLetters: a.q.DLQ,
		Events: a.q.Events, Attachments: a.q.Attachments, Scheduler: a.q.Schedules, Ledger: a.q.Pacing, Membership: a.q.Workers}
	if a.pool, err = worker.New(cfg.workerConfig(), broker, jobSender, worker.Options{Logger: log, Metrics: metrics}); err != nil {
		return nil, err
	}
	// Support's replay and purge requests, recorded in MAIL_AUDIT (admin.go).
	if _, err := serveAdmin(a.nc, a.q, log); err != nil {
		return nil, err
	}
	if cfg.HTTP.Listen != "" {
		if a.httpLn, err = net.Listen("tcp", cfg.HTTP.Listen); err != nil {
			return nil, fmt.Errorf("http.listen: %w", err)
		}
		a.httpSrv = &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
	}
	ok = true
	return a, nil
}

// registerBuildInfo registers mailworker_build_info{version}.
func registerBuildInfo(reg prometheus.Registerer) {
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "mailworker", Name: "build_info",
		Help: "Build information; always 1."}, []string{"version"})
	buildInfo.WithLabelValues(version).Set(1)
	reg.MustRegister(buildInfo)
}

// readCredential reads the credential configured at path (profiles.<name>,
// or tracking.app), with the content of its certificate or secret file (nil
// when it has none) for change detection.
func readCredential(path string, cc CredentialConfig) (graphmail.Credential, []byte, error) {
	cred := graphmail.Credential{
		ClientSecret:        cc.ClientSecret,
		CertificatePassword: cc.CertificatePassword,
		FederatedTokenFile:  cc.FederatedTokenFile,
		FederatedAudience:   cc.FederatedAudience,
	}
	if f := cc.CertificateFile; f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return cred, nil, fmt.Errorf("%s.credential.certificateFile: %w", path, err)
		}
		cred.CertificatePEM = pem
		return cred, pem, nil
	}
	if f := cc.ClientSecretFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return cred, nil, fmt.Errorf("%s.credential.clientSecretFile: %w", path, err)
		}
		cred.ClientSecret = strings.TrimSpace(string(b))
		return cred, b, nil
	}
	return cred, nil, nil
}

// newGraphClient builds a profile's Graph client from its config; file is
// the content of its credential file, if any. onToken gets what each token
// fetched from Entra grants.
func newGraphClient(name string, p ProfileConfig, timeout time.Duration, chunk int, m *worker.Metrics, onToken func(graphmail.TokenInfo)) (c *graphmail.Client, file []byte, err error) {
	cred, file, err := readCredential("profiles."+name, p.Credential)
	if err != nil {
		return nil, nil, err
	}
	gc := graphmail.Config{Name: name, TenantID: p.TenantID, ClientID: p.ClientID, Cloud: graphmail.Cloud(p.Cloud),
		AuthorityHost: p.AuthorityHost, GraphURL: p.GraphURL, Credential: cred, Timeout: timeout, UploadChunkBytes: chunk,
		MaxRecipientsPerMessage: p.MaxRecipientsPerMessage, AllowedHeaders: p.AllowedHeaders,
		OnTokenRequest: func(ok bool) {
			result := "ok"
			if !ok {
				result = "error"
			}
			m.TokenRequests.WithLabelValues(name, result).Inc()
		},
		OnToken: onToken}
	if p.CAFile != "" {
		hc, err := httpClientWithCA(p.CAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("profiles.%s.caFile: %w", name, err)
		}
		gc.HTTPClient = hc
	}
	if c, err = graphmail.New(gc); err != nil {
		return nil, nil, fmt.Errorf("profiles.%s: %w", name, err)
	}
	return c, file, nil
}

// httpClientWithCA is a client that also trusts the CA in file (the sandbox's).
func httpClientWithCA(file string) (*http.Client, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1024, 1024
	tr.ForceAttemptHTTP2 = true
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, nil
}

func (a *App) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if a.cfg.HTTP.Pprof {
		handlePprof(mux)
	}
	return mux
}

// handlePprof serves net/http/pprof under /debug/pprof/ (http.pprof).
func handlePprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// ready reports why the app cannot take work, or nil.
func (a *App) ready() error {
	if !a.nc.IsConnected() {
		return errors.New("NATS not connected")
	}
	if !a.pool.Ready() {
		return errors.New("consumer not bound")
	}
	// A local credential fault (e.g. an empty federated token file) is a configuration
	// error: say so here rather than let it pass for an Entra outage.
	for _, c := range a.clients {
		if err := c.CredentialFault(); err != nil {
			return fmt.Errorf("credential: %w", err)
		}
	}
	return nil
}

// HTTPAddr is the address the HTTP listener is bound to ("" when disabled).
func (a *App) HTTPAddr() string {
	if a.httpLn == nil {
		return ""
	}
	return a.httpLn.Addr().String()
}

// Run serves HTTP and consumes until ctx ends, then drains (see worker.Pool.Run).
func (a *App) Run(ctx context.Context) error {
	if a.httpSrv != nil {
		go func() {
			if err := a.httpSrv.Serve(a.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error().Err(err).Msg("http server")
			}
		}()
		a.log.Info().Str("addr", a.HTTPAddr()).Msg("http listening (/metrics /healthz /readyz)")
	}
	watchCtx, stopWatches := context.WithCancel(ctx)
	var watching sync.WaitGroup
	for _, w := range a.watches {
		watching.Go(func() { w.run(watchCtx) })
	}
	if a.tracking != nil {
		watching.Go(func() { a.tracking.tracker.Run(watchCtx) })
	}
	err := a.pool.Run(ctx)
	stopWatches()
	watching.Wait()
	if a.httpSrv != nil {
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = a.httpSrv.Shutdown(shutCtx)
		cancel()
	}
	return err
}

// Close releases the connection and clients. Safe to call more than once.
func (a *App) Close() {
	a.closeOne.Do(func() {
		if a.httpSrv == nil && a.httpLn != nil {
			_ = a.httpLn.Close()
		}
		for _, c := range a.clients {
			c.Close()
		}
		if a.nc != nil {
			_ = a.nc.Drain()
			a.nc.Close()
		}
	})
}

// jetStreamNotReady reports whether err says JetStream did not answer (a
// timeout, no responders) or answered 503 "JetStream system temporarily
// unavailable" (err_code 10008, while a node catches up), as opposed to an
// answer such as "stream not found" that waiting will not change.
func jetStreamNotReady(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		(errors.As(err, &apiErr) && apiErr.Code == 503)
}

// noServerAnswers tells a connection that failed because no NATS server
// answered — none listening, or a connect or handshake that timed out (a
// frozen node: the cluster fault suite started a replica on a node it had
// just stopped with SIGSTOP) — from one a server refused.
func noServerAnswers(err error) bool {
	var ne net.Error
	return errors.Is(err, nats.ErrNoServers) || errors.Is(err, nats.ErrTimeout) ||
		(errors.As(err, &ne) && ne.Timeout())
}
