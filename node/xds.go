package node

import (
	"context"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/xds"
)

// XDSConfig configures the member's xDS server.
type XDSConfig struct {
	// Addr is the gRPC listen address of ADS and the per-type services.
	Addr string
	// Options are what every gateway's translation needs: the ext_authz
	// endpoints its Envoy calls, the SPIRE agent's SDS socket, the
	// device-facing port.
	Options xds.Options
}

type xdsPart struct {
	server *xds.Server
	ln     net.Listener
	grpc   *grpc.Server
	store  *raft.Store
	// metrics counts pushes and answers for GET /metrics.
	metrics *xdsMetrics
	// streams is ln, tracking connections to close when the member is
	// cut off.
	streams *xdsStreams
}

func (n *Node) startXDS() (*xdsPart, error) {
	cfg := n.cfg.XDS
	opts := cfg.Options
	if len(opts.AuthzEndpoints) == 0 {
		// Gateways call the authorizer of the member that configures them
		// unless told otherwise.
		opts.AuthzEndpoints = []string{reachable(n.authz.Addr(), n.apiAddr)}
	}
	// With proxy TLS, gateways call ext_authz with their SVID too.
	opts.AuthzTLS = opts.AuthzTLS || n.proxyTLS != nil
	m := newXDSMetrics()
	srv, err := xds.NewServer(xds.Config{Source: n.store, Options: opts, NodeID: n.cfg.ID, Logger: n.cfg.Logger,
		Authenticate: n.proxyTLS != nil, OnPush: m.push, OnAnswer: m.answer})
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("xds listen on %s: %w", cfg.Addr, err)
	}
	streams := trackConns(ln)
	p := &xdsPart{server: srv, ln: streams, grpc: n.proxyServer(xds.MaxRequestBytes, xdsFlowControl...), store: n.store, metrics: m, streams: streams}
	srv.Register(p.grpc)
	return p, nil
}

// xdsFlowControl fixes the HTTP/2 windows of xDS connections at gRPC's
// default 64 KiB. What proxies send is small (requests and ACKs), and with
// gRPC's dynamic windows every request a proxy sends after a quiet spell
// makes the member send a PING (bandwidth-delay estimation) and read its
// answer: a flow change pushed to 5,000 gateways, each on its own TLS
// connection, took the member 16.8k reads and 9.4k writes with them, 10.0k
// and 5.0k without (vigil-load xds -tls, BENCHMARKS.md). Fixed windows also
// bound what one connection can make the member buffer (dynamic ones grow
// to 16 MiB).
var xdsFlowControl = []grpc.ServerOption{
	grpc.StaticStreamWindowSize(64 << 10),
	grpc.StaticConnWindowSize(64 << 10),
}

// reachable replaces an unspecified listen host (":9191") with the host of
// the member's advertised API address.
func reachable(listen, advertised string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return listen
	}
	if h, _, err := net.SplitHostPort(api.HostPort(advertised)); err == nil && h != "" {
		return net.JoinHostPort(h, port)
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// Addr is where proxies connect for xDS.
func (p *xdsPart) Addr() string { return p.ln.Addr().String() }

func (p *xdsPart) parts() []func(context.Context) error {
	return []func(context.Context) error{
		func(ctx context.Context) error {
			go func() { <-ctx.Done(); p.grpc.GracefulStop() }()
			if err := p.grpc.Serve(p.ln); err != nil && ctx.Err() == nil {
				return fmt.Errorf("xds server: %w", err)
			}
			return nil
		},
		func(ctx context.Context) error { return p.server.Run(ctx) },
		p.follow,
	}
}

// follow hands every committed change to the xDS server, which rebuilds the
// nodes it affects.
func (p *xdsPart) follow(ctx context.Context) error {
	sub, snap := p.store.Subscribe()
	defer sub.Close()
	p.server.Update(snap, xds.Change{Document: true})
	for {
		ev, err := sub.Next(ctx)
		if errors.Is(err, context.Canceled) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("xds: following the store: %w", err)
		}
		p.server.Update(ev.Snapshot, xds.Change{Document: ev.Document, Restored: ev.Restored, Subjects: ev.Subjects})
	}
}

// ProxyStatus lists the proxies connected to this member.
func (p *xdsPart) ProxyStatus() any { return p.server.Status() }

// Dump renders what a node receives from this member.
func (p *xdsPart) Dump(node, cluster string, proxyless bool) ([]byte, error) {
	res, err := p.server.Dump(xds.Node{ID: node, Cluster: cluster, Proxyless: proxyless})
	if err != nil {
		return nil, err
	}
	return res.YAML()
}
