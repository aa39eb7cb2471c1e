package xds

import (
	"cmp"
	"net"
	"slices"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/topology"
)

// Proxyless gRPC (grpc-go's xDS client and xDS-enabled servers).
//
// A client dials xds:///<service host>; grpc-go asks for the listener named
// by that host, an API listener whose route configuration leads, per flow
// and path, to the service's cluster and endpoints. A server asks for the
// listener named by GRPCServerListenerTemplate with its listening address;
// it admits callers by the RBAC the flows into it give.
//
// Certificates come from the file_watcher certificate provider named
// GRPCCertProvider in the bootstrap (grpc-go does not speak SDS).
const (
	// GRPCServerListenerTemplate is the bootstrap's
	// server_listener_resource_name_template.
	GRPCServerListenerTemplate = "grpc/server?xds.resource.listening_address=%s"
	// GRPCCertProvider is the bootstrap's certificate provider instance.
	GRPCCertProvider = "vigil"
)

// GRPCServerListenerName is the listener an xDS-enabled gRPC server
// listening on addr (host:port, as net.JoinHostPort gives it) asks for.
func GRPCServerListenerName(addr string) string {
	return "grpc/server?xds.resource.listening_address=" + addr
}

// grpcClientRouteName and grpcServerRouteName name the route
// configurations of a called service and of the node's own service.
func grpcClientRouteName(service string) string { return "grpc-client-" + service }
func grpcServerRouteName(service string) string { return "grpc-inbound-" + service }

// translateProxyless builds the configuration of a proxyless gRPC node: a
// gateway or a service (by node.id). It calls the gRPC services its flows
// reach and, for a gRPC service, serves its own endpoints.
func translateProxyless(snap *topology.Snapshot, node Node) (*Resources, error) {
	ix := snap.Index()
	res := &Resources{}
	var (
		self    string
		callees []*serviceFlows
	)
	switch _, isGW := ix.Gateway(node.ID); {
	case isGW:
		p, err := planGateway(snap, node.ID)
		if err != nil {
			return nil, err
		}
		self = p.spiffeID
		if !p.gatewayQuarantined {
			callees = p.services
		}
	default:
		svc, ok := ix.Service(node.ID)
		if !ok {
			return nil, unknownNode(node, "no gateway or service of that name")
		}
		self = topology.SPIFFEID(ix.TrustDomain(), svc.Zone, topology.ServiceSubject(svc.Name))
		callees = planServiceCalls(ix, svc.Name)
		if svc.Protocol == topology.ProtocolGRPC {
			ip := planInbound(snap, svc, quarantinedDevices(snap))
			res.Listeners = append(res.Listeners, grpcServerListeners(ip)...)
			res.Routes = append(res.Routes, grpcServerRoutes(ip))
		}
	}
	for _, sf := range callees {
		if sf.svc.Protocol != topology.ProtocolGRPC {
			continue
		}
		rc := grpcClientRoutes(sf)
		if len(rc.VirtualHosts[0].Routes) == 0 {
			continue // no flow a gRPC call can take
		}
		for _, h := range sf.svc.Hosts {
			res.Listeners = append(res.Listeners, grpcAPIListener(h, sf.svc.Name))
		}
		res.Routes = append(res.Routes, rc)
		c, cla := grpcCluster(sf, self)
		res.Clusters = append(res.Clusters, c)
		if cla != nil {
			res.Endpoints = append(res.Endpoints, cla)
		}
	}
	return res, nil
}

// planServiceCalls lists the services service may call, with the flows
// that allow it, sorted by service name.
func planServiceCalls(ix *topology.Index, service string) []*serviceFlows {
	td := ix.TrustDomain()
	bySvc := map[string]*serviceFlows{}
	var out []*serviceFlows
	for _, r := range ix.RulesFrom(topology.ServiceSubject(service)) {
		for _, name := range targetServices(ix, r) {
			sf := bySvc[name]
			if sf == nil {
				svc, _ := ix.Service(name)
				sf = &serviceFlows{svc: svc, spiffeID: topology.SPIFFEID(td, svc.Zone, topology.ServiceSubject(name))}
				bySvc[name] = sf
				out = append(out, sf)
			}
			sf.grants = append(sf.grants, &grant{rule: r, service: name})
		}
	}
	slices.SortFunc(out, func(a, b *serviceFlows) int { return cmp.Compare(a.svc.Name, b.svc.Name) })
	return out
}

// grpcAPIListener is what grpc-go asks for when dialling xds:///host.
func grpcAPIListener(host, service string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "vigil_grpc_client",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: grpcClientRouteName(service),
		}},
		HttpFilters: []*hcmv3.HttpFilter{routerFilter()},
	}
	return &listenerv3.Listener{
		Name:        host,
		ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(hcm)},
	}
}

