package main

// Scenario "smtp" (issue 14): accepted messages per second and the time to
// durable accept (end of DATA → 250, as the client sees it) of `mailworker
// smtp`, against a bare go-smtp server that only publishes each message to
// JetStream with an ack. Both run as their own process on loopback, with
// STARTTLS and AUTH PLAIN, fed by the same Go net/smtp clients. No worker
// runs: the scenario measures the ingress alone.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/smtp"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	gosasl "github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// bareSMTPCommand is the hidden subcommand that runs the bare SMTP baseline.
const bareSMTPCommand = "bare-smtp"

const (
	smtpSender      = "box000@loadtest.example"
	smtpUser        = "loadtest"
	smtpPassword    = "loadtest-smtp-password"
	bareSMTPStream  = "LOADTEST_SMTP"
	bareSMTPSubject = "loadtest.smtp.bare"
)

func (h *harness) smtpScenario(ctx context.Context) ([]Result, error) {
	n, conns := h.size(2000), h.conc(16)
	w, err := h.smtpRun(ctx, "smtp", n, conns, false)
	if w == nil {
		return nil, err
	}
	// smtp.recordBeforeAnswer: false — no retry record before each 250.
	f, err1 := h.smtpRun(ctx, "smtp-norecord", n, conns, false, "  recordBeforeAnswer: false\n")
	// smtp.messagesPerMinute on (a limit never reached): the login's
	// message count shared by all replicas, one compare-and-set per MAIL FROM.
	r, err3 := h.smtpRun(ctx, "smtp-ratelimit", n, conns, false, "  messagesPerMinute: 100000000\n")
	b, err2 := h.smtpRun(ctx, "smtp-bare", n, conns, true)
	out := []Result{*w}
	for _, x := range []*Result{f, r} {
		if x != nil {
			out = append(out, *x)
		}
	}
	if b != nil {
		for i := range out {
			out[i].RefThroughput, out[i].refWhat = b.Throughput, "bare go-smtp server that only publishes (JetStream ack)"
			out[i].Ratio = ratio(out[i].Throughput, b.Throughput)
		}
		b.RefThroughput, b.refWhat, b.Ratio = b.Throughput, "itself", 1
		out = append(out, *b)
	}
	return out, errors.Join(err, err1, err2, err3)
}

