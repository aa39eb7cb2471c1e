package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// gatewayEndpoints is one ClusterLoadAssignment per EDS service cluster,
// from the service's endpoints in the topology (possibly none: the cluster
// then has no healthy host and Envoy answers 503).
func gatewayEndpoints(p *gatewayPlan) []types.Resource {
	var out []types.Resource
	for _, sf := range p.services {
		if usesEDS(sf.svc) {
			out = append(out, endpointsOf(p.endpointsIn(sf)))
		}
	}
	return out
}

// endpointsIn is everything a gateway's load assignment of one service is
// made of (the same for every gateway).
type endpointsIn struct {
	service   string
	endpoints string // joined by endpointSep
}

func (p *gatewayPlan) endpointsIn(sf *serviceFlows) endpointsIn {
	return endpointsIn{service: sf.svc.Name, endpoints: joinEndpoints(sf.svc.Endpoints)}
}

func endpointsOf(in endpointsIn) *endpointv3.ClusterLoadAssignment {
	return loadAssignment(serviceCluster(in.service), splitEndpoints(in.endpoints))
}

// loadAssignment lists host:port endpoints in one locality, in the given
// order. The endpoints were validated (by topology or Options.Validate).
func loadAssignment(cluster string, endpoints []string) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	if len(endpoints) == 0 {
		return cla
	}
	lle := &endpointv3.LocalityLbEndpoints{}
	for _, e := range endpoints {
		host, port, _ := splitHostPort(e)
		lle.LbEndpoints = append(lle.LbEndpoints, lbEndpoint(socketAddress(host, port)))
	}
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{lle}
	return cla
}

func lbEndpoint(addr *corev3.Address) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}}}
}
