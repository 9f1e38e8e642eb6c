// Package smtpd is mailworker's SMTP submission ingress (`mailworker smtp`):
// applications and devices that only speak SMTP submit mail, which becomes a
// MIME job of the credential's profile on mail.send.<profile>.
//
// The protocol is github.com/emersion/go-smtp's; header parsing is
// github.com/emersion/go-message's. The rules are this package's:
//
//   - AUTH (PLAIN, LOGIN) only over TLS (STARTTLS or implicit TLS); no MAIL
//     or RCPT before it, so nothing is relayed for an unauthenticated client;
//   - MAIL FROM must be an approved mailbox of the credential's profile
//     (550 5.7.1 before any data), and the From: header the same mailbox;
//   - envelope recipients missing from To/Cc/Bcc become a Bcc header (Graph
//     takes recipients from the headers; Exchange strips Bcc from what the
//     other recipients see), header recipients outside the envelope are
//     refused (550 5.7.1);
//   - 250 to DATA only after JetStream's publish ack, with the job id in the
//     reply text; a broker that does not ack in time gives 451 4.3.0;
//   - the job id is a digest of the credential, envelope and message, so a
//     client retrying after a 4xx whose publish did land is deduplicated
//     (JetStream's Nats-Msg-Id window, then the worker's job state);
//   - limits: SIZE (what one Graph request carries: 552 5.3.4), recipients
//     per message (452 4.5.3), messages per connection (451 4.7.0), messages
//     per minute per credential (450 4.7.0), concurrent sessions (421 4.3.2).
//
// Logs name the job, profile, login and sizes, never addresses or content.
package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailworker/mailworker/graphmail"
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
	Delete(ctx context.Context, profile, ref string) error
}

// stampHeadroom is what the worker's "X-Mailworker-Job-Id: <id>\r\n" stamp
// adds to a message (ids made here are 43 characters).
const stampHeadroom = len(contract.HeaderStampJobID) + 2 + 43 + 2

// MaxSize is the largest message the server can take: what one Graph MIME
// sendMail request carries, less the worker's stamp.
const MaxSize = contract.MaxMIMEBytes - stampHeadroom

// Config tunes the server; zero values take the defaults of WithDefaults.
type Config struct {
	Domain                string        // greeting name; default "localhost"
	MaxMessageBytes       int           // advertised SIZE; default and most MaxSize
	MaxRecipients         int           // per message; default 100, at most contract.MaxRecipients
	MaxSessions           int           // concurrent connections; default 100
	MessagesPerConnection int           // default 100
	MessagesPerMinute     int           // per credential; default 60, negative = unlimited
	InlineMaxBytes        int           // larger messages go to the object store; default 256 KiB
	ReadTimeout           time.Duration // per command and DATA; default 5m
	WriteTimeout          time.Duration // default 1m
	PublishTimeout        time.Duration // wait for the publish ack; default 10s
	// Senders maps each profile to its approved mailboxes.
	Senders map[string][]string
}

