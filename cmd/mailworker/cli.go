package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/tracking"
)

func init() {
	// Durations in logs carry their unit ("1.5s", "250ms"), not a bare
	// number of milliseconds. zerolog only offers a package setting; this
	// binary is its only user in the process.
	zerolog.DurationFieldFormat = zerolog.DurationFormatString
}

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// cli holds what every subcommand shares: global flags and the process's
// standard streams and environment (so tests run commands in process).
type cli struct {
	configPath string
	natsURL    string
	natsCreds  string
	logLevel   string
	logFormat  string

	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	env    []string
}

// runCLI runs one mailworker command line and returns the exit code.
func runCLI(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, env []string) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, env: env}
	root := &cobra.Command{
		Use:           "mailworker",
		Short:         "Send outbound mail through Microsoft Graph from NATS JetStream jobs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&c.configPath, "config", envOr(env, "MAILWORKER_CONFIG", ""), "YAML config file (env MAILWORKER_CONFIG)")
	pf.StringVar(&c.natsURL, "nats-url", "", "NATS URL (overrides nats.url)")
	pf.StringVar(&c.natsCreds, "nats-creds", "", "NATS credentials file (overrides nats.credsFile)")
	pf.StringVar(&c.logLevel, "log-level", "", "log level: debug, info, warn, error (overrides log.level)")
	pf.StringVar(&c.logFormat, "log-format", "", "log format: json or console (overrides log.format)")
	root.AddCommand(c.runCmd(), c.devCmd(), c.sandboxCmd(), c.sendCmd(), c.statusCmd(), c.dlqCmd(), c.suppressionsCmd(),
		c.provisionCmd(), c.checkCmd(), c.readyzCmd(), c.versionCmd(), c.consoleCmd(), c.smtpCmd())
	root.Args = unknownSubcommand
	root.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w (see `%s --help`)", err, cmd.CommandPath())
	})
	if err := root.ExecuteContext(ctx); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(stderr, "mailworker:", ee.msg)
			}
			return ee.code
		}
		fmt.Fprintln(stderr, "mailworker:", err)
		return 1
	}
	return 0
}

// unknownSubcommand is the Args of a command that only groups subcommands:
// without arguments it prints its help, and an argument is a subcommand
// that does not exist (cobra would print the help and exit 0).
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default, set only on its own path
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	var names []string
	for _, sub := range cmd.Commands() {
		if sub.IsAvailableCommand() {
			names = append(names, sub.Name())
		}
	}
	return fmt.Errorf("%s; its commands are %s (see `%s --help`)", msg, strings.Join(names, ", "), cmd.CommandPath())
}

func envOr(env []string, key, def string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return def
}

// config loads the file and env, then applies the global flags.
func (c *cli) config() (Config, error) { return c.configFor(Config.validate) }

// configFor is config with the given validation.
func (c *cli) configFor(validate func(Config) error) (Config, error) {
	cfg, err := readConfig(c.configPath, c.env, true)
	if err != nil {
		return cfg, err
	}
	if c.natsURL != "" {
		cfg.NATS.URL = c.natsURL
	}
	if c.natsCreds != "" {
		cfg.NATS.CredsFile = c.natsCreds
	}
	if c.logLevel != "" {
		cfg.Log.Level = c.logLevel
	}
	if c.logFormat != "" {
		cfg.Log.Format = c.logFormat
	}
	return cfg, validate(cfg)
}

// logger builds the process logger: JSON by default, console for people
// (colours only when stderr is a terminal and NO_COLOR is unset).
func (c *cli) logger(lc LogConfig) zerolog.Logger {
	var w io.Writer = c.stderr
	if lc.Format == "console" {
		w = zerolog.ConsoleWriter{Out: c.stderr, TimeFormat: "15:04:05", NoColor: !c.colour()}
	}
	level, err := zerolog.ParseLevel(lc.Level)
	if err != nil || lc.Level == "" {
		level = zerolog.InfoLevel
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}

// dial loads the configuration and opens NATS and JetStream for a support
// command.
func (c *cli) dial() (*nats.Conn, jetstream.JetStream, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, nil, err
	}
	nc, err := connectNATS(cfg.NATS, "mailworker-cli", zerolog.Nop())
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// openQueue dials and binds to the provisioned assets.
func (c *cli) openQueue(ctx context.Context) (*nats.Conn, *queue.Queue, error) {
	nc, js, err := c.dial()
	if err != nil {
		return nil, nil, err
	}
	q, err := queue.Open(ctx, js)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, q, nil
}

// colour reports whether console output may carry ANSI colours: stderr is
// a terminal and NO_COLOR (https://no-color.org) is not set.
func (c *cli) colour() bool {
	if envOr(c.env, "NO_COLOR", "") != "" {
		return false
	}
	f, ok := c.stderr.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}

func (c *cli) versionCmd() *cobra.Command {
	return &cobra.Command{Use: "version", Short: "Print the version, module version and commit", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(c.stdout, versionLine())
			return nil
		}}
}

