// Package peerid reads the verified SPIFFE ID of a gRPC caller.
package peerid

import (
	"context"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// FromContext is the SPIFFE ID of the client certificate the caller's
// connection was verified with: the only URI SAN of the leaf of a verified
// chain. It is "" without TLS, without a verified chain, or when the leaf
// has no URI, several, or one that is not spiffe://.
func FromContext(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return ""
	}
	uris := info.State.VerifiedChains[0][0].URIs
	if len(uris) != 1 || uris[0].Scheme != "spiffe" {
		return ""
	}
	return uris[0].String()
}

// Addr is the caller's network address, or "".
func Addr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
