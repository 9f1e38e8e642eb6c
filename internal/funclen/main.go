// Command funclen lists the longest functions (by lines, non-test files) in the
// packages under the given directories: a size record for refactoring notes.
//
//	go run ./internal/funclen -n 15 ./worker ./graphmail ./queue/contract
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

type fn struct {
	name  string
	pos   string
	lines int
}

func main() {
	n := flag.Int("n", 15, "how many functions to list")
	flag.Parse()
	fset := token.NewFileSet()
	var fns []fn
	for _, dir := range flag.Args() {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			for _, d := range f.Decls {
				fd, ok := d.(*ast.FuncDecl)
				if !ok || fd.Body == nil {
					continue
				}
				name := fd.Name.Name
				if fd.Recv != nil && len(fd.Recv.List) > 0 {
					t := fd.Recv.List[0].Type
					if s, ok := t.(*ast.StarExpr); ok {
						t = s.X
					}
					if id, ok := t.(*ast.Ident); ok {
						name = id.Name + "." + name
					}
				}
				start := fset.Position(fd.Pos())
				end := fset.Position(fd.End())
				fns = append(fns, fn{name: filepath.Base(dir) + "." + name,
					pos: fmt.Sprintf("%s:%d", path, start.Line), lines: end.Line - start.Line + 1})
			}
		}
	}
	sort.Slice(fns, func(i, j int) bool { return fns[i].lines > fns[j].lines })
	for i, f := range fns {
		if i == *n {
			break
		}
		fmt.Printf("%4d  %-40s %s\n", f.lines, f.name, f.pos)
	}
}