// versionLine is `mailworker version`'s output: the -X main.version stamp,
// then what the Go toolchain recorded in the binary (debug.ReadBuildInfo):
// the module version, the VCS commit and time, and whether the tree had
// local changes.
func versionLine() string {
	line := "mailworker " + version
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return line
	}
	line += " (module " + bi.Main.Path + " " + bi.Main.Version
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	rev := settings["vcs.revision"]
	if rev == "" {
		rev = commit // a build without .git (the container image) passes it in
	}
	if rev != "" {
		line += ", commit " + rev
		if settings["vcs.modified"] == "true" {
			line += " (modified)"
		}
		if t := settings["vcs.time"]; t != "" {
			line += " of " + t
		}
	} else {
		line += ", commit unknown (built without VCS information or -X main.commit)"
	}
	return line + ", " + bi.GoVersion + ")"
}

func (c *cli) runCmd() *cobra.Command {
	return &cobra.Command{Use: "run", Short: "Run a worker (config file + MAILWORKER_* env)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.config()
			if err != nil {
				return err
			}
			log := c.logger(cfg.Log)
			app, err := NewApp(cmd.Context(), cfg, log)
			if err != nil {
				if cmd.Context().Err() != nil {
					// Stopped (SIGTERM, SIGINT) while starting, e.g. while a
					// JetStream leader election held up provisioning: no job was
					// taken, and a requested stop is not a failure.
					log.Info().Str("during", err.Error()).Msg("stopped before the worker was ready")
					return nil
				}
				return err
			}
			defer app.Close()
			return app.Run(cmd.Context())
		}}
}

func (c *cli) provisionCmd() *cobra.Command {
	return &cobra.Command{Use: "provision", Short: "Create or update the streams, consumer and buckets (idempotent)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.config()
			if err != nil {
				return err
			}
			nc, js, err := c.dial()
			if err != nil {
				return err
			}
			defer nc.Close()
			if err := queue.Provision(cmd.Context(), js, cfg.queueConfig()); err != nil {
				return err
			}
			// Delivery tracking's buckets, so that it can be turned on without
			// giving the worker the right to create buckets.
			if _, err := tracking.Open(cmd.Context(), js, cfg.Streams.Replicas); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "provisioned (created or updated, replicas %d):\n", cfg.Streams.Replicas)
			for _, a := range provisionedAssets(cfg.queueConfig().Profiles) {
				fmt.Fprintf(c.stdout, "  %-13s %s\n", a[0], a[1])
			}
			return nil
		}}
}

// provisionedAssets lists what queue.Provision creates, kind and name: every
// stream, consumer and bucket (README, "Subjects, streams, buckets").
func provisionedAssets(profiles []string) [][2]string {
	var out [][2]string
	// Per profile: its ingress stream and consumer, its due consumer and its
	// object store (objects belong to a profile).
	for _, p := range profiles {
		out = append(out, [2]string{"stream", contract.JobsStream(p)},
			[2]string{"consumer", contract.JobsStream(p) + " > " + contract.ConsumerName},
			[2]string{"consumer", contract.StreamDefer + " > " + contract.DueConsumer(p)},
			[2]string{"object store", queue.AttachmentsBucket(p)})
	}
	return append(out,
		[2]string{"stream", contract.StreamDefer},
		[2]string{"stream", contract.StreamStatus},
		[2]string{"stream", contract.StreamDLQ},
		[2]string{"stream", contract.StreamAudit},
		[2]string{"KV bucket", contract.BucketState},
		[2]string{"KV bucket", contract.BucketWorkers},
		[2]string{"KV bucket", contract.BucketPacing},
		[2]string{"object store", contract.BucketDeferred},
		// Delivery tracking's buckets (created whether tracking is on or not).
		[2]string{"KV bucket", tracking.BucketTracking},
		[2]string{"KV bucket", tracking.BucketSuppression},
		[2]string{"KV bucket", tracking.BucketTraceBudget})
}

func (c *cli) readyzCmd() *cobra.Command {
	var addr string
	cmd := &cobra.Command{Use: "readyz", Short: "Probe the worker's /readyz (exit 0 when ready): for container health checks", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				cfg, err := c.config()
				if err != nil {
					return err
				}
				addr = cfg.HTTP.Listen
			}
			if strings.HasPrefix(addr, ":") {
				addr = "127.0.0.1" + addr
			}
			return probe(cmd.Context(), "http://"+addr+"/readyz")
		}}
	cmd.Flags().StringVar(&addr, "addr", "", "host:port of the worker's HTTP listener (default: http.listen)")
	return cmd
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
