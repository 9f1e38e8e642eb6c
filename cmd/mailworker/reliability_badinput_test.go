package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // an upper bound
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
		if w.Profile != "rel" {
			// A profile that is not provisioned has no job stream
			// (MAIL_JOBS_<profile>): the publish itself is refused, at the
			// front door, and nothing reaches a worker.
			m := &nats.Msg{Subject: contract.JobSubject(w.Profile), Data: body}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := h.js.PublishMsg(ctx, m)
			cancel()
			if !errors.Is(err, jetstream.ErrNoStreamResponse) {
				t.Errorf("publish %s for unprovisioned profile %s: %v, want no stream response", id, w.Profile, err)
			}
			continue
		}
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
	wants["bad-ten_thousand_recipients"] = want{Profile: "rel", Reason: contract.ReasonInvalidJob, Message: "10000 recipients in to+cc+bcc, over the limit of 1000"}
	publish("bad-ten_thousand_recipients", "rel", []byte(b.String()))

	// Personal data in bad fields, and the header rules (issues 9 and 10):
	// the dead letter, the status events and the worker's log name the field,
	// never the address or the name.
	const piiName, piiAddr = "Ann Piiname", "ann.pii@private.example"
	for id, c := range map[string]struct {
		body string
		w    want
	}{
		"bad-pii-to": {`{"from":"noreply@rel.example","subject":"x","text":"x","to":["a@example.com","` + piiName + ` <` + piiAddr + `>>"]}`,
			want{Reason: contract.ReasonInvalidJob, Message: "to[1]: not an RFC 5322 mailbox"}},
		"bad-pii-esc": {`{"from":"noreply@rel.example","subject":"x","text":"x","cc":["` + piiName + `\u001b[2J <` + piiAddr + `>"]}`,
			want{Reason: contract.ReasonInvalidJob, Message: "cc[0]: contains a control character"}},
		"bad-five-headers": {`{"from":"noreply@rel.example","subject":"x","text":"x","to":["a@example.com"],"headers":{"X-A":"1","X-B":"2","X-C":"3","X-D":"4","X-E":"5"}}`,
			want{Reason: contract.ReasonInvalidJob, Message: "headers: 5 headers, over the limit of 4"}},
		"bad-ms-exchange": {`{"from":"noreply@rel.example","subject":"x","text":"x","to":["a@example.com"],"headers":{"X-MS-Exchange-Organization-SCL":"-1"}}`,
			want{Reason: contract.ReasonInvalidJob, Message: "is reserved"}},
	} {
		c.w.Profile = "rel"
		wants[id] = c.w
		publish(id, "rel", []byte(c.body))
	}
	fourHeaders := &contract.Job{ID: "good-four-headers", From: "noreply@rel.example", To: []string{"a@example.com"}, Subject: "ok", Text: "ok",
		Headers: map[string]string{"X-A": "1", "X-B": "2", "X-C": "3", "X-D": "4"}}
	if _, err := h.pub.Publish(context.Background(), "rel", fourHeaders); err != nil {
		t.Fatal(err)
	}

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
	ids := []string{"good-after-bad", "good-four-headers"}
	for id := range wants {
		ids = append(ids, id)
	}
	h.waitTerminal(ids, time.Minute)
	r := h.check(ids)
	if r.Sent != 2 || r.DeadLettered != len(wants) {
		t.Errorf("sent %d (want the 2 good jobs only), dead-lettered %d of %d", r.Sent, r.DeadLettered, len(wants))
	}
	for id, w := range wants {
		dl, err := h.q.DLQ.Get(context.Background(), "", id)
		if err != nil {
			t.Errorf("%s: %v", id, err)
			continue
		}
		if dl.Reason != w.Reason || !strings.Contains(dl.Error, w.Message) {
			t.Errorf("%s: dead-lettered %s %q; want %s containing %q", id, dl.Reason, dl.Error, w.Reason, w.Message)
		}
	}
	for _, m := range fake.Messages() {
		switch m.JobID {
		case "good-after-bad":
		case "good-four-headers":
			if len(m.Headers) != 5 {
				t.Errorf("the job with 4 headers reached Graph with %d internet message headers, want 4 + the job-id stamp", len(m.Headers))
			}
		default:
			t.Errorf("the fake Graph received bad job %s", m.JobID)
		}
	}
	if _, err := h.q.DLQ.Get(context.Background(), "", "bad-too-big"); err == nil {
		t.Errorf("the oversized job reached the worker")
	}
	select {
	case <-replica.done:
		t.Fatalf("the worker exited on bad input:\n%s", tail(replica.stderr.String(), 3000))
	default:
	}
	h.stopAll([]*proc{replica})
	_, rawEvents := h.statusEvents()
	var dlqErrors strings.Builder
	for id := range wants {
		if dl, err := h.q.DLQ.Get(context.Background(), "", id); err == nil {
			dlqErrors.WriteString(dl.Error + "\n")
		}
	}
	for where, text := range map[string]string{"worker log": replica.stderr.String(), "status events": string(bytes.Join(rawEvents, nil)),
		"dead-letter errors": dlqErrors.String()} {
		for _, pii := range []string{"Piiname", "ann.pii", "private.example"} {
			if strings.Contains(text, pii) {
				t.Errorf("%s carry %q from a rejected job", where, pii)
			}
		}
	}
	h.checkNoSecrets(errOut.String(), out.String())
	logFigures(t, "bad-input", r, fmt.Sprintf("cases=%d oversized_rejected_at_producer=1", len(wants)+1))
}
