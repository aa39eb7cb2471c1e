package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Names of the gateway's fixed resources.
const (
	GatewayListenerName = "vigil-gateway"
	GatewayRouteName    = "vigil-gateway-routes"
)

// listenerIn is everything a gateway's listener is made of besides the
// options: the server keys its memo of built listeners by it, so
// gatewayListener must read nothing else.
type listenerIn struct {
	trustDomain, zone string
	self              string // the gateway's SPIFFE ID
}

func (p *gatewayPlan) listenerIn() listenerIn {
	return listenerIn{trustDomain: p.trustDomain, zone: p.gateway.Zone, self: p.spiffeID}
}

// gatewayListener is the device-facing mTLS listener: a device must present
// an SVID of one of the zone's devices; requests then pass RBAC → local
// rate limit → ext_authz → router.
func gatewayListener(in listenerIn, opts Options) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "vigil_gateway",
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: GatewayRouteName,
		}},
		// Devices connect directly: their address is the real one, and
		// the forwarded device identity is the one Envoy verified, never
		// one a device sent.
		UseRemoteAddress:            wrapperspb.Bool(true),
		ForwardClientCertDetails:    hcmv3.HttpConnectionManager_SANITIZE_SET,
		SetCurrentClientCertDetails: &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Uri: true},
		// Routes match paths exactly; normalise first so that /a/../b or
		// //b cannot reach a route (or miss the 403) by spelling.
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
		// Virtual hosts list bare host names; a device may add the port.
		StripPortMode: &hcmv3.HttpConnectionManager_StripAnyHostPort{StripAnyHostPort: true},
		// RBAC and the local rate limit first: a quarantined device or a
		// flood is refused by the gateway itself and costs no Check.
		HttpFilters: []*hcmv3.HttpFilter{
			rbacFilter(),
			localRateLimitFilter(),
			extAuthzFilter(opts, false),
			routerFilter(),
		},
		// The device is the peer certificate, which every entry carries.
		AccessLog: accessLogs(false),
	}
	hardenHCM(hcm, opts)
	devices := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{
		Prefix: bundleSecretName(in.trustDomain) + "/zone/" + in.zone + "/device/",
	}}
	l := gatewayHTTPListener(opts.ListenerPort, hcm, sdsDownstreamTLS(in.self, in.trustDomain, []string{"h2", "http/1.1"}, devices))
	l.PerConnectionBufferLimitBytes = wrapperspb.UInt32(perConnectionBufferBytes)
	return l
}

// sdsDownstreamTLS requires a client certificate from the trust domain,
// whose URI SAN matches peers when it is given, and presents the SVID
// self, both from the SPIRE agent over SDS.
func sdsDownstreamTLS(self, trustDomain string, alpn []string, peers *matcherv3.StringMatcher) *corev3.TransportSocket {
	common := &tlsv3.CommonTlsContext{
		TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(self)},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: sdsSecret(bundleSecretName(trustDomain)),
		},
		AlpnProtocols: alpn,
	}
	if peers != nil {
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: peers}},
				},
				ValidationContextSdsSecretConfig: sdsSecret(bundleSecretName(trustDomain)),
			},
		}
	}
	return tlsSocket(&tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true), CommonTlsContext: common})
}

// tlsSocket is Envoy's TLS transport socket with context ctx (an upstream
// or downstream TLS context).
func tlsSocket(ctx proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       wellknown.TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)},
	}
}

// gatewayHTTPListener is the device-facing listener shell: one filter
// chain with the HTTP connection manager, over tls when it is given. The
// deny-all configuration uses the same name and port, so that it replaces
// a gateway's listener in place.
func gatewayHTTPListener(port uint32, hcm *hcmv3.HttpConnectionManager, tls *corev3.TransportSocket) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    GatewayListenerName,
		Address: socketAddress("0.0.0.0", port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
			}},
			TransportSocket: tls,
		}},
	}
}

// bundleSecretName is the SDS name under which the SPIRE agent serves the
// trust bundle of a trust domain.
func bundleSecretName(trustDomain string) string { return "spiffe://" + trustDomain }

// sdsSecret asks the local SPIRE agent (cluster spire_agent) for a secret.
// SPIRE serves a workload's SVID under its SPIFFE ID and each trust bundle
// under spiffe://<trust domain>.
func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{
		Name: name,
		SdsConfig: &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: SPIREAgentCluster}},
				}},
			}},
		},
	}
}

// adsSource is "fetch this over the ADS stream".
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}