// WithDefaults fills in zero values.
func (c Config) WithDefaults() Config {
	if c.Domain == "" {
		c.Domain = "localhost"
	}
	if c.MaxMessageBytes <= 0 || c.MaxMessageBytes > MaxSize {
		c.MaxMessageBytes = MaxSize
	}
	if c.MaxRecipients <= 0 {
		c.MaxRecipients = 100
	}
	c.MaxRecipients = min(c.MaxRecipients, contract.MaxRecipients)
	if c.MaxSessions <= 0 {
		c.MaxSessions = 100
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
	s := &Server{cfg: cfg, creds: creds, pub: pub, store: store, log: o.Logger, m: o.Metrics, now: o.Now,
		senders: map[string]map[string]bool{}, tls: o.TLS, rates: map[string][]time.Time{}}
	for p, list := range cfg.Senders {
		s.senders[p] = map[string]bool{}
		for _, a := range list {
			if _, addr, err := contract.ParseAddress(a); err == nil {
				s.senders[p][strings.ToLower(addr)] = true
			}
		}
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Domain
	srv.MaxMessageBytes = int64(cfg.MaxMessageBytes)
	srv.MaxRecipients = 0 // enforced in Rcpt, so that refusals are counted
	srv.AllowInsecureAuth = false
	srv.ReadTimeout, srv.WriteTimeout = cfg.ReadTimeout, cfg.WriteTimeout
	srv.TLSConfig = o.TLS
	srv.ErrorLog = logAdapter{s.log}
	s.smtp = srv
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
func (s *Server) Close() error { return s.smtp.Close() }

// Shutdown stops accepting and waits for open sessions to end until ctx is
// done, then closes them.
func (s *Server) Shutdown(ctx context.Context) error { return s.smtp.Shutdown(ctx) }

type logAdapter struct{ log zerolog.Logger }

func (l logAdapter) Printf(format string, v ...any) { l.log.Debug().Msgf("smtp: "+format, v...) }
func (l logAdapter) Println(v ...any)               { l.log.Debug().Msg("smtp: " + fmt.Sprint(v...)) }

// capListener refuses connections over MaxSessions and counts sessions.
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
		if n := s.active.Add(1); n > int64(s.cfg.MaxSessions) {
			s.active.Add(-1)
			s.m.SessionsRefused.Inc()
			s.m.Refused.WithLabelValues("421").Inc()
			if l.greet {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = io.WriteString(c, fmt.Sprintf("421 4.3.2 %s too many concurrent sessions, try again later\r\n", s.cfg.Domain))
			}
			_ = c.Close()
			continue
		}
		s.m.Sessions.Inc()
		s.m.SessionsActive.Inc()
		return &countedConn{Conn: c, s: s}, nil
	}
}

type countedConn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.s.active.Add(-1)
		c.s.m.SessionsActive.Dec()
	})
	return c.Conn.Close()
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	ss := &session{s: s, conn: c}
	if ap, err := netip.ParseAddrPort(c.Conn().RemoteAddr().String()); err == nil {
		ss.remote = ap.Addr()
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
}

