package xds

import (
	"bytes"
	"context"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vigil-iot/vigil/topology"

	"github.com/vigil-iot/vigil/internal/testwait"
)

// wait bounds every receive; quiet is how long "nothing is resent" is
// watched for.
const (
	wait  = 5 * time.Second
	quiet = 300 * time.Millisecond
)

type source struct {
	p atomic.Pointer[topology.Snapshot]
}

func (s *source) Current() *topology.Snapshot { return s.p.Load() }

// smartCitySnapshot loads the example at revision rev with the given
// subjects quarantined.
func smartCitySnapshot(t *testing.T, rev topology.Revision, quarantined ...topology.Subject) *topology.Snapshot {
	t.Helper()
	data, err := os.ReadFile(smartCity)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := topology.Load(data)
	if err != nil {
		t.Fatal(err)
	}
	updates := map[topology.Subject]*topology.SubjectState{}
	for _, s := range quarantined {
		updates[s] = &topology.SubjectState{Quarantine: &topology.Quarantine{Reason: "test", Since: time.Unix(0, 0)}}
	}
	return topology.NewSnapshot(rev, 1, ix, topology.NewState().With(updates))
}

type fixture struct {
	srv  *Server
	src  *source
	conn *grpc.ClientConn
}

// start runs a Server on a real gRPC server on 127.0.0.1:0 and dials it.
func start(t *testing.T, snap *topology.Snapshot) *fixture { return startWith(t, snap, nil) }

// startWith is start with mutate applied to the server's Config.
func startWith(t *testing.T, snap *topology.Snapshot, mutate func(*Config)) *fixture {
	t.Helper()
	src := &source{}
	src.p.Store(snap)
	// A debounce longer than any test: only urgent pushes can arrive.
	cfg := Config{Source: src, NodeID: "vigil-1", Debounce: time.Hour}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Close()
		g.Stop()
	})
	return &fixture{srv: srv, src: src, conn: conn}
}

// sotw is an ADS client playing Envoy.
type sotw struct {
	t      *testing.T
	stream discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	resps  chan *discoverygrpc.DiscoveryResponse
}

func (f *fixture) ads(t *testing.T, nodeID string) *sotw {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(f.conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &sotw{t: t, stream: st, node: &corev3.Node{Id: nodeID}, resps: make(chan *discoverygrpc.DiscoveryResponse, 64)}
	go func() {
		defer close(c.resps)
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			c.resps <- r
		}
	}()
	return c
}

func (c *sotw) send(req *discoverygrpc.DiscoveryRequest) {
	c.t.Helper()
	req.Node = c.node
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

// ask sends a first request for a type (names empty: wildcard).
func (c *sotw) ask(typeURL string, names ...string) {
	c.send(&discoverygrpc.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names})
}

func (c *sotw) ack(r *discoverygrpc.DiscoveryResponse) {
	c.send(&discoverygrpc.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
}

// next returns the next response, failing after wait.
func (c *sotw) next() *discoverygrpc.DiscoveryResponse {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if !ok {
			c.t.Fatal("stream ended")
		}
		return r
	case <-time.After(wait):
		c.t.Fatalf("no response within %v", wait)
	}
	return nil
}

// nextOf collects one response for each given type, in any order.
func (c *sotw) nextOf(typeURLs ...string) map[string]*discoverygrpc.DiscoveryResponse {
	c.t.Helper()
	out := map[string]*discoverygrpc.DiscoveryResponse{}
	for len(out) < len(typeURLs) {
		r := c.next()
		if _, dup := out[r.GetTypeUrl()]; dup {
			c.t.Fatalf("second %s response before the others", r.GetTypeUrl())
		}
		out[r.GetTypeUrl()] = r
	}
	return out
}

// silent fails if a response arrives within quiet.
func (c *sotw) silent() {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected %s response version %q", r.GetTypeUrl(), r.GetVersionInfo())
	case <-time.After(quiet):
	}
}

// byName unpacks resources and indexes them by xDS name.
func byName(t *testing.T, anys []*anypb.Any) map[string]proto.Message {
	t.Helper()
	out := map[string]proto.Message{}
	for _, a := range anys {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		out[name(m.(types.Resource))] = m
	}
	return out
}

