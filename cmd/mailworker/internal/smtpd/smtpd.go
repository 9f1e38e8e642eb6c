// Package smtpd is mailworker's SMTP submission ingress (`mailworker smtp`):
// applications and devices that only speak SMTP submit mail, which becomes a
// MIME job of the credential's profile on mail.send.<profile>.
//
// The protocol is github.com/emersion/go-smtp's; header parsing is
// queue/contract's, the worker's own. The rules are:
//
//   - AUTH (PLAIN, LOGIN) only over TLS (STARTTLS or implicit TLS); no MAIL
//     or RCPT before it, so nothing is relayed for an unauthenticated client;
//   - MAIL FROM must be an approved mailbox of the credential's profile
//     (550 5.7.1 before any data); the message gets the worker's own check
//     (contract.Job.CheckMIMEHeader) at DATA, so that what is accepted is
//     sendable: every From:/Sender: the MAIL FROM mailbox (550 5.7.1), no
//     field reserved to Exchange, Reply-To valid (554 5.6.0);
//   - envelope recipients missing from To/Cc/Bcc become a Bcc header (Graph
//     takes recipients from the headers; Exchange strips Bcc from what the
//     other recipients see), header recipients outside the envelope are
//     refused (550 5.7.1);
//   - 250 to DATA only after JetStream's publish ack, with the job id in the
//     reply text; a broker that does not ack in time gives 451 4.3.0;
//   - the job id is a digest of the credential, envelope and message, so a
//     client retrying after a 4xx whose publish did land is deduplicated
//     (JetStream's Nats-Msg-Id window, then the worker's job state);
//   - limits: SIZE per profile (552 5.3.4 at MAIL FROM SIZE= or during DATA):
//     a draft-mode profile takes what its mailbox's maximum message size
//     takes (larger MIME goes out through a draft), a sendMail-mode profile
//     what one Graph MIME request carries; recipients
//     per message (452 4.5.3), messages per connection (451 4.7.0), messages
//     per minute per credential (450 4.7.0), concurrent sessions (421 4.3.2).
//
// Logs name the job, profile, login and sizes, never addresses or content.
package smtpd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// Publisher stores a job durably; it returns after JetStream's ack
// (queue.Publisher).
type Publisher interface {
	Publish(ctx context.Context, profile string, job *contract.Job) (string, error)
}

// Store keeps large messages by reference, in the profile's own object
// store (queue.Attachments).
type Store interface {
	Put(ctx context.Context, profile, name string, data []byte) (string, error)
	PutReader(ctx context.Context, profile, name string, r io.Reader) (string, error)
	Delete(ctx context.Context, profile, ref string) error
	// Mark, Marked and Unmark keep the retry records (queue.Attachments).
	Mark(ctx context.Context, profile, key, value string) (rev uint64, err error)
	Marked(ctx context.Context, profile, key string) (value string, at time.Time, found bool, err error)
	Unmark(ctx context.Context, profile, key, value string, rev uint64) error
}

// MarkWatcher is what a Store may also do (queue.Attachments): keep the
// server informed of a profile's retry records as they are written, so that
// a submission needs no look-up of its own (README, "SMTP retries").
type MarkWatcher interface {
	WatchMarks(ctx context.Context, profile string, fn func(queue.MarkUpdate), ready func()) (<-chan struct{}, error)
}

// AsyncPublisher is what a Publisher may also do (queue.Publisher): send a
// job without waiting for its ack, so that the job and its retry record
// leave in one write to the broker and their answers are awaited together.
type AsyncPublisher interface {
	PublishJobAsync(profile string, job *contract.Job) (wait func(context.Context) (queue.Published, error), err error)
}

// AsyncMarker is what a Store may also do (queue.Attachments): write and
// remove retry records without waiting (AsyncPublisher).
type AsyncMarker interface {
	MarkAsync(ctx context.Context, profile, key, value string) (wait func(context.Context) (uint64, error), err error)
	UnmarkAsync(ctx context.Context, profile, key, value string, rev uint64) (wait func(context.Context) error, err error)
}

// Counter is what a Store may also do (queue.Attachments): count a login's
// messages in a window shared by every replica (compare-and-set), so that
// MessagesPerMinute holds for the login however many replicas it reaches.
type Counter interface {
	CountUnder(ctx context.Context, profile, key, prev string, limit int) (bool, error)
}

// stampHeadroom is what the worker's "X-Mailworker-Job-Id: <id>\r\n" stamp
// adds to a message (ids made here are 43 characters).
const stampHeadroom = len(contract.HeaderStampJobID) + 2 + 43 + 2

// MaxSize is the largest message a sendMail-mode profile takes: what one
// Graph MIME sendMail request carries, less the worker's stamp.
const MaxSize = contract.MaxMIMEBytes - stampHeadroom

// MaxDraftSize is the largest message any profile takes: Exchange Online's
// largest maximum message size (150 MB), less the worker's stamp.
const MaxDraftSize = int(contract.MaxMessageBytesLimit) - stampHeadroom

