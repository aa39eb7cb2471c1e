package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/topology"
)

const td = "spiffe://city.example"

// startTLS runs an authenticating Server behind mutual TLS from ca and
// returns its address.
func startTLS(t *testing.T, ca *spiffetest.CA, snap *topology.Snapshot) string {
	t.Helper()
	src := &source{}
	src.p.Store(snap)
	srv, err := NewServer(Config{Source: src, NodeID: "vigil-1", Debounce: time.Hour, Authenticate: true})
	if err != nil {
		t.Fatal(err)
	}
	member := ca.Issue(t, td+"/vigil/node/vigil-1", "127.0.0.1")
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{member.TLS}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool,
	})))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(func() { srv.Close(); g.Stop() })
	return lis.Addr().String()
}

// noURI stands for a certificate from the CA that carries no SPIFFE ID.
const noURI = "no-uri"

// listenersAs asks addr for node's listeners holding the SVID id (none
// when id is "") and returns their names, or the stream's error.
func listenersAs(t *testing.T, ca *spiffetest.CA, addr, id string, node *corev3.Node) ([]string, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1"}
	switch id {
	case "":
	case noURI:
		cfg.Certificates = []tls.Certificate{ca.Issue(t, "", "gw-north-1.city.example").TLS}
	default:
		cfg.Certificates = []tls.Certificate{ca.Issue(t, id).TLS}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType}); err != nil {
		return nil, err
	}
	r, err := st.Recv()
	if err != nil {
		return nil, err
	}
	var out []string
	for n := range byName(t, r.GetResources()) {
		out = append(out, n)
	}
	return out, nil
}

// TestServerAuthenticatesNodes: with Authenticate, each kind of node gets
// its configuration only over a connection holding its own SVID; another
// identity is refused outright, or served deny-all when it names the node
// right but the topology says otherwise.
func TestServerAuthenticatesNodes(t *testing.T) {
	ca := spiffetest.NewCA(t, "city.example")
	addr := startTLS(t, ca, smartCitySnapshot(t, 3))
	deny, _ := DenyAll(Options{})
	denyNames := names(deny.Listeners)
	grpcNode := func(id, cluster string) *corev3.Node {
		return &corev3.Node{Id: id, Cluster: cluster, UserAgentName: "gRPC Go"}
	}
	for _, tc := range []struct {
		name string
		id   string // the client's SVID
		node *corev3.Node
		want []string   // listeners
		code codes.Code // or the stream's error
	}{
		{"gateway as itself", td + "/zone/north/gateway/gw-north-1", &corev3.Node{Id: gw, Cluster: "north"}, []string{GatewayListenerName}, codes.OK},
		{"gateway as itself, no cluster", td + "/zone/north/gateway/gw-north-1", &corev3.Node{Id: gw}, []string{GatewayListenerName}, codes.OK},
		{"edge as itself", td + "/zone/cloud/edge/edge-1", &corev3.Node{Id: "edge-1", Cluster: "cloud"}, []string{"inbound-telemetry"}, codes.OK},
		{"another gateway", td + "/zone/south/gateway/gw-south-1", &corev3.Node{Id: gw, Cluster: "north"}, nil, codes.PermissionDenied},
		{"another zone's edge", td + "/zone/north/edge/edge-1", &corev3.Node{Id: "edge-1", Cluster: "cloud"}, nil, codes.PermissionDenied},
		{"a device", td + "/zone/north/device/slc-n1-001", &corev3.Node{Id: "slc-n1-001", Cluster: "north"}, nil, codes.PermissionDenied},
		{"a service as Envoy", td + "/zone/cloud/service/telemetry", &corev3.Node{Id: "telemetry", Cluster: "cloud"}, nil, codes.PermissionDenied},
		{"a member", td + "/vigil/node/vigil-2", &corev3.Node{Id: gw, Cluster: "north"}, nil, codes.PermissionDenied},
		{"no SPIFFE ID", "", &corev3.Node{Id: gw, Cluster: "north"}, nil, codes.Unavailable}, // the handshake fails
		// It names itself, but the topology has gw-north-1 in north: the
		// node is unknown, and so it gets deny-all.
		{"gateway SVID of the wrong zone", td + "/zone/south/gateway/gw-north-1", &corev3.Node{Id: gw, Cluster: "south"}, denyNames, codes.OK},
		// An edge SVID naming a gateway as an edge would: the gateway's
		// configuration is for the gateway's SVID only.
		{"edge SVID naming a gateway", td + "/zone/north/edge/gw-north-1", &corev3.Node{Id: gw, Cluster: "north"}, denyNames, codes.OK},
		{"a certificate without a SPIFFE ID", noURI, &corev3.Node{Id: gw, Cluster: "north"}, nil, codes.Unauthenticated},
		{"gateway SVID as its gRPC self", td + "/zone/north/gateway/gw-north-1", grpcNode(gw, "north"), nil, codes.OK},
		{"service SVID as another gRPC service", td + "/zone/cloud/service/telemetry", grpcNode("lighting", "cloud"), nil, codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := listenersAs(t, ca, addr, tc.id, tc.node)
			if code := status.Code(err); code != tc.code {
				t.Fatalf("error %v (code %v), want code %v", err, code, tc.code)
			}
			if err == nil && !equalSets(got, tc.want) {
				t.Errorf("listeners %v, want %v", got, tc.want)
			}
		})
	}
}

