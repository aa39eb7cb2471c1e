package node

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

	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/raft"
)

// startStoppable starts a member on cfg and returns a stop function that
// waits for Run to return.
func startStoppable(t *testing.T, cfg Config) (*Node, func()) {
	t.Helper()
	n, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("member stopped with %v", err)
		}
	}
	t.Cleanup(stop)
	testwait.For(t, 10*time.Second, "the member to be ready", n.Ready)
	return n, stop
}

// decide asks the member's ext_authz n times (no principal: each one is a
// recorded deny).
func decide(t *testing.T, n *Node, count int) {
	t.Helper()
	cc, err := grpc.NewClient(n.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := authv3.NewAuthorizationClient(cc)
	for range count {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/", Host: "x"}},
		}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func toAuthz(cps []raft.RecordedCheckpoint) []authz.Checkpoint {
	out := make([]authz.Checkpoint, len(cps))
	for i, c := range cps {
		out[i] = authz.Checkpoint{Node: c.Node, Seq: c.Seq, Hash: c.Hash, Time: c.Time}
	}
	return out
}

func latestSeq(s *raft.Store, id string) uint64 {
	cps := s.Checkpoints(id)
	if len(cps) == 0 {
		return 0
	}
	return cps[len(cps)-1].Seq
}

// TestCheckpointsCatchATruncatedDecisionLog: a member checkpoints its
// decision log while it runs and when it stops; a copy of the log with its
// last lines cut is reported with the entries missing, the intact log
// passes, and after the real log is cut the member's next checkpoints are
// refused as a rollback.
func TestCheckpointsCatchATruncatedDecisionLog(t *testing.T) {
	logs := &syncBuffer{}
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir = "n1", filepath.Join(t.TempDir(), "data")
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	cfg.CheckpointInterval = 50 * time.Millisecond
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("member log:\n%s", logs)
		}
	})
	n, stop := startStoppable(t, cfg)

	info, err := os.Stat(filepath.Join(cfg.DataDir, "audit.key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("audit key: %v, mode %v", err, info.Mode())
	}
	testwait.For(t, 10*time.Second, "the member to register its audit key", func() bool {
		m, _ := n.Store().Member("n1")
		return m.AuditKey == n.audit.pub
	})
	decide(t, n, 20)
	testwait.For(t, 10*time.Second, "a checkpoint at seq 20", func() bool { return latestSeq(n.Store(), "n1") == 20 })
	// The checkpointer notes what it recorded right after the store did.
	testwait.For(t, 10*time.Second, "GET /v1/node to show the checkpoint at seq 20", func() bool {
		st, _ := n.status().(map[string]any)
		audit, _ := st["audit"].(map[string]any)
		last, _ := audit["lastCheckpoint"].(raft.SignedCheckpoint)
		return last.Seq == 20 && audit["auditKey"] == n.audit.pub
	})

	// Decisions right before the stop are anchored by the final checkpoint.
	decide(t, n, 5)
	stop()
	if strings.Contains(logs.String(), "audit.key") || strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Error("the member logged its audit key")
	}
	logPath := filepath.Join(cfg.DataDir, "decisions.log")
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}

	n, stop = startStoppable(t, cfg)
	cps := n.Store().Checkpoints("n1")
	if len(cps) < 2 || cps[len(cps)-1].Seq != 25 {
		t.Fatalf("checkpoints after the stop: %+v, want the last at seq 25", cps)
	}
	for _, c := range cps {
		if err := raft.VerifyCheckpoint(n.audit.pub, c.SignedCheckpoint); err != nil {
			t.Errorf("checkpoint at seq %d: %v", c.Seq, err)
		}
	}

	rep, err := authz.VerifyDecisionLogAgainst(bytes.NewReader(data), toAuthz(cps))
	if err != nil || len(rep.CheckpointProblems) != 0 || rep.CheckpointsChecked != len(cps) {
		t.Fatalf("intact log: %v, %d checked, problems %+v", err, rep.CheckpointsChecked, rep.CheckpointProblems)
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	cut := bytes.Join(lines[:22], nil) // the last 3 of 25 lines gone
	rep, err = authz.VerifyDecisionLogAgainst(bytes.NewReader(cut), toAuthz(cps))
	if err != nil {
		t.Fatalf("the cut log's chain: %v", err)
	}
	if len(rep.CheckpointProblems) != 1 || !strings.Contains(rep.CheckpointProblems[0].Detail, "3 entries are missing") {
		t.Fatalf("cut log: problems %+v, want one saying 3 entries are missing", rep.CheckpointProblems)
	}
	if plain, err := authz.VerifyDecisionLog(bytes.NewReader(cut)); err != nil || plain.Seq != 22 {
		t.Fatalf("without checkpoints the cut log verifies (%v, seq %d): that is the finding", err, plain.Seq)
	}

	// Cut the real log; the member, restarted on it, is refused.
	stop()
	if err := os.WriteFile(logPath, cut, 0o600); err != nil {
		t.Fatal(err)
	}
	n, _ = startStoppable(t, cfg)
	decide(t, n, 1)
	testwait.For(t, 10*time.Second, "the rolled-back checkpoint to be refused", func() bool {
		n.audit.mu.Lock()
		defer n.audit.mu.Unlock()
		return strings.Contains(n.audit.lastErr, "goes back from seq 25")
	})
	if latestSeq(n.Store(), "n1") != 25 {
		t.Errorf("the recorded checkpoint moved: %+v", n.Store().Checkpoints("n1"))
	}
	decide(t, n, 1)
	time.Sleep(200 * time.Millisecond) // more refusals, of the same kind
	if c := strings.Count(logs.String(), "goes back from seq 25"); c != 1 {
		t.Errorf("the refusal was logged %d times, want once", c)
	}
}

// TestAStoppingMemberCheckpointsItsLastDecisions: with no periodic
// checkpoint due, the one made at shutdown anchors the final head.
func TestAStoppingMemberCheckpointsItsLastDecisions(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir = "n1", filepath.Join(t.TempDir(), "data")
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.CheckpointInterval = time.Hour
	n, stop := startStoppable(t, cfg)
	testwait.For(t, 10*time.Second, "the member to register its audit key", func() bool {
		m, _ := n.Store().Member("n1")
		return m.AuditKey == n.audit.pub
	})
	decide(t, n, 5)
	stop()
	n, _ = startStoppable(t, cfg)
	if got := latestSeq(n.Store(), "n1"); got != 5 {
		t.Fatalf("latest checkpoint at seq %d, want 5 (made at shutdown)", got)
	}
}
