package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/worker"
)

// envPrefix starts every environment variable that overrides the config file.
const envPrefix = "MAILWORKER_"

// Config is the whole configuration of a mailworker process: a YAML file
// (README "Configuration") with every key overridable by MAILWORKER_* env.
type Config struct {
	NATS     NATSConfig               `yaml:"nats"`
	Streams  StreamsConfig            `yaml:"streams"`
	Worker   WorkerConfig             `yaml:"worker"`
	HTTP     HTTPConfig               `yaml:"http"`
	Log      LogConfig                `yaml:"log"`
	Profiles map[string]ProfileConfig `yaml:"profiles"`
	Console  ConsoleConfig            `yaml:"console"` // console.go
	// SMTP configures `mailworker smtp` (smtp.go); the worker ignores it.
	SMTP SMTPConfig `yaml:"smtp"`
	// Tracking: delivery events from Exchange message trace (tracking.go).
	Tracking TrackingConfig `yaml:"tracking"`
}

// NATSConfig says how to reach and authenticate to NATS.
type NATSConfig struct {
	URL            string        `yaml:"url"`
	CredsFile      string        `yaml:"credsFile"`
	NkeySeedFile   string        `yaml:"nkeySeedFile"`
	User           string        `yaml:"user"`
	Password       string        `yaml:"password"`
	Token          string        `yaml:"token"`
	TLS            TLSConfig     `yaml:"tls"`
	ConnectTimeout time.Duration `yaml:"connectTimeout"`
	// InboxPrefix replaces "_INBOX" for replies (API answers, acks, pulled
	// messages), so each NATS user can be limited to its own inboxes and
	// cannot read another user's replies (deploy/nats/accounts.conf).
	InboxPrefix string `yaml:"inboxPrefix"`
}

// TLSConfig is a client TLS setup: a CA to trust and an optional client cert.
type TLSConfig struct {
	CAFile   string `yaml:"caFile"`
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
}

// StreamsConfig sizes the JetStream assets that provision creates.
type StreamsConfig struct {
	Replicas     int           `yaml:"replicas"`
	JobsMaxAge   time.Duration `yaml:"jobsMaxAge"`
	StatusMaxAge time.Duration `yaml:"statusMaxAge"`
	DLQMaxAge    time.Duration `yaml:"dlqMaxAge"`
	StateTTL     time.Duration `yaml:"stateTTL"`
	// AuditMaxAge: how long MAIL_AUDIT keeps support actions (0 = forever).
	AuditMaxAge time.Duration `yaml:"auditMaxAge"`
	// AttachmentsMaxAge: how long objectRef attachments are kept.
	AttachmentsMaxAge time.Duration `yaml:"attachmentsMaxAge"`
	// AttachmentsMaxMB caps each profile's attachment object store, in MB
	// of 10^6 bytes; 0 = 1000.
	AttachmentsMaxMB int `yaml:"attachmentsMaxMB"`
	// MaxAckPending is each profile's consumer capacity (its job stream's
	// consumer and its due consumer each), default 1000.
	MaxAckPending int `yaml:"maxAckPending"`
	// JobsMaxMsgs, JobsMaxBytes and JobsMaxMsgSize bound each profile's job
	// stream MAIL_JOBS_<profile>, enforced by the server (a publish over them
	// is refused): defaults 100,000 jobs, 512 MiB (reserved on disk per
	// profile when the stream is created) and 0 = the server's max_payload.
	JobsMaxMsgs    int64 `yaml:"jobsMaxMsgs"`
	JobsMaxBytes   int64 `yaml:"jobsMaxBytes"`
	JobsMaxMsgSize int32 `yaml:"jobsMaxMsgSize"`
	// Provision creates or updates the streams at worker start; turn it off
	// when the worker's NATS user may not manage streams.
	Provision *bool `yaml:"provision"`
}

