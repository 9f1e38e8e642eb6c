package support

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/tracking"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openQueue(t *testing.T) *queue.Queue {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	if err := queue.Provision(context.Background(), js, queue.Config{}); err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// TestScanIsBounded: beyond Options.Scans scans at once, Scan refuses at
// once with ErrBusy; a slot freed is taken again.
func TestScanIsBounded(t *testing.T) {
	q := openQueue(t)
	ctx := context.Background()
	big := `{"from":"a@contoso.example","to":["b@example.com"],"text":"` + strings.Repeat("x", 300<<10) + `"}`
	for _, id := range []string{"j1", "j2", "j3"} {
		if err := q.DLQ.Put(ctx, contract.DeadLetter{JobID: id, Profile: "billing", Reason: contract.ReasonExpired, Body: []byte(big)}); err != nil {
			t.Fatal(err)
		}
	}
	d := New(q, Options{Scans: 1})
	inside, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		first := true
		done <- d.Scan(ctx, queue.DLQQuery{}, func(contract.DeadLetter) bool {
			if first {
				first = false
				close(inside)
				<-release
			}
			return true
		})
	}()
	<-inside
	if err := d.Scan(ctx, queue.DLQQuery{}, func(contract.DeadLetter) bool { return true }); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second scan while the only slot is taken: %v, want ErrBusy", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := d.Scan(ctx, queue.DLQQuery{}, func(dl contract.DeadLetter) bool { n++; return len(dl.Body) == len(big) }); err != nil || n != 3 {
		t.Fatalf("a scan after the slot is free: %d records, %v", n, err)
	}
}

// TestNoActionWithoutAuditRecord: an action without an actor is refused
// before it touches anything.
func TestNoActionWithoutAuditRecord(t *testing.T) {
	q := openQueue(t)
	ctx := context.Background()
	if err := q.DLQ.Put(ctx, contract.DeadLetter{JobID: "j1", Profile: "billing", Reason: contract.ReasonExpired, Body: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	d := New(q, Options{})
	if _, err := d.Purge(ctx, Who{Via: ViaCLI}, queue.DLQQuery{JobID: "j1"}, ""); err == nil {
		t.Fatal("a purge without an actor ran")
	}
	if _, err := q.DLQ.Get(ctx, "billing", "j1"); err != nil {
		t.Fatalf("the dead letter after a refused purge: %v", err)
	}
	n, err := d.Purge(ctx, Who{Actor: "sam", Via: ViaCLI}, queue.DLQQuery{JobID: "j1"}, "")
	recs, _ := q.Audit.ForJob(ctx, "billing", "j1")
	if err != nil || n != 1 || len(recs) != 1 || recs[0].Actor != "sam" || recs[0].Action != queue.AuditPurge {
		t.Fatalf("purge: %d, %v; audit %+v", n, err, recs)
	}
}

func TestDiffMasks(t *testing.T) {
	before := `{"id":"j","from":"billing@contoso.example","to":["jane@example.com"],"subject":"Old","text":"hello","headers":{"X-Ref":"ann@example.com"}}`
	after := `{"id":"j","from":"billing@contoso.example","to":["joe@fabrikam.example"],"subject":"New","text":"hello there","headers":{"X-Ref":"bob@example.com"}}`
	got := map[string][2]string{}
	for _, c := range Diff([]byte(before), []byte(after), "billing@contoso.example") {
		got[c.Field] = [2]string{c.Before, c.After}
	}
	want := map[string][2]string{
		"to":      {"j•••@example.com", "j•••@fabrikam.example"},
		"subject": {"Old", "New"},
		"text":    {"5 bytes", "11 bytes"},
		"headers": {`{"X-Ref":"a•••@example.com"}`, `{"X-Ref":"b•••@example.com"}`},
	}
	if len(got) != len(want) {
		t.Fatalf("Diff = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
}

// TestUnsuppress: a removal names no address (only its key), is recorded
// before the entry goes, needs an actor, and one for an address not on the
// list is ErrNotSuppressed with nothing recorded; a key that is not one
// token (a wildcard, another profile's key path) removes nothing.
func TestUnsuppress(t *testing.T) {
	q := openQueue(t)
	ctx := context.Background()
	st, err := tracking.Open(ctx, q.States.JetStream(), 1)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, p := range []string{"billing", "hr"} {
		if err := st.Suppress(ctx, tracking.Suppression{Address: "gone@example.com", Profile: p, Reason: "550 5.1.1", JobID: "j-" + p, At: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	d := New(q, Options{})
	key := queue.RecipientKey("Gone@Example.com")
	if err := d.Unsuppress(ctx, Who{}, "billing", key, ""); err == nil {
		t.Error("a removal without an actor was done")
	}
	for _, bad := range []string{"*", ">", "billing.x", ""} {
		if err := d.Unsuppress(ctx, Who{Actor: "sam", Via: ViaCLI}, "billing", bad, ""); !errors.Is(err, ErrNotSuppressed) {
			t.Errorf("key %q: %v, want ErrNotSuppressed", bad, err)
		}
	}
	if err := d.Unsuppress(ctx, Who{Actor: "sam", Via: ViaCLI}, "billing", key, ""); err != nil {
		t.Fatal(err)
	}
	if err := d.Unsuppress(ctx, Who{Actor: "sam", Via: ViaCLI}, "billing", key, ""); !errors.Is(err, ErrNotSuppressed) {
		t.Errorf("second removal: %v, want ErrNotSuppressed", err)
	}
	if e, _ := st.Suppressed(ctx, "billing", "gone@example.com", now); e != nil {
		t.Error("billing's entry is still there")
	}
	if e, _ := st.Suppressed(ctx, "hr", "gone@example.com", now); e == nil {
		t.Error("hr's entry went with billing's")
	}
	recs, err := q.Audit.ForJob(ctx, "billing", "j-billing")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Action != queue.AuditUnsuppress || recs[0].Actor != "sam" || recs[0].Detail != "recipient "+key {
		t.Errorf("audit: %+v, want one unsuppress by sam naming the key", recs)
	}
	left, err := d.Suppressions(ctx, "")
	if err != nil || len(left) != 1 || left[0].Profile != "hr" {
		t.Errorf("left: %+v %v, want hr's entry", left, err)
	}
}
