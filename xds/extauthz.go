package xds

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

const (
	// AuthzCluster is the cluster of Vigil's ext_authz endpoints.
	AuthzCluster = "vigil_authz"
	// ServiceContextKey is the route context extension naming the
	// destination service; the authorizer reads it.
	ServiceContextKey  = "vigil.service"
	extAuthzFilterName = "envoy.filters.http.ext_authz"
)

// extAuthzFilter asks Vigil about every request and fails closed: an
// unreachable or slow authorizer denies (403). withXFCC says whether the
// request's x-forwarded-client-cert goes to the authorizer.
//
// At a gateway it must not: the HCM sets XFCC (SANITIZE_SET, the device's
// URI) before any HTTP filter runs, and ext_authz sends every request
// header by default, so the authorizer would see the device as the
// principal *and* a forwarded identity, which only a gateway may send, and
// deny every device. The device is the principal there; XFCC is for the
// upstream (the cloud edge), which must see it: at an edge the gateway is
// the principal and XFCC names the device it speaks for.
func extAuthzFilter(opts Options, withXFCC bool) *hcmv3.HttpFilter {
	cfg := &authzv3.ExtAuthz{
		Services: &authzv3.ExtAuthz_GrpcService{GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: AuthzCluster}},
			Timeout:         durationpb.New(opts.AuthzTimeout),
		}},
		TransportApiVersion:    corev3.ApiVersion_V3,
		FailureModeAllow:       false,
		IncludePeerCertificate: true,
	}
	if !withXFCC {
		cfg.DisallowedHeaders = &matcherv3.ListStringMatcher{Patterns: []*matcherv3.StringMatcher{{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: XFCCHeader},
		}}}
	}
	return &hcmv3.HttpFilter{Name: extAuthzFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// extAuthzRoute tells the authorizer which service a route leads to.
func extAuthzRoute(service string) *anypb.Any {
	return mustAny(&authzv3.ExtAuthzPerRoute{Override: &authzv3.ExtAuthzPerRoute_CheckSettings{
		CheckSettings: &authzv3.CheckSettings{ContextExtensions: map[string]string{ServiceContextKey: service}},
	}})
}

// extAuthzDisabled skips the authorizer on the 403 catch-all: the request
// is denied locally anyway, and unroutable floods must not load Vigil.
func extAuthzDisabled() *anypb.Any {
	return mustAny(&authzv3.ExtAuthzPerRoute{Override: &authzv3.ExtAuthzPerRoute_Disabled{Disabled: true}})
}

// authzCluster reaches Vigil's ext_authz over HTTP/2: STATIC when every
// endpoint is an IP address, STRICT_DNS otherwise. With AuthzTLS the proxy
// presents the SVID of self.
func authzCluster(trustDomain, self string, opts Options) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                          AuthzCluster,
		ConnectTimeout:                durationpb.New(time.Second),
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: discoveryType(opts.AuthzEndpoints)},
		LoadAssignment:                loadAssignment(AuthzCluster, opts.AuthzEndpoints),
		TypedExtensionProtocolOptions: controlPlaneHTTP2(),
	}
	if opts.AuthzTLS {
		// Only a Vigil node may answer for Vigil.
		c.TransportSocket = upstreamTLS(trustDomain, self, "", []string{"h2"}, &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: bundleSecretName(trustDomain) + "/vigil/node/"},
		})
	}
	return c
}
