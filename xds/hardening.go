package xds

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Limits on the device- and gateway-facing listeners, after Envoy's "edge
// proxy" best practices (docs: configuration/best_practices/edge): a peer
// must send its headers in time, may not hold a connection idle or open
// forever, and cannot make Envoy buffer much.
const (
	requestHeadersTimeout = 10 * time.Second
	streamIdleTimeout     = 5 * time.Minute
	connectionIdleTimeout = time.Hour
	// DefaultMaxConnectionDuration bounds a downstream connection's life,
	// so that a device re-handshakes (with a current SVID, or not at all
	// once revoked) at least this often: the default device SVID TTL.
	DefaultMaxConnectionDuration = 5 * time.Minute
	perConnectionBufferBytes     = 32 << 10
	maxConcurrentStreams         = 100
	initialStreamWindowBytes     = 64 << 10
	initialConnectionWindowBytes = 1 << 20
)

// hardenHCM applies the limits to a connection manager. (Its access logs
// are accessLogs'.)
func hardenHCM(hcm *hcmv3.HttpConnectionManager, opts Options) {
	hcm.RequestHeadersTimeout = durationpb.New(requestHeadersTimeout)
	hcm.StreamIdleTimeout = durationpb.New(streamIdleTimeout)
	hcm.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{
		IdleTimeout:                  durationpb.New(connectionIdleTimeout),
		MaxConnectionDuration:        durationpb.New(opts.MaxConnectionDuration),
		HeadersWithUnderscoresAction: corev3.HttpProtocolOptions_REJECT_REQUEST,
	}
	hcm.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{
		MaxConcurrentStreams:        wrapperspb.UInt32(maxConcurrentStreams),
		InitialStreamWindowSize:     wrapperspb.UInt32(initialStreamWindowBytes),
		InitialConnectionWindowSize: wrapperspb.UInt32(initialConnectionWindowBytes),
	}
}

// keepalive makes a gRPC cluster (xDS, ext_authz) ping its connection, so
// that a half-dead member is noticed in seconds, not at the next request.
func keepalive() *corev3.KeepaliveSettings {
	return &corev3.KeepaliveSettings{Interval: durationpb.New(30 * time.Second), Timeout: durationpb.New(5 * time.Second)}
}
