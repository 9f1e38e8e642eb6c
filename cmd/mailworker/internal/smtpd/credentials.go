package smtpd

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"
)

// Credential is one SMTP login. It belongs to one profile: mail submitted
// with it becomes jobs of that profile, from that profile's approved
// mailboxes only.
type Credential struct {
	Username string `yaml:"username"`
	// PasswordHash is a bcrypt hash ($2a$/$2b$/$2y$), never the password
	// (`mailworker smtp hash-password` makes one).
	PasswordHash string `yaml:"passwordHash"`
	Profile      string `yaml:"profile"`
	// AllowFrom optionally restricts the source addresses (CIDRs, or single
	// addresses) the credential may log in from; empty = any.
	AllowFrom []string `yaml:"allowFrom"`
}

// credential is a checked Credential.
type credential struct {
	Credential
	nets []netip.Prefix
}

// dummyHash is compared against for an unknown username, so that a wrong
// username costs the same time as a wrong password. It is made on first use,
// not at package initialisation: a bcrypt hash would cost every command of
// the binary a tenth of a second (over a second under -race) before it
// starts.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("mailworker-smtp-dummy"), bcrypt.DefaultCost)
	return h
})

func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// HashPassword returns a bcrypt hash of password for Credential.PasswordHash.
func HashPassword(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	return string(h), err
}

func checkCredentials(list []Credential, profiles map[string][]string) (map[string]*credential, error) {
	out := make(map[string]*credential, len(list))
	var errs []error
	for i, c := range list {
		at := fmt.Sprintf("credentials[%d]", i)
		if c.Username == "" || strings.ContainsAny(c.Username, "\x00\r\n") {
			errs = append(errs, fmt.Errorf("%s.username: required, without NUL, CR or LF", at))
			continue
		}
		if _, dup := out[c.Username]; dup {
			errs = append(errs, fmt.Errorf("%s.username: %q appears twice", at, c.Username))
		}
		if _, err := bcrypt.Cost([]byte(c.PasswordHash)); err != nil {
			errs = append(errs, fmt.Errorf("%s.passwordHash: not a bcrypt hash (mailworker smtp hash-password makes one)", at))
		}
		if _, ok := profiles[c.Profile]; !ok {
			errs = append(errs, fmt.Errorf("%s.profile: %q is not a configured profile", at, c.Profile))
		}
		cc := &credential{Credential: c}
		for j, s := range c.AllowFrom {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					errs = append(errs, fmt.Errorf("%s.allowFrom[%d]: %q is not a CIDR or an address", at, j, s))
					continue
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			cc.nets = append(cc.nets, p.Masked())
		}
		out[c.Username] = cc
	}
	return out, errors.Join(errs...)
}

// allows reports whether addr may use the credential.
func (c *credential) allows(addr netip.Addr) bool {
	if len(c.nets) == 0 {
		return true
	}
	addr = addr.Unmap()
	for _, p := range c.nets {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// credentialFile is the YAML of smtp.credentialsFile.
type credentialFile struct {
	Credentials []Credential `yaml:"credentials"`
}

// Credentials holds the logins: those of the config and, when a file is
// given, those of the file, which is re-read when it changes (checked at
// most every interval, on a login), so a rotated Kubernetes Secret is taken
// up without a restart. A file that fails to load keeps the previous set.
type Credentials struct {
	inline   []Credential
	file     string
	profiles map[string][]string
	interval time.Duration
	now      func() time.Time
	onReload func(ok bool, err error)

	mu        sync.Mutex
	set       map[string]*credential
	stamp     string // SHA-256 of the file as last loaded
	lastCheck time.Time
	gen       uint64 // counts the loads that replaced the set
}

// NewCredentials checks inline and loads file (optional). profiles maps each
// profile to its approved mailboxes. It returns an error naming each bad
// entry; interval <= 0 re-checks the file on every login.
func NewCredentials(inline []Credential, file string, interval time.Duration, profiles map[string][]string, onReload func(ok bool, err error)) (*Credentials, error) {
	c := &Credentials{inline: inline, file: file, profiles: profiles, interval: interval, now: time.Now, onReload: onReload}
	set, stamp, err := c.load()
	if err != nil {
		return nil, err
	}
	c.set, c.stamp, c.lastCheck = set, stamp, c.now()
	return c, nil
}

func (c *Credentials) load() (map[string]*credential, string, error) {
	list := append([]Credential(nil), c.inline...)
	stamp := ""
	if c.file != "" {
		data, err := os.ReadFile(c.file)
		if err != nil {
			return nil, "", fmt.Errorf("smtp.credentialsFile: %w", err)
		}
		var f credentialFile
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
			return nil, "", fmt.Errorf("smtp.credentialsFile %s: %w", c.file, err)
		}
		list = append(list, f.Credentials...)
		stamp = digest(data)
	}
	set, err := checkCredentials(list, c.profiles)
	if err != nil {
		return nil, "", fmt.Errorf("smtp credentials: %w", err)
	}
	return set, stamp, nil
}

// lookup returns the credential of username (nil when unknown), re-reading
// the file first when it is due and has changed.
func (c *Credentials) lookup(username string) *credential {
	cr, _ := c.lookupGen(username)
	return cr
}

// lookupGen is lookup, with the generation of the set the credential comes
// from (it grows with each reload that replaced the set).
func (c *Credentials) lookupGen(username string) (*credential, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.file != "" && c.now().Sub(c.lastCheck) >= c.interval {
		c.lastCheck = c.now()
		if data, err := os.ReadFile(c.file); err != nil || digest(data) != c.stamp {
			set, stamp, err := c.load()
			if err == nil {
				c.set, c.stamp = set, stamp
				c.gen++
			} else {
				c.stamp = digest(data) // report a broken file once, not on every login
			}
			if c.onReload != nil {
				c.onReload(err == nil, err)
			}
		}
	}
	return c.set[username], c.gen
}

// Profile returns the profile of username, for tests and tools.
func (c *Credentials) Profile(username string) (string, bool) {
	cr := c.lookup(username)
	if cr == nil {
		return "", false
	}
	return cr.Profile, true
}