// Config tunes the server; zero values take the defaults of WithDefaults.
type Config struct {
	Domain                string // greeting name; default "localhost"
	MaxMessageBytes       int    // advertised SIZE; default and most: the largest profile's limit (ProfileMaxMessageBytes)
	MaxRecipients         int    // per transaction; default 500, at most contract.MaxRecipients
	MaxSessions           int    // concurrent connections; default 100
	MaxSessionsPerAddress int    // concurrent connections from one client (an IPv4 address, an IPv6 /64); default 10
	// MaxSessionsPerLogin: concurrent logged-in sessions of one login,
	// from whatever addresses; past it AUTH is answered 421 and the
	// connection closed, so that one login (a stolen password, a runaway
	// client) cannot hold every session against the other logins. Default
	// a fifth of MaxSessions (at least 1).
	MaxSessionsPerLogin   int
	PreAuthTimeout        time.Duration // from accept to a successful AUTH; default 30s
	MessagesPerConnection int           // default 100
	MessagesPerMinute     int           // per credential; default 60, negative = unlimited
	InlineMaxBytes        int           // larger messages go to the object store; default 256 KiB
	ReadTimeout           time.Duration // per command and DATA; default 5m
	WriteTimeout          time.Duration // default 1m
	PublishTimeout        time.Duration // wait for the publish ack; default 10s
	// RetryWindow: how long a submission whose answer the client may not
	// have seen (a 451 after a publish that may have landed, a connection
	// lost after the 250) is recognised in the client's retry; default 24h.
	RetryWindow time.Duration
	// NoRecordBeforeAnswer: write a submission's retry record only when its
	// answer is known to be at risk (a 451 after a publish that may have
	// landed, a session that ended after the 250 without another command),
	// not before every 250. Faster (one broker write per message, the
	// publish, instead of two: retry.go), but a retry after an ingress crash between its 250 and the
	// client's next command is then a second mail.
	NoRecordBeforeAnswer bool
	// AuthFailuresPerConnection failed AUTH close the connection (default
	// 3); AuthFailuresPerAddress failures from one address within
	// AuthLockout (defaults 10 and 15m) refuse AUTH from it (454) until
	// they age out. The n-th failure on a connection is answered after n ×
	// AuthFailureDelay (default 1s; negative = none).
	AuthFailuresPerConnection int
	AuthFailuresPerAddress    int
	AuthLockout               time.Duration
	AuthFailureDelay          time.Duration
	// AuthCacheTTL: a verified username and password are not verified
	// again (bcrypt) for this long while the credentials are unchanged;
	// default 60s, negative = off. AuthCacheSize bounds the verified
	// logins kept (least recently used dropped first); default 1000,
	// negative = off (authCache).
	AuthCacheTTL  time.Duration
	AuthCacheSize int
	// ProfileMaxMessageBytes is, for each profile whose large MIME goes out
	// through a draft (deliveryMode draft), its mailbox's maximum message
	// size as Exchange counts it (profiles.<name>.maxMessageSize, at most
	// 150 MB): it takes messages up to that, less the worker's stamp. A
	// profile not listed takes MaxSize (one Graph MIME request).
	ProfileMaxMessageBytes map[string]int64
	// ProfileMaxRecipients is each profile's recipient limit per message
	// (profiles.<name>.maxRecipientsPerMessage); it caps MaxRecipients.
	ProfileMaxRecipients map[string]int
	// Senders maps each profile to its approved mailboxes.
	Senders map[string][]string
}

// WithDefaults fills in zero values.
func (c Config) WithDefaults() Config {
	if c.Domain == "" {
		c.Domain = "localhost"
	}
	most := MaxSize
	for p := range c.ProfileMaxMessageBytes {
		most = max(most, c.profileLimit(p))
	}
	if c.MaxMessageBytes <= 0 || c.MaxMessageBytes > most {
		c.MaxMessageBytes = most
	}
	if c.MaxRecipients <= 0 {
		c.MaxRecipients = 500 // Exchange Online's default recipient limit
	}
	if c.MaxSessionsPerAddress <= 0 {
		c.MaxSessionsPerAddress = 10
	}
	if c.PreAuthTimeout <= 0 {
		c.PreAuthTimeout = 30 * time.Second
	}
	if c.RetryWindow <= 0 {
		c.RetryWindow = 24 * time.Hour
	}
	if c.AuthFailuresPerConnection <= 0 {
		c.AuthFailuresPerConnection = 3
	}
	if c.AuthFailuresPerAddress <= 0 {
		c.AuthFailuresPerAddress = 10
	}
	if c.AuthLockout <= 0 {
		c.AuthLockout = 15 * time.Minute
	}
	if c.AuthFailureDelay == 0 {
		c.AuthFailureDelay = time.Second
	}
	if c.AuthCacheTTL == 0 {
		c.AuthCacheTTL = time.Minute
	}
	if c.AuthCacheSize == 0 {
		c.AuthCacheSize = 1000
	}
	c.MaxRecipients = min(c.MaxRecipients, contract.MaxRecipients)
	if c.MaxSessions <= 0 {
		c.MaxSessions = 100
	}
	if c.MaxSessionsPerLogin <= 0 {
		c.MaxSessionsPerLogin = max(1, c.MaxSessions/5)
	}
	if c.MessagesPerConnection <= 0 {
		c.MessagesPerConnection = 100
	}
	if c.MessagesPerMinute == 0 {
		c.MessagesPerMinute = 60
	}
	if c.InlineMaxBytes <= 0 {
		c.InlineMaxBytes = 256 << 10
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 5 * time.Minute
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = time.Minute
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = 10 * time.Second
	}
	return c
}

// Options are the server's collaborators.
type Options struct {
	Logger  zerolog.Logger
	Metrics *Metrics // required
	TLS     *tls.Config
	Now     func() time.Time
}

