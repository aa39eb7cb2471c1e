package xds

import (
	"strings"
	"sync"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/vigil-iot/vigil/topology"
)

// Gateways whose devices have the same classes, and none of them
// quarantined, get byte-identical route configurations (thousands of
// gateways share a handful). routeMemo builds each distinct one once per
// document and hands every such gateway the same message with its digest.
// Results are what gatewayRoutes would build; only the work is shared.
var routeMemo struct {
	mu sync.Mutex
	ix *topology.Index // the document the entries belong to
	m  map[string]memoRoutes
}

type memoRoutes struct {
	rc  *routev3.RouteConfiguration
	enc *encoded
}

// routesKey names everything gatewayRoutes reads from p when no RBAC
// applies: per reachable service, each grant's flow and effective rate
// (a service's hosts and a flow's matches are fixed by the document).
func routesKey(p *gatewayPlan) string {
	var b strings.Builder
	for _, sf := range p.services {
		b.WriteString(sf.svc.Name)
		for _, g := range sf.grants {
			b.WriteByte(0)
			b.WriteString(g.rule.Name)
			b.WriteByte(1)
			b.WriteString(grantRate(g).String())
		}
		b.WriteByte(2)
	}
	return b.String()
}

// sharedGatewayRoutes is gatewayRoutes(p), validated and encoded, built
// once per distinct key of ix; gateways with quarantines are built alone.
func sharedGatewayRoutes(ix *topology.Index, p *gatewayPlan) (*routev3.RouteConfiguration, *encoded, error) {
	if p.gatewayQuarantined || len(p.quarantined) > 0 {
		rc := gatewayRoutes(p)
		enc, err := encode(rc)
		return rc, enc, err
	}
	key := routesKey(p)
	routeMemo.mu.Lock()
	if routeMemo.ix != ix {
		routeMemo.ix, routeMemo.m = ix, map[string]memoRoutes{}
	}
	e, ok := routeMemo.m[key]
	routeMemo.mu.Unlock()
	if ok {
		return e.rc, e.enc, nil
	}
	rc := gatewayRoutes(p)
	enc, err := encode(rc)
	if err != nil {
		return nil, nil, err
	}
	routeMemo.mu.Lock()
	if routeMemo.ix == ix {
		routeMemo.m[key] = memoRoutes{rc: rc, enc: enc}
	}
	routeMemo.mu.Unlock()
	return rc, enc, nil
}
