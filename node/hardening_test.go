package node

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/internal/testwait"
)

// TestAMemberWithAFullDiskKeepsDeciding: a decision log that cannot be
// written used to end the log's part, and with it the member. Now the
// member goes on deciding and says so in GET /v1/node.
func TestAMemberWithAFullDiskKeepsDeciding(t *testing.T) {
	logs := &syncBuffer{}
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir = "n1", filepath.Join(t.TempDir(), "data")
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Authz.DecisionLog = "/dev/full"
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	n, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	testwait.For(t, 10*time.Second, "the member to be ready", n.Ready)

	decide(t, n, 5)
	degraded := func() bool {
		st, _ := n.status().(map[string]any)
		a, _ := st["authz"].(map[string]any)
		if a == nil {
			return false
		}
		dl, ok := a["decisionLog"].(struct {
			Path   string `json:"path"`
			Strict bool   `json:"strict"`
			authz.LogStatus
		})
		return ok && dl.Degraded && strings.Contains(dl.LastError, "no space left")
	}
	testwait.For(t, 10*time.Second, "GET /v1/node to report the log degraded", degraded)
	select {
	case err := <-done:
		t.Fatalf("the member stopped: %v\n%s", err, logs)
	case <-time.After(1500 * time.Millisecond):
	}
	decide(t, n, 5) // still answering
	cancel()
	<-done // ends with the log's error, which is fine at shutdown
}

// TestProxyPortsRefuseOversizedRequests: gRPC's default 4 MiB message limit
// let one request make the member hold megabytes; Envoy's own requests are
// a few KiB.
func TestProxyPortsRefuseOversizedRequests(t *testing.T) {
	n, _, _ := runNode(t, nil)
	dial := func(addr string) *grpc.ClientConn {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(8<<20)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	check := authv3.NewAuthorizationClient(dial(n.AuthzAddr()))
	big := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Host: "x", Path: "/", Headers: map[string]string{"x-pad": strings.Repeat("a", authz.MaxCheckRequestBytes)},
		}},
	}}
	if _, err := check.Check(ctx, big); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a Check of %d bytes: %v, want ResourceExhausted", authz.MaxCheckRequestBytes, err)
	}
	decide(t, n, 1) // a normal one still works

	ads, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(dial(n.XDSAddr())).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, 40000)
	for range cap(names) {
		names = append(names, strings.Repeat("n", 64))
	}
	if err := ads.Send(&discoverygrpc.DiscoveryRequest{Node: &corev3.Node{Id: "gw-1"}, TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	if _, err := ads.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("an xDS request of ~2.6 MiB: %v, want ResourceExhausted", err)
	}
}