// Server is a running SMTP submission server; Serve and ServeTLS may both
// run on one Server.
type Server struct {
	cfg     Config
	creds   *Credentials
	pub     Publisher
	store   Store
	log     zerolog.Logger
	m       *Metrics
	now     func() time.Time
	senders map[string]map[string]bool // profile -> lower-case mailbox
	smtp    *smtp.Server
	tls     *tls.Config
	active  atomic.Int64

	rateMu sync.Mutex
	rates  map[string][]time.Time // username -> accepts in the last minute

	addrMu   sync.Mutex
	perAddr  map[netip.Addr]int // open sessions per client (clientKey)
	perLogin map[string]int     // logged-in sessions per login

	failMu   sync.Mutex
	failures map[netip.Addr][]time.Time // failed AUTH per client (clientKey), last AuthLockout

	auth *authCache // verified logins
	// compare is bcrypt.CompareHashAndPassword (tests count the calls).
	compare func(hash, password []byte) error

	marks  map[string]*markIndex // profile -> its retry records, when the store is a MarkWatcher
	self   string                // this replica's name in the records it writes
	ctx    context.Context       // ends the watches on Close or Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a server; it listens nowhere until Serve or ServeTLS. TLS is
// required: AUTH is only offered over it.
func New(cfg Config, creds *Credentials, pub Publisher, store Store, o Options) (*Server, error) {
	if o.TLS == nil {
		return nil, errors.New("smtpd: a TLS configuration is required (AUTH only over TLS)")
	}
	if creds == nil || pub == nil || store == nil || o.Metrics == nil {
		return nil, errors.New("smtpd: credentials, publisher, store and metrics are required")
	}
	cfg = cfg.WithDefaults()
	if o.Now == nil {
		o.Now = time.Now
	}
	dummyHash() // made now, so that the first unknown username costs what a wrong password does
	s := &Server{cfg: cfg, creds: creds, pub: pub, store: store, log: o.Logger, m: o.Metrics, now: o.Now,
		senders: map[string]map[string]bool{}, tls: o.TLS, rates: map[string][]time.Time{},
		perAddr: map[netip.Addr]int{}, perLogin: map[string]int{}, failures: map[netip.Addr][]time.Time{},
		compare: bcrypt.CompareHashAndPassword, marks: map[string]*markIndex{}}
	s.auth = newAuthCache(cfg.AuthCacheTTL, cfg.AuthCacheSize, func() time.Time { return s.now() })
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.self = contract.NewJobID()[:16]
	for p, list := range cfg.Senders {
		s.senders[p] = map[string]bool{}
		for _, a := range list {
			if mbs, err := contract.ParseAddressList(a); err == nil && len(mbs) == 1 {
				s.senders[p][strings.ToLower(mbs[0].Addr)] = true
			}
		}
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Domain
	srv.MaxMessageBytes = int64(cfg.MaxMessageBytes)
	srv.MaxRecipients = 0     // enforced in Rcpt, so that refusals are counted
	srv.EnableSMTPUTF8 = true // as Microsoft 365 offers it; the message goes to Graph as it is
	srv.AllowInsecureAuth = false
	srv.ReadTimeout, srv.WriteTimeout = cfg.ReadTimeout, cfg.WriteTimeout
	srv.TLSConfig = o.TLS
	srv.ErrorLog = logAdapter{s.log}
	s.smtp = srv
	s.watchMarks()
	return s, nil
}

// Serve accepts submission connections on ln (port 587 style: plain, then
// STARTTLS before AUTH). It returns when Close is called.
func (s *Server) Serve(ln net.Listener) error {
	return s.smtp.Serve(&capListener{Listener: ln, s: s, greet: true})
}

// ServeTLS accepts implicit-TLS connections on ln (port 465 style).
func (s *Server) ServeTLS(ln net.Listener) error {
	return s.smtp.Serve(tls.NewListener(&capListener{Listener: ln, s: s}, s.tls))
}

// Close closes the listeners and every open connection.
func (s *Server) Close() error {
	err := s.smtp.Close()
	s.cancel()
	s.wg.Wait()
	return err
}

// Shutdown stops accepting and waits for open sessions to end until ctx is
// done, then closes them.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.smtp.Shutdown(ctx)
	s.cancel()
	s.wg.Wait()
	return err
}

type logAdapter struct{ log zerolog.Logger }

func (l logAdapter) Printf(format string, v ...any) { l.log.Debug().Msgf("smtp: "+format, v...) }
func (l logAdapter) Println(v ...any)               { l.log.Debug().Msg("smtp: " + fmt.Sprint(v...)) }

// capListener refuses connections over MaxSessions, or over
// MaxSessionsPerAddress from one address, counts sessions and closes a
// connection that has not logged in within PreAuthTimeout of its accept.
type capListener struct {
	net.Listener
	s     *Server
	greet bool // say 421 before closing (plain listener; not on implicit TLS)
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		s := l.s
		var addr netip.Addr
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			addr = clientKey(ap.Addr())
		}
		reason := ""
		if n := s.active.Add(1); n > int64(s.cfg.MaxSessions) {
			reason = "too many concurrent sessions"
		} else if !s.addrAcquire(addr) {
			reason = "too many concurrent sessions from your address"
			s.m.SessionsRefusedPerAddress.Inc()
		}
		if reason != "" {
			s.active.Add(-1)
			s.m.SessionsRefused.Inc()
			s.m.Refused.WithLabelValues("421").Inc()
			if l.greet {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = io.WriteString(c, fmt.Sprintf("421 4.3.2 %s %s, try again later\r\n", s.cfg.Domain, reason))
			}
			_ = c.Close()
			continue
		}
		s.m.Sessions.Inc()
		s.m.SessionsActive.Inc()
		cc := &countedConn{Conn: c, s: s, addr: addr}
		cc.mu.Lock()
		cc.preAuth = time.AfterFunc(s.cfg.PreAuthTimeout, func() {
			if !cc.authed.Load() {
				s.m.PreAuthTimeouts.Inc()
				_ = cc.Close()
			}
		})
		cc.mu.Unlock()
		return cc, nil
	}
}

// clientKey is what the per-client caps count by: an IPv4 address, or the
// /64 of an IPv6 address (a single host is usually given a whole /64 and
// may use any address in it: counted one by one, one host could open
// MaxSessionsPerAddress sessions, or try AuthFailuresPerAddress passwords,
// from each of 2^64 addresses).
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		if p, err := a.WithZone("").Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}

// loginAcquire counts a logged-in session of username; false when it has
// MaxSessionsPerLogin open already.
func (s *Server) loginAcquire(username string) bool {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	if s.perLogin[username] >= s.cfg.MaxSessionsPerLogin {
		return false
	}
	s.perLogin[username]++
	return true
}

func (s *Server) loginRelease(username string) {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	if s.perLogin[username]--; s.perLogin[username] <= 0 {
		delete(s.perLogin, username)
	}
}

// addrAcquire counts a session of client addr (clientKey); false when it
// has MaxSessionsPerAddress open already.
func (s *Server) addrAcquire(addr netip.Addr) bool {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	if s.perAddr[addr] >= s.cfg.MaxSessionsPerAddress {
		return false
	}
	s.perAddr[addr]++
	return true
}

