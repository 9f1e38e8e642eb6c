package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// Demo profile of `mailworker dev`.
const (
	demoProfile = "demo"
	demoSender  = "noreply@demo.example"
	demoTenant  = "demo-tenant"
	demoClient  = "demo-client"
)

// devMaxPayload is the embedded NATS server's max_payload: the deploy kit's
// (deploy/nats/nats-cluster.conf), so a job production accepts is accepted
// in dev too.
const devMaxPayload = 8 << 20

func (c *cli) devCmd() *cobra.Command {
	var natsListen, httpListen, graphListen, dataDir, consoleListen, smtpListen string
	var unpaced bool
	var faults []string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run everything on this machine: embedded NATS JetStream, a fake Entra + Graph, and a worker with a demo profile",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			specs, err := parseFaults(faults)
			if err != nil {
				return err
			}
			cfg, err := loadConfig(c.configPath, c.env)
			if err != nil {
				return err
			}
			if c.logLevel != "" {
				cfg.Log.Level = c.logLevel
			}
			cfg.Log.Format = "console"
			if c.logFormat != "" {
				cfg.Log.Format = c.logFormat
			}
			log := c.logger(cfg.Log)
			if err := os.MkdirAll(dataDir, 0o755); err != nil {
				return fmt.Errorf("--data-dir: %w", err)
			}
			ns, err := startNATS(natsListen, filepath.Join(dataDir, "jetstream"))
			if err != nil {
				return err
			}
			defer func() { ns.Shutdown(); ns.WaitForShutdown() }()

			secret := randomSecret()
			fake, err := graphtest.New(graphtest.Options{Addr: graphListen, TenantID: demoTenant, ClientID: demoClient,
				ClientSecret: secret, OutDir: filepath.Join(dataDir, "mail"),
				// Delivery tracking reads the fake's message trace (tracking.go).
				Roles: []string{graphtest.TraceRole},
				Trace: graphtest.TraceOptions{Lag: 2 * time.Second, Settle: 3 * time.Second, PendingFor: time.Minute}})
			if err != nil {
				return fmt.Errorf("--graph-listen: %w", err)
			}
			defer fake.Close()
			for _, fs := range specs {
				fake.SetFaultSpec(fs)
			}
			caFile := filepath.Join(dataDir, "sandbox-ca.pem")
			if err := writeFileAtomic(caFile, fake.CACertPEM()); err != nil {
				return err
			}

			if unpaced {
				zero := 0
				cfg.Worker.PerMailboxPerMinute = &zero
			}
			cfg.NATS = NATSConfig{URL: ns.ClientURL(), ConnectTimeout: 5 * time.Second}
			cfg.HTTP.Listen = httpListen
			if cfg.Profiles == nil {
				cfg.Profiles = map[string]ProfileConfig{}
			}
			// Large mail goes out as a draft with upload sessions.
			cfg.Profiles[demoProfile] = ProfileConfig{AllowedSenders: []string{demoSender},
				DeliveryMode: string(graphmail.ModeDraft), DraftWhen: string(graphmail.DraftLarge)}
			// dev only ever talks to the fake: every profile of the config
			// file or MAILWORKER_* env, whatever its tenant, cloud, endpoints
			// and credential, is pointed at the fake Entra + Graph (its
			// allowed senders and options are kept).
			redirected := sandboxProfiles(&cfg, fake.URL(), fake.GraphURL(), caFile, secret)
			// Delivery tracking is on in dev, against the fake's message trace.
			cfg.Tracking.Enabled, cfg.Tracking.App = true, TrackingApp{}
			if cfg.Tracking.Profile == "" {
				cfg.Tracking.Profile = demoProfile
			}
			if cfg.Tracking.Interval == 0 {
				cfg.Tracking.Interval = 5 * time.Second
			}
			if err := cfg.validate(); err != nil {
				return err
			}
			if err := onlyTheFake(cfg, fake.URL(), fake.GraphURL()); err != nil {
				return err
			}
			app, err := NewApp(ctx, cfg, log)
			if err != nil {
				if rest, ok := strings.CutPrefix(err.Error(), "http.listen: "); ok {
					return fmt.Errorf("--http-listen %s: %s", httpListen, rest)
				}
				return err
			}
			defer app.Close()
			wc := cfg.workerConfig()
			pacing := devPacing(wc.PerMailboxPerMinute, wc.PerMailboxConcurrency)
			cs, err := startDevConsole(ctx, cfg, fake, caFile, consoleListen, log)
			if err != nil {
				return err
			}
			defer cs.Close()
			ing, smtpPassword, err := devSMTP(ctx, cfg, log, smtpListen)
			if err != nil {
				return err
			}
			defer ing.Close()
			go func() { _ = ing.Run(ctx) }()
			fmt.Fprintf(c.stdout, `mailworker dev is up.
  NATS:        %s  (max_payload %d MB, as deploy/nats sets it)
  HTTP:        http://%s  (/metrics /healthz /readyz)
  Fake Graph:  %s  (delivered mail: %s/_sandbox/messages, files in %s)
  Pacing:      %s
  Faults:      %s
  Delivery:    profile %s is in draft mode (deliveryMode: draft): mail over one 4 MB sendMail request goes
               out as a draft with upload sessions, up to %s as Exchange counts it (attachments
               base64-encoded; profiles.%s.maxMessageSize). A default production profile (deliveryMode
               sendMail) dead-letters such a job message_too_large; draft mode needs the Exchange role
               "Application Mail.ReadWrite" and is not available in the US Government clouds (README, "Large mail").
  Console:     %s  (sign in as %s (Support) or %s (Reader); the fake Entra's TLS certificate is
               signed by %s: trust it or accept the browser's warning once)
Send a mail:
  go run ./cmd/mailworker send --nats-url %s --profile %s --from %s --to you@example.com --subject hello --text "it works" --wait
Or publish plain JSON with any NATS client:
  nats pub --server %s mail.send.%s '{"from":"%s","to":["you@example.com"],"subject":"hello","text":"it works"}'
Or submit over SMTP (STARTTLS, self-signed certificate; SMTP metrics on %s):
  SMTP:        %s  login %s
  swaks --server %s --tls --auth PLAIN --auth-user %s --auth-password %s --from %s --to you@example.com --header "Subject: hello" --body "it works" --attach @README.md
Then see whether it arrived (delivery tracking is on, against the fake's message trace): per-recipient events
(delivered, bounced, quarantined, filtered_as_spam) follow 'sent' within about 10 s; the fake's trace status
follows the address: bounce@…, quarantine@…, spam@…, pending@… (a minute), anything else delivered.
A bounce suppresses the address for the profile:
  go run ./cmd/mailworker send --nats-url %s --profile %s --from %s --to bounce@example.com --to you@example.com --subject hi --text t --wait
  go run ./cmd/mailworker status --nats-url %s --profile %s <job id>     (each recipient's delivery)
  go run ./cmd/mailworker suppressions list --nats-url %s
Profiles (all sent to the fake Graph, never to Microsoft): %s
Press Ctrl-C to stop.
`, ns.ClientURL(), devMaxPayload>>20, app.HTTPAddr(), fake.URL(), fake.URL(), filepath.Join(dataDir, "mail"), pacing, faultBanner(specs, fake.URL(), caFile),
				demoProfile, contract.FormatMessageSize(cfg.Profiles[demoProfile].MaxMessageBytes()), demoProfile,
				cs.URL(), demoSupportUser, demoReaderUser, caFile,
				ns.ClientURL(), demoProfile, demoSender, ns.ClientURL(), demoProfile, demoSender,
				"http://"+ing.HTTPAddr(), ing.Addr(), demoSMTPUser, ing.Addr(), demoSMTPUser, smtpPassword, demoSender,
				ns.ClientURL(), demoProfile, demoSender, ns.ClientURL(), demoProfile, ns.ClientURL(), strings.Join(redirected, ", "))
			return app.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&natsListen, "nats-listen", "127.0.0.1:4222", "address of the embedded NATS server")
	f.StringVar(&httpListen, "http-listen", "127.0.0.1:8025", "address of the worker's /metrics /healthz /readyz")
	f.StringVar(&graphListen, "graph-listen", "127.0.0.1:0", "address of the fake Entra + Graph (TLS)")
	f.StringVar(&consoleListen, "console-listen", defaultConsoleListen, "address of the support console")
	f.StringVar(&smtpListen, "smtp-listen", "127.0.0.1:2587", "address of the SMTP submission ingress (STARTTLS)")
	f.StringVar(&dataDir, "data-dir", ".mailworker-dev", "where JetStream data, delivered mail and the sandbox CA go")
	f.BoolVar(&unpaced, "unpaced", false, "no per-minute pace per mailbox (production paces at worker.perMailboxPerMinute, 30)")
	f.StringArrayVar(&faults, "fault", nil, faultFlagHelp)
	return cmd
}