// WorkerConfig tunes the engine; see worker.Config.
type WorkerConfig struct {
	Concurrency           int  `yaml:"concurrency"`
	MaxInFlight           int  `yaml:"maxInFlight"`
	PerMailboxConcurrency int  `yaml:"perMailboxConcurrency"`
	PerMailboxPerMinute   *int `yaml:"perMailboxPerMinute"`
	// PerMailboxRecipientsPerDay: nil = 10,000 (Exchange's limit), 0 = unchecked.
	PerMailboxRecipientsPerDay *int `yaml:"perMailboxRecipientsPerDay"`
	// PerMailboxUploadMBPer5Min: nil = 150 (Outlook's limit), 0 = unchecked.
	PerMailboxUploadMBPer5Min *int `yaml:"perMailboxUploadMBPer5Min"`
	MaxAttempts               int  `yaml:"maxAttempts"`
	// MaxStops: deliveries a job may be in hand of a worker that stopped
	// (killed, out of memory) before it is dead-lettered worker_crashed; 0 = 3.
	MaxStops       int           `yaml:"maxStops"`
	BackoffInitial time.Duration `yaml:"backoffInitial"`
	BackoffMax     time.Duration `yaml:"backoffMax"`
	AckWait        time.Duration `yaml:"ackWait"`
	SendTimeout    time.Duration `yaml:"sendTimeout"`
	// UploadChunkBytes is the size of each PUT of an upload session (draft
	// delivery mode): a multiple of 327680 (320 KiB), at most 4 MiB; 0 =
	// graphmail's default. One chunk per upload in flight is in memory.
	UploadChunkBytes int           `yaml:"uploadChunkBytes"`
	DrainTimeout     time.Duration `yaml:"drainTimeout"`
	// DraftTransitWait and DraftLookupEvery: draft mode's transit window
	// after a send that may have gone out, and the wait between look-ups in
	// it; 0 = worker.DefaultDraftTransitWait / DefaultDraftLookupEvery.
	DraftTransitWait time.Duration `yaml:"draftTransitWait"`
	DraftLookupEvery time.Duration `yaml:"draftLookupEvery"`
}

// HTTPConfig is the metrics and health listener.
type HTTPConfig struct {
	Listen string `yaml:"listen"`
	// Pprof serves net/http/pprof under /debug/pprof/ on the same listener
	// (profiling, e.g. by loadtest --pprof); off by default.
	Pprof bool `yaml:"pprof"`
}

// LogConfig sets logging.
type LogConfig struct {
	Level      string `yaml:"level"`
	Format     string `yaml:"format"`
	Recipients bool   `yaml:"recipients"`
}

// ProfileConfig is one integrating application: its Entra app registration
// and the shared mailboxes it may send from.
type ProfileConfig struct {
	TenantID        string           `yaml:"tenantId"`
	ClientID        string           `yaml:"clientId"`
	Cloud           string           `yaml:"cloud"`
	AuthorityHost   string           `yaml:"authorityHost"`
	GraphURL        string           `yaml:"graphURL"`
	CAFile          string           `yaml:"caFile"`
	Credential      CredentialConfig `yaml:"credential"`
	AllowedSenders  []string         `yaml:"allowedSenders"`
	OnAmbiguous     string           `yaml:"onAmbiguous"`
	SaveToSentItems bool             `yaml:"saveToSentItems"`
	// MaxRecipientsPerMessage is the tenant's Exchange recipient limit (to+cc+bcc
	// of one message): 500 by default, 1 to 1000 as an Exchange admin sets it.
	MaxRecipientsPerMessage int `yaml:"maxRecipientsPerMessage"`
	// AllowedHeaders, when set, are the only job header names the profile may use
	// (each distinct X- name uses a named property of the mailbox).
	AllowedHeaders []string `yaml:"allowedHeaders"`
	// DeliveryMode is sendMail (default: one request per job, Mail.Send
	// only) or draft (large attachments by upload session, and a send that
	// can be looked up: needs the "Application Mail.ReadWrite" role too).
	DeliveryMode string `yaml:"deliveryMode"`
	// DraftWhen (draft mode) is large (default: only jobs over one
	// sendMail request) or always (every job, exactly once).
	DraftWhen string `yaml:"draftWhen"`
	// MaxMessageSize is the sending mailboxes' maximum message size, as
	// Exchange's MaxSendSize is written ("35MB", "36700160", or Get-Mailbox's
	// "35 MB (36,700,160 bytes)"; MB = 1,048,576 bytes, as Exchange's): ""
	// = Exchange Online's default, 35 MB; at most 150 MB. See
	// MaxMessageBytes.
	MaxMessageSize string `yaml:"maxMessageSize"`
	// Jobs overrides streams.jobsMax* and streams.maxAckPending for this
	// profile's stream MAIL_JOBS_<profile> and consumers (0 = the streams.*
	// value).
	Jobs ProfileJobsConfig `yaml:"jobs"`
}