func (s *Server) addrRelease(addr netip.Addr) {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	if s.perAddr[addr]--; s.perAddr[addr] <= 0 {
		delete(s.perAddr, addr)
	}
}

type countedConn struct {
	net.Conn
	s       *Server
	addr    netip.Addr // clientKey
	authed  atomic.Bool
	mu      sync.Mutex
	preAuth *time.Timer // set under mu
	login   string      // the login whose session this is (loginAcquire), set under mu
	closed  bool        // under mu
	once    sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.preAuth.Stop()
		login := c.login
		c.closed = true
		c.mu.Unlock()
		if login != "" {
			c.s.loginRelease(login)
		}
		c.s.active.Add(-1)
		c.s.addrRelease(c.addr)
		c.s.m.SessionsActive.Dec()
	})
	return c.Conn.Close()
}

// holdLogin counts this connection as a session of login until it closes;
// false when login has MaxSessionsPerLogin sessions already (or the
// connection is closed).
func (c *countedConn) holdLogin(login string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	if c.login != "" {
		return c.login == login
	}
	if !c.s.loginAcquire(login) {
		return false
	}
	c.login = login
	return true
}

// rawConn is the accepted connection under c (under TLS, if any).
func rawConn(c net.Conn) *countedConn {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	cc, _ := c.(*countedConn)
	return cc
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	ss := &session{s: s, conn: c, raw: rawConn(c.Conn())}
	if ap, err := netip.ParseAddrPort(c.Conn().RemoteAddr().String()); err == nil {
		ss.remote = ap.Addr().Unmap()
	}
	return ss, nil
}

// refuse counts and returns an SMTP refusal.
func (s *Server) refuse(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	s.m.Refused.WithLabelValues(fmt.Sprint(code)).Inc()
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

// session is one SMTP session (a new one after STARTTLS).
type session struct {
	s      *Server
	conn   *smtp.Conn
	remote netip.Addr
	cred   *credential
	from   string
	rcpts  []string
	msgs   int
	// pending is the last accepted submission until the client is seen to
	// read its answer.
	pending *pendingAnswer
	// unmarkDue is the submission whose answer the client read and whose
	// record is still to be removed.
	unmarkDue *pendingAnswer
	// recName is the name of the session's retry record (retry.go).
	recName string
	raw     *countedConn // nil only in tests that bypass the listener
	fails   int          // failed AUTH attempts on this connection
}

func (ss *session) log(level zerolog.Level) *zerolog.Event {
	e := ss.s.log.WithLevel(level)
	if e == nil {
		return nil // level off: no fields built (a nil event takes every call)
	}
	e = e.Str("remote", ss.remote.String())
	if ss.cred != nil {
		e = e.Str("login", ss.cred.Username).Str("profile", ss.cred.Profile)
	}
	return e
}

func (ss *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (ss *session) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return ss.authFail(AuthMalformed, username)
			}
			return ss.login(username, password)
		}), nil
	case sasl.Login:
		return &loginServer{auth: ss.login}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login checks a username and password, then the source address. Failed
// attempts are answered later and later, a connection is closed after
// AuthFailuresPerConnection of them, and an address with
// AuthFailuresPerAddress failures in AuthLockout is refused AUTH without a
// check until they age out. A login verified within AuthCacheTTL is not
// verified again (bcrypt) while the credentials are unchanged.
func (ss *session) login(username, password string) error {
	s := ss.s
	if _, ok := ss.conn.TLSConnectionState(); !ok {
		return ss.authFail(AuthMalformed, username) // go-smtp refuses AUTH before TLS already
	}
	if ss.fails >= s.cfg.AuthFailuresPerConnection {
		return ss.lockedOut("connection")
	}
	if !s.authAllowedFrom(clientKey(ss.remote)) {
		return ss.lockedOut("address")
	}
	cred, gen := s.creds.lookupGen(username)
	if cred == nil {
		_ = s.compare(dummyHash(), []byte(password)) // same cost as a known user
		return ss.authFail(AuthUnknownUser, username)
	}
	if !s.verify(gen, cred, username, password) {
		return ss.authFail(AuthBadPassword, username)
	}
	if !cred.allows(ss.remote) {
		return ss.authFail(AuthSourceNotAllowed, username) // same answer: the password is not confirmed
	}
	if ss.raw != nil && !ss.raw.holdLogin(cred.Username) {
		s.m.SessionsRefusedPerLogin.Inc()
		ss.log(zerolog.WarnLevel).Str("login", cred.Username).Str("profile", cred.Profile).Int("maxSessionsPerLogin", s.cfg.MaxSessionsPerLogin).
			Msg("smtp login refused: too many concurrent sessions of this login")
		ss.closeRaw()
		return s.refuse(421, smtp.EnhancedCode{4, 7, 0}, "Too many concurrent sessions for this login; try again later")
	}
	ss.cred = cred
	if ss.raw != nil {
		ss.raw.authed.Store(true)
	}
	ss.log(zerolog.InfoLevel).Msg("smtp login")
	return nil
}

