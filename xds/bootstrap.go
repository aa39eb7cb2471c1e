package xds

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	downstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// XDSCluster is the bootstrap's cluster of Vigil members serving xDS.
const XDSCluster = "vigil_xds"

// DefaultAdminSocket is where the bootstrap puts Envoy's admin interface:
// a unix socket only its owner may use (mode 0600), since the admin
// interface can change the proxy's state and read its secrets. Reach it
// with `curl --unix-socket /run/envoy/admin.sock http://admin/ready`.
const DefaultAdminSocket = "/run/envoy/admin.sock"

// maxDownstreamConnections is the overload manager's global limit on
// connections a proxy accepts, so that a connection flood cannot exhaust
// its memory or file descriptors.
const maxDownstreamConnections = 50000

// Bootstrap is the Envoy bootstrap for a gateway node: ADS to the given
// Vigil members for listeners and clusters (routes, endpoints and nothing
// else follow from them), the SPIRE agent's SDS cluster (which Envoy
// requires to be static), and the admin interface on loopback.
//
// With xdsIdentity (the node's SPIFFE ID) Envoy reaches Vigil over mutual
// TLS: it presents that SVID, from the SPIRE agent over SDS, and accepts
// only Vigil members' identities (spiffe://<td>/vigil/node/...), as a
// member started with proxy TLS requires.
func Bootstrap(node Node, xdsAddrs []string, opts Options, xdsIdentity string) (*bootstrapv3.Bootstrap, error) {
	opts = opts.withDefaults()
	if node.ID == "" {
		return nil, fmt.Errorf("bootstrap: a node id is required")
	}
	if node.Cluster == "" {
		return nil, fmt.Errorf("bootstrap: a node cluster (the zone) is required")
	}
	if len(xdsAddrs) == 0 {
		return nil, fmt.Errorf("bootstrap: at least one Vigil xDS address is required")
	}
	members := make([]*endpointv3.LbEndpoint, 0, len(xdsAddrs))
	allIP := true
	for _, a := range xdsAddrs {
		host, portStr, err := net.SplitHostPort(a)
		port, perr := strconv.ParseUint(portStr, 10, 16)
		if err != nil || perr != nil || host == "" {
			return nil, fmt.Errorf("bootstrap: xDS address %q must be host:port", a)
		}
		allIP = allIP && net.ParseIP(host) != nil
		members = append(members, lbEndpoint(socketAddress(host, uint32(port))))
	}
	discovery := clusterv3.Cluster_STATIC
	if !allIP {
		discovery = clusterv3.Cluster_STRICT_DNS
	}
	ads := &corev3.ApiConfigSource{
		ApiType:             corev3.ApiConfigSource_GRPC,
		TransportApiVersion: corev3.ApiVersion_V3,
		GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster}}}},
		SetNodeOnFirstMessageOnly: true,
	}
	var xdsTLS *corev3.TransportSocket
	if xdsIdentity != "" {
		u, err := url.Parse(xdsIdentity)
		if err != nil || u.Scheme != "spiffe" || u.Host == "" || u.Path == "" {
			return nil, fmt.Errorf("bootstrap: xDS identity %q is not a SPIFFE ID", xdsIdentity)
		}
		xdsTLS = upstreamTLS(u.Host, xdsIdentity, "", []string{"h2"}, &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: bundleSecretName(u.Host) + "/vigil/node/"},
		})
	}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: node.ID, Cluster: node.Cluster},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: ads,
			LdsConfig: adsSource(),
			CdsConfig: adsSource(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{
			{
				Name:                          XDSCluster,
				ConnectTimeout:                durationpb.New(2 * time.Second),
				ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: discovery},
				TypedExtensionProtocolOptions: controlPlaneHTTP2(),
				TransportSocket:               xdsTLS,
				LoadAssignment: &endpointv3.ClusterLoadAssignment{
					ClusterName: XDSCluster,
					Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: members}},
				},
			},
			spireAgentCluster(opts),
		}},
		Admin: &bootstrapv3.Admin{Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: DefaultAdminSocket, Mode: 0o600}}}},
		OverloadManager: &overloadv3.OverloadManager{
			RefreshInterval: durationpb.New(250 * time.Millisecond),
			ResourceMonitors: []*overloadv3.ResourceMonitor{{
				Name: "envoy.resource_monitors.global_downstream_max_connections",
				ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: mustAny(&downstreamv3.DownstreamConnectionsConfig{
					MaxActiveDownstreamConnections: maxDownstreamConnections,
				})},
			}},
		},
	}
	if err := validateDeep(b); err != nil {
		return nil, fmt.Errorf("bootstrap for %s does not validate: %w", node.ID, err)
	}
	return b, nil
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}
