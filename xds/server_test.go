package xds

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"

	"github.com/vigil-iot/vigil/topology"
)

const gw = "gw-north-1"

// connected subscribes gw to everything, checks it receives exactly its
// translation, ACKs every type and waits until Status shows the ACKs.
func connected(t *testing.T, f *fixture) *sotw {
	t.Helper()
	want, err := Translate(f.src.Current(), Node{ID: gw}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := f.ads(t, gw)
	got := c.subscribe(want)
	sameResources(t, "listeners", byName(t, got[resourcev3.ListenerType].GetResources()), want.Listeners)
	sameResources(t, "routes", byName(t, got[resourcev3.RouteType].GetResources()), want.Routes)
	sameResources(t, "clusters", byName(t, got[resourcev3.ClusterType].GetResources()), want.Clusters)
	sameResources(t, "endpoints", byName(t, got[resourcev3.EndpointType].GetResources()), want.Endpoints)
	for i, list := range lists(want) {
		sameWire(t, "encoded "+typeURLs[i], got[typeURLs[i]].GetResources(), list)
	}
	for _, typ := range allTypes {
		if v := got[typ].GetVersionInfo(); v != "3" {
			t.Errorf("%s version %q, want the revision 3", typ, v)
		}
		c.ack(got[typ])
	}
	eventually(t, "every type ACKed", func() bool {
		p, _ := statusOf(f.srv, gw)
		for _, typ := range allTypes {
			if ts := typeStatus(p, typ); ts.Sent != "3" || ts.Acked != "3" {
				return false
			}
		}
		return p.Connected && p.Streams == 1 && p.Peer != "" && p.ControlPlane == "vigil-1" && !p.DenyAll
	})
	c.silent() // ACKs are not answered
	return c
}

func TestServerServesTranslationAndTracksACKs(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	connected(t, f)
}

func TestServerRecordsNACK(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	c := f.ads(t, gw)
	c.ask(resourcev3.ListenerType)
	r := c.next()
	c.send(&discoverygrpc.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: r.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "bad listener: boom"}})
	eventually(t, "the NACK recorded", func() bool {
		p, _ := statusOf(f.srv, gw)
		ts := typeStatus(p, resourcev3.ListenerType)
		return ts.Nack != nil && ts.Nack.Message == "bad listener: boom" && ts.Nack.Version == "3" && ts.Acked == "" && !ts.Nack.At.IsZero()
	})
	c.silent() // the rejected configuration is not sent again
}

func TestServerPushesQuarantineAtOnce(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	c := connected(t, f)
	dev := topology.DeviceSubject("slc-n1-001")
	next := smartCitySnapshot(t, 4, dev)
	f.src.p.Store(next)
	// Not flagged urgent: the server sees the quarantine begin. The
	// debounce is an hour, so only an immediate push can arrive.
	f.srv.Update(next, Change{Subjects: []topology.Subject{dev}})
	r := c.next()
	if r.GetTypeUrl() != resourcev3.RouteType || r.GetVersionInfo() != "4" {
		t.Fatalf("got %s version %q, want routes version 4", r.GetTypeUrl(), r.GetVersionInfo())
	}
	rc := byName(t, r.GetResources())[GatewayRouteName].(*routev3.RouteConfiguration)
	if !vhostRBAC(rc) || !strings.Contains(rc.String(), topology.SPIFFEID("city.example", "north", dev)) {
		t.Fatalf("route config lacks the quarantine RBAC for %s", dev)
	}
	c.ack(r)
	c.silent() // listeners, clusters and endpoints did not change
	p, _ := statusOf(f.srv, gw)
	if v := typeStatus(p, resourcev3.ListenerType).Sent; v != "3" {
		t.Errorf("listener version %q after a route-only change, want 3", v)
	}
}

func TestServerLeavesUnaffectedNodesAlone(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	c := connected(t, f)
	builtAt := func() topology.Revision {
		f.srv.mu.Lock()
		defer f.srv.mu.Unlock()
		return f.srv.nodes[Node{ID: gw}.key()].revision
	}
	other := topology.DeviceSubject("slc-n2-001") // behind gw-north-2
	for rev, urgent := range map[topology.Revision]bool{4: true, 5: false} {
		next := smartCitySnapshot(t, rev, other)
		f.src.p.Store(next)
		f.srv.Update(next, Change{Subjects: []topology.Subject{other}, Urgent: urgent})
		c.silent()
		if got := builtAt(); got != 3 {
			t.Fatalf("urgent=%v: %s was rebuilt (at revision %d) for a device of another gateway", urgent, gw, got)
		}
	}
	// Its own device's change does rebuild it.
	mine := topology.DeviceSubject("slc-n1-001")
	next := smartCitySnapshot(t, 6, other, mine)
	f.src.p.Store(next)
	f.srv.Update(next, Change{Subjects: []topology.Subject{mine}})
	eventually(t, gw+" rebuilt at revision 6 after its own device's quarantine", func() bool { return builtAt() == 6 })
}