// sandboxProfiles points every profile of cfg at the fake Entra + Graph:
// tenant, client id, cloud, endpoints, CA and credential are replaced; the
// allowed senders and sending options are kept. It returns the profile names.
func sandboxProfiles(cfg *Config, authority, graphURL, caFile, secret string) []string {
	names := make([]string, 0, len(cfg.Profiles))
	for name, p := range cfg.Profiles {
		p.TenantID, p.ClientID, p.Cloud = demoTenant, demoClient, ""
		p.AuthorityHost, p.GraphURL, p.CAFile = authority, graphURL, caFile
		p.Credential = CredentialConfig{ClientSecret: secret}
		cfg.Profiles[name] = p
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// onlyTheFake refuses a configuration in which any profile could reach
// another Entra or Graph than the fake's.
func onlyTheFake(cfg Config, authority, graphURL string) error {
	for name, p := range cfg.Profiles {
		if p.AuthorityHost != authority || p.GraphURL != graphURL || p.Cloud != "" {
			return fmt.Errorf("profiles.%s: dev sends only to its fake Graph, and this profile points elsewhere: refusing to start", name)
		}
	}
	return nil
}

// Demo people of the console in `mailworker dev`.
const (
	demoConsoleClient = "mailworker-console"
	demoSupportUser   = "support@demo.example"
	demoReaderUser    = "reader@demo.example"
)

// startDevConsole registers the console's app registration and two demo
// people with the fake Entra, and starts the console on listen.
func startDevConsole(ctx context.Context, cfg Config, fake *graphtest.Server, caFile, listen string, log zerolog.Logger) (*consoleServer, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("--console-listen: %w", err)
	}
	public := "http://" + ln.Addr().String()
	secret := randomSecret()
	fake.RegisterOIDCApp(graphtest.OIDCApp{ClientID: demoConsoleClient, ClientSecret: secret,
		RedirectURIs: []string{public + "/auth/callback"},
		Users: []graphtest.OIDCUser{
			{Name: "Sam Support", Username: demoSupportUser, Roles: []string{"Mailworker.Support"}},
			{Name: "Rita Reader", Username: demoReaderUser, Roles: []string{"Mailworker.Reader"}},
		}})
	cfg.Console = ConsoleConfig{PublicURL: public, TenantID: demoTenant, ClientID: demoConsoleClient, ClientSecret: secret,
		AuthorityHost: fake.URL(), CAFile: caFile, Secret: randomSecret() + randomSecret()}
	return startConsole(ctx, cfg, ln, log)
}

// startNATS runs an embedded nats-server with JetStream storing in dir.
func startNATS(listen, dir string) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen: port %q", portStr)
	}
	if port == 0 {
		port = -1
	}
	ns, err := server.NewServer(&server.Options{Host: host, Port: port, JetStream: true, StoreDir: dir,
		MaxPayload: devMaxPayload, NoLog: true, NoSigs: true, ServerName: "mailworker-dev"})
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats-server did not start on %s (port in use? try --nats-listen 127.0.0.1:0)", listen)
	}
	return ns, nil
}

