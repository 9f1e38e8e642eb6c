package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/internal/toolcheck"
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
	AnyOf                []*schemaNode          `json:"anyOf"`
}

// typeAndNull returns n's type without "null", and whether null is allowed.
func (n *schemaNode) typeAndNull() (any, bool) {
	ts, ok := n.Type.([]any)
	if !ok {
		return n.Type, n.Type == "null" || slices.Contains(n.Enum, any(nil))
	}
	var rest []any
	null := false
	for _, t := range ts {
		if t == "null" {
			null = true
		} else {
			rest = append(rest, t)
		}
	}
	if len(rest) == 1 {
		return rest[0], null
	}
	return rest, null
}

// TestSchemaMatchesJob keeps schema/job.schema.json equal to the Go types:
// the same properties with compatible types, the same required fields, and
// no additional properties.
func TestSchemaMatchesJob(t *testing.T) {
	var root schemaNode
	if err := json.Unmarshal(JobSchema, &root); err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	// resolve follows $ref, and an anyOf of null and one schema (a nullable
	// $ref), reporting whether null was allowed on the way.
	var resolveNull func(n *schemaNode) (*schemaNode, bool)
	resolveNull = func(n *schemaNode) (*schemaNode, bool) {
		for n != nil && n.Ref != "" {
			n = root.Defs[strings.TrimPrefix(n.Ref, "#/$defs/")]
		}
		if n != nil && len(n.AnyOf) == 2 && n.AnyOf[0].Type == "null" {
			m, _ := resolveNull(n.AnyOf[1])
			return m, true
		}
		if n == nil {
			return nil, false
		}
		_, null := n.typeAndNull()
		return n, null
	}
	resolve := func(n *schemaNode) *schemaNode { m, _ := resolveNull(n); return m }
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
			p, null := resolveNull(node.Properties[name])
			if p == nil {
				t.Errorf("%s.%s: in the Go type, not in the schema", path, name)
				continue
			}
			// encoding/json takes null for an absent field: the schema
			// allows it wherever the field is optional.
			if optional := strings.Contains(opts, "omitempty"); null != optional {
				t.Errorf("%s.%s: schema allows null %v, want %v (optional: %v)", path, name, null, optional, optional)
			}
			want := schemaType(f.Type)
			got, _ := p.typeAndNull()
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

// corpusCase is one job body of testdata/schema/corpus.json, or generated.
type corpusCase struct {
	Name       string          `json:"name"`
	Valid      bool            `json:"valid"`
	WorkerOnly string          `json:"workerOnly"`
	Job        json.RawMessage `json:"job"`
	Raw        *string         `json:"raw"`
	body       []byte
}

// schemaCorpus loads the shared corpus and adds the cases too large to keep
// in a file.
func schemaCorpus(t *testing.T) []corpusCase {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "schema", "corpus.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Cases []corpusCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("corpus.json: %v", err)
	}
	names := map[string]bool{}
	for i := range doc.Cases {
		c := &doc.Cases[i]
		if names[c.Name] {
			t.Fatalf("corpus.json: case %q twice", c.Name)
		}
		names[c.Name] = true
		switch {
		case c.Raw != nil:
			c.body = []byte(*c.Raw)
		case c.Job != nil:
			c.body = c.Job
		default:
			t.Fatalf("corpus.json: case %q has neither job nor raw", c.Name)
		}
	}
	att := func(a ...map[string]any) []byte { return with(t, map[string]any{"attachments": a}) }
	gen := []corpusCase{
		{Name: "1000 recipients in to", Valid: true, body: with(t, map[string]any{"to": addrs(1000)})},
		{Name: "1000 recipients across to, cc, bcc", Valid: true, body: with(t, map[string]any{"to": addrs(600), "cc": addrs(200), "bcc": addrs(200)})},
		{Name: "1000 replyTo", Valid: true, body: with(t, map[string]any{"replyTo": addrs(1000)})},
		{Name: "32 metadata keys", Valid: true, body: with(t, map[string]any{"metadata": metadata(32, 64, 1024)})},
		{Name: "250 attachments", Valid: true, body: att(slices.Repeat([]map[string]any{{"name": "a", "objectRef": "r"}}, MaxAttachments)...)},
		{Name: "251 attachments", body: att(slices.Repeat([]map[string]any{{"name": "a", "objectRef": "r"}}, MaxAttachments+1)...)},
		{Name: "3 MiB inline", Valid: true, body: att(map[string]any{"name": "a", "contentBase64": b64(MaxInlineAttachmentBytes)})},
		{Name: "1001 recipients in to", body: with(t, map[string]any{"to": addrs(1001)})},
		{Name: "1001 replyTo", body: with(t, map[string]any{"replyTo": addrs(1001)})},
		{Name: "33 metadata keys", body: with(t, map[string]any{"metadata": metadata(33, 4, 1)})},
		{Name: "1001 recipients across to, cc, bcc", WorkerOnly: "1000 recipients across to+cc+bcc", body: with(t, map[string]any{"to": addrs(600), "cc": addrs(400), "bcc": addrs(1)})},
		{Name: "over 3 MiB inline", WorkerOnly: "3 MiB of decoded inline attachments",
			body: att(map[string]any{"name": "a", "contentBase64": b64(2 << 20)}, map[string]any{"name": "b", "contentBase64": b64(1<<20 + 1)})},
		{Name: "3 MiB mime", Valid: true, body: with(t, map[string]any{"subject": nil, "text": nil, "mime": map[string]any{"contentBase64": mimeB64(MaxMIMEBytes)}})},
		{Name: "over 3 MiB mime", WorkerOnly: "3 MiB of decoded mime.contentBase64",
			body: with(t, map[string]any{"subject": nil, "text": nil, "mime": map[string]any{"contentBase64": mimeB64(MaxMIMEBytes + 1)}})},
	}
	return append(doc.Cases, gen...)
}

