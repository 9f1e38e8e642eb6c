package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/internal/toolcheck"
)

// binDir holds the mailworker binary built once for the end-to-end tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailworker-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := 1
	func() {
		defer os.RemoveAll(dir)
		code = toolcheck.Main(m, "cmd/mailworker") // m.Run, then what was skipped for a missing tool
	}()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
)

// mailworkerBinary builds ./cmd/mailworker once per test run (with -race when
// the tests run with it) and returns its path.
func mailworkerBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "mailworker")
	buildOnce.Do(func() {
		args := []string{"build", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, ".")
		cmd := exec.Command("go", args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

// procEnv is the environment of every mailworker process a test starts,
// before the test's own variables. A race-built program sleeps a second
// before it exits (the race detector's atexit_sleep_ms, 1000 by default,
// time for goroutines still running after main returned to report races):
// the suite runs hundreds of commands and stops, each a second longer for
// it. A race found while the process ran is still reported, and fails the
// test (raceReport).
func procEnv(t *testing.T) []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "GORACE=atexit_sleep_ms=0"}
}

// raceReport fails the test when a race-built mailworker process reported
// a data race on stderr (its exit code says so only when it exits by
// itself; a process the test kills says nothing else).
func raceReport(t *testing.T, what, stderr string) {
	t.Helper()
	if i := strings.Index(stderr, "WARNING: DATA RACE"); i >= 0 {
		t.Errorf("%s reported a data race:\n%s", what, stderr[i:min(len(stderr), i+8000)])
	}
}

// proc is a mailworker process started by a test.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{}
}

// startProc runs the binary with args and env (added to a minimal
// environment). The process is killed at test cleanup if still running.
func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(mailworkerBinary(t), args...)
	cmd.Env = append(procEnv(t), env...)
	cmd.Dir = t.TempDir()
	p := &proc{t: t, cmd: cmd, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		raceReport(t, "mailworker "+args[0], p.stderr.String())
		if t.Failed() {
			t.Logf("%s stderr:\n%s", args[0], p.stderr.String())
		}
	})
	return p
}

// stop sends SIGINT and waits for the exit code (timeout, at least
// minWait: an upper bound).
func (p *proc) stop(timeout time.Duration) int {
	p.t.Helper()
	timeout = max(timeout, minWait)
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("process did not exit within %s of SIGINT", timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

// waitOutput polls stdout until re matches and returns its first group.
func (p *proc) waitOutput(re *regexp.Regexp, timeout time.Duration) string {
	p.t.Helper()
	var m []string
	eventually(p.t, timeout, "output matching "+re.String(), func() bool {
		m = re.FindStringSubmatch(p.stdout.String())
		select {
		case <-p.done:
			if m == nil {
				p.t.Fatalf("process exited: %s", p.stderr.String())
			}
		default:
		}
		return m != nil
	})
	return m[1]
}

// runCmd runs the binary to completion and returns stdout, stderr and the exit code.
func runCmd(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	return runCmdEnv(t, nil, stdin, args...)
}

// runCmdEnv is runCmd with extra environment variables.
func runCmdEnv(t *testing.T, env []string, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(mailworkerBinary(t), args...)
	cmd.Env = append(procEnv(t), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	raceReport(t, "mailworker "+args[0], errb.String())
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// minWait is the least time eventually gives a condition. The end-to-end
// tests run -race binaries and embedded servers on CI's two cores beside
// seven other test binaries: a step that takes a second here can take
// twenty there. A deadline is an upper bound and costs nothing when the
// condition comes true early, so none is shorter than this.
const minWait = 60 * time.Second

// eventually polls cond until it holds or the deadline passes (timeout, at
// least minWait).
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	timeout = max(timeout, minWait)
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// httpGet returns the status and body of a GET, or 0 on a connection error.
func httpGet(url string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and test readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTLSClient(pool *x509.CertPool) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// startFake starts the TLS fake of Entra and Graph for one test and writes its
// CA certificate to a file, for a profile's caFile.
func startFake(t *testing.T, o graphtest.Options) (*graphtest.Server, string) {
	t.Helper()
	fake, err := graphtest.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, fake.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return fake, caFile
}