// MaxMessageBytes is the profile's maximum message size in bytes
// (maxMessageSize; contract.DefaultMaxMessageBytes when unset), the size
// Exchange counts: the whole message with its attachments base64-encoded
// (contract.MessageSize). Every door takes a job against it: the worker
// dead-letters a larger one message_too_large before any Graph call, and
// the SMTP door can refuse it at SIZE/DATA. A loaded config has a valid
// value; an invalid one reads as the default here.
func (p ProfileConfig) MaxMessageBytes() int64 {
	n, err := contract.ParseMessageSize(p.MaxMessageSize)
	if err != nil {
		return contract.DefaultMaxMessageBytes
	}
	return n
}

// ProfileJobsConfig is one profile's ingress limits (queue.JobsLimits).
type ProfileJobsConfig struct {
	MaxMsgs       int64 `yaml:"maxMsgs"`
	MaxBytes      int64 `yaml:"maxBytes"`
	MaxMsgSize    int32 `yaml:"maxMsgSize"`
	MaxAckPending int   `yaml:"maxAckPending"`
}

// CredentialConfig names where a profile's credential comes from.
type CredentialConfig struct {
	CertificateFile     string `yaml:"certificateFile"`
	CertificatePassword string `yaml:"certificatePassword"`
	ClientSecret        string `yaml:"clientSecret"`
	ClientSecretFile    string `yaml:"clientSecretFile"`
	FederatedTokenFile  string `yaml:"federatedTokenFile"`
	// FederatedAudience is the audience the federatedTokenFile token must
	// carry, the one the app's federated identity credential names: default
	// the cloud's token-exchange audience (api://AzureADTokenExchange,
	// …USGov for usgov and usgovdod, …China for china).
	FederatedAudience string `yaml:"federatedAudience"`
	// ReloadInterval: how often certificateFile / clientSecretFile are
	// re-read; a changed file is taken up without a restart (rotation).
	ReloadInterval time.Duration `yaml:"reloadInterval"`
}

// defaultCredentialReload is the default of credential.reloadInterval.
const defaultCredentialReload = 30 * time.Second

// defaultConfig is the configuration before the file and env are applied.
func defaultConfig() Config {
	return Config{
		NATS:    NATSConfig{URL: "nats://127.0.0.1:4222", ConnectTimeout: 5 * time.Second},
		Streams: StreamsConfig{Replicas: 1},
		HTTP:    HTTPConfig{Listen: ":8080"},
		Log:     LogConfig{Level: "info", Format: "json"},
	}
}

// loadConfig reads path (optional) then applies env. It returns an error that
// names the file, key or variable at fault.
func loadConfig(path string, env []string) (Config, error) { return readConfig(path, env, false) }

