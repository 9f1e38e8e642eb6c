// Package toolcheck is for tests that need a tool outside Go (node with
// Ajv, chromium, swaks, msmtp): without it they skip on a developer's
// machine and fail in CI (CI set, as .ci/run sets it), and the package's
// TestMain says what was skipped and how to install it. `go test ./...`
// prints nothing of a passing package but its "ok" line, so the summary
// also goes to the terminal (/dev/tty) when there is one.
package toolcheck

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
)

var (
	mu      sync.Mutex
	skipped = map[string]string{} // test name → what is missing and how to install it
)

// Missing skips t because what is missing (install says how to get it), or
// fails it when CI is set: in CI a missing tool must not pass silently.
func Missing(t testing.TB, what, install string) {
	t.Helper()
	msg := what + " (" + install + ")"
	if os.Getenv("CI") != "" {
		t.Fatal(msg + "; CI installs it")
	}
	mu.Lock()
	skipped[t.Name()] = msg
	mu.Unlock()
	t.Skip("not in CI: " + msg)
}

// Main runs m and then reports the tests Missing skipped: on stderr, and
// on the terminal when there is one. It returns m's exit code.
func Main(m *testing.M, pkg string) int {
	code := m.Run()
	report(pkg, os.Stderr)
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		report(pkg, tty)
		tty.Close()
	}
	return code
}

func report(pkg string, w io.Writer) {
	mu.Lock()
	defer mu.Unlock()
	if len(skipped) == 0 {
		return
	}
	names := make([]string, 0, len(skipped))
	for n := range skipped {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d test(s) SKIPPED for a missing tool (CI runs them; .ci/run installs everything):\n", pkg, len(names))
	for _, n := range names {
		fmt.Fprintf(&b, "  %s: %s\n", n, skipped[n])
	}
	_, _ = io.WriteString(w, b.String())
}
