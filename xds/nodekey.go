package xds

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// NodeOf is the Node an xDS request names. A gRPC library (grpc-go says
// "gRPC Go", others "gRPC <language>") is a proxyless node.
// Its Peer is what the server stamped on the request (stampPeer), never
// what a client sent.
func NodeOf(n *corev3.Node) Node {
	return Node{ID: n.GetId(), Cluster: n.GetCluster(), Proxyless: strings.HasPrefix(n.GetUserAgentName(), "gRPC "),
		Peer: n.GetMetadata().GetFields()[peerMetadataKey].GetStringValue()}
}

// peerMetadataKey is where the server records, in a request's node
// metadata, the identity its stream was verified with. go-control-plane
// keys its cache by the node (nodeHash) and keeps the first request's node
// for the stream, so the identity travels with it.
const peerMetadataKey = "vigil.io/peer"

// stampPeer overwrites whatever the client put under peerMetadataKey with
// the stream's verified identity (deleting it when there is none).
func stampPeer(n *corev3.Node, peer string) {
	if n == nil {
		return
	}
	if peer == "" {
		if n.GetMetadata() != nil {
			delete(n.Metadata.Fields, peerMetadataKey)
		}
		return
	}
	if n.Metadata == nil {
		n.Metadata = &structpb.Struct{}
	}
	if n.Metadata.Fields == nil {
		n.Metadata.Fields = map[string]*structpb.Value{}
	}
	n.Metadata.Fields[peerMetadataKey] = structpb.NewStringValue(peer)
}

// key names the node in the server and its snapshot cache. The cluster is
// part of it (it makes a cloud edge, and an Envoy claiming another zone
// must not share a gateway's entry), and so are the kind of client (Envoy
// and grpc-go under one name need different resources) and the verified
// peer (a stream of another identity must not share the entry). The separators
// are NUL bytes: a name holding one is no subject's, and whatever key such
// a name makes, its node is unknown and gets deny-all.
func (n Node) key() string {
	kind := "envoy"
	if n.Proxyless {
		kind = "grpc"
	}
	return n.ID + "\x00" + n.Cluster + "\x00" + kind + "\x00" + n.Peer
}

// nodeOfKey is the inverse of key (the ID takes any extra separators; a
// verified peer has none: URIs hold no control characters).
func nodeOfKey(k string) Node {
	rest, peer, _ := cutLast(k)
	rest, kind, _ := cutLast(rest)
	id, cluster, _ := cutLast(rest)
	return Node{ID: id, Cluster: cluster, Proxyless: kind == "grpc", Peer: peer}
}

func cutLast(s string) (before, after string, found bool) {
	if i := strings.LastIndexByte(s, 0); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}

// nodeHash keys go-control-plane's cache like the server does.
type nodeHash struct{}

func (nodeHash) ID(n *corev3.Node) string { return NodeOf(n).key() }

// nodeAttrs are log attributes naming node key, followed by more.
func nodeAttrs(key string, more ...any) []any {
	n := nodeOfKey(key)
	attrs := []any{"node", n.ID}
	if n.Cluster != "" {
		attrs = append(attrs, "cluster", n.Cluster)
	}
	if n.Proxyless {
		attrs = append(attrs, "proxyless", true)
	}
	return append(attrs, more...)
}
