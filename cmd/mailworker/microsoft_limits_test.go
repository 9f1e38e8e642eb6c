package main

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestMessageSizeLimit holds draft mode to the sending mailbox's maximum
// message size as Exchange counts it (issue 18, item 1): the whole message,
// attachments base64-encoded, 35 MB by default, at most 150 MB. A job over
// the profile's maxMessageSize is dead-lettered message_too_large before any
// Graph call (no draft, no upload spending the mailbox's 5-minute budget);
// one within it is sent; and a mailbox whose MaxSendSize is below the
// profile's setting refuses the upload midway (ErrorMessageSizeExceeded, as
// microsoft-graph-docs-contrib#2561 shows), which is dead-lettered
// message_too_large at once, not retried.
func TestMessageSizeLimit(t *testing.T) {
	t.Parallel()
	const sender = "reports@contoso.example"
	file := make([]byte, 28_000_000) // 37,333,336 bytes in base64: over 35 MB (36,700,160), far under 150 MB
	if _, err := rand.Read(file); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, id string, fakeOpts graphtest.Options, maxMessageSize string) (*graphtest.Server, *queue.Queue, string) {
		t.Helper()
		ns := startTestNATS(t, nil)
		fakeOpts.TenantID, fakeOpts.ClientID, fakeOpts.ClientSecret = "t1", "c1", "s3cret"
		fake, caFile := startFake(t, fakeOpts)
		cfg := defaultConfig()
		cfg.NATS.URL = ns.ClientURL()
		cfg.HTTP.Listen = "127.0.0.1:0"
		cfg.Profiles = map[string]ProfileConfig{"big": {TenantID: "t1", ClientID: "c1", AuthorityHost: fake.URL(),
			GraphURL: fake.GraphURL(), CAFile: caFile, Credential: CredentialConfig{ClientSecret: "s3cret"},
			AllowedSenders: []string{sender}, DeliveryMode: "draft", MaxMessageSize: maxMessageSize}}
		if err := cfg.validate(); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		_, js, stop := startApp(t, cfg, zerolog.New(zerolog.NewTestWriter(t)))
		t.Cleanup(stop)
		q, err := queue.Open(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := q.Attachments.Put(ctx, "big", "export.zip", file)
		if err != nil {
			t.Fatal(err)
		}
		job := &contract.Job{ID: id, From: sender, To: []string{"a@example.com"}, Subject: "export",
			Text: "attached", Attachments: []contract.Attachment{{Name: "export.zip", ContentType: "application/zip", ObjectRef: ref}}}
		if _, err := queue.NewPublisher(js).Publish(ctx, "big", job); err != nil {
			t.Fatal(err)
		}
		return fake, q, job.ID
	}
	deadLetter := func(t *testing.T, q *queue.Queue, id string) contract.DeadLetter {
		t.Helper()
		var dl contract.DeadLetter
		eventually(t, 30*time.Second, "the dead letter", func() bool {
			var err error
			dl, err = q.DLQ.Get(context.Background(), "big", id)
			return err == nil
		})
		return dl
	}

	t.Run("over the default 35 MB: dead-lettered before any Graph call", func(t *testing.T) {
		t.Parallel()
		fake, q, id := run(t, "size-default", graphtest.Options{}, "")
		dl := deadLetter(t, q, id)
		if dl.Reason != contract.ReasonMessageTooLarge || !strings.Contains(dl.Error, "profiles.big.maxMessageSize") ||
			!strings.Contains(dl.Error, "35 MB (36,700,160 bytes)") {
			t.Errorf("dead letter %s: %q; want message_too_large naming profiles.big.maxMessageSize and its 35 MB", dl.Reason, dl.Error)
		}
		if dl.Attempts != 0 || len(dl.GraphCalls) != 0 {
			t.Errorf("dead letter after %d attempts, %d Graph calls; want none", dl.Attempts, len(dl.GraphCalls))
		}
		if n := len(fake.Drafts()); n != 0 || fake.UploadPuts() != 0 || len(fake.Messages()) != 0 {
			t.Errorf("fake saw %d drafts, %d upload PUTs, %d messages; want none", n, fake.UploadPuts(), len(fake.Messages()))
		}
	})

	t.Run("within maxMessageSize 150MB and the mailbox's 150 MB: sent", func(t *testing.T) {
		t.Parallel()
		fake, _, id := run(t, "size-150", graphtest.Options{MailboxMaxMessageSize: map[string]int64{sender: 150 << 20}}, "150MB")
		eventually(t, 60*time.Second, "the message at the fake Graph", func() bool { return len(fake.Messages()) == 1 })
		if m := fake.Messages()[0]; m.JobID != id || len(m.Attachments) != 1 || m.Attachments[0].Size != len(file) {
			t.Errorf("message %s with %d attachments; want job %s with the %d-byte file", m.JobID, len(m.Attachments), id, len(file))
		}
	})

	t.Run("mailbox smaller than maxMessageSize: Exchange refuses mid-upload, dead-lettered at once", func(t *testing.T) {
		t.Parallel()
		fake, q, id := run(t, "size-midway", graphtest.Options{}, "150MB") // the mailbox keeps Exchange's default 35 MB
		dl := deadLetter(t, q, id)
		if dl.Reason != contract.ReasonMessageTooLarge || dl.Attempts != 1 {
			t.Errorf("dead letter %s after %d attempts: %q; want message_too_large after 1", dl.Reason, dl.Attempts, dl.Error)
		}
		if puts := fake.UploadPuts(); puts == 0 || len(fake.Messages()) != 0 {
			t.Errorf("fake saw %d upload PUTs and %d messages; want the upload refused midway and nothing sent", puts, len(fake.Messages()))
		}
	})
}

