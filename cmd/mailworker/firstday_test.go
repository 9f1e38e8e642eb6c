package main

import (
	"strings"
	"testing"

	"github.com/mailworker/mailworker/worker"
)

// TestDLQShowWithoutID: `dlq show` without a job id says how to call it and
// what to run next, not a bare cobra error.
func TestDLQShowWithoutID(t *testing.T) {
	t.Parallel()
	out, errOut, code := runCmd(t, "", "dlq", "show")
	if code != 2 || !strings.Contains(errOut, "usage: mailworker dlq show <job-id>") || !strings.Contains(errOut, "mailworker dlq list") {
		t.Fatalf("dlq show without an id: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	if strings.Contains(errOut, "accepts 1 arg(s)") {
		t.Errorf("the bare cobra error is still there: %q", errOut)
	}
}

// TestDevPacingBanner: the dev banner's pacing line for --unpaced (the
// worker's Unlimited) and for production's 30 a minute.
func TestDevPacingBanner(t *testing.T) {
	t.Parallel()
	if got := devPacing(worker.Unlimited, 4); !strings.HasPrefix(got, "unpaced") || strings.Contains(got, "-1") {
		t.Errorf("--unpaced: %q", got)
	}
	if got := devPacing(30, 4); !strings.Contains(got, "at most 30 sends per minute") || !strings.Contains(got, "about 6.7 minutes") {
		t.Errorf("30 a minute: %q", got)
	}
}
