package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMethodsWithTheirType holds package main to its layout (README's code
// map): every method sits in the file that declares its type, or in a file
// of the type's group, named after it (relay*.go for relay, session*.go for
// session).
func TestMethodsWithTheirType(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	declaredIn := map[string]string{} // type name → file
	type method struct{ file, recv, name string }
	var methods []method
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.GenDecl:
				for _, s := range d.Specs {
					if ts, ok := s.(*ast.TypeSpec); ok {
						declaredIn[ts.Name.Name] = name
					}
				}
			case *ast.FuncDecl:
				if d.Recv == nil || len(d.Recv.List) == 0 {
					continue
				}
				typ := d.Recv.List[0].Type
				if star, ok := typ.(*ast.StarExpr); ok {
					typ = star.X
				}
				if idx, ok := typ.(*ast.IndexExpr); ok {
					typ = idx.X
				}
				if id, ok := typ.(*ast.Ident); ok {
					methods = append(methods, method{name, id.Name, d.Name.Name})
				}
			}
		}
	}
	if len(methods) < 100 {
		t.Fatalf("read %d methods: the package was not read", len(methods))
	}
	for _, m := range methods {
		home, ok := declaredIn[m.recv]
		if !ok {
			t.Errorf("%s: method %s.%s of a type not declared in package main's files", m.file, m.recv, m.name)
			continue
		}
		if m.file != home && !strings.HasPrefix(m.file, strings.ToLower(m.recv)) {
			t.Errorf("%s: method %s.%s is away from its type (%s) and its group (%s*.go)", m.file, m.recv, m.name, home, strings.ToLower(m.recv))
		}
	}
}
