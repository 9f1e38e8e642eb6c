package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/cmd/mailworker/internal/console"
	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue"
)

// ConsoleConfig configures `mailworker console` (docs/console.md).
type ConsoleConfig struct {
	// Listen is the console's listen address (default 127.0.0.1:8026).
	Listen string `yaml:"listen"`
	// PublicURL is how browsers reach the console (e.g.
	// https://mail-console.contoso.com); the redirect URI registered in
	// Entra is PublicURL + /auth/callback. Default http://<listen>.
	PublicURL string `yaml:"publicURL"`
	// TenantID, ClientID and the client secret of the console's own app
	// registration (not a profile's).
	TenantID         string `yaml:"tenantId"`
	ClientID         string `yaml:"clientId"`
	ClientSecret     string `yaml:"clientSecret"`
	ClientSecretFile string `yaml:"clientSecretFile"`
	// Cloud picks the authority host (global, usgov, usgovdod, china);
	// AuthorityHost overrides it (tests, dev).
	Cloud         string `yaml:"cloud"`
	AuthorityHost string `yaml:"authorityHost"`
	// CAFile is an extra CA to trust for the authority (dev, tests).
	CAFile string `yaml:"caFile"`
	// SecretFile holds at least 32 bytes that key session cookies and
	// recipient hashes; Secret gives them inline. The same secret on every
	// replica; changing it signs everyone out.
	Secret     string        `yaml:"secret"`
	SecretFile string        `yaml:"secretFile"`
	SessionTTL time.Duration `yaml:"sessionTTL"`
	// TLSCertFile and TLSKeyFile serve HTTPS directly (else put the console
	// behind a TLS-terminating proxy: cookies are always Secure).
	TLSCertFile string `yaml:"tlsCertFile"`
	TLSKeyFile  string `yaml:"tlsKeyFile"`
	// RunbookURL is linked from each dead letter ("what next").
	RunbookURL string `yaml:"runbookURL"`
}

const defaultConsoleListen = "127.0.0.1:8026"

func readSecret(inline, file, key string) (string, error) {
	if file == "" {
		return inline, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// consoleServer is a running console: its listener, HTTP server and NATS
// connection.
type consoleServer struct {
	srv  *console.Server
	http *http.Server
	ln   net.Listener
	nc   *nats.Conn
	url  string
	done chan error
}

// startConsole binds ln (or cfg.Console.Listen), connects to NATS and serves
// the console until Close.
func startConsole(ctx context.Context, cfg Config, ln net.Listener, log zerolog.Logger) (*consoleServer, error) {
	cc := cfg.Console
	if ln == nil {
		listen := cc.Listen
		if listen == "" {
			listen = defaultConsoleListen
		}
		var err error
		if ln, err = net.Listen("tcp", listen); err != nil {
			return nil, fmt.Errorf("console.listen: %w", err)
		}
	}
	cs := &consoleServer{ln: ln, done: make(chan error, 1)}
	ok := false
	defer func() {
		if !ok {
			cs.Close()
		}
	}()
	public := strings.TrimRight(cc.PublicURL, "/")
	if public == "" {
		scheme := "http"
		if cc.TLSCertFile != "" {
			scheme = "https"
		}
		public = scheme + "://" + ln.Addr().String()
	}
	cs.url = public
	secret, err := readSecret(cc.Secret, cc.SecretFile, "console.secretFile")
	if err != nil {
		return nil, err
	}
	clientSecret, err := readSecret(cc.ClientSecret, cc.ClientSecretFile, "console.clientSecretFile")
	if err != nil {
		return nil, err
	}
	host := cc.AuthorityHost
	if host == "" {
		if host, _, err = graphmail.Cloud(cc.Cloud).Endpoints(); err != nil {
			return nil, fmt.Errorf("console.cloud: %w", err)
		}
	}
	if cc.TenantID == "" {
		return nil, errors.New("console.tenantId: required")
	}
	hc := &http.Client{Timeout: 15 * time.Second}
	if cc.CAFile != "" {
		pem, err := os.ReadFile(cc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("console.caFile: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("console.caFile: %s holds no PEM certificate", cc.CAFile)
		}
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	allowed := map[string][]string{}
	for name, p := range cfg.Profiles {
		allowed[name] = p.AllowedSenders
	}
	perDay := 10_000
	if cfg.Worker.PerMailboxRecipientsPerDay != nil && *cfg.Worker.PerMailboxRecipientsPerDay > 0 {
		perDay = *cfg.Worker.PerMailboxRecipientsPerDay
	}
	if cs.nc, err = connectNATS(cfg.NATS, "mailworker-console", log); err != nil {
		return nil, err
	}
	js, err := jetstream.New(cs.nc)
	if err != nil {
		return nil, err
	}
	q, err := queue.Open(ctx, js)
	if err != nil {
		return nil, err
	}
	cs.srv, err = console.New(console.Config{
		PublicURL: public, Authority: strings.TrimRight(host, "/") + "/" + cc.TenantID,
		ClientID: cc.ClientID, ClientSecret: clientSecret, HTTPClient: hc, Secret: []byte(secret),
		SessionTTL: cc.SessionTTL, RunbookURL: cc.RunbookURL, AllowedSenders: allowed, RecipientsPerDay: perDay,
		Logger: log,
	}, q)
	if err != nil {
		return nil, err
	}
	cs.http = &http.Server{Handler: cs.srv, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		WriteTimeout: 5 * time.Minute, IdleTimeout: 2 * time.Minute}
	go func() {
		var err error
		if cc.TLSCertFile != "" {
			err = cs.http.ServeTLS(ln, cc.TLSCertFile, cc.TLSKeyFile)
		} else {
			err = cs.http.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		cs.done <- err
	}()
	ok = true
	return cs, nil
}

// URL is where the console is reached.
func (cs *consoleServer) URL() string { return cs.url }

// Close stops serving (requests get 5 s to finish) and closes NATS.
func (cs *consoleServer) Close() {
	if cs.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = cs.http.Shutdown(ctx)
		cancel()
		<-cs.done
	} else if cs.ln != nil {
		cs.ln.Close()
	}
	if cs.srv != nil {
		cs.srv.Close()
	}
	if cs.nc != nil {
		cs.nc.Close()
	}
}

func (c *cli) consoleCmd() *cobra.Command {
	return &cobra.Command{Use: "console", Short: "Serve the support web console (Entra ID sign-in; docs/console.md)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.configFor(Config.validateConsole)
			if err != nil {
				return err
			}
			log := c.logger(cfg.Log)
			cs, err := startConsole(cmd.Context(), cfg, nil, log)
			if err != nil {
				return err
			}
			defer cs.Close()
			log.Info().Str("url", cs.URL()).Msg("console: serving")
			fmt.Fprintf(c.stdout, "console: %s  (redirect URI %s/auth/callback)\n", cs.URL(), cs.URL())
			select {
			case <-cmd.Context().Done():
				return nil
			case err := <-cs.done:
				cs.done <- err
				return err
			}
		}}
}
