package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/node"
)

// runVigil runs the CLI in this process and returns its output and error.
func runVigil(args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// TestAuditVerifyAgainstTheCluster: "vigil audit verify" with --server (or
// VIGIL_SERVER) reports a copy of a member's decision log whose last lines
// were cut, which the offline check passes, and passes the intact log.
func TestAuditVerifyAgainstTheCluster(t *testing.T) {
	for _, k := range []string{"VIGIL_SERVER", "VIGIL_TOKEN", "VIGIL_TOKEN_FILE", "VIGIL_NODE", "VIGIL_CA_FILE"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	cfg := node.DefaultConfig()
	cfg.ID, cfg.DataDir = "n1", filepath.Join(t.TempDir(), "data")
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.CheckpointInterval = 50 * time.Millisecond
	n, err := node.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testwait.For(t, 10*time.Second, "the member to be ready", n.Ready)

	cc, err := grpc.NewClient(n.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for range 10 {
		if _, err := authv3.NewAuthorizationClient(cc).Check(ctx, &authv3.CheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	testwait.For(t, 10*time.Second, "a checkpoint at seq 10", func() bool {
		cps := n.Store().Checkpoints("n1")
		return len(cps) > 0 && cps[len(cps)-1].Seq == 10
	})
	data, err := os.ReadFile(filepath.Join(cfg.DataDir, "decisions.log"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	intact, cut := filepath.Join(dir, "intact.log"), filepath.Join(dir, "cut.log")
	os.WriteFile(intact, data, 0o600)
	lines := bytes.SplitAfter(data, []byte("\n"))
	os.WriteFile(cut, bytes.Join(lines[:8], nil), 0o600)

	out, err := runVigil("audit", "verify", cut)
	if err != nil || !strings.Contains(out, "8 decisions, chain intact") {
		t.Fatalf("offline verify of the cut log: %v\n%s", err, out)
	}
	online := []string{"--server", n.APIAddr(), "--token-file", n.TokenFile()}
	out, err = runVigil(append([]string{"audit", "verify", intact}, online...)...)
	if err != nil || !strings.Contains(out, "10 decisions, chain intact") || !strings.Contains(out, "of member n1 checked (the latest at seq 10), 0 problem(s)") {
		t.Fatalf("verify of the intact log against the cluster: %v\n%s", err, out)
	}
	// The server from the environment, the member from the command line.
	t.Setenv("VIGIL_SERVER", n.APIAddr())
	t.Setenv("VIGIL_TOKEN_FILE", n.TokenFile())
	out, err = runVigil("audit", "verify", cut, "--node", "n1")
	if err == nil || !strings.Contains(out, cut+": checkpoint seq 10: ") || !strings.Contains(out, "2 entries are missing") {
		t.Fatalf("verify of the cut log against the cluster: want checkpoint seq 10 reported with 2 entries missing, got %v\n%s", err, out)
	}
	out, err = runVigil("audit", "verify", cut, "--node", "n2")
	if err == nil || !strings.Contains(err.Error(), "no member \"n2\"") {
		t.Fatalf("verify against an unknown member: %v\n%s", err, out)
	}
}