// smtpRun starts JetStream and the server under test, then conns clients
// that each submit their share of n messages over one connection.
func (h *harness) smtpRun(ctx context.Context, name string, n, conns int, bare bool, extra ...string) (*Result, error) {
	h.seq++
	dir := filepath.Join(h.dir, fmt.Sprintf("%02d-%s", h.seq, name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: filepath.Join(dir, "jetstream"), NoLog: true, NoSigs: true, ServerName: "loadtest-smtp"})
	if err != nil {
		return nil, err
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return nil, errors.New("embedded nats-server did not start")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	stream := contract.JobsStream(profile)
	if bare {
		stream = bareSMTPStream
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bareSMTPStream, Subjects: []string{bareSMTPSubject},
			Storage: jetstream.FileStorage}); err != nil {
			return nil, err
		}
	} else if err := queue.Provision(ctx, js, queue.Config{Profiles: []string{profile}}); err != nil {
		return nil, err
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := writeCert(certFile, keyFile); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	var p *proc
	if bare {
		p, err = startProc(h.bareBin, []string{bareSMTPCommand, "--nats-url", ns.ClientURL(), "--listen", addr,
			"--cert", certFile, "--key", keyFile}, filepath.Join(dir, "bare-smtp.log"))
	} else {
		httpAddr, ferr := freeAddr()
		if ferr != nil {
			return nil, ferr
		}
		hash, _ := bcrypt.GenerateFromPassword([]byte(smtpPassword), bcrypt.DefaultCost)
		rate := "  messagesPerMinute: -1\n" // unless a row sets it
		if strings.Contains(strings.Join(extra, ""), "messagesPerMinute:") {
			rate = ""
		}
		pp := ""
		if h.opts.Pprof {
			pp = "  pprof: true\n"
		}
		cfg := fmt.Sprintf("nats:\n  url: %q\nhttp:\n  listen: %q\n"+pp+"log:\n  level: warn\n  format: json\n"+
			"smtp:\n  listen: %q\n  certFile: %q\n  keyFile: %q\n  maxSessions: %d\n  maxSessionsPerLogin: %d\n  messagesPerConnection: %d\n%s"+
			strings.Join(extra, "")+"  credentials:\n    - username: %s\n      passwordHash: %q\n      profile: %s\n"+
			"profiles:\n  %s:\n    tenantId: %s\n    clientId: %s\n    credential:\n      clientSecret: unused\n    allowedSenders: [%s]\n",
			ns.ClientURL(), httpAddr, addr, certFile, keyFile, conns+8, conns+8, n, rate, smtpUser, hash, profile, profile, tenantID, clientID, smtpSender)
		cfgPath := filepath.Join(dir, "smtp.yaml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		p, err = startProc(h.workerBin, []string{"smtp", "--config", cfgPath}, filepath.Join(dir, "smtp.log"))
		p.httpAddr = httpAddr
	}
	if err != nil {
		return nil, err
	}
	defer p.stop(10 * time.Second)
	if err := waitUntil(ctx, 30*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, p); err != nil {
		return nil, fmt.Errorf("%s did not listen: %w", name, err)
	}

	lat := make([][]time.Duration, conns)
	errs := make([]error, conns)
	accepted := make([]int, conns)
	var wg sync.WaitGroup
	// --pprof: a CPU profile of the server under test (the door's pprof
	// endpoint; none for bare) and one of this process (the embedded
	// nats-server and the clients) over the first seconds of the run.
	var profDone chan struct{}
	if h.opts.Pprof {
		profDone = make(chan struct{})
		if f, perr := os.Create(filepath.Join(dir, "loadtest-cpu.pprof")); perr == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
		go func() {
			defer close(profDone)
			if !bare {
				_ = fetchTo("http://"+p.httpAddr+"/debug/pprof/profile?seconds=3", filepath.Join(dir, "cpu.pprof"))
			}
		}()
	}
	start := time.Now()
	for c := range conns {
		share := n / conns
		if c < n%conns {
			share++
		}
		wg.Go(func() { lat[c], accepted[c], errs[c] = smtpClient(addr, c, share) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	if profDone != nil {
		<-profDone
	}
	p.stop(10 * time.Second)
	cpu, rss := p.rusage()

	r := &Result{Scenario: name, Jobs: n, replicas: 1, concurrency: conns, elapsed: elapsed}
	var all []time.Duration
	for c := range conns {
		r.Sent += accepted[c]
		all = append(all, lat[c]...)
		if errs[c] != nil && err == nil {
			err = errs[c]
		}
	}
	r.Throughput = float64(r.Sent) / elapsed.Seconds()
	latencies(r, all)
	if r.Sent > 0 {
		r.CPUusPerJob = float64(cpu.Microseconds()) / float64(r.Sent)
	}
	r.PeakRSSMB = float64(rss) / 1024
	// Every 250 must be a stored message: count what the stream holds.
	if st, serr := js.Stream(ctx, stream); serr == nil {
		if info, ierr := st.Info(ctx); ierr == nil {
			r.Lost = max(r.Sent-int(info.State.Msgs), 0)
		}
	}
	return r, err
}

// smtpClient submits count messages over one STARTTLS + AUTH connection
// and returns each message's end-of-DATA → 250 time.
func smtpClient(addr string, id, count int) ([]time.Duration, int, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil { //nolint:gosec // loopback, self-signed
		return nil, 0, err
	}
	if err := c.Auth(smtp.PlainAuth("", smtpUser, smtpPassword, "127.0.0.1")); err != nil {
		return nil, 0, err
	}
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n", 12)
	out := make([]time.Duration, 0, count)
	for i := range count {
		if err := c.Mail(smtpSender); err != nil {
			return out, len(out), err
		}
		if err := c.Rcpt(fmt.Sprintf("rcpt%d@example.com", i%50)); err != nil {
			return out, len(out), err
		}
		w, err := c.Data()
		if err != nil {
			return out, len(out), err
		}
		fmt.Fprintf(w, "From: %s\r\nTo: rcpt%d@example.com\r\nSubject: load %d-%d\r\nMessage-ID: <%d.%d@loadtest>\r\n\r\n%s",
			smtpSender, i%50, id, i, id, i, body)
		t0 := time.Now()
		if err := w.Close(); err != nil { // sends "." and reads the 250
			return out, len(out), err
		}
		out = append(out, time.Since(t0))
	}
	_ = c.Quit()
	return out, len(out), nil
}

func writeCert(certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "loadtest"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	pk, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600)
}

// bareSMTPMain is the baseline: go-smtp with STARTTLS and AUTH PLAIN (any
// login), each DATA published to JetStream and answered 250 after the ack.
// No credential check, sender policy, header parsing, limits, metrics or logs.
func bareSMTPMain(args []string) error {
	fs := flag.NewFlagSet(bareSMTPCommand, flag.ContinueOnError)
	natsURL := fs.String("nats-url", "", "")
	listen := fs.String("listen", "", "")
	certFile := fs.String("cert", "", "")
	keyFile := fs.String("key", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(*natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	srv := gosmtp.NewServer(gosmtp.BackendFunc(func(*gosmtp.Conn) (gosmtp.Session, error) { return &bareSession{js: js}, nil }))
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Domain = "bare"
	srv.MaxMessageBytes = 3 << 20
	srv.ErrorLog = discardLog{}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	return srv.Serve(ln)
}

type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}

type bareSession struct{ js jetstream.JetStream }

func (s *bareSession) AuthMechanisms() []string { return []string{gosasl.Plain} }
func (s *bareSession) Auth(string) (gosasl.Server, error) {
	return gosasl.NewPlainServer(func(string, string, string) error { return nil }), nil
}
func (s *bareSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (s *bareSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (s *bareSession) Reset()                                 {}
func (s *bareSession) Logout() error                          { return nil }
func (s *bareSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.js.Publish(ctx, bareSMTPSubject, b); err != nil {
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "not stored"}
	}
	return nil
}