// TestConfigMicrosoftLimits: what a profile may ask of its cloud and its
// mailbox is checked at config load (issue 18, items 1, 2 and 6): draft
// mode is refused in the US Government clouds (no createUploadSession),
// maxMessageSize is read in Exchange's units up to 150 MB, and the federated
// audience defaults to the cloud's.
func TestConfigMicrosoftLimits(t *testing.T) {
	t.Parallel()
	load := func(t *testing.T, profile string) (Config, error) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "config.yaml")
		doc := "profiles:\n  p:\n    tenantId: t\n    clientId: c\n    allowedSenders: [a@contoso.example]\n" + profile
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return loadConfig(path, nil)
	}
	const secret = "    credential:\n      clientSecret: x\n"
	for _, tc := range []struct {
		name, profile string
		wantErr       []string // empty: loads
	}{
		{"draft in usgov", secret + "    cloud: usgov\n    deliveryMode: draft\n", []string{"profiles.p.deliveryMode", "createUploadSession", "usgov", "deliveryMode sendMail"}},
		{"draft in usgovdod", secret + "    cloud: usgovdod\n    deliveryMode: draft\n", []string{"profiles.p.deliveryMode", "createUploadSession", "usgovdod"}},
		{"sendMail in usgov", secret + "    cloud: usgov\n", nil},
		{"draft with US Government endpoints", secret + "    authorityHost: https://login.microsoftonline.us\n    graphURL: https://dod-graph.microsoft.us\n    deliveryMode: draft\n",
			[]string{"profiles.p.deliveryMode", "createUploadSession", "usgovdod"}},
		{"draft in china", secret + "    cloud: china\n    deliveryMode: draft\n", nil},
		{"maxMessageSize over 150 MB", secret + "    maxMessageSize: 151MB\n", []string{"profiles.p.maxMessageSize", "150 MB"}},
		{"maxMessageSize not a size", secret + "    maxMessageSize: lots\n", []string{"profiles.p.maxMessageSize", "35MB"}},
		{"maxMessageSize without a unit is bytes", secret + "    maxMessageSize: \"150\"\n", []string{"profiles.p.maxMessageSize", "under 1 MB"}},
		{"maxMessageSize as Get-Mailbox prints it", secret + "    maxMessageSize: \"35 MB (36,700,160 bytes)\"\n", nil},
	} {
		cfg, err := load(t, tc.profile)
		switch {
		case len(tc.wantErr) == 0 && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case len(tc.wantErr) > 0 && err == nil:
			t.Errorf("%s: loaded; want an error with %q", tc.name, tc.wantErr)
		case err != nil:
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: %v; want it to say %q", tc.name, err, w)
				}
			}
		case tc.name == "maxMessageSize as Get-Mailbox prints it":
			if n := cfg.Profiles["p"].MaxMessageBytes(); n != 36_700_160 {
				t.Errorf("%s: %d bytes, want 36,700,160", tc.name, n)
			}
		}
	}
	if n := (ProfileConfig{}).MaxMessageBytes(); n != 36_700_160 {
		t.Errorf("default maximum message size %d, want Exchange's 35 MB, 36,700,160 bytes", n)
	}
	if n := (ProfileConfig{MaxMessageSize: "150MB"}).MaxMessageBytes(); n != 157_286_400 {
		t.Errorf("150MB is %d bytes, want 157,286,400 (Exchange's MB is 2^20 bytes)", n)
	}
	for cloud, want := range map[string]string{"": "api://AzureADTokenExchange", "usgov": "api://AzureADTokenExchangeUSGov",
		"usgovdod": "api://AzureADTokenExchangeUSGov", "china": "api://AzureADTokenExchangeChina"} {
		cfg, err := load(t, "    cloud: \""+cloud+"\"\n    credential:\n      federatedTokenFile: /var/run/secrets/azure/tokens/azure-identity-token\n")
		if err != nil {
			t.Fatalf("cloud %q: %v", cloud, err)
		}
		if got := cfg.Profiles["p"].Credential.FederatedAudience; got != want {
			t.Errorf("cloud %q: federatedAudience %q, want %q", cloud, got, want)
		}
	}
}
