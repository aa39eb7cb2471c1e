package xds

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	"github.com/vigil-iot/vigil/topology"
)

const smartCity = "../examples/smart-city/topology.yaml"

func smartCityDoc(t *testing.T) *topology.Document {
	t.Helper()
	data, err := os.ReadFile(smartCity)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := topology.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func snapshotOf(t *testing.T, doc *topology.Document, quarantined ...topology.Subject) *topology.Snapshot {
	t.Helper()
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	updates := make(map[topology.Subject]*topology.SubjectState)
	for _, s := range quarantined {
		updates[s] = &topology.SubjectState{Quarantine: &topology.Quarantine{Reason: "test", Since: time.Unix(0, 0)}}
	}
	return topology.NewSnapshot(3, 1, ix, topology.NewState().With(updates))
}

func all(r *Resources) []types.Resource {
	return slices.Concat(r.Listeners, r.Routes, r.Clusters, r.Endpoints)
}

func marshalAll(t *testing.T, r *Resources) [][]byte {
	t.Helper()
	var out [][]byte
	for _, res := range all(r) {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(res)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func TestTranslateIsDeterministic(t *testing.T) {
	for _, gw := range []string{"gw-north-1", "gw-north-2", "gw-south-1", "gw-south-2"} {
		t.Run(gw, func(t *testing.T) {
			q := []topology.Subject{topology.DeviceSubject("slc-n1-001"), topology.DeviceSubject("aq-s2-004"), topology.DeviceSubject("cam-n2-001")}
			// Two independently built snapshots: map order differs.
			a, err := Translate(snapshotOf(t, smartCityDoc(t), q...), Node{ID: gw}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			b, err := Translate(snapshotOf(t, smartCityDoc(t), q...), Node{ID: gw}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(marshalAll(t, a), marshalAll(t, b), func(x, y []byte) bool { return string(x) == string(y) }) {
				t.Fatal("two translations of the same input differ")
			}
		})
	}
}

func TestUnknownNode(t *testing.T) {
	snap := snapshotOf(t, smartCityDoc(t))
	for _, id := range []string{"", "gw-east-9", "slc-n1-001", "telemetry"} {
		_, err := Translate(snap, Node{ID: id}, Options{})
		if !errors.Is(err, ErrUnknownNode) {
			t.Errorf("node %q: got %v, want ErrUnknownNode", id, err)
		}
	}
	if _, err := Translate(topology.EmptySnapshot(), Node{ID: "gw-north-1"}, Options{}); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("empty snapshot: got %v, want ErrUnknownNode", err)
	}
}

// TestClassify covers how a node is told apart, and every way to be unknown.
func TestClassify(t *testing.T) {
	ix := snapshotOf(t, smartCityDoc(t)).Index()
	tests := []struct {
		name string
		node Node
		want NodeKind // "" = unknown
		why  string
	}{
		{"gateway", Node{ID: "gw-north-1"}, KindGateway, ""},
		{"gateway with its zone", Node{ID: "gw-north-1", Cluster: "north"}, KindGateway, ""},
		{"gateway claiming another zone", Node{ID: "gw-north-1", Cluster: "south"}, "", `node.cluster "south" is not the gateway's zone "north"`},
		{"edge", Node{ID: "edge-1", Cluster: "cloud"}, KindEdge, ""},
		{"edge of a zone without services", Node{ID: "edge-1", Cluster: "north"}, KindEdge, ""},
		{"edge of no zone", Node{ID: "edge-1", Cluster: "mars"}, "", "node.cluster names no zone"},
		{"edge without a cluster", Node{ID: "edge-1"}, "", "node.cluster names no zone"},
		{"edge named like a service", Node{ID: "telemetry", Cluster: "cloud"}, "", "names no device or service"},
		{"edge named like a device", Node{ID: "slc-n1-001", Cluster: "cloud"}, "", "names no device or service"},
		{"edge with a bad name", Node{ID: "Edge_1", Cluster: "cloud"}, "", "must be a DNS label"},
		{"proxyless gateway", Node{ID: "gw-south-1", Proxyless: true}, KindProxyless, ""},
		{"proxyless service", Node{ID: "firmware", Proxyless: true}, KindProxyless, ""},
		{"proxyless device", Node{ID: "slc-n1-001", Proxyless: true}, "", "no gateway or service"},
		{"empty", Node{}, "", "names no zone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Classify(ix, tt.node)
			switch {
			case tt.want != "" && (err != nil || got != tt.want):
				t.Errorf("Classify(%+v) = %q, %v; want %q", tt.node, got, err, tt.want)
			case tt.want == "" && (!errors.Is(err, ErrUnknownNode) || !strings.Contains(err.Error(), tt.why)):
				t.Errorf("Classify(%+v) = %q, %v; want ErrUnknownNode saying %q", tt.node, got, err, tt.why)
			}
		})
	}
}

func TestBadOptions(t *testing.T) {
	snap := snapshotOf(t, smartCityDoc(t))
	for _, o := range []Options{
		{AuthzEndpoints: []string{"vigil:0"}},
		{AuthzEndpoints: []string{"no-port"}},
		{ListenerPort: 70000},
		{AuthzTimeout: -time.Second},
	} {
		if _, err := Translate(snap, Node{ID: "gw-north-1"}, o); err == nil {
			t.Errorf("options %+v: no error", o)
		}
	}
}

// TestEveryResourceValidates checks every resource of every golden case,
// including the messages packed in Any fields, and that the deep check
// does see into an Any.
func TestEveryResourceValidates(t *testing.T) {
	var count int
	for _, gw := range []string{"gw-north-1", "gw-north-2", "gw-south-1", "gw-south-2"} {
		res, err := Translate(snapshotOf(t, smartCityDoc(t), topology.GatewaySubject("gw-south-2")), Node{ID: gw}, Options{AuthzTLS: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range all(res) {
			count++
			if err := validateDeep(r); err != nil {
				t.Errorf("%s %s: %v", gw, name(r), err)
			}
		}
	}
	if count == 0 {
		t.Fatal("no resources")
	}
	bad := &listenerv3.Listener{Name: "x", FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name:       "hcm",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&hcmv3.HttpConnectionManager{})},
	}}}}}
	if err := validateDeep(bad); err == nil || !strings.Contains(err.Error(), "HttpConnectionManager") {
		t.Errorf("an invalid HttpConnectionManager inside an Any passed validation: %v", err)
	}
}

