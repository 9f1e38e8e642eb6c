package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/tracking"
	"github.com/mailworker/mailworker/worker"
)

// TrackingConfig is the `tracking:` section: delivery truth from Exchange
// message trace (README "Delivery events", docs/runbook.md "Delivery
// tracking"). Off by default (on in `mailworker dev`).
type TrackingConfig struct {
	Enabled bool `yaml:"enabled"`
	// App is the app registration that reads message trace: tenantId,
	// clientId, credential, cloud, endpoints and caFile as in a profile. A
	// separate registration is recommended (ExchangeMessageTrace.Read.All is
	// tenant-wide read of mail metadata); when App.ClientID is empty, the
	// registration of profile Profile is used.
	App     TrackingApp `yaml:"app"`
	Profile string      `yaml:"profile"`
	// Interval between tracker passes (default 1m), Horizon after which an
	// unsettled recipient gets delivery_unknown (default 24h), SuppressFor
	// how long a hard bounce suppresses an address (default 2160h = 90 days),
	// BudgetPer5Minutes the message trace requests all replicas may make per
	// 5 minutes (default 80 of the tenant's 100).
	Interval          time.Duration `yaml:"interval"`
	Horizon           time.Duration `yaml:"horizon"`
	SuppressFor       time.Duration `yaml:"suppressFor"`
	BudgetPer5Minutes int           `yaml:"budgetPer5Minutes"`
}

// TrackingApp is the app registration the tracker reads message trace with:
// the Entra and Graph settings of a profile, nothing about sending.
type TrackingApp struct {
	TenantID      string           `yaml:"tenantId"`
	ClientID      string           `yaml:"clientId"`
	Credential    CredentialConfig `yaml:"credential"`
	Cloud         string           `yaml:"cloud"`
	AuthorityHost string           `yaml:"authorityHost"`
	GraphURL      string           `yaml:"graphURL"`
	CAFile        string           `yaml:"caFile"`
}

func (t TrackingApp) profile() ProfileConfig {
	return ProfileConfig{TenantID: t.TenantID, ClientID: t.ClientID, Credential: t.Credential, Cloud: t.Cloud,
		AuthorityHost: t.AuthorityHost, GraphURL: t.GraphURL, CAFile: t.CAFile}
}

// appTracking is the delivery tracking of an App: nil when off.
type appTracking struct {
	store   *tracking.Store
	tracker *tracking.Tracker
	client  *graphmail.Client
	// shared: client is a profile's own (tracking.profile), closed with it.
	shared bool
	// watch re-reads the credential file of the tracker's own client (nil
	// when shared or without a file; a shared client is the profile's,
	// watched by the profile's watch).
	watch *credWatch
}

// trackingClientName names tracking.app's Graph client: its label in the
// token and credential metrics.
const trackingClientName = "tracking"

// setupTracking opens the tracking store and builds the tracker when
// tracking is on and the cloud offers message trace. It returns nil, nil
// when tracking is off (and says why in the log).
func setupTracking(ctx context.Context, cfg Config, js jetstream.JetStream, q *queue.Queue, names []string,
	clients map[string]*graphmail.Client, reg prometheus.Registerer, m *worker.Metrics, log zerolog.Logger) (*appTracking, error) {
	tc := cfg.Tracking
	if !tc.Enabled {
		return nil, nil
	}
	app := tc.App.profile()
	name, ofProfile := trackingClientName, false
	if app.ClientID == "" {
		ofProfile = true
		p, ok := cfg.Profiles[tc.Profile]
		if !ok {
			return nil, fmt.Errorf("tracking.profile: %q is not a profile (set tracking.app or tracking.profile)", tc.Profile)
		}
		app, name = p, tc.Profile
	}
	if !graphmail.Cloud(app.Cloud).TraceAvailable() {
		log.Warn().Str("cloud", app.Cloud).Msg("tracking: Microsoft offers the Graph message trace API in the global service only; delivery tracking is off")
		return nil, nil
	}
	var st *tracking.Store
	var err error
	if cfg.Streams.Provision == nil || *cfg.Streams.Provision {
		st, err = tracking.Open(ctx, js, cfg.Streams.Replicas)
	} else {
		st, err = tracking.Bind(ctx, js)
	}
	if err != nil {
		return nil, err
	}
	// A profile's registration is one MSAL confidential client (its token
	// cache: about one token request per token lifetime), shared with the
	// tracker; an app-only token carries every role the app was granted.
	c, shared := clients[name], true
	var watch *credWatch
	if !ofProfile || c == nil {
		shared = false
		var file []byte
		if c, file, err = newGraphClient(name, app, cfg.Worker.SendTimeout, 0, m, nil); err != nil {
			return nil, fmt.Errorf("tracking.app: %w", err)
		}
		// Its certificate or secret file is re-read every reloadInterval
		// as a profile's is (credWatch): a rotation needs no restart.
		// Metrics label: "tracking" for tracking.app.
		path := "tracking.app"
		if ofProfile {
			path = "profiles." + name
		}
		w := &credWatch{profile: name, path: path, cfg: app.Credential, client: c, metrics: m, log: log}
		m.CredentialReloads.WithLabelValues(name, "ok")
		m.CredentialReloads.WithLabelValues(name, "error")
		w.loaded(file)
		w.logCredential("graph client ready (delivery tracking)")
		if file != nil {
			watch = w
		}
	}
	budget := tc.BudgetPer5Minutes
	tr := tracking.New(tracking.Config{Interval: tc.Interval, Horizon: tc.Horizon, SuppressFor: tc.SuppressFor,
		BudgetLimit: budget}, st, q.States, q.Events, c, log.With().Str("component", "tracking").Logger(), reg, names)
	return &appTracking{store: st, tracker: tr, client: c, shared: shared, watch: watch}, nil
}

