package xds

import (
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Access logs of gateways and cloud edges (docs/envoy.md, "Access logs").
//
// Every HTTP connection manager Vigil sends an Envoy logs each request
// twice: to standard output (the proxy's own record, kept when Vigil is
// unreachable), and over gRPC ALS
// (envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs) to the
// Vigil members of the bootstrap's XDSCluster, where AccessLogs turns the
// entries into AccessEntry values for the monitor. Envoy only accepts an
// ALS cluster that is static (defined in the bootstrap, never by CDS), so
// the bootstrap's xDS cluster is the one: it exists on every node Vigil
// configures, and reaches the members over the same mutual TLS as xDS.
const (
	// ALSLogName is the log_name Vigil's Envoys send in the first message
	// of each access log stream.
	ALSLogName = "vigil"
	// alsFlushInterval and alsBufferBytes are when Envoy sends what it has
	// buffered: after a second, or at 16 KiB (Envoy's defaults, written
	// out). A message is thus far below MaxRequestBytes.
	alsFlushInterval = time.Second
	alsBufferBytes   = 16 << 10
)

// Headers the gRPC access log carries besides Envoy's own fields.
const (
	// decisionIDHeader is the authorizer's decision ID (authz's
	// DecisionIDHeader): set on the upstream request of an allowed
	// request and on the reply of every Check, so a log entry can be
	// found in the decision log.
	decisionIDHeader = "x-vigil-decision-id"
	// xfccHeader is logged at cloud edges only: there the downstream peer
	// is the gateway, and the device is the URI the gateway forwarded. At
	// a gateway the device is the peer certificate, which every entry
	// carries (tls_properties), so the header would only repeat it.
	xfccHeader = "x-forwarded-client-cert"
	// contentLengthHeader is the size a request declares: when the
	// gateway answers before reading the body (no route, RBAC, rate
	// limit, a denied Check) the body bytes are 0, and the declared size
	// is what says a device tried to send a large payload somewhere.
	contentLengthHeader = "content-length"
)

// accessLogs are a connection manager's access logs. forwarded says the
// device identity arrives in XFCC (a cloud edge), whose header is then
// logged too.
func accessLogs(forwarded bool) []*accesslogv3.AccessLog {
	request := []string{decisionIDHeader, contentLengthHeader}
	if forwarded {
		request = append(request, xfccHeader)
	}
	als := &grpclogv3.HttpGrpcAccessLogConfig{
		CommonConfig: &grpclogv3.CommonGrpcAccessLogConfig{
			LogName: ALSLogName,
			GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
			}},
			// Envoy refuses any other version (checkTransportVersion).
			TransportApiVersion: corev3.ApiVersion_V3,
			BufferFlushInterval: durationpb.New(alsFlushInterval),
			BufferSizeBytes:     wrapperspb.UInt32(alsBufferBytes),
		},
		AdditionalRequestHeadersToLog:  request,
		AdditionalResponseHeadersToLog: []string{decisionIDHeader},
	}
	return []*accesslogv3.AccessLog{
		{
			Name:       "envoy.access_loggers.stdout",
			ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&streamv3.StdoutAccessLog{})},
		},
		{
			Name:       "envoy.access_loggers.http_grpc",
			ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(als)},
		},
	}
}
