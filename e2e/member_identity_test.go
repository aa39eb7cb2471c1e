package e2e_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/e2e/harness"
)

// TestMemberIdentityFromSPIRE: a member started with
// --proxy-tls-workload-socket takes its xDS/ext_authz certificate and the
// trust bundle from the real SPIRE agent on its host. A gateway holding an
// SVID from the same SPIRE gets its own configuration over mutual TLS; the
// same SVID naming another gateway is refused.
func TestMemberIdentityFromSPIRE(t *testing.T) {
	srv := spireServer(t)
	ctx := ctxFor(t, 3*time.Minute)
	server := filepath.Join(srv.Bin, "spire-server")
	spire := func(args ...string) string {
		t.Helper()
		// spire-server <command> <subcommand> -socketPath S <flags...>
		args = slices.Concat(args[:2], []string{"-socketPath", srv.Socket}, args[2:])
		out, err := exec.CommandContext(ctx, server, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("spire-server %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The member's host runs an agent (joined as a node alias), and this
	// test process, on the same host and uid, plays gw-north-1's Envoy.
	host := "spiffe://city.example/host/vigil-1"
	token, ok := strings.CutPrefix(strings.TrimSpace(spire("token", "generate", "-spiffeID", host)), "Token: ")
	if !ok {
		t.Fatal("spire-server token generate printed no token")
	}
	agent, err := harness.StartSPIREAgent(t, srv, token, "")
	if err != nil {
		t.Fatal(err)
	}
	uid := "unix:uid:" + strconv.Itoa(os.Getuid())
	member, gateway := "spiffe://city.example/vigil/node/n1", "spiffe://city.example/zone/north/gateway/gw-north-1"
	spire("entry", "create", "-parentID", host, "-spiffeID", member, "-selector", uid, "-dns", "vigil.city.example")
	spire("entry", "create", "-parentID", host, "-spiffeID", gateway, "-selector", uid)

	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 1,
		Args: []string{"--proxy-tls-workload-socket", agent.WorkloadSocket}})
	_, doc := smartCity(t)
	if _, err := c.Client(0).ApplyTopology(ctx, doc); err != nil {
		t.Fatal(err)
	}

	// This process's SVID from the agent: the gateway's.
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+agent.WorkloadSocket)),
		workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID.String() == gateway {
					return s
				}
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	// go-spiffe's own mTLS client: it presents the gateway's SVID and
	// accepts only the member's SPIFFE ID.
	clientTLS := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(member)))
	listeners := func(nodeID, cluster string) (int, error) {
		conn, err := grpc.NewClient(c.Member(0).XDSAddr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
		if err != nil {
			return 0, err
		}
		if err := st.Send(&discoverygrpc.DiscoveryRequest{Node: &corev3.Node{Id: nodeID, Cluster: cluster},
			TypeUrl: "type.googleapis.com/envoy.config.listener.v3.Listener"}); err != nil {
			return 0, err
		}
		r, err := st.Recv()
		return len(r.GetResources()), err
	}
	if n, err := listeners("gw-north-1", "north"); err != nil || n != 1 {
		t.Errorf("gw-north-1 with its SPIRE SVID: %d listeners, %v; want its gateway listener", n, err)
	}
	if _, err := listeners("gw-south-2", "south"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("gw-north-1's SVID naming gw-south-2: %v, want PermissionDenied", err)
	}
}
