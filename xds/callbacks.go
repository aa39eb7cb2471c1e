package xds

import (
	"context"
	"net/url"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/internal/peerid"
)

// callbacks connect go-control-plane's stream events to the server: the
// first request of a node builds its snapshot, responses and requests feed
// the ACK/NACK tracker, and a node's last closed stream forgets it.
type callbacks struct{ s *Server }

var _ serverv3.Callbacks = callbacks{}

func (c callbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	c.s.status.open(streamKey{id: id}, peerid.Addr(ctx), peerid.FromContext(ctx))
	return nil
}

func (c callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	c.s.status.open(streamKey{delta: true, id: id}, peerid.Addr(ctx), peerid.FromContext(ctx))
	return nil
}

// admit checks, when the server authenticates, that the stream's identity
// may be node at all: a SPIFFE ID /zone/<zone>/<gateway|edge|service>/<name>
// whose name is node.ID and whose zone is node.Cluster (a gateway may leave
// the cluster empty). Translate then checks the identity is exactly the
// node's, at every revision (Options.RequirePeer).
func (s *Server) admit(identity, peerAddr string, n Node) error {
	if !s.cfg.Authenticate {
		return nil
	}
	if identity == "" {
		s.log.Warn("xds client refused: no SPIFFE ID in a verified client certificate", "peer", peerAddr, "node", n.ID)
		return status.Error(codes.Unauthenticated, "xds: a client certificate with a SPIFFE ID is required")
	}
	var zone, kind, name string
	if u, err := url.Parse(identity); err == nil {
		if parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/"); len(parts) == 4 && parts[0] == "zone" {
			zone, kind, name = parts[1], parts[2], parts[3]
		}
	}
	ok := name == n.ID && (zone == n.Cluster || n.Cluster == "" && kind == "gateway")
	switch {
	case n.Proxyless:
		ok = ok && (kind == "gateway" || kind == "service")
	default:
		ok = ok && (kind == "gateway" || kind == "edge")
	}
	if !ok {
		s.log.Warn("xds client refused: its identity is not the node it names", "peer", peerAddr, "identity", identity, "node", n.ID, "cluster", n.Cluster, "proxyless", n.Proxyless)
		return status.Errorf(codes.PermissionDenied, "xds: %s may not receive the configuration of node %q (cluster %q)", identity, n.ID, n.Cluster)
	}
	return nil
}

func (c callbacks) OnStreamClosed(id int64, _ *corev3.Node) { c.closed(streamKey{id: id}) }

func (c callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	c.closed(streamKey{delta: true, id: id})
}

func (c callbacks) closed(k streamKey) {
	if node, remaining := c.s.status.closed(k); remaining == 0 {
		c.s.forget(node)
	}
}

// OnStreamRequest tracks ACK/NACK, then makes sure the node has a
// snapshot: go-control-plane creates the watch right after this returns.
// A NACK's version_info is the version the proxy still runs; it is
// rewritten to the rejected version so the cache does not resend the very
// configuration that was just rejected (the next change sends a new one).
func (c callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	k := streamKey{id: id}
	if err := c.authenticate(k, req.GetNode()); err != nil {
		return err
	}
	nack := req.GetErrorDetail() != nil
	node, rejected, ans, err := c.s.status.request(k, req.GetNode() != nil, NodeOf(req.GetNode()),
		req.GetTypeUrl(), req.GetVersionInfo(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage(), nack)
	c.s.answered(ans)
	if err != nil {
		c.s.log.Warn("xds stream closed", "err", err)
		return err
	}
	if rejected != "" {
		c.s.log.Warn("xds config rejected", nodeAttrs(node, "type", req.GetTypeUrl(), "version", rejected, "error", req.GetErrorDetail().GetMessage())...)
		req.VersionInfo = rejected
	}
	c.s.ensure(node)
	return nil
}

// OnStreamDeltaRequest is OnStreamRequest for delta streams; only their
// first request is sure to carry the node, the tracker remembers it.
func (c callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	k := streamKey{delta: true, id: id}
	if err := c.authenticate(k, req.GetNode()); err != nil {
		return err
	}
	nack := req.GetErrorDetail() != nil
	node, rejected, ans, err := c.s.status.request(k, req.GetNode() != nil, NodeOf(req.GetNode()),
		req.GetTypeUrl(), "", req.GetResponseNonce(), req.GetErrorDetail().GetMessage(), nack)
	c.s.answered(ans)
	if err != nil {
		c.s.log.Warn("xds stream closed", "err", err)
		return err
	}
	if rejected != "" {
		c.s.log.Warn("xds config rejected", nodeAttrs(node, "type", req.GetTypeUrl(), "version", rejected, "error", req.GetErrorDetail().GetMessage())...)
	}
	c.s.ensure(node)
	return nil
}

func (c callbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.s.status.response(streamKey{id: id}, resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce())
	if f := c.s.cfg.OnPush; f != nil {
		f(resp.GetTypeUrl())
	}
}

func (c callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.s.status.response(streamKey{delta: true, id: id}, resp.GetTypeUrl(), resp.GetSystemVersionInfo(), resp.GetNonce())
	if f := c.s.cfg.OnPush; f != nil {
		f(resp.GetTypeUrl())
	}
}

// answered hands a proxy's answer to Config.OnAnswer, outside the
// tracker's lock.
func (s *Server) answered(a answer) {
	if a.typeURL != "" && s.cfg.OnAnswer != nil {
		s.cfg.OnAnswer(a.typeURL, a.latency, a.nack)
	}
}

// authenticate stamps the stream's verified identity on the node a request
// carries (go-control-plane keeps that node for the stream's later
// requests) and refuses a stream whose identity may not be that node.
// The node is checked once, at the stream's first request: a later
// request naming another node is refused by the tracker as a switch (the
// stamped identity is part of the node key), so ACKs cost only the stamp.
func (c callbacks) authenticate(k streamKey, n *corev3.Node) error {
	identity, addr, attached := c.s.status.identity(k)
	stampPeer(n, identity)
	if n == nil || attached {
		return nil
	}
	return c.s.admit(identity, addr, NodeOf(n))
}

// OnFetchRequest authenticates the per-type services' unary Fetch calls
// like streams.
func (c callbacks) OnFetchRequest(ctx context.Context, req *discoveryv3.DiscoveryRequest) error {
	identity := peerid.FromContext(ctx)
	stampPeer(req.GetNode(), identity)
	return c.s.admit(identity, peerid.Addr(ctx), NodeOf(req.GetNode()))
}
func (callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {
}
