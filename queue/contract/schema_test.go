package contract

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

type schemaNode struct {
	Type                 any                    `json:"type"`
	Ref                  string                 `json:"$ref"`
	Enum                 []any                  `json:"enum"`
	Required             []string               `json:"required"`
	Properties           map[string]*schemaNode `json:"properties"`
	AdditionalProperties any                    `json:"additionalProperties"`
	Items                *schemaNode            `json:"items"`
	Defs                 map[string]*schemaNode `json:"$defs"`
}

// TestSchemaMatchesJob keeps schema/job.schema.json equal to the Go types:
// the same properties with compatible types, the same required fields, and
// no additional properties.
func TestSchemaMatchesJob(t *testing.T) {
	var root schemaNode
	if err := json.Unmarshal(JobSchema, &root); err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	resolve := func(n *schemaNode) *schemaNode {
		for n != nil && n.Ref != "" {
			n = root.Defs[strings.TrimPrefix(n.Ref, "#/$defs/")]
		}
		return n
	}
	var check func(path string, typ reflect.Type, node *schemaNode)
	check = func(path string, typ reflect.Type, node *schemaNode) {
		if node.AdditionalProperties != false {
			t.Errorf("%s: additionalProperties must be false", path)
		}
		var required []string
		seen := map[string]bool{}
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			seen[name] = true
			if !strings.Contains(opts, "omitempty") {
				required = append(required, name)
			}
			p := resolve(node.Properties[name])
			if p == nil {
				t.Errorf("%s.%s: in the Go type, not in the schema", path, name)
				continue
			}
			want := schemaType(f.Type)
			got := p.Type
			if got == nil && p.Enum != nil {
				got = "string"
			}
			if got != want {
				t.Errorf("%s.%s: schema type %v, Go type %s wants %q", path, name, got, f.Type, want)
			}
			if want == "array" && resolve(p.Items).Type != "string" && f.Type.Elem().Kind() == reflect.String {
				t.Errorf("%s.%s: items must be strings", path, name)
			}
			if f.Type == reflect.TypeOf([]Attachment{}) {
				check(path+"."+name+"[]", reflect.TypeOf(Attachment{}), resolve(p.Items))
			}
		}
		for name := range node.Properties {
			if !seen[name] {
				t.Errorf("%s.%s: in the schema, not in the Go type", path, name)
			}
		}
		slices.Sort(required)
		have := slices.Clone(node.Required)
		slices.Sort(have)
		if !slices.Equal(required, have) {
			t.Errorf("%s: schema requires %v, Go type (fields without omitempty) %v", path, have, required)
		}
	}
	check("job", reflect.TypeOf(Job{}), &root)
}