func (t TrackingConfig) check() error {
	if !t.Enabled {
		return nil
	}
	var errs []error
	if t.BudgetPer5Minutes < 0 || t.BudgetPer5Minutes > 100 {
		errs = append(errs, fmt.Errorf("tracking.budgetPer5Minutes: 1..100 (Microsoft's tenant limit is 100), got %d", t.BudgetPer5Minutes))
	}
	if t.App.ClientID == "" && t.Profile == "" {
		errs = append(errs, errors.New("tracking: set tracking.app (a separate app registration, recommended) or tracking.profile"))
	}
	return errors.Join(errs...)
}

// checkTracking is `mailworker check`'s part for delivery tracking: the
// cloud offers message trace, and the tracker's app registration gets a
// token that carries ExchangeMessageTrace.Read.All. It returns problems and
// warnings; none when tracking is off.
func checkTracking(ctx context.Context, cfg Config, m *worker.Metrics) (problems, warnings []string) {
	tc := cfg.Tracking
	if !tc.Enabled {
		return nil, nil
	}
	app, name := tc.App.profile(), trackingClientName
	if tc.App.ClientID == "" {
		app, name = cfg.Profiles[tc.Profile], tc.Profile
	}
	if !graphmail.Cloud(app.Cloud).TraceAvailable() {
		return nil, []string{fmt.Sprintf("tracking: cloud %q has no Graph message trace API: delivery tracking stays off", app.Cloud)}
	}
	var mu sync.Mutex
	var roles []string
	c, _, err := newGraphClient(name, app, cfg.Worker.SendTimeout, 0, m, func(ti graphmail.TokenInfo) {
		mu.Lock()
		roles = ti.Roles
		mu.Unlock()
	})
	if err != nil {
		return []string{"tracking.app: " + err.Error()}, nil
	}
	defer c.Close()
	opCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.Token(opCtx); err != nil {
		return []string{"tracking: Entra issued no token to the tracker's app registration: " + describeTokenError(name, app, err)}, nil
	}
	mu.Lock()
	has := slices.Contains(roles, graphmail.MessageTraceRole)
	mu.Unlock()
	if !has {
		return []string{fmt.Sprintf("tracking: the tracker's token lacks the application permission %s (grant it and admin consent: docs/runbook.md, \"Delivery tracking\")",
			graphmail.MessageTraceRole)}, nil
	}
	// One query of the API itself (one request of the tenant's 100 per 5
	// minutes): the role alone does not prove the tenant's other
	// prerequisite, the service principal of Microsoft's message trace
	// application, without which the API refuses a valid token.
	now := time.Now()
	if _, err := c.MessageTraces(opCtx, graphmail.TraceQuery{Sender: probeSender(cfg), From: now.Add(-5 * time.Minute), To: now, Top: 1}, nil); err != nil {
		if _, throttled := graphmail.Throttled(err); throttled {
			return nil, []string{"tracking: message trace answered 429 to check's probe (the tenant's 100 requests per 5 minutes are spent): the API could not be checked now"}
		}
		return []string{"tracking: message trace refused check's probe: " + err.Error()}, nil
	}
	return nil, nil
}

// probeSender is the sender check's message trace probe filters on: the
// first approved mailbox of the first profile (any address does: the probe
// proves access, not mail).
func probeSender(cfg Config) string {
	names := make([]string, 0, len(cfg.Profiles))
	for n := range cfg.Profiles {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if s := cfg.Profiles[n].AllowedSenders; len(s) > 0 {
			return s[0]
		}
	}
	return "postmaster@mailworker.invalid"
}