func sameResources(t *testing.T, what string, got map[string]proto.Message, want []types.Resource) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d resources, want %d", what, len(got), len(want))
	}
	for _, w := range want {
		g, ok := got[name(w)]
		if !ok {
			t.Errorf("%s: %q missing", what, name(w))
			continue
		}
		if !proto.Equal(g, w) {
			t.Errorf("%s: %q differs from its translation", what, name(w))
		}
	}
}

// sameWire checks that a response carries exactly the deterministic
// encoding of each wanted resource, in an Any of its type (what
// go-control-plane sends for the resource itself).
func sameWire(t *testing.T, what string, got []*anypb.Any, want []types.Resource) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d resources, want %d", what, len(got), len(want))
	}
	byName := map[string]*anypb.Any{}
	for _, a := range got {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		byName[name(m.(types.Resource))] = a
	}
	for _, w := range want {
		b, err := cachev3.MarshalResource(w)
		if err != nil {
			t.Fatal(err)
		}
		a := byName[name(w)]
		if a.GetTypeUrl() != "type.googleapis.com/"+string(w.ProtoReflect().Descriptor().FullName()) || !bytes.Equal(a.GetValue(), b) {
			t.Errorf("%s: %q is not the encoding of its translation", what, name(w))
		}
	}
}

func names(list []types.Resource) []string {
	var out []string
	for _, r := range list {
		out = append(out, name(r))
	}
	return out
}

// eventually polls cond until it holds or wait passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.For(t, wait, what, cond)
}

func statusOf(s *Server, node string) (ProxyStatus, bool) {
	for _, p := range s.Status() {
		if p.NodeID == node {
			return p, true
		}
	}
	return ProxyStatus{}, false
}

func typeStatus(p ProxyStatus, typeURL string) TypeStatus {
	for _, ts := range p.Types {
		if ts.TypeURL == typeURL {
			return ts
		}
	}
	return TypeStatus{}
}

var allTypes = []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType}

// subscribe asks for LDS and CDS (wildcard) and RDS and EDS by the names
// the translation gives, as Envoy does, and returns the responses.
func (c *sotw) subscribe(want *Resources) map[string]*discoverygrpc.DiscoveryResponse {
	c.t.Helper()
	c.ask(resourcev3.ListenerType)
	c.ask(resourcev3.ClusterType)
	c.ask(resourcev3.RouteType, names(want.Routes)...)
	c.ask(resourcev3.EndpointType, names(want.Endpoints)...)
	return c.nextOf(allTypes...)
}

// vhostRBAC reports whether every virtual host of the route
// configuration carries the quarantine policy.
func vhostRBAC(rc *routev3.RouteConfiguration) bool {
	for _, vh := range rc.GetVirtualHosts() {
		if _, ok := vh.GetTypedPerFilterConfig()[rbacFilterName]; !ok {
			return false
		}
	}
	return len(rc.GetVirtualHosts()) > 0
}

func timeAfter() <-chan time.Time { return time.After(wait) }

// deltaClient is a delta ADS client.
type deltaClient struct {
	t      *testing.T
	stream discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node   *corev3.Node
	resps  chan *discoverygrpc.DeltaDiscoveryResponse
}

func (f *fixture) delta(t *testing.T, nodeID string) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(f.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := &deltaClient{t: t, stream: st, node: &corev3.Node{Id: nodeID}, resps: make(chan *discoverygrpc.DeltaDiscoveryResponse, 64)}
	go func() {
		defer close(d.resps)
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			d.resps <- r
		}
	}()
	return d
}

func (d *deltaClient) send(req *discoverygrpc.DeltaDiscoveryRequest) {
	d.t.Helper()
	if err := d.stream.Send(req); err != nil {
		d.t.Fatal(err)
	}
}

func (d *deltaClient) next() *discoverygrpc.DeltaDiscoveryResponse {
	d.t.Helper()
	select {
	case r, ok := <-d.resps:
		if !ok {
			d.t.Fatal("stream ended")
		}
		return r
	case <-time.After(wait):
		d.t.Fatalf("no delta response within %v", wait)
	}
	return nil
}

func deltaByName(t *testing.T, r *discoverygrpc.DeltaDiscoveryResponse) map[string]proto.Message {
	t.Helper()
	out := map[string]proto.Message{}
	for _, res := range r.GetResources() {
		m, err := res.GetResource().UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		out[res.GetName()] = m
	}
	return out
}
