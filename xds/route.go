package xds

import (
	"cmp"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vigil-iot/vigil/topology"
)

// denyBody is what the 403 catch-all answers.
const denyBody = `{"reason":"no flow of the topology allows this request"}` + "\n"

// gatewayRoutes has one virtual host per reachable service and a catch-all
// "*" host; each host ends in a 403 route, so anything no flow allows is
// refused by the gateway itself. The local rate limit configuration
// (gatewayRateLimit, one descriptor per rate-limited route) sits on the
// route configuration, so that every route resolves the same one.
func gatewayRoutes(p *gatewayPlan) *routev3.RouteConfiguration {
	rbac := quarantineRBAC(p)
	type vhostSpecs struct {
		sf    *serviceFlows
		specs []*routeSpec
	}
	var all []vhostSpecs
	var limited []*routeSpec
	for _, sf := range p.services {
		if len(sf.svc.Hosts) == 0 {
			continue // tcp: the HTTP listener cannot carry it
		}
		specs := mergeGrants(sf)
		for _, s := range specs {
			if !s.rate.IsZero() {
				limited = append(limited, s)
			}
		}
		all = append(all, vhostSpecs{sf, specs})
	}
	rl := gatewayRateLimit(limited)
	var hosts []*routev3.VirtualHost
	for _, vs := range all {
		vh := &routev3.VirtualHost{Name: vs.sf.svc.Name, Domains: vs.sf.svc.Hosts}
		for _, s := range vs.specs {
			vh.Routes = append(vh.Routes, specRoutes(s, vs.sf.svc, serviceCluster(vs.sf.svc.Name))...)
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
	rc := &routev3.RouteConfiguration{Name: GatewayRouteName, VirtualHosts: hosts}
	if rl != nil {
		rc.TypedPerFilterConfig = map[string]*anypb.Any{localRateLimitFilterName: rl}
	}
	return rc
}

// routeSpec is one path of a virtual host and what may use it: Envoy takes
// the first route that matches, so flows with the same path are merged into
// one spec rather than left to shadow each other.
type routeSpec struct {
	service string
	path    topology.PathMatch
	// methods allowed on the path, sorted; nil is any method.
	methods []string
	// flows whose grants the spec merges, in document order.
	flows []string
	// rate is the gateway's budget for the spec (zero: none); see
	// mergeGrants.
	rate topology.Rate
}

// key names the spec in its route configuration: the rate limit descriptor
// value and the base of its routes' names.
func (s *routeSpec) key() string {
	p := s.path.Value
	if s.path.Prefix {
		p += "*"
	}
	return s.service + ":" + p
}

// mergeGrants turns the grants of one service into route specs:
//
//   - one spec per distinct path (exact or prefix) of any grant, with the
//     union of the methods of the grants naming that path (any method if
//     one of them allows any);
//   - ordered so that Envoy's first match is the most specific: exact
//     paths first, then prefixes from longest to shortest;
//   - each spec's rate is the most generous rate among every grant that
//     covers its path and shares a method with it (no limit if one has
//     none), so the gateway never refuses a request the topology allows.
//     The authorizer still enforces each flow's exact budget.
func mergeGrants(sf *serviceFlows) []*routeSpec {
	byPath := map[topology.PathMatch]*routeSpec{}
	var specs []*routeSpec
	for _, g := range sf.grants {
		paths := g.rule.Paths
		if len(paths) == 0 {
			paths = []topology.PathMatch{{Value: "/", Prefix: true}}
		}
		for _, pm := range paths {
			s := byPath[pm]
			if s == nil {
				s = &routeSpec{service: sf.svc.Name, path: pm}
				if len(g.rule.Methods) > 0 {
					s.methods = slices.Clone(g.rule.Methods)
				}
				byPath[pm] = s
				specs = append(specs, s)
			} else if s.methods != nil {
				if len(g.rule.Methods) == 0 {
					s.methods = nil
				} else {
					s.methods = append(s.methods, g.rule.Methods...)
				}
			}
			if !slices.Contains(s.flows, g.rule.Name) {
				s.flows = append(s.flows, g.rule.Name)
			}
		}
	}
	for _, s := range specs {
		if s.methods != nil {
			slices.Sort(s.methods)
			s.methods = slices.Compact(s.methods)
		}
		s.rate = coveringRate(s, sf.grants)
	}
	slices.SortStableFunc(specs, func(a, b *routeSpec) int {
		if a.path.Prefix != b.path.Prefix {
			if a.path.Prefix {
				return 1
			}
			return -1
		}
		if a.path.Prefix {
			if c := cmp.Compare(len(b.path.Value), len(a.path.Value)); c != 0 {
				return c
			}
		}
		return strings.Compare(a.path.Value, b.path.Value)
	})
	return specs
}

// coveringRate is the most generous rate of the grants that cover s.
func coveringRate(s *routeSpec, grants []*grant) topology.Rate {
	var best topology.Rate
	found := false
	for _, g := range grants {
		if !grantCovers(g, s) {
			continue
		}
		r := grantRate(g)
		if r.IsZero() {
			return topology.Rate{}
		}
		if !found || r.PerSecond() > best.PerSecond() || r.PerSecond() == best.PerSecond() && r.N > best.N {
			best, found = r, true
		}
	}
	return best
}

// grantCovers reports whether some request that matches s is allowed by g.
func grantCovers(g *grant, s *routeSpec) bool {
	if len(g.rule.Methods) > 0 && s.methods != nil && !slices.ContainsFunc(g.rule.Methods, func(m string) bool { return slices.Contains(s.methods, m) }) {
		return false
	}
	if len(g.rule.Paths) == 0 {
		return true
	}
	for _, p := range g.rule.Paths {
		switch {
		case p == s.path:
			return true
		case p.Prefix && strings.HasPrefix(s.path.Value, p.Value):
			return true
		case !s.path.Prefix && !p.Prefix && p.Value == s.path.Value:
			return true
		}
	}
	return false
}

// edgeSpecs are the route specs of the flows into a service at its edge:
// the same merging as at a gateway, without rates.
func edgeSpecs(p *inboundPlan) []*routeSpec {
	sf := &serviceFlows{svc: p.svc}
	for _, ir := range p.rules {
		sf.grants = append(sf.grants, &grant{rule: ir.rule, service: p.svc.Name})
	}
	specs := mergeGrants(sf)
	for _, s := range specs {
		s.rate = topology.Rate{}
	}
	return specs
}

// specRoutes are the routes of one spec to cluster: one for any method,
// or one per method (an exact :method match: no regex, whose RE2 program
// size Envoy bounds). Each tells the authorizer the destination service,
// and, when the spec has a rate, emits the spec's descriptor of the route
// configuration's local rate limit.
func specRoutes(s *routeSpec, svc *topology.Service, cluster string) []*routev3.Route {
	perFilter := map[string]*anypb.Any{extAuthzFilterName: extAuthzRoute(svc.Name)}
	var limits []*routev3.RateLimit
	if !s.rate.IsZero() {
		limits = []*routev3.RateLimit{{Actions: []*routev3.RateLimit_Action{{
			ActionSpecifier: &routev3.RateLimit_Action_GenericKey_{GenericKey: &routev3.RateLimit_Action_GenericKey{
				DescriptorKey: rateLimitDescriptorKey, DescriptorValue: s.key(),
			}},
		}}}}
	}
	methods := s.methods
	if methods == nil {
		methods = []string{""}
	}
	name := strings.Join(s.flows, "+")
	routes := make([]*routev3.Route, 0, len(methods))
	for _, m := range methods {
		match := pathMatch(s.path, nil)
		rname := name + ":" + s.key()[len(s.service)+1:]
		if m != "" {
			rname += ":" + m
			match.Headers = []*routev3.HeaderMatcher{{
				Name: ":method",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m},
				}},
			}}
		}
		action := &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			RateLimits:       limits,
		}
		setTimeouts(action, svc.Protocol)
		routes = append(routes, &routev3.Route{
			Name:                 rname,
			Match:                match,
			Action:               &routev3.Route_Route{Route: action},
			TypedPerFilterConfig: perFilter,
		})
	}
	return routes
}

// Route timeouts. Envoy's default route timeout (15 s for the whole
// response) would cut firmware downloads and gRPC streams, so routes have
// none; instead a stream whose upstream sends nothing for the idle timeout
// is reset, and gRPC calls are bounded by their own grpc-timeout header.
const (
	httpRouteIdleTimeout = time.Minute
	grpcRouteIdleTimeout = 5 * time.Minute
)

func setTimeouts(a *routev3.RouteAction, protocol string) {
	a.Timeout = durationpb.New(0)
	if protocol == topology.ProtocolGRPC {
		a.IdleTimeout = durationpb.New(grpcRouteIdleTimeout)
		a.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{GrpcTimeoutHeaderMax: durationpb.New(0)}
		return
	}
	a.IdleTimeout = durationpb.New(httpRouteIdleTimeout)
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
