package e2e_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

func authzClient(t *testing.T, c *harness.Cluster, i int) (authv3.AuthorizationClient, healthpb.HealthClient) {
	t.Helper()
	cc, err := grpc.NewClient(c.Member(i).AuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return authv3.NewAuthorizationClient(cc), healthpb.NewHealthClient(cc)
}

func telemetryCheck(spiffeID string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: spiffeID},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "POST", Path: "/api/v1/telemetry", Host: "telemetry.city.example",
		}},
	}}
}

// TestEveryMemberAuthorizesAndQuarantineReachesThemAll: every member
// answers Check from its own replica; a quarantine made through one member
// makes every member deny, and a release allows again.
func TestEveryMemberAuthorizesAndQuarantineReachesThemAll(t *testing.T) {
	c := startCluster(t, 3)
	doc := topologytest.Generate(topologytest.Spec{Zones: 2, GatewaysPerZone: 2, Devices: 30, NoAttestation: true})
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := c.Client(0).ApplyTopology(ctxFor(t, time.Minute), data)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	device := topologytest.DeviceName(0) // a street light: flow sensor-telemetry allows it
	id, _ := ix.SPIFFEID(topology.DeviceSubject(device))
	clients := make([]authv3.AuthorizationClient, c.Size())
	for i := range clients {
		var health healthpb.HealthClient
		clients[i], health = authzClient(t, c, i)
		hr, err := health.Check(ctxFor(t, 5*time.Second), &healthpb.HealthCheckRequest{Service: "envoy.service.auth.v3.Authorization"})
		if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("%s: health %v, %v", c.Member(i).ID, hr.GetStatus(), err)
		}
	}
	// until returns how long member i took to answer want.
	until := func(i int, want codes.Code) time.Duration {
		t.Helper()
		start := time.Now()
		var last string
		for time.Since(start) < 10*time.Second {
			resp, err := clients[i].Check(ctxFor(t, 2*time.Second), telemetryCheck(id))
			if err == nil && codes.Code(resp.GetStatus().GetCode()) == want {
				return time.Since(start)
			}
			last = fmt.Sprintf("%v %v %s", err, codes.Code(resp.GetStatus().GetCode()), resp.GetDeniedResponse().GetBody())
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("%s did not answer %v within 10s of revision %d; last answer: %s", c.Member(i).ID, want, rev, last)
		return 0
	}
	for i := range clients {
		until(i, codes.OK)
	}
	env := []string{"VIGIL_TOKEN_FILE=" + c.TokenFile()}
	mustCLI(t, env, "device", "quarantine", device, "--reason", "e2e: tamper", "--server", c.Member(1).APIAddr)
	for i := range clients {
		t.Logf("%s denies %s %v after the quarantine was acknowledged", c.Member(i).ID, device, until(i, codes.PermissionDenied))
	}
	resp, err := clients[2].Check(ctxFor(t, 2*time.Second), telemetryCheck(id))
	if err != nil || !strings.Contains(resp.GetDeniedResponse().GetBody(), "is quarantined: e2e: tamper") {
		t.Fatalf("denied body %q (%v) does not give the quarantine as the reason", resp.GetDeniedResponse().GetBody(), err)
	}
	mustCLI(t, env, "device", "release", device, "--server", c.Member(2).APIAddr)
	for i := range clients {
		until(i, codes.OK)
	}
	// No principal: 401, at every member.
	resp, err = clients[0].Check(ctxFor(t, 2*time.Second), telemetryCheck(""))
	if err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.Unauthenticated {
		t.Fatalf("no principal: %v %v", resp.GetStatus(), err)
	}

	// Each member exposes its policy and decision-log counters.
	for i := range c.Size() {
		info, err := c.Client(i).Node(ctxFor(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		authz, _ := info["parts"].(map[string]any)["authz"].(map[string]any)
		dl, _ := authz["decisionLog"].(map[string]any)
		if dl["dropped"] != float64(0) || info["ready"] != true {
			t.Errorf("%s: node status %v", c.Member(i).ID, info)
		}
	}
	// Every decision is in each member's chained log; stop the members so
	// the logs are flushed, then verify them with the CLI.
	for i := range c.Size() {
		if err := c.Stop(i); err != nil {
			t.Fatal(err)
		}
		out := mustCLI(t, nil, "audit", "verify", filepath.Join(c.Member(i).DataDir, "decisions.log"))
		if !strings.Contains(out.stdout, "chain intact") {
			t.Errorf("%s: audit verify said %s", c.Member(i).ID, out)
		}
	}
}
