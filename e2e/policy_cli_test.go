package e2e_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-iot/vigil/e2e/harness"
)

func TestPolicyTestAndEval(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := mustCLI(t, nil, "policy", "test", filepath.Join(root, "examples", "policies", "default"))
	if !strings.Contains(out.stdout, "PASS data.vigil.authz_test.test_allowed_by_the_matching_flow") {
		t.Fatalf("policy test output lacks a passing test:\n%s", out)
	}
	input := filepath.Join(t.TempDir(), "input.json")
	writeFile(t, input, `{
  "attributes": {"source": {"principal": "spiffe://city.example/zone/north/device/slc-n1-001"}},
  "vigil": {
    "request": {"method": "POST", "path": "/api/v1/telemetry", "host": "telemetry.city.example"},
    "subject": {"spiffe_id": "spiffe://city.example/zone/north/device/slc-n1-001", "quarantined": true,
                "quarantine": {"reason": "tamper switch"}, "attestation_required": false},
    "gateway": null,
    "service": {"name": "telemetry"},
    "flows": [{"name": "t", "methods": ["POST"], "paths": [{"value": "/api/v1/telemetry", "prefix": false}]}]
  }
}`)
	res := runCLI(t, nil, "policy", "eval", "--input", input)
	if res.code != 0 || !strings.Contains(res.stdout, "denied: spiffe://city.example/zone/north/device/slc-n1-001 is quarantined: tamper switch") {
		t.Fatalf("policy eval:\n%s", res)
	}
	broken := t.TempDir()
	writeFile(t, filepath.Join(broken, "p.rego"), "package x\n\ndecision := {\n")
	if res := runCLI(t, nil, "policy", "eval", "--input", input, "--policy-dir", broken); res.code == 0 || !strings.Contains(res.stderr, "rego_parse_error") {
		t.Fatalf("a broken policy dir: %s", res)
	}
}
