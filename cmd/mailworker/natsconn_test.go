package main

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// freezableProxy forwards TCP to a backend until frozen; frozen, it stops
// moving bytes in both directions but keeps every connection open: what a
// client sees of a server that is paused (SIGSTOP, a VM pause) — TCP stays
// up, nothing answers.
type freezableProxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	frozen  chan struct{} // closed while thawed
	conns   []net.Conn
	wg      sync.WaitGroup
}

func newFreezableProxy(t *testing.T, backend string) *freezableProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezableProxy{ln: ln, backend: backend, frozen: make(chan struct{})}
	close(p.frozen) // thawed
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *freezableProxy) addr() string { return p.ln.Addr().String() }

func (p *freezableProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.backend)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(b, c)
		go p.pipe(c, b)
	}
}

// pipe copies src to dst, holding each chunk while the proxy is frozen.
func (p *freezableProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			thawed := p.frozen
			p.mu.Unlock()
			<-thawed
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				_ = dst.Close()
			}
			return
		}
	}
}

func (p *freezableProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frozen = make(chan struct{})
}

func (p *freezableProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	select {
	case <-p.frozen:
	default:
		close(p.frozen)
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestConnectNATSLeavesAFrozenServer: a worker connected to a server that
// freezes (it neither answers nor closes) must move to another server of
// the cluster within seconds (pingInterval, maxPingsOut), not after
// nats.go's default 4 to 6 minutes (issue 19, defect 2).
func TestConnectNATSLeavesAFrozenServer(t *testing.T) {
	var proxies []*freezableProxy
	var urls []string
	for range 2 {
		srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
		if err != nil {
			t.Fatal(err)
		}
		go srv.Start()
		if !srv.ReadyForConnections(minWait) {
			t.Fatal("nats server not ready")
		}
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		p := newFreezableProxy(t, srv.Addr().String())
		proxies = append(proxies, p)
		urls = append(urls, "nats://"+p.addr())
	}
	nc, err := connectNATS(NATSConfig{URL: strings.Join(urls, ","), ConnectTimeout: 2 * time.Second}, "test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	first := nc.ConnectedAddr()
	for _, p := range proxies {
		if p.addr() == first {
			p.freeze()
		}
	}
	// Stale after maxPingsOut unanswered pings, plus the connect timeout of
	// a retry of the frozen server, plus a margin for this shared machine.
	within := time.Duration(maxPingsOut+1)*pingInterval + 2*time.Second + 5*time.Second
	deadline := time.Now().Add(within)
	for {
		if a := nc.ConnectedAddr(); a != "" && a != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still on the frozen server %s after %s", first, within)
		}
		time.Sleep(50 * time.Millisecond) // polling for the reconnect
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush on the new server: %v", err)
	}
}
