package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

const badJobsDir = "../../queue/contract/testdata/badjobs"

// TestReliabilityBadInput publishes the bad-input corpus (queue/contract/testdata/badjobs
// plus generated cases) to a running replica of the binary: each job lands in
// MAIL_DLQ with its specific reason and a message that names the problem, the
// fake Graph receives none of them, and the worker still sends a good job
// afterwards. A payload above the server's max_payload fails at the producer
// (`mailworker send`) with a clear error and never reaches the worker.
func TestReliabilityBadInput(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	ns := startRelNATS(t)
	fake := newFake(t, graphtest.Options{})
	h := newHarness(t, ns.url(), fake, relWorker{},
		relProfile{name: "rel", senders: []string{"noreply@rel.example"}})
	replica := h.startReplica()

	raw, err := os.ReadFile(filepath.Join(badJobsDir, "expect.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases map[string]json.RawMessage
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	type want struct {
		Profile string          `json:"profile"`
		Reason  contract.Reason `json:"reason"`
		Message string          `json:"message"`
	}
	wants := map[string]want{}
	publish := func(id, profile string, body []byte) {
		t.Helper()
		m := &nats.Msg{Subject: contract.JobSubject(profile), Data: body, Header: nats.Header{contract.HeaderMsgID: []string{id}}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := h.js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
	}
	var names []string
	for name := range cases {
		if strings.HasSuffix(name, ".json") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		var w want
		if err := json.Unmarshal(cases[name], &w); err != nil {
			t.Fatal(err)
		}
		body, err := os.ReadFile(filepath.Join(badJobsDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if w.Profile == "" {
			w.Profile = "rel"
		}
		id := "bad-" + strings.TrimSuffix(name, ".json")
		wants[id] = w
		publish(id, w.Profile, body)
	}
	// Generated: 10,000 recipients.
	var b strings.Builder
	b.WriteString(`{"from":"noreply@rel.example","subject":"x","text":"x","to":[`)
	for i := range 10000 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"r%d@example.com"`, i)
	}
	b.WriteString("]}")
	wants["bad-ten_thousand_recipients"] = want{Profile: "rel", Reason: contract.ReasonInvalidJob, Message: "10000 recipients in to+cc+bcc, over the limit of 500"}
	publish("bad-ten_thousand_recipients", "rel", []byte(b.String()))

	// Above max_payload (1 MB by default): the producer gets the error.
	big := filepath.Join(t.TempDir(), "big.json")
	bigJob, _ := json.Marshal(contract.Job{ID: "bad-too-big", From: "noreply@rel.example", To: []string{"a@example.com"}, Subject: "big",
		Text: strings.Repeat("x", 1<<20+1)})
	if err := os.WriteFile(big, bigJob, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := runCLI(context.Background(), []string{"send", "--profile", "rel", "--file", big}, nil, &out, &errOut,
		append([]string{"MAILWORKER_CONFIG=" + h.cfgPath}, h.env...))
	if code == 0 || !strings.Contains(errOut.String(), "maximum payload exceeded") {
		t.Errorf("send of a %d-byte job: exit %d, stderr %q: want a failure naming the max payload", len(bigJob), code, errOut.String())
	}
	t.Logf("producer error for a %d-byte job: %s", len(bigJob), strings.TrimSpace(errOut.String()))

	// A good job after all that.
	good := &contract.Job{ID: "good-after-bad", From: "noreply@rel.example", To: []string{"a@example.com"}, Subject: "ok", Text: "ok"}
	if _, err := h.pub.Publish(context.Background(), "rel", good); err != nil {
		t.Fatal(err)
	}
	ids := []string{"good-after-bad"}
	for id := range wants {
		ids = append(ids, id)
	}
	h.waitTerminal(ids, time.Minute)
	r := h.check(ids)
	if r.Sent != 1 || r.DeadLettered != len(wants) {
		t.Errorf("sent %d (want the good job only), dead-lettered %d of %d", r.Sent, r.DeadLettered, len(wants))
	}
	for id, w := range wants {
		dl, err := h.q.DLQ.Get(context.Background(), id)
		if err != nil {
			t.Errorf("%s: %v", id, err)
			continue
		}
		if dl.Reason != w.Reason || !strings.Contains(dl.Error, w.Message) {
			t.Errorf("%s: dead-lettered %s %q; want %s containing %q", id, dl.Reason, dl.Error, w.Reason, w.Message)
		}
	}
	for _, m := range fake.Messages() {
		if m.JobID != "good-after-bad" {
			t.Errorf("the fake Graph received bad job %s", m.JobID)
		}
	}
	if _, err := h.q.DLQ.Get(context.Background(), "bad-too-big"); err == nil {
		t.Errorf("the oversized job reached the worker")
	}
	select {
	case <-replica.done:
		t.Fatalf("the worker exited on bad input:\n%s", tail(replica.stderr.String(), 3000))
	default:
	}
	h.stopAll([]*proc{replica})
	h.checkNoSecrets(errOut.String(), out.String())
	logFigures(t, "bad-input", r, fmt.Sprintf("cases=%d oversized_rejected_at_producer=1", len(wants)+1))
}
