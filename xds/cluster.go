package xds

import (
	"net"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/topology"
)

// SPIREAgentCluster is the cluster of the local SPIRE agent's SDS socket.
const SPIREAgentCluster = "spire_agent"

const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// serviceCluster names the cluster (and its endpoints) of a service.
func serviceCluster(service string) string { return "svc-" + service }

// gatewayClusters are the ext_authz cluster plus one per service a route
// leads to. The SPIRE agent's cluster is not among them: Envoy takes an SDS
// config source only from a statically defined cluster, so it lives in the
// bootstrap (see Bootstrap).
func gatewayClusters(p *gatewayPlan, opts Options) []types.Resource {
	out := []types.Resource{authzCluster(p.trustDomain, p.spiffeID, opts)}
	for _, sf := range p.services {
		out = append(out, serviceClusterOf(p.clusterIn(sf)))
	}
	return out
}

// clusterIn is everything a gateway's cluster of one service is made of:
// the server keys its memo of built clusters by it, so serviceClusterOf
// must read nothing else.
type clusterIn struct {
	trustDomain string
	self        string // the gateway's SPIFFE ID
	service     string
	peer        string // the service's SPIFFE ID
	sni         string // the service's first host
	protocol    string
	endpoints   string // the service's endpoints, joined by endpointSep
}

// endpointSep joins a service's endpoints in a key; no host:port holds it.
const endpointSep = "\n"

func joinEndpoints(e []string) string { return strings.Join(e, endpointSep) }

func splitEndpoints(e string) []string {
	if e == "" {
		return nil
	}
	return strings.Split(e, endpointSep)
}

func (p *gatewayPlan) clusterIn(sf *serviceFlows) clusterIn {
	in := clusterIn{trustDomain: p.trustDomain, self: p.spiffeID, service: sf.svc.Name, peer: sf.spiffeID,
		protocol: sf.svc.Protocol, endpoints: joinEndpoints(sf.svc.Endpoints)}
	if len(sf.svc.Hosts) > 0 {
		in.sni = sf.svc.Hosts[0]
	}
	return in
}

// spireAgentCluster reaches the SPIRE agent's SDS over its unix socket.
func spireAgentCluster(opts Options) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 SPIREAgentCluster,
		ConnectTimeout:       durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: SPIREAgentCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{
				lbEndpoint(&corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: opts.SDSSocket}}}),
			}}},
		},
		TypedExtensionProtocolOptions: http2Options(),
	}
}

// serviceClusterOf reaches a service over mTLS: the gateway presents its
// own SVID and accepts only the service's SPIFFE ID, verified against the
// trust bundle. Endpoints come by EDS when they are IP addresses; a service
// with DNS-named endpoints gets a STRICT_DNS cluster, since Envoy does not
// resolve names that arrive by EDS.
func serviceClusterOf(in clusterIn) *clusterv3.Cluster {
	name := serviceCluster(in.service)
	var alpn []string
	if in.protocol == topology.ProtocolGRPC {
		alpn = []string{"h2"}
	}
	c := &clusterv3.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(5 * time.Second),
		TransportSocket: upstreamTLS(in.trustDomain, in.self, in.sni, alpn, &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: in.peer},
		}),
	}
	if in.protocol == topology.ProtocolGRPC {
		c.TypedExtensionProtocolOptions = http2Options()
	}
	protectUpstream(c)
	if endpoints := splitEndpoints(in.endpoints); allIPs(endpoints) {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name}
	} else {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		c.LoadAssignment = loadAssignment(name, endpoints)
	}
	return c
}

// upstreamTLS presents the SVID of self (a SPIFFE ID served by the local
// SPIRE agent) and checks the peer's URI SAN with san, on top of chain
// verification against the trust bundle; alpn is offered as given (h2 for
// HTTP/2 clusters).
func upstreamTLS(trustDomain, self, sni string, alpn []string, san *matcherv3.StringMatcher) *corev3.TransportSocket {
	ctx := &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(self)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext: &tlsv3.CertificateValidationContext{
						MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
							SanType: tlsv3.SubjectAltNameMatcher_URI,
							Matcher: san,
						}},
					},
					ValidationContextSdsSecretConfig: sdsSecret(bundleSecretName(trustDomain)),
				},
			},
			AlpnProtocols: alpn,
		},
	}
	return tlsSocket(ctx)
}

// http2Options makes a cluster speak HTTP/2 (gRPC) upstream.
func http2Options() map[string]*anypb.Any { return http2With(&corev3.Http2ProtocolOptions{}) }

// controlPlaneHTTP2 is http2Options for the clusters of Vigil itself (xDS,
// ext_authz), with keepalive pings: a member that stopped answering is
// noticed within seconds, not at the next request.
func controlPlaneHTTP2() map[string]*anypb.Any {
	return http2With(&corev3.Http2ProtocolOptions{ConnectionKeepalive: keepalive()})
}

func http2With(o *corev3.Http2ProtocolOptions) map[string]*anypb.Any {
	return map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: o},
		}},
	})}
}

// protectUpstream bounds what one service's endpoints can take of a proxy
// (circuit breakers) and ejects an endpoint that keeps failing (outlier
// detection), so one broken backend neither exhausts the gateway nor gets
// half the requests.
func protectUpstream(c *clusterv3.Cluster) {
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxConnections:     wrapperspb.UInt32(1024),
		MaxPendingRequests: wrapperspb.UInt32(1024),
		MaxRequests:        wrapperspb.UInt32(1024),
		MaxRetries:         wrapperspb.UInt32(3),
	}}}
	c.OutlierDetection = &clusterv3.OutlierDetection{
		Consecutive_5Xx:    wrapperspb.UInt32(5),
		Interval:           durationpb.New(10 * time.Second),
		BaseEjectionTime:   durationpb.New(30 * time.Second),
		MaxEjectionPercent: wrapperspb.UInt32(50),
	}
}

// discoveryType is STATIC when every endpoint is an IP address.
func discoveryType(endpoints []string) clusterv3.Cluster_DiscoveryType {
	if allIPs(endpoints) {
		return clusterv3.Cluster_STATIC
	}
	return clusterv3.Cluster_STRICT_DNS
}

func usesEDS(svc *topology.Service) bool { return allIPs(svc.Endpoints) }

func allIPs(endpoints []string) bool {
	for _, e := range endpoints {
		h, _, err := net.SplitHostPort(e)
		if err != nil || net.ParseIP(h) == nil {
			return false
		}
	}
	return true
}
