package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestDeliveryTrackingDev runs the built binary's `dev` (tracking on against
// the fake's message trace): a job to a delivered and a bouncing recipient
// gets `delivered` and `bounced` per recipient; the bounce suppresses the
// address (suppressions list shows it); a later job to it alone is
// dead-lettered recipient_invalid without reaching Graph; `suppressions
// remove` takes it off the list.
func TestDeliveryTrackingDev(t *testing.T) {
	dataDir := t.TempDir()
	dev := startProc(t, nil, "dev", "--nats-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--console-listen", "127.0.0.1:0", "--smtp-listen", "127.0.0.1:0", "--data-dir", dataDir, "--unpaced")
	natsURL := dev.waitOutput(natsURLLine, 60*time.Second)
	httpURL := dev.waitOutput(httpURLLine, 5*time.Second)
	eventually(t, 20*time.Second, "/readyz", func() bool {
		code, _ := httpGet(httpURL + "/readyz")
		return code == 200
	})
	if !strings.Contains(dev.stdout.String(), "tracking is on") {
		t.Errorf("dev banner does not say tracking is on:\n%s", dev.stdout.String())
	}
	cli := func(args ...string) (string, string, int) {
		return runCmd(t, "", append(args, "--nats-url", natsURL)...)
	}
	out, errOut, code := cli("send", "--profile", "demo", "--id", "trk-1", "--from", "noreply@demo.example",
		"--to", "you@example.com", "--to", "bounce@example.com", "--subject", "hi", "--text", "t", "--wait")
	if code != 0 {
		t.Fatalf("send: exit %d\n%s%s", code, out, errOut)
	}
	var evs []contract.Event
	eventually(t, 60*time.Second, "delivered and bounced events", func() bool {
		out, _, _ := cli("status", "trk-1", "--json")
		var st struct {
			Events []contract.Event `json:"events"`
		}
		if json.Unmarshal([]byte(out), &st) != nil {
			return false
		}
		evs = evs[:0]
		for _, e := range st.Events {
			if e.Recipient != "" {
				evs = append(evs, e)
			}
		}
		return len(evs) == 2
	})
	got := map[string]contract.EventType{}
	for _, e := range evs {
		got[e.Recipient] = e.Event
	}
	if got["you@example.com"] != contract.EventDelivered || got["bounce@example.com"] != contract.EventBounced {
		t.Fatalf("delivery events %v, want you delivered, bounce bounced", got)
	}
	// Delivery events follow a job's outcome: the summary does not count the job as open.
	out, _, _ = cli("status", "--since", "1h", "--profile", "demo", "--json")
	var sum struct {
		Profiles []struct {
			Open int `json:"open"`
			Sent int `json:"sent"`
		} `json:"profiles"`
	}
	if json.Unmarshal([]byte(out), &sum) != nil || len(sum.Profiles) != 1 || sum.Profiles[0].Open != 0 || sum.Profiles[0].Sent != 1 {
		t.Errorf("status summary after delivery events: %s, want open 0, sent 1", out)
	}
	out, _, _ = cli("status", "trk-1")
	if !strings.Contains(out, "delivery per recipient") || !strings.Contains(out, "bounced") {
		t.Errorf("status does not show the deliveries:\n%s", out)
	}
	out, _, code = cli("suppressions", "list")
	if code != 0 || !strings.Contains(out, "bounce@example.com") {
		t.Fatalf("suppressions list: exit %d\n%s", code, out)
	}
	out, errOut, code = cli("send", "--profile", "demo", "--id", "trk-2", "--from", "noreply@demo.example",
		"--to", "bounce@example.com", "--subject", "again", "--text", "t", "--wait")
	if code == 0 || !strings.Contains(out+errOut, "recipient_invalid") {
		t.Errorf("send to a suppressed address: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli("suppressions", "remove", "--profile", "demo", "bounce@example.com")
	if code != 0 || !strings.Contains(out, "removed") {
		t.Errorf("suppressions remove: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, _ = cli("suppressions", "list"); strings.Contains(out, "bounce@example.com") {
		t.Errorf("still listed after remove:\n%s", out)
	}
}
