package worker

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestOneCompleter holds the engine to its split (river's jobexecutor and
// jobcompleter): the queue actions (a Delivery's Ack, Nak, NakWithDelay and
// Term) are made in complete.go alone, and only decide.go builds an Action
// that says something (every put-back, deferral and retry is decide's): the
// zero Action{} is the "nothing decided yet" of the executor's helpers.
func TestOneCompleter(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				sel, ok := n.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				switch sel.Sel.Name {
				case "Ack", "Nak", "NakWithDelay", "Term":
					if path != "complete.go" {
						t.Errorf("%s: %s called outside the completer (complete.go)", fset.Position(n.Pos()), sel.Sel.Name)
					}
				}
			case *ast.CompositeLit:
				if id, ok := n.Type.(*ast.Ident); ok && id.Name == "Action" && len(n.Elts) > 0 && path != "decide.go" {
					t.Errorf("%s: an Action built outside decide (decide.go)", fset.Position(n.Pos()))
				}
			}
			return true
		})
	}
}
