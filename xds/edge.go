package xds

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/topology"
)

// edgePlan is a cloud edge's configuration: the zone's services that have
// backends, each fronted by its own inbound listener.
type edgePlan struct {
	trustDomain string
	zone        string
	spiffeID    string // the edge's own identity (ext_authz over mTLS)
	services    []*inboundPlan
}

// EdgeSPIFFEID is the identity of a cloud-edge proxy: it calls Vigil's
// ext_authz with it when Options.AuthzTLS is set. It serves each fronted
// service under that service's SPIFFE ID.
func EdgeSPIFFEID(trustDomain, zone, id string) string {
	return bundleSecretName(trustDomain) + "/zone/" + zone + "/edge/" + id
}

func planEdge(snap *topology.Snapshot, node Node) *edgePlan {
	ix := snap.Index()
	p := &edgePlan{trustDomain: ix.TrustDomain(), zone: node.Cluster, spiffeID: EdgeSPIFFEID(ix.TrustDomain(), node.Cluster, node.ID)}
	var quarantined map[string][]string
	for _, svc := range ix.ServicesIn(node.Cluster) { // sorted by name
		if len(svc.Backends) == 0 {
			continue
		}
		if quarantined == nil {
			quarantined = quarantinedDevices(snap)
		}
		p.services = append(p.services, planInbound(snap, svc, quarantined))
	}
	return p
}

func translateEdge(p *edgePlan, opts Options) *Resources {
	res := &Resources{}
	if len(p.services) == 0 {
		return res // nothing fronted: no listener, nothing to reach
	}
	res.Clusters = append(res.Clusters, authzCluster(p.trustDomain, p.spiffeID, opts))
	for _, ip := range p.services {
		res.Listeners = append(res.Listeners, edgeListener(ip, opts))
		res.Routes = append(res.Routes, edgeRoutes(ip))
		c, cla := backendCluster(ip.svc)
		res.Clusters = append(res.Clusters, c)
		if cla != nil {
			res.Endpoints = append(res.Endpoints, cla)
		}
	}
	return res
}

// Names of a fronted service's resources at the edge.
func inboundName(service string) string { return "inbound-" + service }
func backendName(service string) string { return "backend-" + service }

// edgeListener fronts one service on its endpoints' port: the peer must
// present an SVID of the trust domain, the edge presents the service's.
// Requests pass RBAC (the flows' allow-list) → ext_authz → router.
func edgeListener(p *inboundPlan, opts Options) *listenerv3.Listener {
	_, port, _ := splitHostPort(p.svc.Endpoints[0]) // validated: one port
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "vigil_inbound_" + p.svc.Name,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: inboundName(p.svc.Name),
		}},
		UseRemoteAddress: wrapperspb.Bool(true),
		// The device identity a gateway verified and forwarded reaches
		// the authorizer and the RBAC unchanged; RBAC admits it only
		// from gateways, and the authorizer only from the device's own.
		ForwardClientCertDetails:     hcmv3.HttpConnectionManager_FORWARD_ONLY,
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
		StripPortMode:                &hcmv3.HttpConnectionManager_StripAnyHostPort{StripAnyHostPort: true},
		// RBAC first: a caller the allow-list refuses (a quarantined
		// device, a stranger) costs no Check.
		HttpFilters: []*hcmv3.HttpFilter{
			denyAllRBACFilter(),
			extAuthzFilter(opts, true),
			routerFilter(),
		},
		// The device is the URI its gateway forwarded in XFCC.
		AccessLog: accessLogs(true),
	}
	hardenHCM(hcm, opts)
	alpn := []string{"h2", "http/1.1"}
	if p.svc.Protocol == topology.ProtocolGRPC {
		alpn = []string{"h2"}
	}
	return &listenerv3.Listener{
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(perConnectionBufferBytes),
		Name:                          inboundName(p.svc.Name),
		TrafficDirection:              corev3.TrafficDirection_INBOUND,
		Address:                       socketAddress("0.0.0.0", port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
			}},
			TransportSocket: sdsDownstreamTLS(p.spiffeID, p.trustDomain, alpn, nil),
		}},
	}
}

// edgeRoutes has one virtual host for the service's hosts, with a route
// per flow and path into the backend and a 403 catch-all, and a "*" host
// that denies. The flows' allow-list rides on the service's host.
func edgeRoutes(p *inboundPlan) *routev3.RouteConfiguration {
	rbac := inboundRBACPerRoute(p)
	vh := &routev3.VirtualHost{Name: p.svc.Name, Domains: p.svc.Hosts, TypedPerFilterConfig: rbac}
	for _, s := range edgeSpecs(p) {
		vh.Routes = append(vh.Routes, specRoutes(s, p.svc, backendName(p.svc.Name))...)
	}
	vh.Routes = append(vh.Routes, denyRoute())
	// No allow-list on "*": the listener's RBAC denies there first.
	deny := &routev3.VirtualHost{Name: "deny-all", Domains: []string{"*"}, Routes: []*routev3.Route{denyRoute()}}
	return &routev3.RouteConfiguration{Name: inboundName(p.svc.Name), VirtualHosts: []*routev3.VirtualHost{vh, deny}}
}

// backendCluster reaches the service's own processes over plain HTTP on
// the edge's local network (HTTP/2 for gRPC); by EDS when the backends are
// IP addresses, STRICT_DNS otherwise.
func backendCluster(svc *topology.Service) (*clusterv3.Cluster, types.Resource) {
	name := backendName(svc.Name)
	c := &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(5 * time.Second)}
	if svc.Protocol == topology.ProtocolGRPC {
		c.TypedExtensionProtocolOptions = http2Options()
	}
	protectUpstream(c)
	if !allIPs(svc.Backends) {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		c.LoadAssignment = loadAssignment(name, svc.Backends)
		return c, nil
	}
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
	c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name}
	return c, loadAssignment(name, svc.Backends)
}
