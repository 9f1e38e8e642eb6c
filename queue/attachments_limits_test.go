package queue

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailworker/mailworker/queue/contract"
)

// An object's content is read only within what its metadata says, and Get
// loads nothing larger than MaxGetBytes (issue 17, item 5): the producer
// writes both the metadata and the chunks of its own objects, so neither is
// trusted to bound the worker's memory on its own.
func TestAttachmentsReadWithinTheirMetadata(t *testing.T) {
	b := setup(t)
	a := b.q.Attachments

	t.Run("Get refuses an object over MaxGetBytes before reading a chunk", func(t *testing.T) {
		ref, err := a.PutReader(b.ctx, "billing", "big.bin", io.LimitReader(zeros{}, MaxGetBytes+1))
		if err != nil {
			t.Fatal(err)
		}
		before := b.nc.Stats().InBytes
		if _, err := a.Get(b.ctx, "billing", ref); !errors.Is(err, contract.ErrAttachmentTooLarge) {
			t.Fatalf("Get = %v, want ErrAttachmentTooLarge", err)
		}
		if in := b.nc.Stats().InBytes - before; in > 64<<10 {
			t.Errorf("Get of a refused object received %d bytes", in)
		}
	})

	// rewrite stores ref's metadata again, changed by edit, as its producer may.
	rewrite := func(t *testing.T, ref string, edit func(*jetstream.ObjectInfo)) {
		t.Helper()
		obs, err := b.js.ObjectStore(b.ctx, AttachmentsBucket("billing"))
		if err != nil {
			t.Fatal(err)
		}
		info, err := obs.GetInfo(b.ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		edit(info)
		data, err := json.Marshal(info)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg("$O." + AttachmentsBucket("billing") + ".M." + base64.URLEncoding.EncodeToString([]byte(ref)))
		m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		m.Data = data
		if _, err := b.js.PublishMsg(b.ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	content := bytes.Repeat([]byte("0123456789"), 50_000) // 500 KB: four chunks
	for _, c := range []struct {
		name string
		edit func(*jetstream.ObjectInfo)
	}{
		{"metadata that claims fewer bytes than the chunks hold", func(i *jetstream.ObjectInfo) { i.Size = 1000 }},
		{"a digest that does not match", func(i *jetstream.ObjectInfo) {
			i.Digest = "SHA-256=" + base64.URLEncoding.EncodeToString(make([]byte, 32))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref, err := a.Put(b.ctx, "billing", "liar.bin", content)
			if err != nil {
				t.Fatal(err)
			}
			rewrite(t, ref, c.edit)
			if got, err := a.Get(b.ctx, "billing", ref); !errors.Is(err, contract.ErrAttachmentCorrupt) {
				t.Fatalf("Get = %d bytes, %v; want ErrAttachmentCorrupt", len(got), err)
			}
			rc, _, err := a.Open(b.ctx, "billing", ref, 0)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if !errors.Is(err, contract.ErrAttachmentCorrupt) {
				t.Fatalf("Open then read = %d bytes, %v; want ErrAttachmentCorrupt", len(got), err)
			}
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
