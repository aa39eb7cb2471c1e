package authz

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/vigil-iot/vigil/topology"
)

const allowAll = "package custom\n\ndecision := {\"allowed\": true, \"reason\": \"v1\"}\n"

func writePolicy(t *testing.T, dir, src string) {
	t.Helper()
	// A new name each time, so the directory's fingerprint changes even
	// within the file system's time resolution.
	for _, old := range mustGlob(t, filepath.Join(dir, "*.rego")) {
		os.Remove(old)
	}
	name := filepath.Join(dir, "p"+time.Now().Format("150405.000000000")+".rego")
	if err := os.WriteFile(name, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustGlob(t *testing.T, pattern string) []string {
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stays checks for a while that cond keeps holding.
func stays(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if !cond() {
			t.Fatalf("%s did not hold", what)
		}
	}
}

func TestABrokenPolicyReloadKeepsThePolicyInForce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	engine, err := NewEngine(ctx, quiet())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writePolicy(t, dir, allowAll)
	done := make(chan error, 1)
	go func() { done <- engine.WatchDir(ctx, dir, "data.custom.decision", 20*time.Millisecond) }()
	waitFor(t, "the policy dir to load", func() bool { return engine.Current().Source == dir })
	good := engine.Current().Hash

	for name, src := range map[string]string{
		"syntax error":       "package custom\n\ndecision := {\n",
		"compile error":      "package custom\n\ndecision := x if { x := unknown_function(1) }\n",
		"undefined decision": "package custom\n\nother := true\n",
		"wrong result shape": "package custom\n\ndecision := {\"allowed\": \"yes\"}\n",
	} {
		writePolicy(t, dir, src)
		stays(t, name+": the good policy stays in force", func() bool { return engine.Current().Hash == good })
	}
	writePolicy(t, dir, strings.Replace(allowAll, "v1", "v2", 1))
	waitFor(t, "the fixed policy to load", func() bool { return engine.Current().Hash != good })
	res, _, err := engine.Eval(ctx, sampleInput())
	if err != nil || res.Reason != "v2" {
		t.Fatalf("after the fix: %+v, %v", res, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestABrokenPolicyDirFailsWithOPAsError(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, dir, "package custom\n\ndecision := {\n")
	_, err := LoadDir(context.Background(), dir, "data.custom.decision")
	if err == nil || !strings.Contains(err.Error(), "rego_parse_error") {
		t.Fatalf("err = %v, want OPA's parse error", err)
	}
	if _, err := LoadDir(context.Background(), t.TempDir(), ""); err == nil {
		t.Fatal("an empty policy dir loaded")
	}
}

func checkWith(t *testing.T, engine *Engine, snap *topology.Snapshot) (*authv3.CheckResponse, Decision) {
	t.Helper()
	log := &memLog{}
	s := NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine, Log: log,
		Now: func() time.Time { return testNow }})
	c := checkCase{}
	c.Request.Principal = "spiffe://city.example/zone/north/device/slc-n1"
	c.Request.Host, c.Request.Method, c.Request.Path = "telemetry.city.example", "POST", "/api/v1/telemetry"
	resp, err := s.Check(context.Background(), c.request())
	if err != nil {
		t.Fatal(err)
	}
	return resp, log.last()
}

func TestEveryFailureDenies(t *testing.T) {
	ix := testIndex(t)
	good := topology.NewSnapshot(5, 1, ix, topology.NewState())
	for name, tc := range map[string]struct {
		policy string
		snap   *topology.Snapshot
		reason string
	}{
		"no topology yet": {"", topology.EmptySnapshot(), "holds no topology yet"},
		"nil snapshot":    {"", nil, "holds no topology yet"},
		// Two values for one complete rule is an evaluation error.
		"policy runtime error": {"package custom\n\ndecision := {\"allowed\": true} if input.vigil.subject != null\n" +
			"decision := {\"allowed\": false} if input.vigil.subject != null\n" +
			"decision := {\"allowed\": false} if input.vigil.subject == null\n", good, "policy failed"},
		"undefined for this input": {"package custom\n\ndecision := {\"allowed\": true} if input.vigil.subject.name == \"nobody\"\n" +
			"decision := {\"allowed\": false} if input.vigil.subject == null\n", good, "undefined"},
		// Nine million iterations: far beyond the 100ms evaluation budget.
		"a timeout": {"package custom\n\ndecision := {\"allowed\": true} if {\n\tinput.vigil.subject != null\n" +
			"\tevery x in numbers.range(1, 3000) { every y in numbers.range(1, 3000) { x + y > 0 } }\n}\n" +
			"decision := {\"allowed\": false} if input.vigil.subject == null\n", good, "policy failed"},
	} {
		t.Run(name, func(t *testing.T) {
			engine, err := NewEngine(context.Background(), quiet())
			if err != nil {
				t.Fatal(err)
			}
			if tc.policy != "" {
				p, err := Compile(context.Background(), map[string]string{"p.rego": tc.policy}, nil, "data.custom.decision", "test")
				if err != nil {
					t.Fatalf("compile: %v", err)
				}
				engine.Use(p)
			}
			resp, d := checkWith(t, engine, tc.snap)
			if codes.Code(resp.GetStatus().GetCode()) == codes.OK || d.Allowed {
				t.Fatalf("allowed: %+v", d)
			}
			if !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("reason %q, want it to mention %q", d.Reason, tc.reason)
			}
		})
	}
}
