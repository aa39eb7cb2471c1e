package vigil_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/vigil-iot/vigil"

// allowed lists, for each package of the module, the other packages of the
// module it may import (docs/architecture.md, "Packages and the dependency rule").
var allowed = map[string][]string{
	"topology":                      {},
	"topology/topologytest":         {"topology"},
	"raft":                          {"topology"},
	"api":                           {"topology", "raft", "console", "internal/spiretpm"},
	"console":                       {},
	"authz":                         {"topology", "internal/peerid"},
	"xds":                           {"topology", "internal/peerid"},
	"xds/internal/re2size":          {},
	"attest":                        {"topology"},
	"monitor":                       {"topology"},
	"monitor/siem":                  {},
	"internal/peerid":               {},
	"internal/attestrpc":            {"api", "attest"},
	"internal/signalrpc":            {"api", "topology", "internal/attestrpc"},
	"internal/fleetsim":             {"topology", "api", "attest"},
	"internal/spiffetest":           {},
	"internal/testwait":             {},
	"internal/swtpmtest":            {},
	"internal/tpmdev":               {"attest"},
	"internal/spiretpm":             {"topology", "attest"},
	"spire/tpmplugin":               {"topology", "attest", "internal/spiretpm", "internal/tpmdev"},
	"cmd/vigil-tpm-attestor-server": {"spire/tpmplugin"},
	"cmd/vigil-tpm-attestor-agent":  {"spire/tpmplugin"},
	"spire":                         {"topology"},
	"spire/spiretest":               {},
	"authz/authztest":               {"topology", "topology/topologytest"},
	"node":                          {"topology", "raft", "api", "authz", "xds", "spire", "attest", "internal/peerid", "internal/attestrpc", "internal/signalrpc", "monitor", "monitor/siem", "console", "internal/spiretpm"},
	"examples":                      {},
	"cmd/vigil":                     {"*"},
}

// TestDependencyRule fails when a package imports a package of this module
// it must not, and when a package has no entry in the table above or no
// package doc comment.
func TestDependencyRule(t *testing.T) {
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == "e2e" || path == "bin" || strings.HasPrefix(d.Name(), ".") && path != "." || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || filepath.Dir(path) == "." {
			return nil
		}
		pkg := filepath.ToSlash(filepath.Dir(path))
		rules, ok := allowed[pkg]
		if !ok {
			t.Errorf("package %s is not in the dependency table of deps_test.go", pkg)
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			own, ok := strings.CutPrefix(p, module+"/")
			if !ok || len(rules) == 1 && rules[0] == "*" {
				continue
			}
			permitted := false
			for _, r := range rules {
				permitted = permitted || r == own
			}
			if !permitted {
				t.Errorf("%s imports %s, which package %s must not import", path, p, pkg)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEveryPackageHasADocComment keeps "// Package x ..." on every package.
func TestEveryPackageHasADocComment(t *testing.T) {
	fset := token.NewFileSet()
	for pkg := range allowed {
		files, _ := filepath.Glob(filepath.Join(pkg, "*.go"))
		documented := false
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			af, err := parser.ParseFile(fset, f, nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if af.Doc != nil && (strings.HasPrefix(af.Doc.Text(), "Package ") || strings.HasPrefix(af.Doc.Text(), "Command ")) {
				documented = true
			}
		}
		if !documented {
			t.Errorf("package %s has no package doc comment", pkg)
		}
	}
}
