package main

import (
	"context"
	"crypto/sha256"
	"fmt"
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
	profile string
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
	cred, file, err := readCredential(w.profile, w.cfg)
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
			err = fmt.Errorf("profiles.%s.credential.%s %s: %w", w.profile, key, path, err)
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
