package xds

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vigil-iot/vigil/topology"
)

// denyBody is what the 403 catch-all answers.
const denyBody = `{"reason":"no flow of the topology allows this request"}` + "\n"

// gatewayRoutes has one virtual host per reachable service and a catch-all
// "*" host; each host ends in a 403 route, so anything no flow allows is
// refused by the gateway itself.
func gatewayRoutes(p *gatewayPlan) *routev3.RouteConfiguration {
	rbac := quarantineRBAC(p)
	var hosts []*routev3.VirtualHost
	for _, sf := range p.services {
		if len(sf.svc.Hosts) == 0 {
			continue // tcp: the HTTP listener cannot carry it
		}
		vh := &routev3.VirtualHost{Name: sf.svc.Name, Domains: sf.svc.Hosts}
		for _, g := range sf.grants {
			vh.Routes = append(vh.Routes, grantRoutes(sf, g)...)
		}
		vh.Routes = append(vh.Routes, denyRoute())
		hosts = append(hosts, vh)
	}
	hosts = append(hosts, &routev3.VirtualHost{Name: "deny-all", Domains: []string{"*"}, Routes: []*routev3.Route{denyRoute()}})
	if rbac != nil {
		for _, vh := range hosts {
			vh.TypedPerFilterConfig = map[string]*anypb.Any{rbacFilterName: rbac}
		}
	}
	return &routev3.RouteConfiguration{Name: GatewayRouteName, VirtualHosts: hosts}
}

// grantRoutes are the routes of a flow from this gateway's devices, with
// the flow's rate limit.
func grantRoutes(sf *serviceFlows, g *grant) []*routev3.Route {
	return flowRoutes(g.rule, sf.svc.Name, serviceCluster(sf.svc.Name), routeRateLimit(grantRate(g)))
}

// flowRoutes is one route per path of the flow (or one for any path) to
// cluster, telling the authorizer the destination service, with an
// optional local rate limit. The flow's methods become a header matcher
// on :method: an exact match for one method, an anchored alternation for
// several (methods are validated upper-case tokens, so the regex needs no
// escaping). One route per path rather than per method × path keeps a
// flow's routes few and its rate limit bucket shared across its methods,
// as the authorizer's is.
func flowRoutes(r *topology.Rule, service, cluster string, rateLimit *anypb.Any) []*routev3.Route {
	paths := r.Paths
	if len(paths) == 0 {
		paths = []topology.PathMatch{{Value: "/", Prefix: true}}
	}
	var headers []*routev3.HeaderMatcher
	if m := r.Methods; len(m) > 0 {
		sm := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m[0]}}
		if len(m) > 1 {
			sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
				Regex: "^(" + strings.Join(m, "|") + ")$",
			}}}
		}
		headers = []*routev3.HeaderMatcher{{
			Name:                 ":method",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm},
		}}
	}
	perFilter := map[string]*anypb.Any{extAuthzFilterName: extAuthzRoute(service)}
	if rateLimit != nil {
		perFilter[localRateLimitFilterName] = rateLimit
	}
	routes := make([]*routev3.Route, 0, len(paths))
	for i, pm := range paths {
		routes = append(routes, &routev3.Route{
			Name:  fmt.Sprintf("%s.%d", r.Name, i),
			Match: pathMatch(pm, headers),
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			}},
			TypedPerFilterConfig: perFilter,
		})
	}
	return routes
}

// pathMatch matches one path of a flow, exactly or by prefix.
func pathMatch(pm topology.PathMatch, headers []*routev3.HeaderMatcher) *routev3.RouteMatch {
	match := &routev3.RouteMatch{Headers: headers}
	if pm.Prefix {
		match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: pm.Value}
	} else {
		match.PathSpecifier = &routev3.RouteMatch_Path{Path: pm.Value}
	}
	return match
}

// denyRoute answers 403 without asking the authorizer.
func denyRoute() *routev3.Route {
	return &routev3.Route{
		Name:  "deny",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 403,
			Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: denyBody}},
		}},
		TypedPerFilterConfig: map[string]*anypb.Any{extAuthzFilterName: extAuthzDisabled()},
	}
}