// TestNoRouteWithoutFlow: every route leads to a service that a flow from
// one of the gateway's own devices allows, and a gateway whose devices
// have no flow to a service has neither a route nor a cluster for it.
func TestNoRouteWithoutFlow(t *testing.T) {
	doc := smartCityDoc(t)
	// Leave only the air-quality sensors behind gw-north-2: they may report
	// telemetry and nothing else.
	doc.Devices = slices.DeleteFunc(doc.Devices, func(d topology.Device) bool {
		return d.Gateway == "gw-north-2" && d.Class != "air-quality"
	})
	snap := snapshotOf(t, doc)
	ix := snap.Index()
	for _, gw := range []string{"gw-north-1", "gw-north-2", "gw-south-1", "gw-south-2"} {
		res, err := Translate(snap, Node{ID: gw}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		rc := res.Routes[0].(*routev3.RouteConfiguration)
		for _, vh := range rc.VirtualHosts {
			for _, r := range vh.Routes {
				if r.GetDirectResponse().GetStatus() == 403 {
					continue
				}
				// A route is named <flow>[+<flow>…]:<path>[:<method>].
				flows, _, _ := strings.Cut(r.Name, ":")
				for _, flow := range strings.Split(flows, "+") {
					rule, ok := ix.Flow(flow)
					if !ok || !slices.Contains(targetServices(ix, rule), vh.Name) {
						t.Errorf("%s: route %s in host %s: no flow %q to that service", gw, r.Name, vh.Name, flow)
						continue
					}
					if !slices.ContainsFunc(ix.DevicesOf(gw), func(d *topology.Device) bool {
						return slices.Contains(ix.RulesFrom(topology.DeviceSubject(d.Name)), rule)
					}) {
						t.Errorf("%s: route %s: flow %s applies to none of its devices", gw, r.Name, flow)
					}
				}
			}
		}
	}
	res, err := Translate(snap, Node{ID: "gw-north-2"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var hosts, clusters []string
	for _, vh := range res.Routes[0].(*routev3.RouteConfiguration).VirtualHosts {
		hosts = append(hosts, vh.Name)
	}
	for _, c := range res.Clusters {
		clusters = append(clusters, name(c))
	}
	if want := []string{"telemetry", "deny-all"}; !slices.Equal(hosts, want) {
		t.Errorf("gw-north-2 virtual hosts = %v, want %v", hosts, want)
	}
	if want := []string{"svc-telemetry", "vigil_authz"}; !slices.Equal(clusters, want) {
		t.Errorf("gw-north-2 clusters = %v, want %v (no video storage, no firmware)", clusters, want)
	}
}

// TestQuarantineTouchesOnlyRoutes: a quarantine is an RDS push; the
// listener, clusters and endpoints stay byte-identical.
func TestQuarantineTouchesOnlyRoutes(t *testing.T) {
	before, err := Translate(snapshotOf(t, smartCityDoc(t)), Node{ID: "gw-north-1"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []topology.Subject{topology.DeviceSubject("slc-n1-001"), topology.GatewaySubject("gw-north-1")} {
		after, err := Translate(snapshotOf(t, smartCityDoc(t), q), Node{ID: "gw-north-1"}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		same := func(a, b []types.Resource) bool {
			return slices.EqualFunc(a, b, func(x, y types.Resource) bool { return proto.Equal(x, y) })
		}
		if !same(before.Listeners, after.Listeners) || !same(before.Clusters, after.Clusters) || !same(before.Endpoints, after.Endpoints) {
			t.Errorf("quarantining %v changed more than the routes", q)
		}
		if same(before.Routes, after.Routes) {
			t.Errorf("quarantining %v did not change the routes", q)
		}
	}
}

func TestGrantRate(t *testing.T) {
	r := func(s string) topology.Rate {
		v, err := topology.ParseRate(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		name    string
		flow    topology.Rate
		classes map[string]topology.Rate
		want    topology.Rate
	}{
		{"flow rate wins", r("5/m"), map[string]topology.Rate{"a": r("100/s")}, r("5/m")},
		{"most generous class", topology.Rate{}, map[string]topology.Rate{"a": r("60/m"), "b": r("2/s"), "c": r("100/h")}, r("2/s")},
		{"an unlimited class", topology.Rate{}, map[string]topology.Rate{"a": r("60/m"), "b": {}}, topology.Rate{}},
		{"no classes", topology.Rate{}, nil, topology.Rate{}},
		// The same rate per second: the larger bucket, whatever the map's
		// order (it varies from one run of the loop below to the next).
		{"a tie", topology.Rate{}, map[string]topology.Rate{"a": r("1/s"), "b": r("60/m"), "c": r("3600/h")}, r("3600/h")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &grant{rule: &topology.Rule{Flow: &topology.Flow{}, Rate: tc.flow}, classes: tc.classes}
			for range 50 {
				if got := grantRate(g); got != tc.want {
					t.Fatalf("grantRate = %v, want %v", got, tc.want)
				}
			}
		})
	}
}
