package xds

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// NodeOf is the Node an xDS request names. A gRPC library (grpc-go says
// "gRPC Go", others "gRPC <language>") is a proxyless node.
func NodeOf(n *corev3.Node) Node {
	return Node{ID: n.GetId(), Cluster: n.GetCluster(), Proxyless: strings.HasPrefix(n.GetUserAgentName(), "gRPC ")}
}

// key names the node in the server and its snapshot cache. The cluster is
// part of it (it makes a cloud edge, and an Envoy claiming another zone
// must not share a gateway's entry), and so is the kind of client (Envoy
// and grpc-go under one name need different resources). The separators
// are NUL bytes: a name holding one is no subject's, and whatever key such
// a name makes, its node is unknown and gets deny-all.
func (n Node) key() string {
	kind := "envoy"
	if n.Proxyless {
		kind = "grpc"
	}
	return n.ID + "\x00" + n.Cluster + "\x00" + kind
}

// nodeOfKey is the inverse of key (the ID takes any extra separators).
func nodeOfKey(k string) Node {
	rest, kind, _ := cutLast(k)
	id, cluster, _ := cutLast(rest)
	return Node{ID: id, Cluster: cluster, Proxyless: kind == "grpc"}
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
