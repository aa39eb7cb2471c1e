package authz

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/tester"
)

// TestDefaultPolicyRegoTests runs policy/vigil_test.rego with OPA's test
// runner.
func TestDefaultPolicyRegoTests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	results, err := tester.Run(ctx, "policy")
	if err != nil {
		t.Fatal(err)
	}
	if len(results) == 0 {
		t.Fatal("no Rego tests ran")
	}
	for _, r := range results {
		if r.Fail || r.Error != nil {
			t.Errorf("%s.%s: failed (error %v)", r.Package, r.Name, r.Error)
		}
	}
	t.Logf("%d Rego tests", len(results))
}

// TestExamplePolicyIsTheEmbeddedOne keeps examples/policies in step.
func TestExamplePolicyIsTheEmbeddedOne(t *testing.T) {
	for _, f := range []string{"vigil.rego", "vigil_test.rego"} {
		want, err := os.ReadFile("policy/" + f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile("../examples/policies/default/" + f)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("examples/policies/default/%s differs from authz/policy/%s; copy it over", f, f)
		}
	}
}
