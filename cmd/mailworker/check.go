package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/worker"
)

// checkResult is what `mailworker check` found; Problems empty means ready.
type checkResult struct {
	NATS string `json:"nats"`
	// Drafts are drafts left behind (draft delivery mode): never sent,
	// their job idle for more than --drafts-older-than.
	Drafts   []orphanDraft  `json:"orphanDrafts"`
	Profiles []profileCheck `json:"profiles"`
	Problems []string       `json:"problems"`
	Warnings []string       `json:"warnings"`
}

type orphanDraft struct {
	JobID     string    `json:"jobId"`
	Profile   string    `json:"profile"`
	Mailbox   string    `json:"mailbox"`
	State     string    `json:"state"`
	CreatedAt time.Time `json:"createdAt"`
}

type profileCheck struct {
	Profile          string     `json:"profile"`
	DeliveryMode     string     `json:"deliveryMode"`
	Credential       string     `json:"credential"` // certificate, client secret, workload identity
	Thumbprint       string     `json:"thumbprint,omitempty"`
	NotAfter         *time.Time `json:"notAfter,omitempty"`
	Token            string     `json:"token"` // "ok" or the error
	TenantWideRoles  []string   `json:"tenantWideMailRoles"`
	AllowedSenders   []string   `json:"allowedSenders"`
	tokenOK, checked bool
}

// certWarnDays is when check warns about an expiring certificate (the
// MailworkerCredentialExpiringSoon alert's threshold).
const certWarnDays = 14

