package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// TestRunStoppedWhileStarting: a worker asked to stop while it is still
// starting — here its first JetStream request never gets an answer, as
// during a leader election — exits 0 and says so; a requested stop is not
// a failure (the cluster test's replicas are stopped that way).
func TestRunStoppedWhileStarting(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	asked := make(chan struct{}, 1)
	go func() {
		// A NATS server that connects clients and never answers JetStream.
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "INFO {\"server_id\":\"x\",\"version\":\"2.12.0\",\"proto\":1,\"headers\":true,\"max_payload\":1048576}\r\n")
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch {
					case strings.HasPrefix(line, "PING"):
						fmt.Fprint(c, "PONG\r\n")
					case strings.HasPrefix(line, "PUB $JS.API") || strings.HasPrefix(line, "HPUB $JS.API"):
						select {
						case asked <- struct{}{}:
						default:
						}
					}
				}
			}()
		}
	}()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "mailworker.yaml")
	yaml := fmt.Sprintf("nats:\n  url: nats://%s\nprofiles:\n  demo:\n    tenantId: t\n    clientId: c\n    credential:\n      clientSecret: s\n    allowedSenders: [noreply@demo.example]\n", ln.Addr())
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, []string{"MAILWORKER_CONFIG=" + cfg}, "run")
	select {
	case <-asked:
	case <-p.done:
		t.Fatalf("run exited before asking JetStream anything:\n%s", p.stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("run asked JetStream nothing in 30 s:\n%s", p.stderr.String())
	}
	if code := p.stop(30 * time.Second); code != 0 {
		t.Fatalf("run exited %d when stopped while starting:\n%s", code, p.stderr.String())
	}
	if out := p.stderr.String() + p.stdout.String(); !strings.Contains(out, "stopped before the worker was ready") {
		t.Fatalf("no word that it stopped while starting:\n%s", out)
	}
}

// TestRunWaitsForItsNATSServer: a worker started while no NATS server answers
// at its URL (its node restarting in a rollout) waits for one instead of
// exiting 1, then starts and becomes ready (found by the cluster fault suite:
// a replica started on a node just killed -9).
func TestRunWaitsForItsNATSServer(t *testing.T) {
	t.Parallel()
	runWaitsForNATS(t, freePort(t), func() {})
}

// TestRunWaitsForAFrozenNATSServer: a worker started while its NATS node is
// frozen (SIGSTOP: the kernel still accepts the connection, nothing
// answers) waits for it as for a node that is down, instead of exiting 1
// on the handshake's timeout (the cluster fault suite started a replica on
// a node it had just frozen).
func TestRunWaitsForAFrozenNATSServer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn // accepted and never answered
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	runWaitsForNATS(t, ln.Addr().(*net.TCPAddr).Port, func() { // the node thaws
		_ = ln.Close()
		mu.Lock()
		for _, c := range held {
			_ = c.Close()
		}
		mu.Unlock()
	})
}

// runWaitsForNATS starts `mailworker run` against port, on which no NATS
// server answers yet, waits until it says it waits for one (failing if it
// exits), calls free to release the port, starts a nats-server there and
// expects the worker to become ready and stop cleanly.
func runWaitsForNATS(t *testing.T, port int, free func()) {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "mailworker.yaml")
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	yaml := fmt.Sprintf("nats:\n  url: nats://127.0.0.1:%d\n  connectTimeout: 1s\nhttp:\n  listen: %s\nprofiles:\n  demo:\n    tenantId: t\n    clientId: c\n    credential:\n      clientSecret: s\n    allowedSenders: [noreply@demo.example]\n", port, httpAddr)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, []string{"MAILWORKER_CONFIG=" + cfg}, "run")
	eventually(t, 60*time.Second, "the worker says it waits for a NATS server", func() bool {
		select {
		case <-p.done:
			t.Fatalf("run exited while no NATS server answered:\n%s", p.stderr.String())
		default:
		}
		return strings.Contains(p.stderr.String()+p.stdout.String(), "no NATS server answers yet")
	})
	free()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(minWait) {
		t.Fatal("nats-server not ready")
	}
	waitHTTP200(t, p, "http://"+httpAddr+"/readyz")
	if code := p.stop(30 * time.Second); code != 0 {
		t.Fatalf("run exited %d:\n%s", code, p.stderr.String())
	}
}