// grpcClientRoutes routes the flows' paths to the service's cluster. A gRPC
// call is a POST: a flow whose methods leave out POST gives no route. With
// no route left the call fails (UNAVAILABLE) in the client.
func grpcClientRoutes(sf *serviceFlows) *routev3.RouteConfiguration {
	vh := &routev3.VirtualHost{Name: sf.svc.Name, Domains: sf.svc.Hosts}
	for _, g := range sf.grants {
		r := g.rule
		if len(r.Methods) > 0 && !slices.Contains(r.Methods, "POST") {
			continue
		}
		paths := r.Paths
		if len(paths) == 0 {
			paths = []topology.PathMatch{{Value: "/", Prefix: true}}
		}
		for i, pm := range paths {
			vh.Routes = append(vh.Routes, &routev3.Route{
				Name:  r.Name + "." + strconv.Itoa(i),
				Match: pathMatch(pm, nil),
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: serviceCluster(sf.svc.Name)},
				}},
			})
		}
	}
	return &routev3.RouteConfiguration{Name: grpcClientRouteName(sf.svc.Name), VirtualHosts: []*routev3.VirtualHost{vh}}
}

// grpcCluster reaches a service over mTLS with certificates from the
// bootstrap's certificate provider, accepting only the service's SPIFFE
// ID. IP endpoints come by EDS; grpc-go resolves a DNS name only as a
// LOGICAL_DNS cluster of one name, so a service with DNS endpoints is
// reached through its first one.
func grpcCluster(sf *serviceFlows, self string) (*clusterv3.Cluster, types.Resource) {
	name := serviceCluster(sf.svc.Name)
	tls := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: GRPCCertProvider, CertificateName: self},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: GRPCCertProvider},
			// grpc-go reads match_subject_alt_names, not the typed form.
			MatchSubjectAltNames: []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: sf.spiffeID}}},
		}},
	}}
	c := &clusterv3.Cluster{
		Name:            name,
		LbPolicy:        clusterv3.Cluster_ROUND_ROBIN,
		TransportSocket: tlsSocket(tls),
	}
	if !usesEDS(sf.svc) {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS}
		c.LoadAssignment = loadAssignment(name, sf.svc.Endpoints[:1])
		return c, nil
	}
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
	c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name}
	cla := loadAssignment(name, sf.svc.Endpoints)
	for _, l := range cla.Endpoints {
		// grpc-go ignores a locality without a weight and rejects one
		// without an ID.
		l.LoadBalancingWeight = wrapperspb.UInt32(1)
		l.Locality = &corev3.Locality{Zone: sf.svc.Zone}
	}
	return c, cla
}

// grpcServerListeners are the listeners of an xDS-enabled gRPC server of
// the service: one per endpoint address and one per wildcard address on
// the endpoints' ports, since grpc-go asks by its listening address and
// checks the listener's address against it.
func grpcServerListeners(p *inboundPlan) []types.Resource {
	var addrs []string
	for _, e := range p.svc.Endpoints {
		host, port, _ := net.SplitHostPort(e)
		if net.ParseIP(host) != nil {
			addrs = append(addrs, net.JoinHostPort(host, port))
		}
		addrs = append(addrs, net.JoinHostPort("0.0.0.0", port), net.JoinHostPort("::", port))
	}
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "vigil_grpc_server",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: grpcServerRouteName(p.svc.Name),
		}},
		HttpFilters: []*hcmv3.HttpFilter{denyAllRBACFilter(), routerFilter()},
	}
	tls := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: GRPCCertProvider, CertificateName: p.spiffeID},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: GRPCCertProvider},
			}},
		},
	}
	chain := &listenerv3.FilterChain{
		Filters: []*listenerv3.Filter{{
			Name:       wellknown.HTTPConnectionManager,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
		}},
		TransportSocket: tlsSocket(tls),
	}
	out := make([]types.Resource, 0, len(addrs))
	for _, a := range addrs {
		host, port, _ := splitHostPort(a)
		out = append(out, &listenerv3.Listener{
			Name:             GRPCServerListenerName(a),
			TrafficDirection: corev3.TrafficDirection_INBOUND,
			Address:          socketAddress(host, port),
			FilterChains:     []*listenerv3.FilterChain{chain},
		})
	}
	return out
}

// grpcServerRoutes admits, on every RPC, what the flows into the service
// allow; a gRPC server's routes must not forward.
func grpcServerRoutes(p *inboundPlan) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: grpcServerRouteName(p.svc.Name),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    p.svc.Name,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:   "admit",
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
			}},
			TypedPerFilterConfig: inboundRBACPerRoute(p),
		}},
	}
}

func routerFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: wellknown.Router, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}}
}