// TestAClientCannotClaimAPeer: a peer identity a client writes into its
// node metadata is replaced by the connection's (here: none).
func TestAClientCannotClaimAPeer(t *testing.T) {
	n := &corev3.Node{Id: gw, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		peerMetadataKey: structpb.NewStringValue(td + "/zone/north/gateway/gw-north-1"),
	}}}
	stampPeer(n, "")
	if got := NodeOf(n).Peer; got != "" {
		t.Errorf("peer after stamping none = %q", got)
	}
	stampPeer(n, td+"/zone/cloud/edge/x")
	if got := NodeOf(n).Peer; got != td+"/zone/cloud/edge/x" {
		t.Errorf("peer = %q", got)
	}
}

// TestTranslateRequiresThePeer: with RequirePeer, Translate serves each
// kind of node only to its own SPIFFE ID.
func TestTranslateRequiresThePeer(t *testing.T) {
	snap := smartCitySnapshot(t, 3)
	opts := Options{RequirePeer: true}
	for _, tc := range []struct {
		node Node
		ok   bool
	}{
		{Node{ID: gw, Cluster: "north", Peer: td + "/zone/north/gateway/gw-north-1"}, true},
		{Node{ID: gw, Cluster: "north"}, false},
		{Node{ID: gw, Cluster: "north", Peer: td + "/zone/north/edge/gw-north-1"}, false},
		{Node{ID: "edge-1", Cluster: "cloud", Peer: td + "/zone/cloud/edge/edge-1"}, true},
		{Node{ID: "edge-1", Cluster: "cloud", Peer: td + "/zone/cloud/gateway/edge-1"}, false},
		{Node{ID: "telemetry", Proxyless: true, Peer: td + "/zone/cloud/service/telemetry"}, true},
		{Node{ID: "telemetry", Proxyless: true, Peer: "spiffe://other.example/zone/cloud/service/telemetry"}, false},
	} {
		_, err := Translate(snap, tc.node, opts)
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, ErrUnknownNode) {
			t.Errorf("%+v: err = %v, want ok=%v", tc.node, err, tc.ok)
		}
	}
}

func equalSets(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

// FuzzAdmit: whatever the identity and node, admit never panics, and it
// admits only an identity /zone/<cluster>/<kind>/<node id> of a kind that
// node may be.
func FuzzAdmit(f *testing.F) {
	f.Add("spiffe://city.example/zone/north/gateway/gw-north-1", "gw-north-1", "north", false)
	f.Add("spiffe://city.example/zone/north/gateway/gw-north-1", "gw-north-1", "", true)
	f.Add("spiffe://city.example/zone/cloud/edge/e", "e", "cloud", false)
	f.Add("spiffe://x/zone//gateway/", "", "", false)
	f.Add("spiffe://x/zone/a/service/b/../c", "c", "a", true)
	srv, err := NewServer(Config{Source: &source{}, Authenticate: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(srv.Close)
	f.Fuzz(func(t *testing.T, identity, id, cluster string, proxyless bool) {
		if srv.admit(identity, "", Node{ID: id, Cluster: cluster, Proxyless: proxyless}) != nil {
			return
		}
		u, err := url.Parse(identity)
		if err != nil {
			t.Fatalf("admitted an identity that does not parse: %q", identity)
		}
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if len(parts) != 4 || parts[0] != "zone" || parts[3] != id || parts[1] != cluster && cluster != "" {
			t.Fatalf("admitted %q as node %q (cluster %q)", identity, id, cluster)
		}
		kinds := []string{"gateway", "edge"}
		if proxyless {
			kinds = []string{"gateway", "service"}
		}
		if !slices.Contains(kinds, parts[2]) || cluster == "" && parts[2] != "gateway" {
			t.Fatalf("admitted %q (kind %s) as node %q, proxyless %v", identity, parts[2], id, proxyless)
		}
	})
}

// TestAnAdmittedStreamCannotSwitchNodes: identities are checked at a
// stream's first request; a later request naming another node ends it.
func TestAnAdmittedStreamCannotSwitchNodes(t *testing.T) {
	ca := spiffetest.NewCA(t, "city.example")
	addr := startTLS(t, ca, smartCitySnapshot(t, 3))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: ca.Pool, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{ca.Issue(t, td+"/zone/north/gateway/gw-north-1").TLS},
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(id, cluster string) error {
		return st.Send(&discoverygrpc.DiscoveryRequest{Node: &corev3.Node{Id: id, Cluster: cluster}, TypeUrl: resourcev3.ListenerType})
	}
	if err := send(gw, "north"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatalf("first request as itself: %v", err)
	}
	if err := send("gw-south-2", "south"); err != nil {
		t.Fatal(err)
	}
	if r, err := st.Recv(); err == nil {
		t.Fatalf("after naming gw-south-2 the stream answered %s %q", r.GetTypeUrl(), r.GetVersionInfo())
	}
}