func randomSecret() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (c *cli) sandboxCmd() *cobra.Command {
	var listen, outDir, caFile, secret string
	var faults []string
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Run the fake Entra + Graph alone (for testing other services and load tests)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			specs, err := parseFaults(faults)
			if err != nil {
				return err
			}
			fake, err := graphtest.New(graphtest.Options{Addr: listen, TenantID: demoTenant, ClientID: demoClient,
				ClientSecret: secret, OutDir: outDir})
			if err != nil {
				return err
			}
			defer fake.Close()
			for _, fs := range specs {
				fake.SetFaultSpec(fs)
			}
			if caFile != "" {
				if err := writeFileAtomic(caFile, fake.CACertPEM()); err != nil {
					return fmt.Errorf("--ca-file: %w", err)
				}
			}
			c.printSandbox(fake, caFile, secret)
			fmt.Fprintf(c.stdout, "  faults:     %s\n", faultBanner(specs, fake.URL(), caFile))
			<-cmd.Context().Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:8443", "listen address")
	f.StringVar(&outDir, "out-dir", "", "write each accepted message as .eml + .json here")
	f.StringVar(&caFile, "ca-file", "sandbox-ca.pem", "write the sandbox CA certificate here")
	f.StringVar(&secret, "client-secret", "sandbox-secret", "client secret the fake Entra accepts")
	f.StringArrayVar(&faults, "fault", nil, faultFlagHelp)
	return cmd
}