func (c *cli) checkCmd() *cobra.Command {
	var asJSON bool
	var draftsOlder time.Duration
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Preflight: config, NATS and streams, and one Entra token per profile (sends no mail)",
		Long: `check validates the configuration, connects to NATS and opens the provisioned streams,
then fetches one access token per profile from Entra ID. For each profile it reports the
credential (certificate thumbprint and expiry), whether Entra issued a token, and any
tenant-wide Mail.* application permission in that token (admin consent in Entra, which
the Exchange RBAC scope does not restrict). It sends no mail and calls no Graph API.
For a profile in draft delivery mode it says what the Exchange role "Application
Mail.ReadWrite" lets the app do, and lists drafts left behind: jobs whose draft was
never sent and that have not moved for --drafts-older-than (read from the job states).
Exit code 0 when ready, 1 when something must be fixed (listed under "problems").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.config()
			if err != nil {
				return err
			}
			res := c.check(cmd.Context(), cfg, draftsOlder)
			if asJSON {
				if err := json.NewEncoder(c.stdout).Encode(res); err != nil {
					return err
				}
			} else {
				c.printCheck(res)
			}
			if len(res.Problems) > 0 {
				return &exitError{code: 1}
			}
			return nil
		}}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&draftsOlder, "drafts-older-than", time.Hour, "report drafts never sent whose job has not moved for this long")
	return cmd
}

func (c *cli) check(ctx context.Context, cfg Config, draftsOlder time.Duration) checkResult {
	res := checkResult{Profiles: []profileCheck{}, Problems: []string{}, Warnings: []string{}, Drafts: []orphanDraft{}}
	res.NATS = c.checkNATS(ctx, cfg, draftsOlder, &res)
	if res.NATS != "ok" {
		res.Problems = append(res.Problems, "nats: "+res.NATS)
	}
	if len(cfg.Profiles) == 0 {
		res.Problems = append(res.Problems, "profiles: none configured; a worker needs at least one")
	}
	names := make([]string, 0, len(cfg.Profiles))
	for n := range cfg.Profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	m := worker.NewMetrics(nil, names)
	for _, name := range names {
		pc := checkProfile(ctx, name, cfg.Profiles[name], cfg.Worker.SendTimeout, m)
		res.Profiles = append(res.Profiles, pc)
		switch {
		case !pc.checked:
			res.Problems = append(res.Problems, fmt.Sprintf("profile %s: %s", name, pc.Token))
			continue
		case !pc.tokenOK:
			res.Problems = append(res.Problems, fmt.Sprintf("profile %s: Entra issued no token: %s", name, pc.Token))
		}
		if len(pc.TenantWideRoles) > 0 {
			res.Problems = append(res.Problems, fmt.Sprintf("profile %s: the app holds tenant-wide mail permissions %s granted in Entra; the Exchange RBAC scope does not restrict them (docs/runbook.md#mailworkertenantwidemailpermission)",
				name, strings.Join(pc.TenantWideRoles, ", ")))
		}
		if pc.NotAfter != nil {
			switch left := time.Until(*pc.NotAfter); {
			case left <= 0:
				res.Problems = append(res.Problems, fmt.Sprintf("profile %s: certificate %s expired on %s", name, pc.Thumbprint, pc.NotAfter.Format(time.DateOnly)))
			case left < certWarnDays*24*time.Hour:
				res.Warnings = append(res.Warnings, fmt.Sprintf("profile %s: certificate %s expires in %d days: rotate it (docs/runbook.md#maintenance)",
					name, pc.Thumbprint, int(math.Ceil(left.Hours()/24))))
			}
		}
	}
	p, w := checkTracking(ctx, cfg, m)
	res.Problems, res.Warnings = append(res.Problems, p...), append(res.Warnings, w...)
	return res
}

// checkNATS connects and opens the provisioned assets; "ok" or the problem.
func (c *cli) checkNATS(ctx context.Context, cfg Config, draftsOlder time.Duration, res *checkResult) string {
	nc, err := connectNATS(cfg.NATS, "mailworker-check", zerolog.Nop())
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err.Error()
	}
	opCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	q, err := queue.Open(opCtx, js)
	if err != nil {
		// queue's error already says to run `mailworker provision`: one hint.
		return err.Error() + "; or let a worker with streams.provision on start once"
	}
	if _, err := q.Jobs(opCtx, cfg.queueConfig().Profiles); len(cfg.Profiles) > 0 && err != nil {
		return err.Error() + "; or let a worker with streams.provision on start once"
	}
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	defer scancel()
	left, err := q.States.Drafts(sctx, draftsOlder, time.Now())
	if err != nil {
		res.Warnings = append(res.Warnings, "drafts left behind: "+err.Error())
	}
	for _, st := range left {
		res.Drafts = append(res.Drafts, orphanDraft{JobID: st.JobID, Profile: st.Profile, Mailbox: st.Draft.Mailbox,
			State: string(st.State), CreatedAt: st.Draft.CreatedAt})
	}
	if len(left) > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%d drafts never sent are left in shared mailboxes (listed above): "+
			"replay the job (`mailworker dlq replay`) to send it, or delete the draft from the mailbox's Drafts folder (docs/runbook.md#drafts-left-behind)", len(left)))
	}
	return "ok"
}

// checkProfile builds the profile's client as the worker does and fetches one token.
func checkProfile(ctx context.Context, name string, p ProfileConfig, timeout time.Duration, m *worker.Metrics) profileCheck {
	pc := profileCheck{Profile: name, AllowedSenders: p.AllowedSenders, TenantWideRoles: []string{}, DeliveryMode: p.DeliveryMode}
	if pc.DeliveryMode == "" {
		pc.DeliveryMode = string(graphmail.ModeSendMail)
	}
	switch {
	case p.Credential.CertificateFile != "":
		pc.Credential = "certificate " + p.Credential.CertificateFile
	case p.Credential.FederatedTokenFile != "":
		pc.Credential = "workload identity " + p.Credential.FederatedTokenFile
	case p.Credential.ClientSecretFile != "":
		pc.Credential = "client secret " + p.Credential.ClientSecretFile
	default:
		pc.Credential = "client secret (inline)"
	}
	var mu sync.Mutex
	var info graphmail.TokenInfo
	client, _, err := newGraphClient(name, p, timeout, 0, m, func(ti graphmail.TokenInfo) { mu.Lock(); info = ti; mu.Unlock() })
	if err != nil {
		pc.Token = cell(err.Error())
		return pc
	}
	defer client.Close()
	pc.checked = true
	if na, ok := client.CertificateNotAfter(); ok {
		pc.Thumbprint, pc.NotAfter = client.CertificateThumbprint(), &na
	}
	opCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := client.Token(opCtx); err != nil {
		pc.Token = describeTokenError(name, p, err) // graphmail's errors carry no secret, assertion or token
		return pc
	}
	pc.Token, pc.tokenOK = "ok", true
	mu.Lock()
	if tw := graphmail.TenantWideMailRoles(info.Roles); len(tw) > 0 {
		pc.TenantWideRoles = tw
	}
	mu.Unlock()
	return pc
}

func (c *cli) printCheck(res checkResult) {
	fmt.Fprintf(c.stdout, "nats: %s\n", res.NATS)
	for _, p := range res.Profiles {
		fmt.Fprintf(c.stdout, "profile %s\n", p.Profile)
		fmt.Fprintf(c.stdout, "  credential:  %s\n", p.Credential)
		if p.NotAfter != nil {
			fmt.Fprintf(c.stdout, "  certificate: thumbprint %s, expires %s\n", p.Thumbprint, p.NotAfter.UTC().Format(time.DateOnly))
		}
		fmt.Fprintf(c.stdout, "  token:       %s\n", p.Token)
		if p.tokenOK {
			roles := "none (mailbox access comes from the Exchange RBAC scope alone)"
			if len(p.TenantWideRoles) > 0 {
				roles = strings.Join(p.TenantWideRoles, ", ") + " (tenant-wide: the RBAC scope does not restrict it)"
			}
			fmt.Fprintf(c.stdout, "  tenant-wide mail permissions: %s\n", roles)
		}
		fmt.Fprintf(c.stdout, "  allowed senders: %s\n", strings.Join(p.AllowedSenders, ", "))
		if p.DeliveryMode == string(graphmail.ModeDraft) {
			fmt.Fprintln(c.stdout, "  delivery mode: draft. It needs the Exchange role \"Application Mail.ReadWrite\" in the same management scope")
			fmt.Fprintln(c.stdout, "    as Mail.Send: with it the app can read, change and delete any mail in the allowed senders' mailboxes")
			fmt.Fprintln(c.stdout, "    (only those). Verify the scope: Test-MailworkerMailboxScope.ps1 -DraftMode (with a -DeniedMailbox).")
		} else {
			fmt.Fprintln(c.stdout, "  delivery mode: sendMail (Mail.Send only; a job over 4 MB is dead-lettered message_too_large)")
		}
	}
	for _, d := range res.Drafts {
		fmt.Fprintf(c.stdout, "draft left behind: job %s  profile %s  mailbox %s  state %s  created %s\n",
			contract.Quote(d.JobID), d.Profile, contract.Quote(d.Mailbox), d.State, d.CreatedAt.UTC().Format(time.RFC3339))
	}
	for _, w := range res.Warnings {
		fmt.Fprintln(c.stdout, "warning:", w)
	}
	for _, p := range res.Problems {
		fmt.Fprintln(c.stdout, "problem:", p)
	}
	if len(res.Problems) == 0 {
		fmt.Fprintln(c.stdout, "ready: every check passed. RBAC scope is Exchange's to enforce: validate it with Test-MailworkerMailboxScope.ps1, then `mailworker send --wait`.")
	}
}

var aadstsRE = regexp.MustCompile(`AADSTS([0-9]+)`)

// entraConfigErrors are Entra's answers that no retry can change: the
// profile's configuration (or the app registration) is wrong. Codes from
// https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
var entraConfigErrors = map[string]string{
	"7000215": "invalid client secret: set the secret's value, not its ID, in profiles.%s.credential",
	"7000222": "the client secret has expired: add a new one in Entra and set it in profiles.%s.credential",
	"700016":  "no application with profiles.%s.clientId in this tenant: check clientId and tenantId",
	"90002":   "no tenant profiles.%s.tenantId: check tenantId",
	"900023":  "profiles.%s.tenantId is not a valid tenant id or domain",
	"700027":  "the certificate's signature was refused: upload the certificate of profiles.%s.credential.certificateFile to the app registration",
	"700024":  "the client assertion is outside its valid time: check this machine's clock (profile %s)",
	"7000112": "the application of profile %s is disabled in Entra",
	"700023":  "profile %s: invalid authority: check authorityHost and cloud",
	"7000218": "profile %s sent no credential Entra accepts: check profiles.%[1]s.credential",
	"70011":   "invalid scope for profile %s",
	"500011":  "profile %s: the resource (Graph) is not in this tenant: check cloud or graphURL",
}

// describeTokenError turns a failed token request into one line that says
// what kind of failure it is: TLS (with what to trust), a configuration error
// Entra reported (with the setting to fix), or the failure as graphmail gave it.
func describeTokenError(name string, p ProfileConfig, err error) string {
	msg := err.Error()
	detail := entraText(err)
	if i := strings.Index(detail, `Get "`); i >= 0 {
		detail = detail[i:] // MSAL's "unable to resolve an endpoint: server response error:" says nothing more
	}
	var uae x509.UnknownAuthorityError
	var he x509.HostnameError
	var cie x509.CertificateInvalidError
	var rhe tls.RecordHeaderError
	authority := p.AuthorityHost
	if authority == "" {
		authority, _, _ = graphmail.Cloud(p.Cloud).Endpoints()
	}
	switch {
	case errors.As(err, &uae) || strings.Contains(msg, "x509: certificate signed by unknown authority"):
		return cell(fmt.Sprintf("TLS failure: the certificate of %s is signed by an authority this machine does not trust; set profiles.%s.caFile to that CA (`mailworker sandbox` writes its own with --ca-file). %s", authority, name, detail))
	case errors.As(err, &he) || strings.Contains(msg, "x509: certificate is valid for"):
		return cell(fmt.Sprintf("TLS failure: the certificate of %s does not name that host; check profiles.%s.authorityHost. %s", authority, name, detail))
	case errors.As(err, &cie) || strings.Contains(msg, "x509: certificate has expired"):
		return cell(fmt.Sprintf("TLS failure: the certificate of %s is not valid (expired or not yet valid?). %s", authority, detail))
	case errors.As(err, &rhe) || strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return cell(fmt.Sprintf("TLS failure: %s does not speak TLS on that port; check the scheme and port of profiles.%s.authorityHost. %s", authority, name, detail))
	case strings.Contains(msg, "tls:") || strings.Contains(msg, "x509:"):
		return cell(fmt.Sprintf("TLS failure talking to %s. %s", authority, detail))
	}
	if m := aadstsRE.FindStringSubmatch(msg); m != nil {
		if hint, ok := entraConfigErrors[m[1]]; ok {
			return cell(fmt.Sprintf("configuration error (AADSTS%s), a retry will not help: %s. Entra said: %s", m[1], fmt.Sprintf(hint, name), entraText(err)))
		}
	}
	return cell(msg)
}

// entraText is the failure without graphmail's retry classification, which
// describes the worker's handling, not the configuration.
func entraText(err error) string {
	var ge *contract.SendError
	if errors.As(err, &ge) {
		if ge.Err != nil {
			return ge.Err.Error()
		}
		return ge.Message
	}
	return err.Error()
}
