package worker

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestMaxMessageSize: a job whose message, as Exchange counts it
// (attachments base64-encoded), exceeds its profile's maximum message size is
// dead-lettered message_too_large with a message naming the setting, and the
// sender is never called; objectRef sizes come from the object store's
// metadata; a job within the limit is sent.
func TestMaxMessageSize(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	const limit = 512 << 10 // 0.5 MB: jobs must stay under NATS's 1 MB max_payload
	b := setup(t, Config{Profiles: map[string]Profile{"demo": {AllowedSenders: []string{"noreply@demo.example"}, MaxMessageBytes: limit}}}, rec)
	// 450,000 bytes: under 0.5 MB as a file, 600,000 bytes in base64.
	ref, err := b.q.Attachments.Put(context.Background(), "demo", "scan.pdf", make([]byte, 450_000))
	if err != nil {
		t.Fatal(err)
	}
	byRef := demoJob("size-ref")
	byRef.Attachments = []contract.Attachment{{Name: "scan.pdf", ContentType: "application/pdf", ObjectRef: ref}}
	inline := demoJob("size-inline")
	inline.Attachments = []contract.Attachment{{Name: "a.bin", ContentBase64: base64.StdEncoding.EncodeToString(make([]byte, 450_000))}}
	small := demoJob("size-ok")
	small.Attachments = []contract.Attachment{{Name: "a.bin", ContentBase64: base64.StdEncoding.EncodeToString(make([]byte, 300_000))}}
	for _, j := range []*contract.Job{byRef, inline, small} {
		b.publish(j)
	}
	b.waitState("size-ok", contract.StateSent)
	for _, id := range []string{"size-ref", "size-inline"} {
		b.waitState(id, contract.StateDeadLettered)
		dl, err := b.q.DLQ.Get(context.Background(), "demo", id)
		if err != nil {
			t.Fatal(err)
		}
		if dl.Reason != contract.ReasonMessageTooLarge {
			t.Errorf("%s: reason %s, want message_too_large", id, dl.Reason)
		}
		if !strings.Contains(dl.Error, "profiles.demo.maxMessageSize") || !strings.Contains(dl.Error, "0.5 MB (524,288 bytes)") {
			t.Errorf("%s: dead letter %q does not name the setting and its value", id, dl.Error)
		}
		if n := rec.callsFor(id); n != 0 {
			t.Errorf("%s: sender called %d times, want never", id, n)
		}
	}
}
