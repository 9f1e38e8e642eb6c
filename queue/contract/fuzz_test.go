package contract

import (
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"testing"
)

func FuzzDecodeJob(f *testing.F) {
	seeds := []string{
		goodJob,
		`{"id":"x-1","from":"Billing <b@x.com>","to":["a@x.com"],"cc":["c@x.com"],"bcc":["d@x.com"],"replyTo":["r@x.com"],` +
			`"subject":"s","text":"t","html":"<p>","attachments":[{"name":"a","contentBase64":"QUJD","inline":true,"contentId":"c"},` +
			`{"name":"b","objectRef":"r/b"}],"headers":{"X-A":"1"},"importance":"low","saveToSentItems":false,` +
			`"notBefore":"2026-01-01T00:00:00Z","expiresAt":"2026-01-02T00:00:00.5+02:00","metadata":{"k":"v"}}`,
		`{"from":"a@x.com","to":["b@x.com"],"text":"t","headers":{"Bcc":"x"}}`,
		`{"from":"a@x.com","to":["b@x.com\r\n"],"text":"t"}`,
		`{"from":"a@x.com","to":["=?utf-8?q?a=0D=0A?= <b@x.com>"],"text":"t"}`,
		`{"from":"a@x.com","to":["b@x.com"],"text":"t","attachments":[{"name":"a","contentBase64":"QQ=="}]}`,
		`{"from":"a@x.com","to":["b@x.com"],"text":"t","notBefore":"2026-01-01T00:00:00+24:00"}`,
		`{"from":"a@x.com"} {}`,
		`{"from":1}`,
		`{"From":"a@x.com","TO":["b@x.com"],"text":"t"}`,
		`{"from":"a@x.com","to":["b@x.com","\"c d\"@x.com"],"mime":{"contentBase64":"RnJvbTogQSA8YUB4LmNvbT4NClRvOiBiQHguY29tLCAiYyBkIkB4LmNvbQ0KQ2M6IGc6Ow0KDQp4"}}`,
		`[]`, ``, `null`, `{"to":null}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := DecodeJob(data)
		if err != nil {
			if _, ok := err.(*InvalidError); !ok {
				t.Fatalf("error %T %v, want *InvalidError", err, err)
			}
			return
		}
		b, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("re-encode a valid job: %v", err)
		}
		j2, err := DecodeJob(b)
		if err != nil {
			t.Fatalf("re-decode %s: %v", b, err)
		}
		if !jobsEqual(j, j2) {
			t.Fatalf("round trip changed the job:\n%+v\n%+v", j, j2)
		}
	})
}

// jobsEqual compares jobs, times by instant and nil/empty collections alike.
func jobsEqual(a, b *Job) bool {
	ta, tb := *a, *b
	if !timeEq(ta.NotBefore, tb.NotBefore) || !timeEq(ta.ExpiresAt, tb.ExpiresAt) {
		return false
	}
	ta.NotBefore, tb.NotBefore, ta.ExpiresAt, tb.ExpiresAt = nil, nil, nil, nil
	if !maps.Equal(ta.Headers, tb.Headers) || !maps.Equal(ta.Metadata, tb.Metadata) {
		return false
	}
	ta.Headers, tb.Headers, ta.Metadata, tb.Metadata = nil, nil, nil, nil
	for _, p := range []*[]string{&ta.To, &ta.Cc, &ta.Bcc, &ta.ReplyTo, &tb.To, &tb.Cc, &tb.Bcc, &tb.ReplyTo} {
		if len(*p) == 0 {
			*p = nil
		}
	}
	if len(ta.Attachments) == 0 && len(tb.Attachments) == 0 {
		ta.Attachments, tb.Attachments = nil, nil
	}
	if !slices.Equal(ta.Attachments, tb.Attachments) {
		return false
	}
	ta.Attachments, tb.Attachments = nil, nil
	return reflect.DeepEqual(ta, tb)
}

func timeEq(a, b interface{ UnixNano() int64 }) bool {
	if a == nil || b == nil || reflect.ValueOf(a).IsNil() || reflect.ValueOf(b).IsNil() {
		return (a == nil || reflect.ValueOf(a).IsNil()) == (b == nil || reflect.ValueOf(b).IsNil())
	}
	return a.UnixNano() == b.UnixNano()
}