func TestAStreamCannotSwitchNodes(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	c := connected(t, f)
	// A request naming another node, sent as is (c.send would name gw).
	if err := c.stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resourcev3.ListenerType,
		Node: &corev3.Node{Id: "gw-south-1", Cluster: "south"}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(wait)
	for open := true; open; {
		select {
		case _, open = <-c.resps:
		case <-deadline:
			t.Fatal("the stream that switched nodes was not closed")
		}
	}
	if p, _ := statusOf(f.srv, "gw-south-1"); p.Streams != 0 {
		t.Fatalf("gw-south-1 is counted as connected: %+v", p)
	}
}

func TestServerDeniesUnknownNodes(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	deny, err := DenyAll(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"gw-nowhere", ""} {
		t.Run("id="+id, func(t *testing.T) {
			c := f.ads(t, id)
			c.ask(resourcev3.ListenerType)
			c.ask(resourcev3.ClusterType)
			got := c.nextOf(resourcev3.ListenerType, resourcev3.ClusterType)
			sameResources(t, "listeners", byName(t, got[resourcev3.ListenerType].GetResources()), deny.Listeners)
			if n := len(got[resourcev3.ClusterType].GetResources()); n != 0 {
				t.Errorf("unknown node got %d clusters", n)
			}
			p, _ := statusOf(f.srv, id)
			if !p.DenyAll {
				t.Errorf("status of %q does not say deny-all", id)
			}
			dump, err := f.srv.Dump(Node{ID: id})
			if err != nil || len(dump.Listeners) != 1 || len(dump.Clusters) != 0 {
				t.Errorf("Dump(%q) = %v, %v; want the deny-all listener", id, dump, err)
			}
		})
	}
}

func TestServerDelta(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	want, err := Translate(f.src.Current(), Node{ID: gw}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := f.delta(t, gw)
	d.send(&discoverygrpc.DeltaDiscoveryRequest{Node: d.node, TypeUrl: resourcev3.ListenerType})
	r := d.next()
	if r.GetTypeUrl() != resourcev3.ListenerType || r.GetSystemVersionInfo() != "3" {
		t.Fatalf("got %s version %q", r.GetTypeUrl(), r.GetSystemVersionInfo())
	}
	sameResources(t, "delta listeners", deltaByName(t, r), want.Listeners)
	// Each resource is its translation's encoding, versioned as
	// go-control-plane versions it.
	for _, res := range r.GetResources() {
		b, err := cachev3.MarshalResource(want.Listeners[0])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.GetResource().GetValue(), b) || res.GetVersion() != cachev3.HashResource(b) {
			t.Errorf("delta listener %q: not the translation's encoding and hash", res.GetName())
		}
	}
	// Later requests carry no node: the server remembers the stream's.
	d.send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: r.GetNonce()})
	eventually(t, "the delta ACK", func() bool {
		p, _ := statusOf(f.srv, gw)
		return typeStatus(p, resourcev3.ListenerType).Acked == "3" && p.Delta
	})
}

