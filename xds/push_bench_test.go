package xds

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/topology"
)

// benchGateway plays a gateway's Envoy on one ADS stream, as vigil-load's
// xds subcommand does: LDS and CDS wildcard, then the route configuration
// and the EDS clusters they name, ACKing every response. It reports each
// RDS version it ACKs on acks.
type benchGateway struct {
	stream discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	names  map[string][]string // subscribed names by type (nil: wildcard)
	acks   chan<- uint64
}

func (g *benchGateway) send(typeURL, version, nonce string) error {
	return g.stream.Send(&discoverygrpc.DiscoveryRequest{Node: g.node, TypeUrl: typeURL,
		ResourceNames: g.names[typeURL], VersionInfo: version, ResponseNonce: nonce})
}

// subscribe asks for names of typeURL unless exactly those are asked.
func (g *benchGateway) subscribe(typeURL string, names []string) error {
	if old, ok := g.names[typeURL]; ok && slices.Equal(old, names) {
		return nil
	}
	g.names[typeURL] = names
	return g.send(typeURL, "", "")
}

func (g *benchGateway) run() error {
	g.names = map[string][]string{}
	for _, t := range []string{resourcev3.ListenerType, resourcev3.ClusterType} {
		if err := g.subscribe(t, nil); err != nil {
			return err
		}
	}
	for {
		r, err := g.stream.Recv()
		if err != nil {
			return err
		}
		switch r.GetTypeUrl() {
		case resourcev3.ListenerType:
			err = g.subscribe(resourcev3.RouteType, []string{GatewayRouteName})
		case resourcev3.ClusterType:
			var eds []string
			for _, a := range r.GetResources() {
				c := &clusterv3.Cluster{}
				if err := a.UnmarshalTo(c); err != nil {
					return err
				}
				if c.GetType() == clusterv3.Cluster_EDS {
					eds = append(eds, c.GetEdsClusterConfig().GetServiceName())
				}
			}
			slices.Sort(eds)
			if len(eds) > 0 {
				err = g.subscribe(resourcev3.EndpointType, eds)
			}
		}
		if err != nil {
			return err
		}
		if err := g.send(r.GetTypeUrl(), r.GetVersionInfo(), r.GetNonce()); err != nil {
			return err
		}
		if r.GetTypeUrl() == resourcev3.RouteType {
			v, err := strconv.ParseUint(r.GetVersionInfo(), 10, 64)
			if err != nil {
				return err
			}
			g.acks <- v
		}
	}
}

// BenchmarkDocumentChangePush is BenchmarkDocumentChange with every
// gateway connected over a real ADS stream (on 127.0.0.1, the clients in
// the same process): from Update until every affected gateway has ACKed
// its new routes. The debounce is 1ns. Real gateways have a connection
// each (streams=1); 100 streams share one in the other case.
//
// With mtls, every gateway has its own mutual-TLS connection with its own
// SVID and the server authenticates it, as members with proxy TLS do.
func BenchmarkDocumentChangePush(b *testing.B) {
	for _, bc := range []struct {
		n, perConn int
		mtls       bool
	}{{1000, 100, false}, {1000, 1, false}, {5000, 100, false}, {5000, 1, false}, {5000, 1, true}} {
		n, perConn := bc.n, bc.perConn
		name := fmt.Sprintf("gateways=%d/streams-per-conn=%d", n, perConn)
		if bc.mtls {
			name += "/mtls"
		}
		b.Run(name, func(b *testing.B) {
			c := newBenchCity(b, n)
			srv, src := cityServer(b, c, Config{Debounce: time.Nanosecond, Authenticate: bc.mtls})
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			var ca *spiffetest.CA
			var sopts []grpc.ServerOption
			if bc.mtls {
				ca = spiffetest.NewCA(b, c.snaps[0].Index().TrustDomain())
				member := ca.Issue(b, "spiffe://"+c.snaps[0].Index().TrustDomain()+"/vigil/node/n1", "127.0.0.1")
				sopts = append(sopts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{member.TLS},
					ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool, MinVersion: tls.VersionTLS12})))
			}
			g := grpc.NewServer(sopts...)
			srv.Register(g)
			go func() { _ = g.Serve(lis) }()
			b.Cleanup(g.Stop)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			b.Cleanup(func() { cancel(); wg.Wait() })

			acks := make(chan uint64, 1024)
			var conn *grpc.ClientConn
			for i, id := range c.gateways {
				if i%perConn == 0 {
					creds := insecure.NewCredentials()
					if bc.mtls {
						id, _ := c.snaps[0].Index().SPIFFEID(topology.GatewaySubject(id))
						creds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ca.Issue(b, id).TLS}, RootCAs: ca.Pool, ServerName: "127.0.0.1"})
					}
					if conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds)); err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { _ = conn.Close() })
				}
				st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
				if err != nil {
					b.Fatal(err)
				}
				gw := &benchGateway{stream: st, node: &corev3.Node{Id: id}, acks: acks}
				wg.Add(1)
				go func() { defer wg.Done(); _ = gw.run() }()
			}
			awaitAcks(b, acks, len(c.gateways), 1, time.Now())

			documentChanges(b, c, srv, src, func(rev topology.Revision, start time.Time) []time.Duration {
				return awaitAcks(b, acks, len(c.affected), rev, start)
			})
		})
	}
}

// awaitAcks waits for n RDS ACKs of revision rev and returns how long each
// took from start.
func awaitAcks(b *testing.B, acks <-chan uint64, n int, rev topology.Revision, start time.Time) []time.Duration {
	b.Helper()
	out := make([]time.Duration, 0, n)
	timeout := time.After(time.Minute)
	for len(out) < n {
		select {
		case v := <-acks:
			if v == uint64(rev) {
				out = append(out, time.Since(start))
			}
		case <-timeout:
			b.Fatalf("%d of %d RDS ACKs of revision %d after a minute", len(out), n, rev)
		}
	}
	return out
}