// schemaWant is what a JSON Schema validator must say of c: valid, or
// valid because the rule that fails it is one only the worker checks.
func (c corpusCase) schemaWant() bool { return c.Valid || c.WorkerOnly != "" }

// TestSchemaAgreesWithDecodeJob runs the shared corpus through DecodeJob and
// through santhosh-tekuri/jsonschema with formats asserted: every job the
// schema accepts the worker accepts, and the reverse, but for the rules the
// schema's description names (workerOnly cases).
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
		// UnmarshalJSON stops after the first value: trailing data is a
		// parse error for every other validator.
		dec := json.NewDecoder(bytes.NewReader(b))
		var skip json.RawMessage
		if dec.Decode(&skip) == nil && dec.More() {
			return errors.New("trailing data")
		}
		return sch.Validate(v)
	}
	for _, cs := range schemaCorpus(t) {
		_, derr := DecodeJob(cs.body)
		if (derr == nil) != cs.Valid {
			t.Errorf("%s: DecodeJob error %v, want valid=%v", cs.Name, derr, cs.Valid)
		}
		if len(cs.body) > 1<<20 {
			continue // the 3 MiB cases: Go's regexp takes seconds on them under -race; TestSchemaAjv covers them
		}
		serr := validate(cs.body)
		if (serr == nil) != cs.schemaWant() {
			t.Errorf("%s: schema error %v, want valid=%v", cs.Name, serr, cs.schemaWant())
		}
	}
}

// TestSchemaAjv runs the shared corpus through Ajv (JSON Schema draft
// 2020-12) with ajv-formats in node, strict mode, formats asserted, as a
// Node.js producer validates: the schema must compile without a strict-mode
// warning, and Ajv must agree with DecodeJob on every case. CI (CI=true)
// installs node and the locked packages (.ci/run: npm ci --prefix
// queue/contract/testdata/ajv); there the test fails when they are missing.
func TestSchemaAjv(t *testing.T) {
	dir := filepath.Join("testdata", "ajv")
	missing := func(what string) {
		toolcheck.Missing(t, what, "install node and run `npm ci --prefix queue/contract/testdata/ajv`, as .ci/run does")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not on PATH")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ajv-formats", "package.json")); err != nil {
		missing("Ajv is not installed in " + dir)
	}
	cases := schemaCorpus(t)
	type in struct {
		Name string `json:"name"`
		Body string `json:"body"`
	}
	ins := make([]in, len(cases))
	for i, c := range cases {
		ins[i] = in{c.Name, string(c.body)}
	}
	b, err := json.Marshal(ins)
	if err != nil {
		t.Fatal(err)
	}
	casesFile := filepath.Join(t.TempDir(), "cases.json")
	if err := os.WriteFile(casesFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	schemaFile, err := filepath.Abs(filepath.Join("schema", "job.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, "validate.mjs", schemaFile, casesFile)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node validate.mjs: %v\n%s", err, stderr.String())
	}
	var res []struct {
		Name   string `json:"name"`
		Valid  bool   `json:"valid"`
		Errors string `json:"errors"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node output: %v: %.200s", err, out)
	}
	if len(res) != len(cases) {
		t.Fatalf("Ajv judged %d cases, want %d", len(res), len(cases))
	}
	for i, r := range res {
		if c := cases[i]; r.Valid != c.schemaWant() {
			t.Errorf("%s: Ajv valid=%v (%s), want %v", c.Name, r.Valid, r.Errors, c.schemaWant())
		}
	}
}

// TestSchemaTimestampPattern keeps the schema's timestamp pattern the one
// DecodeJob applies.
func TestSchemaTimestampPattern(t *testing.T) {
	var s struct {
		Defs map[string]struct {
			Pattern string `json:"pattern"`
			Format  string `json:"format"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(JobSchema, &s); err != nil {
		t.Fatal(err)
	}
	ts := s.Defs["timestamp"]
	if ts.Pattern != TimestampPattern || ts.Format != "date-time" {
		t.Errorf("$defs.timestamp = %+v, want format date-time and pattern %s", ts, TimestampPattern)
	}
}
