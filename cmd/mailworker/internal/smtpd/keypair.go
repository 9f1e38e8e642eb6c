package smtpd

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// KeyPair serves a certificate from PEM files that it re-reads when they
// change (checked at most every interval, on a handshake): a cert-manager
// renewal of the mounted Secret is taken up without a restart. Files that
// fail to load keep the previous certificate.
type KeyPair struct {
	certFile, keyFile string
	interval          time.Duration
	onError           func(error)

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     string // SHA-256 of the files as last loaded, not a copy of the key
	lastCheck time.Time
}

// NewKeyPair loads the pair; the error names the file at fault.
func NewKeyPair(certFile, keyFile string, interval time.Duration, onError func(error)) (*KeyPair, error) {
	k := &KeyPair{certFile: certFile, keyFile: keyFile, interval: interval, onError: onError}
	if err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *KeyPair) load() error {
	c, err := os.ReadFile(k.certFile)
	if err != nil {
		return fmt.Errorf("smtp.certFile: %w", err)
	}
	key, err := os.ReadFile(k.keyFile)
	if err != nil {
		return fmt.Errorf("smtp.keyFile: %w", err)
	}
	stamp := digest(append(append([]byte(nil), c...), key...))
	if stamp == k.stamp {
		return nil
	}
	pair, err := tls.X509KeyPair(c, key)
	if err != nil {
		return fmt.Errorf("smtp.certFile/keyFile: %w", err)
	}
	k.cert, k.stamp = &pair, stamp
	return nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.lastCheck) >= k.interval {
		k.lastCheck = time.Now()
		if err := k.load(); err != nil && k.onError != nil {
			k.onError(err)
		}
	}
	return k.cert, nil
}