// readConfig is loadConfig, without the validation when noValidate.
func readConfig(path string, env []string, noValidate bool) (Config, error) {
	cfg := defaultConfig()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
		if len(doc.Content) > 0 {
			if err := checkKeys(doc.Content[0], reflect.TypeOf(cfg), ""); err != nil {
				return cfg, fmt.Errorf("config %s: %w", path, err)
			}
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := applyEnv(&cfg, env); err != nil {
		return cfg, err
	}
	for name, p := range cfg.Profiles {
		if p.Credential.FederatedTokenFile != "" && p.Credential.FederatedAudience == "" {
			// The cloud's token-exchange audience (graphmail.Cloud.FederatedAudience).
			p.Credential.FederatedAudience = featureCloud(p).FederatedAudience()
			cfg.Profiles[name] = p
		}
	}
	if noValidate {
		return cfg, nil
	}
	return cfg, cfg.validate()
}

// checkKeys walks a YAML mapping against the struct type t and reports the
// first key that is no setting, with its path and the nearest setting's name
// ("unknown key `tenantld` in profiles.billing (did you mean tenantId?)"),
// where yaml.v3 would name a Go type.
func checkKeys(n *yaml.Node, t reflect.Type, path string) error {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return nil // a type error: the decoder reports it with its line
	}
	switch {
	case t.Kind() == reflect.Map:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := checkKeys(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value)); err != nil {
				return err
			}
		}
		return nil
	case t.Kind() != reflect.Struct || t == reflect.TypeOf(time.Duration(0)):
		return nil
	}
	fields := map[string]reflect.Type{}
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		fields[tag] = f.Type
		names = append(names, tag)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		ft, ok := fields[k.Value]
		if !ok {
			where := path
			if where == "" {
				where = "the top level"
			}
			msg := fmt.Sprintf("line %d: unknown key `%s` in %s", k.Line, k.Value, where)
			if s := nearest(k.Value, names); s != "" {
				msg += " (did you mean " + s + "?)"
			} else {
				msg += " (its keys are " + strings.Join(names, ", ") + ")"
			}
			return errors.New(msg)
		}
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if err := checkKeys(n.Content[i+1], ft, join(path, k.Value)); err != nil {
			return err
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// nearest returns the name closest to s (case-insensitive edit distance at
// most 2, or a case-only difference), or "".
func nearest(s string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if strings.EqualFold(n, s) {
			return n
		}
		if d := editDistance(strings.ToLower(s), strings.ToLower(n)); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// applyEnv overrides cfg from MAILWORKER_* variables: the YAML path in upper
// snake case (nats.url → MAILWORKER_NATS_URL). Profiles named in
// MAILWORKER_PROFILES (comma-separated) are created if the file lacks them.
func applyEnv(cfg *Config, env []string) error {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, envPrefix) {
			vars[k] = v
		}
	}
	if names, ok := vars[envPrefix+"PROFILES"]; ok {
		for _, n := range strings.Split(names, ",") {
			if n = strings.TrimSpace(n); n == "" {
				continue
			}
			if cfg.Profiles == nil {
				cfg.Profiles = map[string]ProfileConfig{}
			}
			if _, exists := cfg.Profiles[n]; !exists {
				cfg.Profiles[n] = ProfileConfig{}
			}
		}
		delete(vars, envPrefix+"PROFILES")
	}
	delete(vars, envPrefix+"CONFIG")
	delete(vars, FaultLosePublishAcksEnv) // a fault injection for tests, read by `mailworker smtp` itself
	used := map[string]bool{}
	if err := envStruct(reflect.ValueOf(cfg).Elem(), envPrefix, vars, used); err != nil {
		return err
	}
	for k := range vars {
		if !used[k] {
			return fmt.Errorf("env %s: no such setting (see README, Configuration)", k)
		}
	}
	return nil
}

