package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/node"
)

// TestTopologyApplyDryRun: "vigil topology apply --dry-run" shows which of
// the member's recorded decisions the candidate would flip, in the format
// of "vigil replay", says nothing was applied, and applies nothing;
// --max-lines bounds it, -o json prints the member's answer, and the
// dry-run flags are refused without --dry-run.
func TestTopologyApplyDryRun(t *testing.T) {
	for _, k := range []string{"VIGIL_SERVER", "VIGIL_TOKEN", "VIGIL_TOKEN_FILE", "VIGIL_CA_FILE", "VIGIL_OUTPUT", "VIGIL_MAX_LINES", "VIGIL_SINCE", "VIGIL_DRY_RUN"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	cfg := node.DefaultConfig()
	cfg.ID, cfg.DataDir = "n1", filepath.Join(t.TempDir(), "data")
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := node.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testwait.For(t, 10*time.Second, "the member to be ready", n.Ready)
	online := []string{"--server", n.APIAddr(), "--token-file", n.TokenFile()}

	dir := t.TempDir()
	cur, cand := filepath.Join(dir, "current.yaml"), filepath.Join(dir, "candidate.yaml")
	os.WriteFile(cur, []byte(replayCLITopology), 0o600)
	os.WriteFile(cand, []byte(replayCLITopology[:strings.Index(replayCLITopology, "flows:")]+"flows: []\n"), 0o600)
	if out, err := runVigil(append([]string{"topology", "apply", "-f", cur}, online...)...); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	docRev := n.Store().Current().DocumentRevision()

	cc, err := grpc.NewClient(n.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, path := range []string{"/t", "/t", "/t", "/nope"} {
		resp, err := authv3.NewAuthorizationClient(cc).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: "spiffe://city.example/zone/north/device/l1"},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "POST", Path: path, Host: "telemetry.city.example"}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		if allowed := resp.GetStatus().GetCode() == int32(codes.OK); allowed != (path == "/t") {
			t.Fatalf("POST %s: allowed %v", path, allowed)
		}
	}
	testwait.For(t, 10*time.Second, "the decisions to be logged", func() bool {
		data, _ := os.ReadFile(filepath.Join(cfg.DataDir, "decisions.log"))
		return strings.Count(string(data), "\n") >= 4
	})

	out, err := runVigil(append([]string{"topology", "apply", "-f", cand, "--dry-run"}, online...)...)
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	for _, want := range []string{
		"dry run of " + cand + " on member n1: nothing was applied",
		"current:   revision ",
		"candidate: 2 zones, 1 gateways, 1 devices, 2 services, 0 flows",
		"decisions.log: 4 line(s), seq 1 to 4",
		"(the whole log)",
		"replay of member n1's recent decisions against " + cand,
		"assumes: runtime state (quarantine, risk, attestation) is the member's current state",
		"4 decisions; 4 re-decided: 1 unchanged, 3 allow → deny, 0 deny → allow",
		"light-telemetry → (denied)",
		"device/l1",
		"\ndry run: nothing was applied\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := n.Store().Current(); got.DocumentRevision() != docRev || got.Index().NumFlows() != 1 {
		t.Fatalf("the dry run applied something: document of revision %d (was %d), %d flows", got.DocumentRevision(), docRev, got.Index().NumFlows())
	}

	out, err = runVigil(append([]string{"topology", "apply", "-f", cand, "--dry-run", "--max-lines", "1", "-o", "json"}, online...)...)
	if err != nil {
		t.Fatalf("dry run -o json: %v\n%s", err, out)
	}
	var res api.DryRunResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var rep authz.ReplayReport
	if err := json.Unmarshal(res.Report, &rep); err != nil {
		t.Fatal(err)
	}
	if res.Member != "n1" || res.Applied || res.Log.Lines != 1 || res.Log.Older != "max_lines" || rep.Totals.Lines != 1 || rep.Totals.Unchanged != 1 {
		t.Errorf("json: %+v, totals %+v", res, rep.Totals)
	}

	if _, err := runVigil(append([]string{"topology", "apply", "-f", cand, "--max-lines", "5"}, online...)...); err == nil ||
		!strings.Contains(err.Error(), "--dry-run") {
		t.Errorf("--max-lines without --dry-run: %v", err)
	}
	if got := n.Store().Current(); got.DocumentRevision() != docRev {
		t.Fatalf("document of revision %d, was %d", got.DocumentRevision(), docRev)
	}
}