func (ss *session) authFail(reason, username string) error {
	s := ss.s
	s.m.AuthFailures.WithLabelValues(reason).Inc()
	if len(username) > 64 {
		username = username[:64]
	}
	ss.log(zerolog.WarnLevel).Str("reason", reason).Str("username", fmt.Sprintf("%q", username)).Msg("smtp auth failed")
	ss.fails++
	s.authFailedFrom(clientKey(ss.remote))
	// Tarpit: the n-th failure on a connection is answered after n times
	// AuthFailureDelay.
	if d := time.Duration(ss.fails) * s.cfg.AuthFailureDelay; d > 0 {
		time.Sleep(d)
	}
	if ss.fails >= s.cfg.AuthFailuresPerConnection {
		ss.closeRaw()
		return s.refuse(421, smtp.EnhancedCode{4, 7, 0}, "Too many failed logins; closing connection")
	}
	return s.refuse(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
}

// lockedOut refuses an AUTH without checking it.
func (ss *session) lockedOut(scope string) error {
	s := ss.s
	s.m.AuthFailures.WithLabelValues(AuthLockedOut).Inc()
	s.m.AuthLockouts.WithLabelValues(scope).Inc()
	ss.log(zerolog.WarnLevel).Str("scope", scope).Msg("smtp auth refused: too many failed logins")
	if scope == "connection" {
		ss.closeRaw()
		return s.refuse(421, smtp.EnhancedCode{4, 7, 0}, "Too many failed logins; closing connection")
	}
	return s.refuse(454, smtp.EnhancedCode{4, 7, 0}, "Too many failed logins from your address; try again later")
}

// closeRaw closes the connection once the reply now being written has had
// a moment to leave (go-smtp writes it after we return).
func (ss *session) closeRaw() {
	if ss.raw == nil {
		return
	}
	c := ss.raw
	time.AfterFunc(200*time.Millisecond, func() { _ = c.Close() })
}

// authAllowedFrom reports whether addr is under AuthFailuresPerAddress
// failures in the last AuthLockout.
func (s *Server) authAllowedFrom(addr netip.Addr) bool {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	l := s.prune(addr)
	return len(l) < s.cfg.AuthFailuresPerAddress
}

func (s *Server) authFailedFrom(addr netip.Addr) {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	s.failures[addr] = append(s.prune(addr), s.now())
	if len(s.failures) > 100_000 { // bound the map under a spray from many addresses
		for a := range s.failures {
			s.prune(a)
		}
	}
}

// prune drops addr's failures older than AuthLockout (failMu held).
func (s *Server) prune(addr netip.Addr) []time.Time {
	cut := s.now().Add(-s.cfg.AuthLockout)
	l := s.failures[addr]
	i := 0
	for i < len(l) && !l[i].After(cut) {
		i++
	}
	l = l[i:]
	if len(l) == 0 {
		delete(s.failures, addr)
		return nil
	}
	s.failures[addr] = l
	return l
}

// verify checks password against cred, through the cache of verified
// logins (authCache).
func (s *Server) verify(gen uint64, cred *credential, username, password string) bool {
	ok, hit := s.auth.verify(gen, cred, username, password, func() bool {
		return s.compare([]byte(cred.PasswordHash), []byte(password)) == nil
	})
	if hit {
		s.m.AuthCacheHits.Inc()
	}
	return ok
}

// profileLimit is the largest message profile takes, before the
// advertised SIZE caps it.
func (c Config) profileLimit(profile string) int {
	n := c.ProfileMaxMessageBytes[profile]
	if n <= 0 {
		return MaxSize
	}
	return max(MaxSize, min(int(n)-stampHeadroom, MaxDraftSize))
}

// maxMessage is the largest message profile takes here.
func (s *Server) maxMessage(profile string) int {
	return min(s.cfg.profileLimit(profile), s.cfg.MaxMessageBytes)
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	s := ss.s
	if ss.cred == nil {
		return s.refuse(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required (STARTTLS, then AUTH)")
	}
	from, err := contract.CanonicalAddrSpec(from)
	if err != nil || !s.senders[ss.cred.Profile][strings.ToLower(from)] {
		ss.log(zerolog.WarnLevel).Msg("smtp MAIL FROM refused: not an approved mailbox")
		return s.refuse(550, smtp.EnhancedCode{5, 7, 1}, "Sender is not an approved mailbox of this login's profile "+ss.cred.Profile)
	}
	if ss.msgs >= s.cfg.MessagesPerConnection {
		return s.refuse(451, smtp.EnhancedCode{4, 7, 0}, fmt.Sprintf("At most %d messages per connection; reconnect to send more", s.cfg.MessagesPerConnection))
	}
	if !ss.rateAllows() {
		ss.log(zerolog.WarnLevel).Msg("smtp MAIL FROM deferred: rate limit")
		return s.refuse(450, smtp.EnhancedCode{4, 7, 0}, fmt.Sprintf("Rate limit of %d messages per minute for this login reached; try again later", s.cfg.MessagesPerMinute))
	}
	if opts != nil && opts.Size > int64(s.maxMessage(ss.cred.Profile)) {
		// RFC 1870: the declared size is over this profile's limit.
		return ss.tooLarge(s.maxMessage(ss.cred.Profile))
	}
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s := ss.s
	if ss.cred == nil {
		return s.refuse(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required (STARTTLS, then AUTH)")
	}
	// go-smtp hands over a quoted local part unquoted: the canonical form
	// quotes it again, as a message's header has it.
	to, err := contract.CanonicalAddrSpec(to)
	if err != nil {
		return s.refuse(550, smtp.EnhancedCode{5, 1, 3}, "Bad recipient address syntax")
	}
	for _, r := range ss.rcpts {
		if strings.EqualFold(r, to) {
			return nil
		}
	}
	if n := s.maxRecipients(ss.cred.Profile); len(ss.rcpts) >= n {
		return s.refuse(452, smtp.EnhancedCode{4, 5, 3}, fmt.Sprintf("Too many recipients: at most %d per message", n))
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *session) Reset() { ss.from, ss.rcpts = "", nil }

// Logout: a session that ends after a 250 without another command may
// have lost that answer; its retry is then the same job.
func (ss *session) Logout() error {
	if p := ss.pending; p != nil {
		ss.pending = nil
		if !p.marked {
			ss.remember(p.key, p.id)
		}
	}
	if due := ss.unmarkDue; due != nil {
		ss.unmarkDue = nil
		ss.unmark(due.rec, due.rev)
	}
	return nil
}

// maxRecipients is the recipient limit of one transaction of profile.
func (s *Server) maxRecipients(profile string) int {
	if n := s.cfg.ProfileMaxRecipients[profile]; n > 0 {
		return min(n, s.cfg.MaxRecipients)
	}
	return s.cfg.MaxRecipients
}

// rateAllows counts this MAIL FROM against the login's MessagesPerMinute
// and reports whether it is within them. The count is shared by every
// replica (a counter per login and calendar minute in the profile's store,
// compare-and-set) when the store can (Counter); without one, or while the
// broker does not answer, each replica counts alone (then the publish most
// likely fails too).
func (ss *session) rateAllows() bool {
	s := ss.s
	if s.cfg.MessagesPerMinute < 0 {
		return true
	}
	if c, ok := s.store.(Counter); ok {
		h := sha256.Sum256([]byte(ss.cred.Profile + "\x00" + ss.cred.Username))
		login := base64.RawURLEncoding.EncodeToString(h[:12])
		minute := s.now().Unix() / 60
		key := func(m int64) string { return fmt.Sprintf("smtp-rate/%s/%d", login, m) }
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
		defer cancel()
		ok, err := c.CountUnder(ctx, ss.cred.Profile, key(minute), key(minute-1), s.cfg.MessagesPerMinute)
		if err == nil {
			return ok
		}
		s.m.RateCountFailures.Inc()
		ss.log(zerolog.WarnLevel).Err(err).Msg("smtp shared message count not available; counting on this replica")
	}
	return s.rateAllowsLocal(ss.cred.Username)
}

// rateAllowsLocal reports whether username is under its messages per
// minute on this replica.
func (s *Server) rateAllowsLocal(username string) bool {
	if s.cfg.MessagesPerMinute < 0 {
		return true
	}
	s.rateMu.Lock()
	defer s.rateMu.Unlock()
	cut := s.now().Add(-time.Minute)
	l := s.rates[username]
	for len(l) > 0 && !l[0].After(cut) {
		l = l[1:]
	}
	if len(l) == 0 {
		delete(s.rates, username)
	} else {
		s.rates[username] = l
	}
	return len(l) < s.cfg.MessagesPerMinute
}

// rateRecord counts an accepted message of username for rateAllowsLocal;
// what is older than a minute goes, so that the count stays bounded
// whether or not rateAllowsLocal runs (it runs only while the shared count
// is not available).
func (s *Server) rateRecord(username string) {
	if s.cfg.MessagesPerMinute < 0 {
		return
	}
	s.rateMu.Lock()
	defer s.rateMu.Unlock()
	now := s.now()
	l := s.rates[username]
	i := 0
	for i < len(l) && !l[i].After(now.Add(-time.Minute)) {
		i++
	}
	s.rates[username] = append(l[i:], now)
}

func (ss *session) Data(r io.Reader) error {
	s := ss.s
	start := s.now()
	ss.answered() // a new transaction: the client read the answers before it
	// The first bufMax bytes stay in memory (the whole of a small message,
	// and the header section of any); the rest of a large message streams
	// to the object store as it arrives, so memory does not grow with the
	// size of concurrent messages.
	bufMax := max(s.cfg.InlineMaxBytes, maxHeaderBytes) + 1
	raw := sha256.New()
	head, eof, err := readUpTo(io.TeeReader(r, raw), bufMax)
	if err != nil {
		return ss.dataReadError(err)
	}
	hdrEnd := graphmail.HeaderEnd(head)
	if hdrEnd == len(head) && !eof {
		return s.refuse(554, smtp.EnhancedCode{5, 6, 0}, fmt.Sprintf("Header section over %d bytes", bufMax-1))
	}
	hdr, lists, serr := ss.recipients(head, hdrEnd)
	if serr != nil {
		return serr
	}
	limit := s.maxMessage(ss.cred.Profile)
	ref, size := "", 0
	var final []byte
	if eof {
		final = slices.Concat(hdr, head[hdrEnd:])
		size = len(final)
		if size > limit {
			return ss.tooLarge(limit)
		}
		if size > s.cfg.InlineMaxBytes {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
			ref, err = s.store.Put(ctx, ss.cred.Profile, "smtp.eml", final)
			cancel()
		}
	} else {
		// Stream: the (rewritten) header and what was read, then the rest
		// of DATA as the client sends it.
		// Past the limit the read fails: the store drops what it took and
		// the client gets 552 at once, not after the whole message.
		cr := &countReader{r: io.TeeReader(r, raw), limit: limit - (len(hdr) + len(head) - hdrEnd)}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ReadTimeout+s.cfg.PublishTimeout)
		ref, err = s.store.PutReader(ctx, ss.cred.Profile, "smtp.eml", io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(head[hdrEnd:]), cr))
		cancel()
		size = len(hdr) + len(head) - hdrEnd + cr.n
		if cr.over {
			if ref != "" {
				ss.deleteObject(ref)
			}
			return ss.tooLarge(limit)
		}
		if cr.err != nil {
			if ref != "" {
				ss.deleteObject(ref)
			}
			return ss.dataReadError(cr.err)
		}
		if err == nil && size > limit {
			ss.deleteObject(ref) // no job refers to it
			return ss.tooLarge(limit)
		}
	}
	if err != nil {
		ss.log(zerolog.WarnLevel).Err(err).Msg("smtp message not stored: object store")
		return s.refuse(451, smtp.EnhancedCode{4, 3, 0}, "Message not stored (queue unavailable); try again later")
	}
	key := ss.submissionKey(raw.Sum(nil))
	// The retry record is written before the answer, at the same time as
	// the publish (replacing, or with the removal of, the previous
	// submission's record, whose answer the client has read), so that a
	// client whose answer is lost in any way — a crash of this process
	// between the publish and the client's next command included — retries
	// into the same job (retry.go).
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
	defer cancel()
	rr := ss.prepareRecord(ctx, key)
	job := &contract.Job{ID: rr.id, From: ss.from, To: lists[0], Cc: lists[1], Bcc: lists[2],
		Metadata: map[string]string{"source": "smtp", "smtpLogin": ss.cred.Username}}
	if ref != "" {
		job.MIME = &contract.MIME{ObjectRef: ref}
	} else {
		job.MIME = contract.InlineMIME(final) // validated from final, not decoded back
	}
	if ap, ok := s.pub.(AsyncPublisher); ok && rr.writes() {
		// The job, then at once its record: both leave in one write and
		// both answers are awaited before ours. (A job alone is published
		// with a plain request: its ack then takes one hop less.)
		var wait func(context.Context) (queue.Published, error)
		wait, err = ap.PublishJobAsync(ss.cred.Profile, job)
		rr.start()
		if err == nil {
			_, err = wait(ctx)
		}
	} else {
		rr.start()
		_, err = s.pub.Publish(ctx, ss.cred.Profile, job)
	}
	if errors.Is(err, queue.ErrDuplicatePublish) {
		err = nil // the same job, byte for byte, is in the stream already (a retry within its duplicate window)
	}
	marked := rr.wait()
	if err != nil {
		var ie *contract.InvalidError
		if errors.As(err, &ie) {
			// Certainly not stored: nothing refers to the object or the record.
			if ref != "" {
				ss.deleteObject(ref)
			}
			rr.drop()
			ss.log(zerolog.WarnLevel).Str("job", job.ID).Str("field", ie.Field).Msg("smtp message refused: not a valid job")
			return s.refuse(554, smtp.EnhancedCode{5, 6, 0}, "Message refused: "+ie.Error())
		}
		// The publish may have landed although its ack did not come (a
		// timeout, a connection lost after the publish was written): the
		// object stays (the job may refer to it; the store's max age
		// removes it otherwise), and the client's retry of this very
		// submission is the same job, so the worker sends it once.
		if marked {
			rr.keep()
		} else {
			ss.remember(key, job.ID)
		}
		ss.log(zerolog.WarnLevel).Err(err).Str("job", job.ID).Msg("smtp message not confirmed stored: publish")
		return s.refuse(451, smtp.EnhancedCode{4, 3, 0}, "Message not confirmed stored (queue unavailable); try again later")
	}
	took := s.now().Sub(start)
	s.m.AcceptSeconds.Observe(took.Seconds())
	s.m.AcceptedBytes.Observe(float64(size))
	s.m.Accepted.WithLabelValues(ss.cred.Profile).Inc()
	s.rateRecord(ss.cred.Username)
	ss.msgs++
	ss.pending = rr.pending(marked)
	ss.log(zerolog.InfoLevel).Str("job", job.ID).Int("bytes", size).Int("recipients", len(ss.rcpts)).
		Bool("objectRef", ref != "").Dur("accept", took).Msg("smtp message accepted")
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Queued as " + job.ID}
}

// maxHeaderBytes is the least that is kept in memory for a message's header
// section (500 recipients with display names fit many times over).
const maxHeaderBytes = 256 << 10

// readUpTo reads at most n bytes of r; eof is true when r ended within them.
func readUpTo(r io.Reader, n int) (b []byte, eof bool, err error) {
	b = make([]byte, 0, min(n, 4<<10)) // grown as needed: most messages are small
	for len(b) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(cap(b), n-cap(b)))
		}
		m, err := r.Read(b[len(b):min(cap(b), n)])
		b = b[:len(b)+m]
		if err == io.EOF {
			return b, true, nil
		}
		if err != nil {
			return b, false, err
		}
	}
	return b, false, nil
}

