package xds

import (
	"context"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/peer"
)

// callbacks connect go-control-plane's stream events to the server: the
// first request of a node builds its snapshot, responses and requests feed
// the ACK/NACK tracker, and a node's last closed stream forgets it.
type callbacks struct{ s *Server }

var _ serverv3.Callbacks = callbacks{}

func peerOf(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func (c callbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	c.s.status.open(streamKey{id: id}, peerOf(ctx))
	return nil
}

func (c callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	c.s.status.open(streamKey{delta: true, id: id}, peerOf(ctx))
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
	nack := req.GetErrorDetail() != nil
	node, rejected, err := c.s.status.request(streamKey{id: id}, req.GetNode() != nil, NodeOf(req.GetNode()),
		req.GetTypeUrl(), req.GetVersionInfo(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage(), nack)
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
	nack := req.GetErrorDetail() != nil
	node, rejected, err := c.s.status.request(streamKey{delta: true, id: id}, req.GetNode() != nil, NodeOf(req.GetNode()),
		req.GetTypeUrl(), "", req.GetResponseNonce(), req.GetErrorDetail().GetMessage(), nack)
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
}

func (c callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.s.status.response(streamKey{delta: true, id: id}, resp.GetTypeUrl(), resp.GetSystemVersionInfo(), resp.GetNonce())
}

func (callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error { return nil }
func (callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {
}
