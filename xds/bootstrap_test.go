package xds

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

func TestBootstrapValidatesAndPointsAtVigil(t *testing.T) {
	b, err := Bootstrap(Node{ID: "gw-north-1", Cluster: "north"}, []string{"10.0.0.1:18000", "vigil-2.city.example:18000"}, Options{})
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
	if !strings.HasPrefix(b.GetAdmin().GetAddress().GetSocketAddress().GetAddress(), "127.") {
		t.Errorf("admin listens on %v, want loopback", b.GetAdmin().GetAddress())
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
		if _, err := Bootstrap(tc.node, tc.addrs, Options{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
