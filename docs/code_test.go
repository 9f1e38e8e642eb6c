package docs

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// block is one fenced code block of a markdown file.
type block struct {
	file string
	line int
	lang string
	text string
}

// blocks returns the fenced blocks of the README and docs/*.md.
func blocks(t *testing.T) []block {
	t.Helper()
	files, _ := filepath.Glob("*.md")
	files = append([]string{filepath.Join("..", "README.md")}, files...)
	var out []block
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var cur *block
		for i, line := range strings.Split(string(b), "\n") {
			trimmed := strings.TrimSpace(line)
			switch {
			case cur == nil && strings.HasPrefix(trimmed, "```"):
				cur = &block{file: f, line: i + 1, lang: strings.TrimPrefix(trimmed, "```")}
			case cur != nil && trimmed == "```":
				out = append(out, *cur)
				cur = nil
			case cur != nil:
				cur.text += line + "\n"
			}
		}
	}
	return out
}

// imports maps the package names a snippet may use to their paths.
var imports = map[string]string{
	"context": "context", "errors": "errors", "fmt": "fmt", "log": "log", "os": "os", "time": "time", "strings": "strings",
	"nats": "github.com/nats-io/nats.go", "jetstream": "github.com/nats-io/nats.go/jetstream",
	"queue": "github.com/mailworker/mailworker/queue", "contract": "github.com/mailworker/mailworker/queue/contract",
	"graphmail": "github.com/mailworker/mailworker/graphmail",
}

var reSelector = regexp.MustCompile(`\b([a-z][a-z0-9]*)\.[A-Z]`)

// program turns a snippet into a main package: a snippet that is a whole
// file is kept; statements run inside main with what a reader has at hand
// (ctx, a NATS connection nc, a job body), the packages they name imported,
// and every variable they declare used once, as a program that goes on
// would.
func program(b block) (string, error) {
	if strings.HasPrefix(strings.TrimSpace(b.text), "package ") {
		return b.text, nil
	}
	used := map[string]bool{"context": true, "nats": true}
	for _, m := range reSelector.FindAllStringSubmatch(b.text, -1) {
		if _, ok := imports[m[1]]; ok {
			used[m[1]] = true
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	var src bytes.Buffer
	src.WriteString("package main\n\nimport (\n")
	for _, n := range names {
		fmt.Fprintf(&src, "\t%q\n", imports[n])
	}
	src.WriteString(")\n\nfunc main() {\n\tctx := context.Background()\n\tvar nc *nats.Conn\n\tvar body []byte\n\t_, _, _ = ctx, nc, body\n")
	src.WriteString(b.text)
	// Use what the snippet declares at its top level.
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "snippet.go", src.String()+"}\n", 0)
	if err != nil {
		return "", err
	}
	var main *ast.FuncDecl
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "main" {
			main = fd
		}
	}
	for _, st := range main.Body.List {
		if as, ok := st.(*ast.AssignStmt); ok && as.Tok == token.DEFINE {
			for _, l := range as.Lhs {
				if id, ok := l.(*ast.Ident); ok && id.Name != "_" && id.Name != "ctx" && id.Name != "nc" && id.Name != "body" {
					fmt.Fprintf(&src, "\t_ = %s\n", id.Name)
				}
			}
		}
	}
	src.WriteString("}\n")
	return src.String(), nil
}

// TestGoBlocksCompile builds every ```go block of README.md and docs/*.md
// as a program in a module of its own that requires this one (a replace
// directive points at the checkout): what a user copies compiles, with
// the import paths and types the module really has (issue 21: the README
// said queue.Job; it is contract.Job).
func TestGoBlocksCompile(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	gosum, _ := os.ReadFile(filepath.Join(root, "go.sum"))
	dir := t.TempDir()
	// The module's own requirements (so go.sum covers them, offline), plus
	// the module itself from the checkout.
	mod := strings.Replace(string(gomod), "module github.com/mailworker/mailworker", "module doccheck", 1) +
		"\nrequire github.com/mailworker/mailworker v0.0.0\n\nreplace github.com/mailworker/mailworker => " + root + "\n"
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), gosum, 0o644); err != nil {
		t.Fatal(err)
	}
	n := 0
	where := map[string]block{}
	for _, b := range blocks(t) {
		if b.lang != "go" {
			continue
		}
		src, err := program(b)
		if err != nil {
			t.Errorf("%s:%d: the ```go block does not parse: %v\n%s", b.file, b.line, err, b.text)
			continue
		}
		name := fmt.Sprintf("b%02d", n)
		n++
		where[name] = b
		pkg := filepath.Join(dir, name)
		if err := os.MkdirAll(pkg, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pkg, "main.go"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n == 0 {
		t.Fatal("no ```go block found: is the test reading the right files?")
	}
	cmd := exec.Command("go", "vet", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := string(out)
		for name, b := range where {
			msg = strings.ReplaceAll(msg, name+"/main.go", fmt.Sprintf("%s:%d (block)", b.file, b.line))
		}
		t.Fatalf("a ```go block of the docs does not compile:\n%s", msg)
	}
	t.Logf("%d ```go blocks compile", n)
}