// TestServerAnswersOneNamedResource is grpc-go's way: it names only the
// resources it needs, on ADS and on the per-type services.
func TestServerAnswersOneNamedResource(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	want, err := Translate(f.src.Current(), Node{ID: gw}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(want.Clusters) < 2 {
		t.Fatal("the example should give gw-north-1 several clusters")
	}
	one := want.Clusters[0]
	c := f.ads(t, gw)
	c.ask(resourcev3.ClusterType, name(one))
	sameResources(t, "ads", byName(t, c.next().GetResources()), want.Clusters[:1])

	st, err := clusterservice.NewClusterDiscoveryServiceClient(f.conn).StreamClusters(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoverygrpc.DiscoveryRequest{Node: c.node, ResourceNames: []string{name(one)}}); err != nil {
		t.Fatal(err)
	}
	got := make(chan *discoverygrpc.DiscoveryResponse, 1)
	go func() {
		r, _ := st.Recv()
		got <- r
	}()
	select {
	case r := <-got:
		sameResources(t, "cds", byName(t, r.GetResources()), want.Clusters[:1])
	case <-timeAfter():
		t.Fatal("per-type CDS did not answer")
	}
}

// A type's content hash (its version changes exactly when it does) is
// the SHA-256 of its resources' digests, whether the server encoded them
// from a translation or from deny-all.
func TestContentHashesAreOfTheResources(t *testing.T) {
	res, err := Translate(smartCitySnapshot(t, 3), Node{ID: gw}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	deny, err := DenyAll(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Resources{res, deny} {
		enc, err := encodeAll(r)
		if err != nil {
			t.Fatal(err)
		}
		for i, list := range lists(r) {
			h := sha256.New()
			for _, m := range list {
				d, err := digestOf(m)
				if err != nil {
					t.Fatal(err)
				}
				h.Write(d[:])
			}
			if got := hashEncoded(enc[i]); !bytes.Equal(got[:], h.Sum(nil)) {
				t.Errorf("%s: content hash is not that of the resources' digests", typeURLs[i])
			}
		}
	}
}

func TestNodeKeys(t *testing.T) {
	for _, n := range []Node{{}, {ID: "gw-north-1"}, {ID: "edge-1", Cluster: "cloud"}, {ID: "firmware", Cluster: "cloud", Proxyless: true}, {ID: "a\x00b", Cluster: "c\x00d"}} {
		got := nodeOfKey(n.key())
		if n.ID != "a\x00b" && got != n {
			t.Errorf("nodeOfKey(key(%+v)) = %+v", n, got)
		}
	}
	// A name holding a separator never decodes to a valid node.
	if got := nodeOfKey(Node{ID: "gw-north-1\x00north"}.key()); got.ID == "gw-north-1" {
		t.Errorf("a forged ID decoded to %+v", got)
	}
	if n := NodeOf(&corev3.Node{Id: "x", UserAgentName: "gRPC Go"}); !n.Proxyless {
		t.Error("grpc-go is not recognised as proxyless")
	}
	if n := NodeOf(&corev3.Node{Id: "x", UserAgentName: "envoy"}); n.Proxyless {
		t.Error("Envoy taken for a gRPC library")
	}
}

// TestServerServesEachKindOfNode: under one server, the same name as Envoy
// and as grpc-go gets different resources, a gateway claiming another
// zone is denied, and a cloud edge gets its inbound listener, pushed at
// once when a device it admits is quarantined.
func TestServerServesEachKindOfNode(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	listeners := func(c *sotw) []string {
		c.ask(resourcev3.ListenerType)
		r := c.next()
		c.ack(r)
		var out []string
		for n := range byName(t, r.GetResources()) {
			out = append(out, n)
		}
		slices.Sort(out)
		return out
	}
	envoy := f.ads(t, gw)
	envoy.node.Cluster = "north"
	if got := listeners(envoy); !slices.Equal(got, []string{GatewayListenerName}) {
		t.Errorf("Envoy gateway listeners = %v", got)
	}
	grpcGW := f.ads(t, gw)
	grpcGW.node.UserAgentName = "gRPC Go"
	if got := listeners(grpcGW); len(got) != 0 { // no flow from north's devices reaches a gRPC service
		t.Errorf("proxyless gateway listeners = %v, want none", got)
	}
	grpcSvc := f.ads(t, "lighting")
	grpcSvc.node.UserAgentName = "gRPC Go"
	if got := listeners(grpcSvc); len(got) != 0 { // lighting calls devices, not services; nobody calls lighting
		// lighting is a gRPC service without endpoints: no server listener either
		t.Errorf("proxyless lighting listeners = %v, want none", got)
	}
	liar := f.ads(t, gw)
	liar.node.Cluster = "south"
	deny, _ := DenyAll(Options{})
	liar.ask(resourcev3.ListenerType)
	sameResources(t, "listeners of a gateway claiming another zone", byName(t, liar.next().GetResources()), deny.Listeners)

	edge := f.ads(t, "edge-1")
	edge.node.Cluster = "cloud"
	if got := listeners(edge); !slices.Equal(got, []string{"inbound-telemetry"}) {
		t.Fatalf("edge listeners = %v", got)
	}
	edge.ask(resourcev3.RouteType, "inbound-telemetry")
	edge.ack(edge.next())
	dev := topology.DeviceSubject("slc-s1-001")
	next := smartCitySnapshot(t, 4, dev)
	f.src.p.Store(next)
	f.srv.Update(next, Change{Subjects: []topology.Subject{dev}})
	r := edge.next() // the debounce is an hour: only an urgent push arrives
	if r.GetTypeUrl() != resourcev3.RouteType || !strings.Contains(byName(t, r.GetResources())["inbound-telemetry"].(*routev3.RouteConfiguration).String(), "slc-s1-001") {
		t.Fatalf("edge got %s %q, want routes denying slc-s1-001", r.GetTypeUrl(), r.GetVersionInfo())
	}
	var kinds []string
	for _, p := range f.srv.Status() {
		kinds = append(kinds, fmt.Sprintf("%s/%s/%v", p.NodeID, p.Cluster, p.Proxyless))
	}
	for _, want := range []string{"gw-north-1/north/false", "gw-north-1//true", "edge-1/cloud/false", "gw-north-1/south/false"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("proxy status lacks %s: %v", want, kinds)
		}
	}
}