func envStruct(v reflect.Value, prefix string, vars map[string]string, used map[string]bool) error {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + upperSnake(tag)
		fv := v.Field(i)
		switch {
		case fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(time.Duration(0)):
			if err := envStruct(fv, name+"_", vars, used); err != nil {
				return err
			}
		case fv.Kind() == reflect.Map:
			for _, key := range fv.MapKeys() {
				elem := reflect.New(fv.Type().Elem()).Elem()
				elem.Set(fv.MapIndex(key))
				if err := envStruct(elem, name+"_"+strings.ToUpper(strings.ReplaceAll(key.String(), "-", "_"))+"_", vars, used); err != nil {
					return err
				}
				fv.SetMapIndex(key, elem)
			}
		default:
			raw, ok := vars[name]
			if !ok {
				continue
			}
			used[name] = true
			if err := setFromString(fv, raw); err != nil {
				return fmt.Errorf("env %s: %w", name, err)
			}
		}
	}
	return nil
}

func setFromString(fv reflect.Value, raw string) error {
	if fv.Kind() == reflect.Pointer {
		nv := reflect.New(fv.Type().Elem())
		if err := setFromString(nv.Elem(), raw); err != nil {
			return err
		}
		fv.Set(nv)
		return nil
	}
	switch {
	case fv.Type() == reflect.TypeOf(time.Duration(0)):
		d, err := time.ParseDuration(raw)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 30s or 5m", raw)
		}
		fv.SetInt(int64(d))
	case fv.Kind() == reflect.String:
		fv.SetString(raw)
	case fv.Kind() == reflect.Int || fv.Kind() == reflect.Int64 || fv.Kind() == reflect.Int32:
		n, err := strconv.ParseInt(raw, 10, fv.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not a whole number (of %d bits)", raw, fv.Type().Bits())
		}
		fv.SetInt(n)
	case fv.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("%q is not true or false", raw)
		}
		fv.SetBool(b)
	case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.String:
		var items []string
		for _, s := range strings.Split(raw, ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
		fv.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}