func schemaType(t reflect.Type) string {
	if t == reflect.TypeOf(&time.Time{}) || t == reflect.TypeOf(time.Time{}) {
		return "string"
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Slice:
		return "array"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return t.Kind().String()
}

// TestSchemaAgreesWithDecodeJob validates a corpus with both the schema and
// DecodeJob. Good jobs pass both; bad jobs that a schema can express fail both.
func TestSchemaAgreesWithDecodeJob(t *testing.T) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(JobSchema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("job.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("job.schema.json")
	if err != nil {
		t.Fatalf("compile schema: %v", err)
	}
	validate := func(b []byte) error {
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return err
		}
		return sch.Validate(v)
	}
	att := func(a map[string]any) []byte { return with(t, map[string]any{"attachments": []any{a}}) }

	good := map[string][]byte{
		"minimal":        []byte(goodJob),
		"html only":      with(t, map[string]any{"text": nil, "html": "<p/>"}),
		"cc only":        with(t, map[string]any{"to": nil, "cc": []string{"Name <c@x.com>"}}),
		"full":           []byte(`{"id":"A_b-1","from":"B <b@x.com>","to":["a@x.com"],"replyTo":["r@x.com"],"subject":"s","text":"t","attachments":[{"name":"a","contentType":"text/plain","contentBase64":"QUJD","inline":true,"contentId":"c"},{"name":"b","objectRef":"r/b","inline":false}],"headers":{"X-A":"1","x-b":""},"importance":"normal","saveToSentItems":true,"notBefore":"2026-01-01T00:00:00Z","expiresAt":"2026-01-02T00:00:00+02:00","metadata":{"k":"v"}}`),
		"500 recipients": with(t, map[string]any{"to": addrs(500)}),
		"32 metadata":    with(t, map[string]any{"metadata": metadata(32, 64, 1024)}),
		"base64 1 pad":   att(map[string]any{"name": "a", "contentBase64": "QUI="}),
		"base64 2 pad":   att(map[string]any{"name": "a", "contentBase64": "QQ=="}),
	}
	for name, b := range good {
		if _, err := DecodeJob(b); err != nil {
			t.Errorf("good %q: DecodeJob: %v", name, err)
		}
		if err := validate(b); err != nil {
			t.Errorf("good %q: schema: %v", name, err)
		}
	}
	bad := map[string][]byte{
		"unknown field":          with(t, map[string]any{"fromm": "x"}),
		"unknown attachment key": att(map[string]any{"name": "a", "objectRef": "r", "size": 1}),
		"from missing":           with(t, map[string]any{"from": nil}),
		"from wrong type":        with(t, map[string]any{"from": 1}),
		"no recipients":          with(t, map[string]any{"to": nil}),
		"empty to":               with(t, map[string]any{"to": []string{}}),
		"no body":                with(t, map[string]any{"text": nil}),
		"id chars":               with(t, map[string]any{"id": "a.b"}),
		"id length":              with(t, map[string]any{"id": strings.Repeat("a", 129)}),
		"CRLF subject":           with(t, map[string]any{"subject": "a\r\nb"}),
		"NUL subject":            with(t, map[string]any{"subject": "a\x00b"}),
		"long subject":           with(t, map[string]any{"subject": strings.Repeat("s", 2049)}),
		"CRLF address":           with(t, map[string]any{"to": []string{"a@x.com\r\nBcc: b@x.com"}}),
		"non-X header":           with(t, map[string]any{"headers": map[string]string{"Bcc": "x"}}),
		"header name colon":      with(t, map[string]any{"headers": map[string]string{"X-A:": "x"}}),
		"reserved header":        with(t, map[string]any{"headers": map[string]string{"X-MailWorker-Job-ID": "x"}}),
		"CRLF header value":      with(t, map[string]any{"headers": map[string]string{"X-A": "a\nb"}}),
		"importance":             with(t, map[string]any{"importance": "urgent"}),
		"bad date":               with(t, map[string]any{"notBefore": "tomorrow"}),
		"501 to":                 with(t, map[string]any{"to": addrs(501)}),
		"33 metadata":            with(t, map[string]any{"metadata": metadata(33, 4, 1)}),
		"long metadata value":    with(t, map[string]any{"metadata": metadata(1, 4, 1025)}),
		"long metadata key":      with(t, map[string]any{"metadata": metadata(1, 65, 1)}),
		"attachment no name":     att(map[string]any{"objectRef": "r"}),
		"attachment no content":  att(map[string]any{"name": "a"}),
		"attachment both":        att(map[string]any{"name": "a", "objectRef": "r", "contentBase64": "QQ=="}),
		"attachment bad base64":  att(map[string]any{"name": "a", "contentBase64": "QQ$="}),
		"attachment unpadded":    att(map[string]any{"name": "a", "contentBase64": "QQ"}),
		"attachment line breaks": att(map[string]any{"name": "a", "contentBase64": "QUFB\nQUFB"}),
		"inline no contentId":    att(map[string]any{"name": "a", "objectRef": "r", "inline": true}),
		"CRLF attachment name":   att(map[string]any{"name": "a\r\n", "objectRef": "r"}),
	}
	for name, b := range bad {
		if _, err := DecodeJob(b); err == nil {
			t.Errorf("bad %q: DecodeJob accepted it", name)
		}
		if err := validate(b); err == nil {
			t.Errorf("bad %q: schema accepted it", name)
		}
	}
}
