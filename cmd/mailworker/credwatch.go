package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/worker"
)

// credWatch re-reads a profile's certificate or client-secret file every
// credential.reloadInterval and gives a changed credential to the profile's
// Graph client, so a rotation needs no restart: Kubernetes updates a mounted
// Secret in place, and the runbook's rotation is add new, switch, remove old.
// A file that cannot be read or does not parse is reported and the
// credential in use kept.
type credWatch struct {
	profile string // the metrics' label: a profile, or "tracking" (tracking.app)
	path    string // where the credential is configured: profiles.<name>, tracking.app
	cfg     CredentialConfig
	client  *graphmail.Client
	metrics *worker.Metrics
	log     zerolog.Logger

	sum     [sha256.Size]byte // digest of the file content in use (not the secret itself)
	lastErr string            // the last failure reported, so a broken file is logged once
}

// loaded records file as the content in use and publishes its expiry.
func (w *credWatch) loaded(file []byte) {
	w.sum, w.lastErr = sha256.Sum256(file), ""
	w.metrics.CredentialStale.WithLabelValues(w.profile).Set(0)
	if na, ok := w.client.CertificateNotAfter(); ok {
		w.metrics.CredentialExpiry.WithLabelValues(w.profile).Set(float64(na.Unix()))
	}
}

func (w *credWatch) run(ctx context.Context) {
	every := w.cfg.ReloadInterval
	if every <= 0 {
		every = defaultCredentialReload
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.check()
		}
	}
}

// check reloads the credential if its file changed.
func (w *credWatch) check() {
	cred, file, err := readCredential(w.path, w.cfg)
	if err == nil && sha256.Sum256(file) == w.sum {
		if w.lastErr != "" { // back to the content in use
			w.lastErr = ""
			w.metrics.CredentialStale.WithLabelValues(w.profile).Set(0)
		}
		return
	}
	if err == nil {
		if err = w.client.SetCredential(cred); err != nil {
			key, path := "certificateFile", w.cfg.CertificateFile
			if path == "" {
				key, path = "clientSecretFile", w.cfg.ClientSecretFile
			}
			err = fmt.Errorf("%s.credential.%s %s: %w", w.path, key, path, err)
		}
	}
	if err != nil {
		// The error names the file or the PEM structure, never its content.
		if msg := err.Error(); msg != w.lastErr {
			w.lastErr = msg
			w.metrics.CredentialReloads.WithLabelValues(w.profile, "error").Inc()
			w.metrics.CredentialStale.WithLabelValues(w.profile).Set(1)
			w.log.Error().Str("profile", w.profile).Err(err).
				Msg("credential file changed but cannot be used; keeping the credential in use")
		}
		return
	}
	w.loaded(file)
	w.metrics.CredentialReloads.WithLabelValues(w.profile, "ok").Inc()
	w.logCredential("credential reloaded: the next token request uses it")
}

// logCredential logs which credential the profile uses: for a certificate,
// the thumbprint the Entra sign-in logs show, and its expiry.
func (w *credWatch) logCredential(msg string) {
	ev := w.log.Info().Str("profile", w.profile)
	if na, ok := w.client.CertificateNotAfter(); ok {
		ev = ev.Str("thumbprint", w.client.CertificateThumbprint()).Time("notAfter", na)
	}
	ev.Msg(msg)
}

// consentWatch reads the application permissions of every token a profile
// fetches. Exchange RBAC for Applications puts none in the token; a Mail.*
// role means an admin granted the app tenant-wide consent in Entra, so it can
// reach every mailbox in the tenant whatever its RBAC scope says (the grants
// add up). The worker still sends only from allowedSenders, but the
// credential it holds is no longer confined: that is reported on every
// change (log, mailworker_tenant_wide_mail_roles, alert), not hidden.
type consentWatch struct {
	profile string
	metrics *worker.Metrics
	log     zerolog.Logger

	mu   sync.Mutex
	last string // the tenant-wide roles last reported, comma-separated
}

func (w *consentWatch) token(ti graphmail.TokenInfo) {
	if !ti.Readable {
		return // an opaque token says nothing either way
	}
	roles := graphmail.TenantWideMailRoles(ti.Roles)
	w.metrics.TenantWideMailRoles.WithLabelValues(w.profile).Set(float64(len(roles)))
	now := strings.Join(roles, ",")
	w.mu.Lock()
	changed := now != w.last
	w.last = now
	w.mu.Unlock()
	switch {
	case !changed:
	case len(roles) > 0:
		w.log.Error().Str("profile", w.profile).Strs("roles", roles).
			Msg("the app registration holds tenant-wide mail permissions granted in Entra: its credential can reach every mailbox in the tenant, whatever the Exchange RBAC scope says. Remove the admin consent (deploy/entra/Test-TenantWideMailSend.ps1 -Remove)")
	default:
		w.log.Info().Str("profile", w.profile).Msg("the app's token holds no tenant-wide mail permission: mailbox access comes from the Exchange RBAC scope alone")
	}
}