func (ss *session) log(level zerolog.Level) *zerolog.Event {
	e := ss.s.log.WithLevel(level).Str("remote", ss.remote.String())
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

// login checks a username and password, then the source address.
func (ss *session) login(username, password string) error {
	if _, ok := ss.conn.TLSConnectionState(); !ok {
		return ss.authFail(AuthMalformed, username) // go-smtp refuses AUTH before TLS already
	}
	cred := ss.s.creds.lookup(username)
	if cred == nil {
		_ = bcrypt.CompareHashAndPassword(dummyHash, []byte(password)) // same cost as a known user
		return ss.authFail(AuthUnknownUser, username)
	}
	if bcrypt.CompareHashAndPassword([]byte(cred.PasswordHash), []byte(password)) != nil {
		return ss.authFail(AuthBadPassword, username)
	}
	if !cred.allows(ss.remote) {
		return ss.authFail(AuthSourceNotAllowed, username) // same answer: the password is not confirmed
	}
	ss.cred = cred
	ss.log(zerolog.InfoLevel).Msg("smtp login")
	return nil
}

func (ss *session) authFail(reason, username string) error {
	ss.s.m.AuthFailures.WithLabelValues(reason).Inc()
	if len(username) > 64 {
		username = username[:64]
	}
	ss.log(zerolog.WarnLevel).Str("reason", reason).Str("username", fmt.Sprintf("%q", username)).Msg("smtp auth failed")
	return ss.s.refuse(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	s := ss.s
	if ss.cred == nil {
		return s.refuse(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required (STARTTLS, then AUTH)")
	}
	if !s.senders[ss.cred.Profile][strings.ToLower(from)] {
		ss.log(zerolog.WarnLevel).Msg("smtp MAIL FROM refused: not an approved mailbox")
		return s.refuse(550, smtp.EnhancedCode{5, 7, 1}, "Sender is not an approved mailbox of this login's profile "+ss.cred.Profile)
	}
	if ss.msgs >= s.cfg.MessagesPerConnection {
		return s.refuse(451, smtp.EnhancedCode{4, 7, 0}, fmt.Sprintf("At most %d messages per connection; reconnect to send more", s.cfg.MessagesPerConnection))
	}
	if !s.rateAllows(ss.cred.Username) {
		ss.log(zerolog.WarnLevel).Msg("smtp MAIL FROM deferred: rate limit")
		return s.refuse(450, smtp.EnhancedCode{4, 7, 0}, fmt.Sprintf("Rate limit of %d messages per minute for this login reached; try again later", s.cfg.MessagesPerMinute))
	}
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s := ss.s
	if ss.cred == nil {
		return s.refuse(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required (STARTTLS, then AUTH)")
	}
	_, addr, err := contract.ParseAddress(to)
	if err != nil || addr != to {
		return s.refuse(550, smtp.EnhancedCode{5, 1, 3}, "Bad recipient address syntax")
	}
	for _, r := range ss.rcpts {
		if strings.EqualFold(r, to) {
			return nil
		}
	}
	if len(ss.rcpts) >= s.cfg.MaxRecipients {
		return s.refuse(452, smtp.EnhancedCode{4, 5, 3}, fmt.Sprintf("Too many recipients: at most %d per message", s.cfg.MaxRecipients))
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *session) Reset() { ss.from, ss.rcpts = "", nil }

func (ss *session) Logout() error { return nil }

// rateAllows reports whether username is under its messages per minute.
func (s *Server) rateAllows(username string) bool {
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

func (s *Server) rateRecord(username string) {
	s.rateMu.Lock()
	s.rates[username] = append(s.rates[username], s.now())
	s.rateMu.Unlock()
}

func (ss *session) Data(r io.Reader) error {
	s := ss.s
	data, err := io.ReadAll(r)
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code == 552 {
			return s.refuse(552, smtp.EnhancedCode{5, 3, 4}, fmt.Sprintf("Message too large: at most %d bytes (what one Graph request carries; large mail by draft is not supported yet)", s.cfg.MaxMessageBytes))
		}
		return err
	}
	start := s.now()
	job, final, serr := ss.buildJob(data)
	if serr != nil {
		return serr
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
	defer cancel()
	ref := ""
	if len(final) > s.cfg.InlineMaxBytes {
		if ref, err = s.store.Put(ctx, ss.cred.Profile, job.ID+".eml", final); err != nil {
			ss.log(zerolog.WarnLevel).Err(err).Str("job", job.ID).Msg("smtp message not stored: object store")
			return s.refuse(451, smtp.EnhancedCode{4, 3, 0}, "Message not stored (queue unavailable); try again later")
		}
		job.MIME = &contract.MIME{ObjectRef: ref}
	} else {
		job.MIME = &contract.MIME{ContentBase64: base64.StdEncoding.EncodeToString(final)}
	}
	if _, err := s.pub.Publish(ctx, ss.cred.Profile, job); err != nil {
		if ref != "" {
			dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = s.store.Delete(dctx, ss.cred.Profile, ref) // best effort; the store's max age removes it otherwise
			dcancel()
		}
		var ie *contract.InvalidError
		if errors.As(err, &ie) {
			ss.log(zerolog.WarnLevel).Str("job", job.ID).Str("field", ie.Field).Msg("smtp message refused: not a valid job")
			return s.refuse(554, smtp.EnhancedCode{5, 6, 0}, "Message refused: "+ie.Error())
		}
		ss.log(zerolog.WarnLevel).Err(err).Str("job", job.ID).Msg("smtp message not stored: publish")
		return s.refuse(451, smtp.EnhancedCode{4, 3, 0}, "Message not stored (queue unavailable); try again later")
	}
	took := s.now().Sub(start)
	s.m.AcceptSeconds.Observe(took.Seconds())
	s.m.AcceptedBytes.Observe(float64(len(final)))
	s.m.Accepted.WithLabelValues(ss.cred.Profile).Inc()
	s.rateRecord(ss.cred.Username)
	ss.msgs++
	ss.log(zerolog.InfoLevel).Str("job", job.ID).Int("bytes", len(final)).Int("recipients", len(ss.rcpts)).
		Bool("objectRef", ref != "").Dur("accept", took).Msg("smtp message accepted")
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Queued as " + job.ID}
}

// buildJob checks the message against the envelope and the login and makes
// its job (without the MIME content) and the final message bytes.
func (ss *session) buildJob(data []byte) (*contract.Job, []byte, error) {
	s := ss.s
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(data)))
	if err != nil {
		return nil, nil, s.refuse(554, smtp.EnhancedCode{5, 6, 0}, "Malformed message header")
	}
	mh := mail.Header{Header: message.Header{Header: h}}
	from, err := mh.AddressList("From")
	if err != nil || len(from) != 1 || !strings.EqualFold(from[0].Address, ss.from) {
		ss.log(zerolog.WarnLevel).Msg("smtp message refused: From: header is not the MAIL FROM mailbox")
		return nil, nil, s.refuse(550, smtp.EnhancedCode{5, 7, 1}, "The From: header must be the MAIL FROM mailbox, and only it")
	}
	inEnvelope := make(map[string]bool, len(ss.rcpts))
	for _, r := range ss.rcpts {
		inEnvelope[strings.ToLower(r)] = true
	}
	inHeader := map[string]bool{}
	lists := map[string][]string{}
	for _, k := range []string{"To", "Cc", "Bcc"} {
		if !mh.Has(k) {
			continue
		}
		as, err := mh.AddressList(k)
		if err != nil {
			return nil, nil, s.refuse(554, smtp.EnhancedCode{5, 6, 0}, "Malformed "+k+": header")
		}
		for _, a := range as {
			l := strings.ToLower(a.Address)
			if !inEnvelope[l] {
				ss.log(zerolog.WarnLevel).Msg("smtp message refused: a header recipient is not among RCPT TO")
				return nil, nil, s.refuse(550, smtp.EnhancedCode{5, 7, 1}, "Every To/Cc/Bcc address must also be a RCPT TO recipient")
			}
			if !inHeader[l] {
				inHeader[l] = true
				lists[k] = append(lists[k], a.Address)
			}
		}
	}
	final := data
	bcc := lists["Bcc"]
	added := false
	for _, r := range ss.rcpts {
		if !inHeader[strings.ToLower(r)] {
			bcc = append(bcc, r)
			added = true
		}
	}
	if added {
		// One Bcc field with every blind recipient, first in the header;
		// the rest of the message is unchanged.
		final = graphmail.StampMIME(data, "Bcc", strings.Join(bcc, ", "))
	}
	if len(final)+stampHeadroom > contract.MaxMIMEBytes {
		return nil, nil, s.refuse(552, smtp.EnhancedCode{5, 3, 4}, fmt.Sprintf("Message too large with its Bcc header: at most %d bytes in one Graph request (large mail by draft is not supported yet)", contract.MaxMIMEBytes-stampHeadroom))
	}
	job := &contract.Job{ID: ss.jobID(final), From: ss.from, To: lists["To"], Cc: lists["Cc"], Bcc: bcc,
		Metadata: map[string]string{"source": "smtp", "smtpLogin": ss.cred.Username}}
	return job, final, nil
}

// jobID is a digest of the login, envelope and message: a client's retry of
// the same submission gets the same id.
func (ss *session) jobID(data []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", ss.cred.Profile, ss.cred.Username, strings.ToLower(ss.from))
	for _, r := range ss.rcpts {
		fmt.Fprintf(h, "%s\x00", strings.ToLower(r))
	}
	h.Write(data)
	return "smtp-" + base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:27])
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