// upperSnake turns a lowerCamel key into UPPER_SNAKE (perMailboxConcurrency →
// PER_MAILBOX_CONCURRENCY; graphURL → GRAPH_URL; stateTTL → STATE_TTL).
func upperSnake(s string) string {
	var b strings.Builder
	rs := []rune(s)
	for i, r := range rs {
		if unicode.IsUpper(r) && i > 0 {
			prevLower := unicode.IsLower(rs[i-1])
			nextLower := i+1 < len(rs) && unicode.IsLower(rs[i+1])
			if prevLower || (nextLower && unicode.IsUpper(rs[i-1])) {
				b.WriteByte('_')
			}
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

func (c Config) validate() error { return c.check(true) }

// validateSMTP is validate for `mailworker smtp`, which never calls Entra or
// Graph: a profile needs no tenantId, clientId or credential there (issue 20
// item 14; at most one credential source when one is given).
func (c Config) validateSMTP() error { return c.check(false) }

// validateConsole is validate for `mailworker console`, which never calls
// Graph either: it reads a profile's allowedSenders only (the editor's
// check), so deploy/kubernetes/console carries no profile credential.
func (c Config) validateConsole() error { return c.check(false) }

func (c Config) check(entra bool) error {
	var errs []error
	if c.NATS.URL == "" {
		errs = append(errs, errors.New("nats.url: required"))
	}
	if c.Streams.Replicas != 1 && c.Streams.Replicas != 3 {
		errs = append(errs, fmt.Errorf("streams.replicas: must be 1 or 3, got %d", c.Streams.Replicas))
	}
	if c.Streams.AttachmentsMaxMB < 0 {
		errs = append(errs, fmt.Errorf("streams.attachmentsMaxMB: must be at least 1 (0 = the default 1000), got %d", c.Streams.AttachmentsMaxMB))
	}
	if c.Worker.MaxStops < 0 {
		errs = append(errs, fmt.Errorf("worker.maxStops: must be at least 1 (0 = the default 3), got %d", c.Worker.MaxStops))
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not json or console", c.Log.Format))
	}
	for name, p := range c.Profiles {
		if !validProfileName(name) {
			errs = append(errs, fmt.Errorf("profiles.%s: a profile name is letters, digits, - and _ only", name))
		}
		if entra && p.TenantID == "" {
			errs = append(errs, fmt.Errorf("profiles.%s.tenantId: required", name))
		}
		if entra && p.ClientID == "" {
			errs = append(errs, fmt.Errorf("profiles.%s.clientId: required", name))
		}
		cr := p.Credential
		n := 0
		for _, s := range []string{cr.CertificateFile, cr.ClientSecret, cr.ClientSecretFile, cr.FederatedTokenFile} {
			if s != "" {
				n++
			}
		}
		if n > 1 || (entra && n != 1) {
			errs = append(errs, fmt.Errorf("profiles.%s.credential: set exactly one of certificateFile, clientSecret, clientSecretFile, federatedTokenFile (%d set)", name, n))
		}
		if cr.ReloadInterval < 0 {
			errs = append(errs, fmt.Errorf("profiles.%s.credential.reloadInterval: must not be negative", name))
		}
		if _, _, err := graphmail.Cloud(p.Cloud).Endpoints(); err != nil {
			errs = append(errs, fmt.Errorf("profiles.%s.cloud: %w", name, err))
		} else if err := checkEndpoints(name, p); err != nil {
			errs = append(errs, err)
		}
		if p.MaxRecipientsPerMessage < 0 || p.MaxRecipientsPerMessage > 1000 {
			errs = append(errs, fmt.Errorf("profiles.%s.maxRecipientsPerMessage: %d; Exchange allows 1 to 1000 (0 = the default 500)", name, p.MaxRecipientsPerMessage))
		}
		for _, h := range p.AllowedHeaders {
			if len(h) < 3 || !strings.EqualFold(h[:2], "x-") || strings.ContainsAny(h, " :\t\r\n") {
				errs = append(errs, fmt.Errorf("profiles.%s.allowedHeaders: %q is not an X- header name", name, h))
			}
		}
		switch graphmail.SendMode(p.DeliveryMode) {
		case "", graphmail.ModeSendMail:
		case graphmail.ModeDraft:
			if err := featureCloud(p).Supports(graphmail.ModeDraft); err != nil {
				errs = append(errs, fmt.Errorf("profiles.%s.deliveryMode: %w", name, err))
			}
		default:
			errs = append(errs, fmt.Errorf("profiles.%s.deliveryMode: %q: want sendMail or draft", name, p.DeliveryMode))
		}
		if _, err := contract.ParseMessageSize(p.MaxMessageSize); err != nil {
			errs = append(errs, fmt.Errorf("profiles.%s.maxMessageSize: %w (Exchange's units: 35MB is 36,700,160 bytes; default 35MB, at most 150MB)", name, err))
		}
		switch graphmail.DraftWhen(p.DraftWhen) {
		case "", graphmail.DraftLarge, graphmail.DraftAlways:
		default:
			errs = append(errs, fmt.Errorf("profiles.%s.draftWhen: %q: want large or always", name, p.DraftWhen))
		}
	}
	if err := c.Tracking.check(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func validProfileName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

func (c Config) queueConfig() queue.Config {
	profiles := make([]string, 0, len(c.Profiles))
	for name := range c.Profiles {
		profiles = append(profiles, name)
	}
	sort.Strings(profiles)
	perProfile := map[string]queue.JobsLimits{}
	for name, p := range c.Profiles {
		if p.Jobs != (ProfileJobsConfig{}) {
			perProfile[name] = queue.JobsLimits{MaxMsgs: p.Jobs.MaxMsgs, MaxBytes: p.Jobs.MaxBytes, MaxMsgSize: p.Jobs.MaxMsgSize, MaxAckPending: p.Jobs.MaxAckPending}
		}
	}
	return queue.Config{
		ProfileJobs: perProfile,
		Profiles:    profiles,
		Replicas:    c.Streams.Replicas, JobsMaxAge: c.Streams.JobsMaxAge, StatusMaxAge: c.Streams.StatusMaxAge,
		DLQMaxAge: c.Streams.DLQMaxAge, AuditMaxAge: c.Streams.AuditMaxAge, StateTTL: c.Streams.StateTTL, AttachmentsMaxAge: c.Streams.AttachmentsMaxAge,
		AttachmentsMaxBytes: int64(c.Streams.AttachmentsMaxMB) * 1_000_000,
		AckWait:             c.Worker.AckWait,
		MaxAckPending:       c.Streams.MaxAckPending,
		Jobs:                queue.JobsLimits{MaxMsgs: c.Streams.JobsMaxMsgs, MaxBytes: c.Streams.JobsMaxBytes, MaxMsgSize: c.Streams.JobsMaxMsgSize},
	}.WithDefaults()
}

func (c Config) workerConfig() worker.Config {
	w := c.Worker
	// Unset takes the worker's defaults (Exchange's and Outlook's limits);
	// 0 switches the limit off.
	orOff := func(v *int, scale int64) int64 {
		switch {
		case v == nil:
			return 0
		case *v == 0:
			return worker.Unlimited
		}
		return int64(*v) * scale
	}
	perMinute := int(orOff(w.PerMailboxPerMinute, 1))
	perDay := int(orOff(w.PerMailboxRecipientsPerDay, 1))
	upload := orOff(w.PerMailboxUploadMBPer5Min, 1_000_000)
	profiles := make(map[string]worker.Profile, len(c.Profiles))
	for name, p := range c.Profiles {
		profiles[name] = worker.Profile{Name: name, AllowedSenders: p.AllowedSenders, OnAmbiguous: worker.AmbiguousPolicy(p.OnAmbiguous),
			MaxMessageBytes: p.MaxMessageBytes()}
	}
	return worker.Config{
		Concurrency: w.Concurrency, MaxInFlight: w.MaxInFlight, PerMailboxConcurrency: w.PerMailboxConcurrency,
		PerMailboxPerMinute: perMinute, PerMailboxRecipientsPerDay: perDay,
		PerMailboxUploadBytes: upload, MaxAttempts: w.MaxAttempts, MaxStops: w.MaxStops, BackoffInitial: w.BackoffInitial,
		BackoffMax: w.BackoffMax, AckWait: w.AckWait, SendTimeout: w.SendTimeout, DrainTimeout: w.DrainTimeout,
		Profiles: profiles, LogRecipients: c.Log.Recipients,
		DraftTransitWait: w.DraftTransitWait, DraftLookupEvery: w.DraftLookupEvery,
	}.WithDefaults()
}

// collectKeys lists the YAML paths of every leaf setting of v (profiles as
// "profiles.<name>."), for the documentation test.
func collectKeys(out *[]string, prefix string, v any) {
	t := reflect.TypeOf(v)
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		switch {
		case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)):
			collectKeys(out, prefix+tag+".", reflect.Zero(f.Type).Interface())
		case f.Type.Kind() == reflect.Map:
			collectKeys(out, prefix+tag+".<name>.", reflect.Zero(f.Type.Elem()).Interface())
		default:
			*out = append(*out, prefix+tag)
		}
	}
}

// cloudFamily maps the hosts of Microsoft's Entra authorities and Graph
// endpoints to their cloud (graphmail.Cloud.Endpoints; login.microsoft.com
// and login.windows.net are other names of the global authority). US Gov L4
// and DoD L5 share one authority host.
var cloudFamily = map[string]string{
	"login.microsoftonline.com":       "global",
	"login.microsoft.com":             "global",
	"login.windows.net":               "global",
	"graph.microsoft.com":             "global",
	"login.microsoftonline.us":        "US Government",
	"graph.microsoft.us":              "US Government",
	"dod-graph.microsoft.us":          "US Government",
	"login.chinacloudapi.cn":          "China",
	"microsoftgraph.chinacloudapi.cn": "China",
}

// checkEndpoints refuses a profile whose token would go to another place
// than the one that issued it: an authority and a Graph URL of different
// Microsoft clouds, one of Microsoft's and one not (a sandbox authority with
// the default Graph URL would post the sandbox token to graph.microsoft.com),
// or two non-Microsoft hosts. An authorityHost is a bare host: the tenant
// comes from tenantId.
func checkEndpoints(name string, p ProfileConfig) error {
	authority, graph, _ := graphmail.Cloud(p.Cloud).Endpoints()
	authFrom, graphFrom := "cloud "+cloudName(p.Cloud), "cloud "+cloudName(p.Cloud)
	if p.AuthorityHost != "" {
		authority, authFrom = p.AuthorityHost, "authorityHost"
	}
	if p.GraphURL != "" {
		graph, graphFrom = p.GraphURL, "graphURL"
	}
	au, err := url.Parse(authority)
	if err != nil || au.Host == "" || (au.Scheme != "https" && au.Scheme != "http") {
		return fmt.Errorf("profiles.%s.authorityHost: %q is not a URL such as https://login.microsoftonline.com", name, authority)
	}
	if strings.Trim(au.Path, "/") != "" || au.RawQuery != "" {
		return fmt.Errorf("profiles.%s.authorityHost: %s has a path: give the bare host, %s://%s (the tenant comes from tenantId)", name, authority, au.Scheme, au.Host)
	}
	gu, err := url.Parse(graph)
	if err != nil || gu.Host == "" || (gu.Scheme != "https" && gu.Scheme != "http") {
		return fmt.Errorf("profiles.%s.graphURL: %q is not a URL such as https://graph.microsoft.com", name, graph)
	}
	fa, okA := cloudFamily[strings.ToLower(au.Hostname())]
	fg, okG := cloudFamily[strings.ToLower(gu.Hostname())]
	switch {
	case okA && okG && fa != fg:
		return fmt.Errorf("profiles.%s: the authority %s (%s, the %s cloud) and Graph %s (%s, the %s cloud) are different clouds: a token of one is refused by the other; set cloud alone, or both authorityHost and graphURL of one cloud",
			name, authority, authFrom, fa, graph, graphFrom, fg)
	case okA != okG:
		return fmt.Errorf("profiles.%s: the authority %s (%s) and Graph %s (%s) are not both Microsoft's: the profile's tokens would go to a host that did not issue them; set both authorityHost and graphURL (for `mailworker sandbox`, the profile block it prints)",
			name, authority, authFrom, graph, graphFrom)
	case !okA && !okG && !strings.EqualFold(au.Host, gu.Host):
		return fmt.Errorf("profiles.%s: the authority %s and Graph %s are on different hosts: the profile's tokens would go to a host that did not issue them; serve both from one host (as the sandbox does)",
			name, authority, graph)
	}
	return nil
}

// featureCloud is the cloud whose Graph features a profile gets: its cloud,
// or the cloud of its graphURL when that is a Microsoft national cloud's
// Graph (a profile that sets graphURL https://graph.microsoft.us without
// cloud: usgov still talks to US Government Graph).
func featureCloud(p ProfileConfig) graphmail.Cloud {
	if p.GraphURL != "" {
		if u, err := url.Parse(p.GraphURL); err == nil {
			switch strings.ToLower(u.Hostname()) {
			case "graph.microsoft.us":
				return graphmail.CloudUSGov
			case "dod-graph.microsoft.us":
				return graphmail.CloudUSGovDoD
			case "microsoftgraph.chinacloudapi.cn":
				return graphmail.CloudChina
			}
		}
	}
	return graphmail.Cloud(p.Cloud)
}

func cloudName(c string) string {
	if c == "" {
		return "global (default)"
	}
	return c
}