// countReader counts what it reads and keeps the reader's error (the object
// store's own error says little about the client's); past limit bytes it
// fails (over).
type countReader struct {
	r     io.Reader
	n     int
	limit int
	over  bool
	err   error
}

var errOverLimit = errors.New("message over the size limit")

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	if c.n > c.limit {
		c.over = true
		return n, errOverLimit
	}
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

func (ss *session) dataReadError(err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code == 552 {
		return ss.tooLarge(ss.s.cfg.MaxMessageBytes)
	}
	return err
}

// tooLarge is the 552 of a message over limit, saying why.
func (ss *session) tooLarge(limit int) error {
	why := "what one Graph MIME request carries; profile deliveryMode draft takes up to the mailbox's maximum message size"
	if p := ss.cred.Profile; ss.s.cfg.ProfileMaxMessageBytes[p] > 0 {
		why = "the sending mailbox's maximum message size, profiles." + p + ".maxMessageSize, less the worker's stamp"
		if limit < ss.s.cfg.profileLimit(p) {
			why = "smtp.maxMessageBytes"
		}
	}
	return ss.s.refuse(552, smtp.EnhancedCode{5, 3, 4}, fmt.Sprintf("Message too large: at most %d bytes (%s)", limit, why))
}

func (ss *session) deleteObject(ref string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = ss.s.store.Delete(ctx, ss.cred.Profile, ref) // best effort; the store's max age removes it otherwise
}

