package validate

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func init() { passwords["smtp"] = "MAIL_SMTP_PASSWORD" }

// TestAccountsSMTPUser walks NATS user "smtp" (the SMTP ingress) through what `mailworker smtp`
// does: bind the object store, store a large message, publish its profile's job (with the ack),
// delete an object whose job was not published; and checks it can do nothing else.
func TestAccountsSMTPUser(t *testing.T) {
	_, connect := startAccountsServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // an upper bound (CI shares two cores under -race)
	defer cancel()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 500*time.Millisecond)
	}
	mustDeny := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: allowed, want denied", what)
		}
	}

	prov := connect("provisioner")
	_, err := prov.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_JOBS_billing", Subjects: []string{"mail.send.billing"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage})
	must("provisioner create MAIL_JOBS_billing", err)
	_, err = prov.CreateStream(ctx, jetstream.StreamConfig{Name: "MAIL_STATUS", Subjects: []string{"mail.status.>"}})
	must("provisioner create MAIL_STATUS", err)
	for _, p := range []string{"billing", "ops"} {
		_, err = prov.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "MAIL_ATTACHMENTS_" + p})
		must("provisioner create object store "+p, err)
	}

	smtp := connect("smtp")
	obs, err := smtp.ObjectStore(ctx, "MAIL_ATTACHMENTS_billing") // its profile's store
	must("smtp bind object store", err)
	_, err = obs.PutBytes(ctx, "smtp-abc.eml", bytes.Repeat([]byte("m"), 400_000))
	must("smtp store a large message", err)
	_, err = smtp.Publish(ctx, "mail.send.billing", []byte(`{"id":"smtp-abc"}`), jetstream.WithMsgID("smtp-abc"))
	must("smtp publish its profile's job", err)
	_, err = obs.PutBytes(ctx, "smtp-def.eml", []byte("not published"))
	must("smtp store", err)
	must("smtp delete an unpublished message", obs.Delete(ctx, "smtp-def.eml"))

	c, cc := short()
	_, err = smtp.Publish(c, "mail.send.ops", []byte(`{"id":"x"}`))
	cc()
	mustDeny("smtp publish another profile's job", err)
	c, cc = short()
	_, err = smtp.Publish(c, "mail.status.billing.x", []byte(`{}`))
	cc()
	mustDeny("smtp publish a status event", err)
	c, cc = short()
	_, err = smtp.Consumer(c, "MAIL_JOBS_billing", "mailworker")
	cc()
	mustDeny("smtp consumer info", err)
	c, cc = short()
	_, err = smtp.CreateStream(c, jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
	cc()
	mustDeny("smtp create a stream", err)
	c, cc = short()
	_, err = smtp.Stream(c, "MAIL_STATUS")
	cc()
	mustDeny("smtp read MAIL_STATUS", err)
	c, cc = short()
	_, err = smtp.ObjectStore(c, "MAIL_ATTACHMENTS_ops")
	cc()
	mustDeny("smtp bind another profile's object store", err)
}
