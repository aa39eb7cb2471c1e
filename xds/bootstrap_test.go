package xds

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

func TestBootstrapValidatesAndPointsAtVigil(t *testing.T) {
	b, err := Bootstrap(Node{ID: "gw-north-1", Cluster: "north"}, []string{"10.0.0.1:18000", "vigil-2.city.example:18000"}, Options{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if b.GetNode().GetId() != "gw-north-1" || b.GetNode().GetCluster() != "north" {
		t.Errorf("node = %v", b.GetNode())
	}
	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range b.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}
	xdsCluster, spire := clusters[XDSCluster], clusters[SPIREAgentCluster]
	if xdsCluster == nil || spire == nil {
		t.Fatalf("static clusters %v, want %s and %s", clusters, XDSCluster, SPIREAgentCluster)
	}
	if got := len(xdsCluster.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()); got != 2 {
		t.Errorf("xDS cluster has %d members, want 2", got)
	}
	if xdsCluster.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Errorf("a named member needs STRICT_DNS, got %v", xdsCluster.GetType())
	}
	if pipe := spire.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath(); pipe != DefaultSDSSocket {
		t.Errorf("SPIRE agent socket %q, want %q", pipe, DefaultSDSSocket)
	}
	if ads := b.GetDynamicResources().GetAdsConfig(); ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != XDSCluster {
		t.Errorf("ADS config %v", ads)
	}
	if pipe := b.GetAdmin().GetAddress().GetPipe(); pipe.GetPath() != DefaultAdminSocket || pipe.GetMode() != 0o600 {
		t.Errorf("admin listens on %v, want the unix socket %s with mode 0600", b.GetAdmin().GetAddress(), DefaultAdminSocket)
	}
	if mon := b.GetOverloadManager().GetResourceMonitors(); len(mon) != 1 || mon[0].GetName() != "envoy.resource_monitors.global_downstream_max_connections" {
		t.Errorf("overload manager monitors %v, want the global connection limit", mon)
	}
	if _, err := protojson.Marshal(b); err != nil {
		t.Fatal(err)
	}
}

// TestTheSDSClusterIsStaticOnly: Envoy refuses an SDS source whose cluster
// came by CDS, so translation must not send one.
func TestTheSDSClusterIsStaticOnly(t *testing.T) {
	res, err := Translate(snapshotOf(t, smartCityDoc(t)), Node{ID: "gw-north-1"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Clusters {
		if c.(*clusterv3.Cluster).GetName() == SPIREAgentCluster {
			t.Fatal("the SPIRE agent cluster is sent by CDS; it must only be in the bootstrap")
		}
	}
}

func TestBootstrapRefusesBadInput(t *testing.T) {
	for name, tc := range map[string]struct {
		node  Node
		addrs []string
	}{
		"no node":       {Node{}, []string{"127.0.0.1:18000"}},
		"no members":    {Node{ID: "gw"}, nil},
		"not host:port": {Node{ID: "gw"}, []string{"vigil"}},
	} {
		if _, err := Bootstrap(tc.node, tc.addrs, Options{}, ""); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestBootstrapOverMutualTLS: with the node's identity, the xDS cluster
// presents that SVID by SDS and accepts only Vigil members of its trust
// domain; anything but a SPIFFE ID is refused.
func TestBootstrapOverMutualTLS(t *testing.T) {
	id := "spiffe://city.example/zone/north/gateway/gw-north-1"
	b, err := Bootstrap(Node{ID: "gw-north-1", Cluster: "north"}, []string{"10.0.0.1:18000"}, Options{}, id)
	if err != nil {
		t.Fatal(err)
	}
	var xdsCluster *clusterv3.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == XDSCluster {
			xdsCluster = c
		}
	}
	var ctx tlsv3.UpstreamTlsContext
	if err := xdsCluster.GetTransportSocket().GetTypedConfig().UnmarshalTo(&ctx); err != nil {
		t.Fatalf("xDS cluster transport socket: %v", err)
	}
	common := ctx.GetCommonTlsContext()
	if got := common.GetTlsCertificateSdsSecretConfigs()[0].GetName(); got != id {
		t.Errorf("presents %q, want %q", got, id)
	}
	combined := common.GetCombinedValidationContext()
	if got := combined.GetValidationContextSdsSecretConfig().GetName(); got != "spiffe://city.example" {
		t.Errorf("trusts bundle %q", got)
	}
	if got := combined.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()[0].GetMatcher().GetPrefix(); got != "spiffe://city.example/vigil/node/" {
		t.Errorf("accepts SAN prefix %q", got)
	}
	for _, bad := range []string{"gw-north-1", "https://city.example/x", "spiffe://city.example"} {
		if _, err := Bootstrap(Node{ID: "gw-north-1", Cluster: "north"}, []string{"10.0.0.1:18000"}, Options{}, bad); err == nil {
			t.Errorf("identity %q accepted", bad)
		}
	}
}