// printSandbox prints what a worker needs to use the sandbox: a profile block
// to paste under `profiles:` (authorityHost is the bare host; the tenant comes
// from tenantId), and the facts behind it.
func (c *cli) printSandbox(fake *graphtest.Server, caFile, secret string) {
	ca := "(none written: give --ca-file)"
	if caFile != "" {
		if abs, err := filepath.Abs(caFile); err == nil {
			caFile = abs
		}
		ca = caFile
	}
	fmt.Fprintf(c.stdout, `sandbox up: a fake Entra ID and Microsoft Graph over TLS
  url:        %s  (authority and Graph on one host)
  tenant:     %s
  client id:  %s
  secret:     %s
  CA file:    %s
  messages:   %s/_sandbox/messages
A profile for `+"`mailworker run`"+` (paste under "profiles:" in its config; any mailbox exists here):
  sandbox:
    tenantId: %s
    clientId: %s
    authorityHost: %s
    graphURL: %s
    caFile: %s
    credential:
      clientSecret: %s
    allowedSenders: [noreply@sandbox.example]
`, fake.URL(), demoTenant, demoClient, secret, ca, fake.URL(), demoTenant, demoClient, fake.URL(), fake.GraphURL(), yamlString(caFile), yamlString(secret))
}

// yamlString quotes s for YAML when it is not a plain scalar.
func yamlString(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-", r))
	}) < 0 {
		return s
	}
	return strconv.Quote(s)
}

// probe GETs url and fails unless it answers 200.
func probe(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return &exitError{code: 1, msg: "not ready: " + err.Error()}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return &exitError{code: 1, msg: fmt.Sprintf("not ready: %d %s", resp.StatusCode, body)}
	}
	return nil
}

// devPacing is the dev banner's pacing line for a per-minute pace (0 or
// less: off, as --unpaced sets it) and in-flight limit per mailbox.
func devPacing(perMinute, concurrency int) string {
	if perMinute <= 0 {
		return fmt.Sprintf("unpaced (--unpaced or worker.perMailboxPerMinute 0): no per-minute limit, %d requests in flight per mailbox; production paces at 30 per minute", concurrency)
	}
	return fmt.Sprintf("like production: at most %d sends per minute and %d requests in flight per mailbox (200 mails to one mailbox take about %.1f minutes); --unpaced or MAILWORKER_WORKER_PER_MAILBOX_PER_MINUTE=0 lifts the per-minute pace",
		perMinute, concurrency, 200/float64(perMinute))
}

// faultFlagHelp documents --fault (dev, sandbox).
const faultFlagHelp = "make the fake Graph fail, to practise triage: sendMail[@mailbox]=kind[:probability],… " +
	"(kinds 429, 500, 502, 503, 504, accept504, 400, 403, 404, 413, reset; e.g. sendMail=429:0.2,503:0.1); repeatable; " +
	"change it while running with PUT /_sandbox/faults (docs/runbook.md, DLQ triage)"

// parseFaults reads --fault specs, naming the flag in an error.
func parseFaults(specs []string) ([]graphtest.FaultSpec, error) {
	out := make([]graphtest.FaultSpec, 0, len(specs))
	for _, s := range specs {
		fs, err := graphtest.ParseFaultSpec(s)
		if err != nil {
			return nil, fmt.Errorf("--fault: %w", err)
		}
		out = append(out, fs)
	}
	return out, nil
}

// faultBanner says which faults the fake Graph injects, and how to change
// them while it runs.
func faultBanner(specs []graphtest.FaultSpec, url, caFile string) string {
	change := fmt.Sprintf("curl --cacert %s -X PUT --data 'sendMail=503:0.5' %s/_sandbox/faults (DELETE clears)", caFile, url)
	if len(specs) == 0 {
		return "none (--fault sendMail=429:0.2,503:0.1 makes Graph fail; or " + change + ")"
	}
	var parts []string
	for _, fs := range specs {
		who := "every mailbox"
		if fs.Mailbox != "" {
			who = fs.Mailbox
		}
		var kinds []string
		for _, f := range fs.Faults {
			k := strconv.Itoa(f.Status)
			switch {
			case f.Reset:
				k = "connection reset"
			case f.AcceptThenFail:
				k = "504 after accepting"
			case f.RetryAfter != "":
				k += " (Retry-After " + f.RetryAfter + ")"
			case f.Code != "":
				k += " " + f.Code
			}
			kinds = append(kinds, fmt.Sprintf("%.0f%% %s", f.Probability*100, k))
		}
		parts = append(parts, "sendMail of "+who+": "+strings.Join(kinds, ", "))
	}
	return strings.Join(parts, "; ") + "; change with " + change
}