// recipients checks the header section against the envelope and the login
// and returns the header section to send, and the job's to, cc and bcc.
//
// Graph takes a MIME message's recipients from its To, Cc and Bcc fields, not
// from an envelope (https://learn.microsoft.com/en-us/graph/outlook-send-mime-message).
// A message's recipients may come in several transactions (Postfix puts 50
// per transaction by default: smtp_destination_recipient_limit), each with the
// whole header: every transaction is then its own job that reaches exactly its
// RCPT TO recipients. To and Cc keep, in their order and with their display
// names, the addresses of this envelope; every other envelope recipient goes
// into one Bcc field, which Exchange does not copy into what the recipients
// receive ([MS-OXCMAIL] 2.1.3.1.1.2). When To and Cc hold only envelope
// recipients, they are left byte for byte.
func (ss *session) recipients(head []byte, hdrEnd int) ([]byte, [3][]string, error) {
	s := ss.s
	var lists [3][]string
	fields, err := contract.ParseHeaderSection(head[:hdrEnd])
	if err != nil {
		return nil, lists, s.refuse(554, smtp.EnhancedCode{5, 6, 0}, "Malformed message header: "+err.Error())
	}
	inEnvelope := make(map[string]bool, len(ss.rcpts))
	for _, r := range ss.rcpts {
		inEnvelope[strings.ToLower(r)] = true
	}
	shown := map[string]bool{}
	rewrite := false
	var keep [2][]contract.Mailbox
	count := map[string]int{}
	// Every field, not the first: a second To: or Cc: is read too. The
	// parser is the worker's: obsolete syntax, quoted local parts and names
	// in every charset.
	for _, f := range fields {
		name := strings.ToLower(f.Name)
		i := -1
		switch name {
		case "to":
			i = 0
		case "cc":
			i = 1
		case "bcc", "resent-to", "resent-cc", "resent-bcc":
		default:
			continue
		}
		as, err := contract.ParseAddressList(f.Value)
		if err != nil {
			return nil, lists, s.refuse(554, smtp.EnhancedCode{5, 6, 0}, "Malformed "+f.Name+": header")
		}
		if i < 0 {
			if strings.HasPrefix(name, "resent-") {
				// Resent-* fields are not rewritten: their addresses must
				// be this envelope's (the worker's check makes them job
				// recipients).
				for _, a := range as {
					l := strings.ToLower(a.Addr)
					if !inEnvelope[l] {
						ss.log(zerolog.WarnLevel).Str("header", f.Name).Msg("smtp message refused: a Resent- recipient is not among RCPT TO")
						return nil, lists, s.refuse(550, smtp.EnhancedCode{5, 7, 1}, "Every Resent-To/Cc/Bcc address must also be a RCPT TO recipient")
					}
					if !shown[l] {
						shown[l] = true
						j := map[string]int{"resent-to": 0, "resent-cc": 1, "resent-bcc": 2}[name]
						lists[j] = append(lists[j], a.Addr)
					}
				}
			}
			continue
		}
		count[name]++
		for _, a := range as {
			l := strings.ToLower(a.Addr)
			if !inEnvelope[l] {
				rewrite = true
				continue
			}
			if shown[l] {
				// Repeated ("To: a, a", as real mail has): nothing to
				// rewrite; the job lists it once.
				continue
			}
			shown[l] = true
			keep[i] = append(keep[i], a)
			lists[i] = append(lists[i], a.Addr)
		}
	}
	for _, r := range ss.rcpts {
		if !shown[strings.ToLower(r)] {
			lists[2] = append(lists[2], r)
		}
	}
	hdr := head[:hdrEnd]
	var out []string
	drop := map[string]bool{}
	if rewrite {
		drop["to"], drop["cc"] = true, true
		if len(keep[0]) > 0 {
			out = append(out, "To: "+foldAddresses(keep[0]))
		}
		if len(keep[1]) > 0 {
			out = append(out, "Cc: "+foldAddresses(keep[1]))
		}
	}
	if len(lists[2]) > 0 || count["bcc"] > 0 {
		drop["bcc"] = true
		if len(lists[2]) > 0 {
			bcc := make([]contract.Mailbox, len(lists[2]))
			for i, a := range lists[2] {
				bcc[i] = contract.Mailbox{Addr: a}
			}
			out = append(out, "Bcc: "+foldAddresses(bcc))
		}
	}
	if len(drop) > 0 {
		hdr = rewriteHeader(hdr, drop, out)
	}
	// What the worker will check, checked now: what this door accepts is
	// sendable (contract.Job.CheckMIMEHeader).
	job := &contract.Job{From: ss.from, To: lists[0], Cc: lists[1], Bcc: lists[2]}
	if err := job.CheckMIMEHeader(hdr); err != nil {
		var ie *contract.InvalidError
		errors.As(err, &ie)
		ss.log(zerolog.WarnLevel).Str("rule", err.Error()).Msg("smtp message refused: the worker would not send it")
		switch {
		case ie != nil && ie.Reason == contract.ReasonSenderNotAllowed:
			return nil, lists, s.refuse(550, smtp.EnhancedCode{5, 7, 1}, "The From: header (and any Sender:) must be the MAIL FROM mailbox, and only it: "+err.Error())
		case ie != nil && ie.Reason == contract.ReasonMessageTooLarge:
			return nil, lists, s.refuse(552, smtp.EnhancedCode{5, 3, 4}, "Message refused: "+err.Error())
		}
		return nil, lists, s.refuse(554, smtp.EnhancedCode{5, 6, 0}, "Message refused: "+err.Error())
	}
	return hdr, lists, nil
}

