package xds

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"gopkg.in/yaml.v3"

	"github.com/vigil-iot/vigil/topology"
)

var update = flag.Bool("update", false, "rewrite xds/testdata/out from the translator and delete stale outputs")

// goldenCase is one file of testdata/in: a topology (inline, or a file
// relative to the case), the node asking, runtime state and options.
type goldenCase struct {
	Note         string    `yaml:"note"`
	Node         string    `yaml:"node"`
	Cluster      string    `yaml:"cluster"`   // node.cluster (a cloud edge's zone)
	Proxyless    bool      `yaml:"proxyless"` // a gRPC library rather than Envoy
	TopologyFile string    `yaml:"topologyFile"`
	Topology     yaml.Node `yaml:"topology"`
	// Quarantined lists subjects as kind/name (device/x, gateway/y).
	Quarantined []string     `yaml:"quarantined"`
	Options     *caseOptions `yaml:"options"`
}

type caseOptions struct {
	AuthzEndpoints []string      `yaml:"authzEndpoints"`
	AuthzTLS       bool          `yaml:"authzTLS"`
	SDSSocket      string        `yaml:"sdsSocket"`
	ListenerPort   uint32        `yaml:"listenerPort"`
	AuthzTimeout   time.Duration `yaml:"authzTimeout"`
}

// loadCase reads testdata/in/<name>.yaml into a snapshot, node and options.
func loadCase(t *testing.T, path string) (*topology.Snapshot, Node, Options) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c goldenCase
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var doc []byte
	switch {
	case c.TopologyFile != "" && c.Topology.Kind == 0:
		doc, err = os.ReadFile(filepath.Join(filepath.Dir(path), c.TopologyFile))
	case c.TopologyFile == "" && c.Topology.Kind != 0:
		doc, err = yaml.Marshal(&c.Topology)
	default:
		err = fmt.Errorf("give exactly one of topology and topologyFile")
	}
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	ix, err := topology.Load(doc)
	if err != nil {
		t.Fatalf("%s: topology: %v", path, err)
	}
	updates := make(map[topology.Subject]*topology.SubjectState)
	for _, q := range c.Quarantined {
		kind, name, _ := strings.Cut(q, "/")
		k, err := topology.ParseKind(kind)
		if err != nil || !ix.Exists(topology.Subject{Kind: k, Name: name}) {
			t.Fatalf("%s: quarantined %q is not a subject of the topology", path, q)
		}
		updates[topology.Subject{Kind: k, Name: name}] = &topology.SubjectState{Quarantine: &topology.Quarantine{
			Reason: "golden test", By: "test", Since: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		}}
	}
	snap := topology.NewSnapshot(7, 5, ix, topology.NewState().With(updates))
	var opts Options
	if o := c.Options; o != nil {
		opts = Options{AuthzEndpoints: o.AuthzEndpoints, AuthzTLS: o.AuthzTLS, SDSSocket: o.SDSSocket,
			ListenerPort: o.ListenerPort, AuthzTimeout: o.AuthzTimeout}
	}
	return snap, Node{ID: c.Node, Cluster: c.Cluster, Proxyless: c.Proxyless}, opts
}

// TestGolden translates every testdata/in case and compares the resources,
// as YAML, with testdata/out/<case>.<type>.yaml. With -update it rewrites
// them and deletes outputs no case produces.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	written := make(map[string]bool)
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			snap, node, opts := loadCase(t, in)
			res, err := Translate(snap, node, opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, kind := range []struct {
				suffix string
				list   []types.Resource
			}{
				{"listeners", res.Listeners}, {"routes", res.Routes},
				{"clusters", res.Clusters}, {"endpoints", res.Endpoints},
			} {
				out := filepath.Join("testdata", "out", name+"."+kind.suffix+".yaml")
				written[out] = true
				got, err := YAML(kind.list)
				if err != nil {
					t.Fatal(err)
				}
				if *update {
					if err := os.WriteFile(out, got, 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(out)
				if err != nil {
					t.Fatalf("%v (run go test ./xds -update)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from the translation (run go test ./xds -update and review the diff):\n%s", out, firstDiff(want, got))
				}
			}
		})
	}
	outputs, _ := filepath.Glob("testdata/out/*.yaml")
	for _, out := range outputs {
		if written[out] {
			continue
		}
		if *update {
			if err := os.Remove(out); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Errorf("%s is stale: no case produces it (run go test ./xds -update)", out)
	}
}

// firstDiff shows the first differing line with some context.
func firstDiff(want, got []byte) string {
	w, g := strings.Split(string(want), "\n"), strings.Split(string(got), "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\n  want: %s\n  got:  %s", i+1, wl, gl)
		}
	}
	return "(no line differs)"
}