// foldAddresses formats mailboxes for a header field, one per line; a name
// that is not plain ASCII is RFC 2047-encoded.
func foldAddresses(as []contract.Mailbox) string {
	parts := make([]string, len(as))
	for i, a := range as {
		switch {
		case a.Name == "":
			parts[i] = a.Addr
		case isPlainASCII(a.Name):
			parts[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a.Name) + `" <` + a.Addr + ">"
		default:
			parts[i] = mime.QEncoding.Encode("utf-8", a.Name) + " <" + a.Addr + ">"
		}
	}
	return strings.Join(parts, ",\r\n ")
}

func isPlainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// rewriteHeader returns hdr (a header section without its ending empty
// line) with every field whose lower-case name is in drop removed and fields
// ("Name: value", without line end) put first.
func rewriteHeader(hdr []byte, drop map[string]bool, fields []string) []byte {
	out := make([]byte, 0, len(hdr)+256)
	for _, f := range fields {
		out = append(out, f...)
		out = append(out, "\r\n"...)
	}
	skipping := false
	for off := 0; off < len(hdr); {
		next := len(hdr)
		if i := bytes.IndexByte(hdr[off:], '\n'); i >= 0 {
			next = off + i + 1
		}
		line := hdr[off:next]
		if line[0] != ' ' && line[0] != '\t' {
			k, _, ok := bytes.Cut(line, []byte(":"))
			skipping = ok && drop[strings.ToLower(strings.TrimSpace(string(k)))]
		}
		if !skipping {
			out = append(out, line...)
		}
		off = next
	}
	return out
}

// submissionKey is a digest of the login, envelope and message: what a
// client's retry of this submission has in common with it.
func (ss *session) submissionKey(rawDigest []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", ss.cred.Profile, ss.cred.Username, strings.ToLower(ss.from))
	for _, r := range ss.rcpts {
		fmt.Fprintf(h, "%s\x00", strings.ToLower(r))
	}
	h.Write(rawDigest)
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// loginServer is the server side of AUTH LOGIN (draft-murchison-sasl-login).
type loginServer struct {
	step int
	user string
	auth func(user, pass string) error
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		if resp == nil {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	case 1:
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.auth(l.user, string(resp))
	}
	return nil, false, errors.New("unexpected client response")
}
