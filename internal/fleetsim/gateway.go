package fleetsim

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// The gateway model: what a gateway's Envoy, configured by Vigil's xDS,
// answers itself before (or instead of) asking ext_authz. Its HTTP
// filters run RBAC (quarantined identities) → local rate limit →
// ext_authz → router, and its routes are one virtual host per reachable
// service with a route per flow path and method, each ending in a 403
// route that skips ext_authz, plus a "*" host that answers 403 (xds
// route.go, docs/envoy.md). So only a request some flow of the gateway's
// devices routes reaches the authorizer; everything else is a local
// reply that only the access log shows. This file mirrors xds's
// planGateway, mergeGrants and coveringRate from the topology (fleetsim
// does not import xds).

// route is one route spec of a gateway: a path of a service with the
// methods some flow of the gateway's devices allows on it.
type route struct {
	service string
	path    topology.PathMatch
	methods []string      // sorted; nil: any method
	rate    topology.Rate // the local rate limit's budget; zero: none
	key     string        // the rate limit descriptor: service:path[*]
}

func (r *route) allows(method, path string) bool {
	return (r.methods == nil || slices.Contains(r.methods, method)) && r.path.Matches(path)
}

// grant is a flow from some of the gateway's devices to a service.
type grant struct {
	rule    *topology.Rule
	classes map[string]topology.Rate
}

// Local replies of a gateway, as the access log shows them.
const (
	localNone      = ""
	localRBAC      = "rbac_access_denied_matched_policy[quarantined]"
	localRateLimit = "local_rate_limited"
	localNoRoute   = "direct_response" // the 403 catch-all
)

// Bodies of the gateway's local replies.
var localBody = map[string]int{
	localRBAC:      len("RBAC: access denied"),
	localRateLimit: len("local_rate_limited"),
	localNoRoute:   len(`{"reason":"no flow of the topology allows this request"}` + "\n"),
}

// gatewayModel is one simulated gateway's Envoy: its routes, its local
// rate limit buckets (per device connection and route) and the devices
// its RBAC denies.
type gatewayModel struct {
	name, zone, id string
	hosts          map[string][]*route // authority → the service's routes, in Envoy's order

	mu      sync.Mutex
	buckets map[string]*envoyBucket
	blocked map[string]bool // devices known quarantined (RBAC pushed)
}

func newGatewayModel(ix *topology.Index, gw *topology.Gateway) *gatewayModel {
	g := &gatewayModel{name: gw.Name, zone: gw.Zone, hosts: map[string][]*route{},
		id:      topology.SPIFFEID(ix.TrustDomain(), gw.Zone, topology.GatewaySubject(gw.Name)),
		buckets: map[string]*envoyBucket{}, blocked: map[string]bool{}}
	type key struct {
		rule    *topology.Rule
		service string
	}
	grants := map[key]*grant{}
	bySvc := map[string][]*grant{}
	for _, d := range ix.DevicesOf(gw.Name) {
		class, _ := ix.Class(d.Class)
		for _, r := range ix.RulesFrom(topology.DeviceSubject(d.Name)) {
			for _, svc := range targetServices(ix, r) {
				k := key{r, svc.Name}
				gr := grants[k]
				if gr == nil {
					gr = &grant{rule: r, classes: map[string]topology.Rate{}}
					grants[k] = gr
					bySvc[svc.Name] = append(bySvc[svc.Name], gr)
				}
				if class != nil {
					gr.classes[d.Class] = class.Rate
				} else {
					gr.classes[d.Class] = topology.Rate{}
				}
			}
		}
	}
	for name, gs := range bySvc {
		svc, _ := ix.Service(name)
		slices.SortFunc(gs, func(a, b *grant) int { return cmp.Compare(a.rule.Position, b.rule.Position) })
		routes := mergeGrants(name, gs)
		for _, h := range svc.Hosts {
			g.hosts[strings.ToLower(h)] = routes
		}
	}
	return g
}

// mergeGrants is xds's: one route per distinct path of the grants with
// the union of their methods, exact paths first, then prefixes longest
// first, each limited by the most generous grant covering it.
func mergeGrants(service string, grants []*grant) []*route {
	byPath := map[topology.PathMatch]*route{}
	var routes []*route
	for _, g := range grants {
		paths := g.rule.Paths
		if len(paths) == 0 {
			paths = []topology.PathMatch{{Value: "/", Prefix: true}}
		}
		for _, pm := range paths {
			r := byPath[pm]
			if r == nil {
				r = &route{service: service, path: pm}
				if len(g.rule.Methods) > 0 {
					r.methods = slices.Clone(g.rule.Methods)
				}
				byPath[pm] = r
				routes = append(routes, r)
			} else if r.methods != nil {
				if len(g.rule.Methods) == 0 {
					r.methods = nil
				} else {
					r.methods = append(r.methods, g.rule.Methods...)
				}
			}
		}
	}
	for _, r := range routes {
		if r.methods != nil {
			slices.Sort(r.methods)
			r.methods = slices.Compact(r.methods)
		}
		r.rate = coveringRate(r, grants)
		p := r.path.Value
		if r.path.Prefix {
			p += "*"
		}
		r.key = service + ":" + p
	}
	slices.SortStableFunc(routes, func(a, b *route) int {
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
	return routes
}

func coveringRate(r *route, grants []*grant) topology.Rate {
	var best topology.Rate
	found := false
	for _, g := range grants {
		if !grantCovers(g, r) {
			continue
		}
		rate := grantRate(g)
		if rate.IsZero() {
			return topology.Rate{}
		}
		if !found || rate.PerSecond() > best.PerSecond() || rate.PerSecond() == best.PerSecond() && rate.N > best.N {
			best, found = rate, true
		}
	}
	return best
}

func grantCovers(g *grant, r *route) bool {
	if len(g.rule.Methods) > 0 && r.methods != nil && !slices.ContainsFunc(g.rule.Methods, func(m string) bool { return slices.Contains(r.methods, m) }) {
		return false
	}
	if len(g.rule.Paths) == 0 {
		return true
	}
	for _, p := range g.rule.Paths {
		switch {
		case p == r.path:
			return true
		case p.Prefix && strings.HasPrefix(r.path.Value, p.Value):
			return true
		}
	}
	return false
}

func grantRate(g *grant) topology.Rate {
	if !g.rule.Rate.IsZero() {
		return g.rule.Rate
	}
	var best topology.Rate
	for _, r := range g.classes {
		if r.IsZero() {
			return topology.Rate{}
		}
		if r.PerSecond() > best.PerSecond() {
			best = r
		}
	}
	return best
}

// route is the route Envoy picks for a request, nil for the 403 replies
// that skip ext_authz (no virtual host for the authority, or no route of
// its service for the method and path).
func (g *gatewayModel) route(host, method, path string) *route {
	for _, r := range g.hosts[strings.ToLower(hostOnly(host))] {
		if r.allows(method, path) {
			return r
		}
	}
	return nil
}

// local is what the gateway answers itself for device's request on r
// (nil: none), or localNone when the request goes on to ext_authz.
func (g *gatewayModel) local(device string, r *route, now time.Time) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.blocked[device]:
		return localRBAC
	case r == nil:
		return localNoRoute
	case r.rate.IsZero():
		return localNone
	}
	k := device + "\x00" + r.key
	b := g.buckets[k]
	if b == nil {
		b = &envoyBucket{tokens: r.rate.N, filled: now}
		g.buckets[k] = b
	}
	if !b.take(r.rate, now) {
		return localRateLimit
	}
	return localNone
}

// block and unblock follow the RBAC policy the gateway gets pushed when
// a device is quarantined or released.
func (g *gatewayModel) block(device string, on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if on {
		g.blocked[device] = true
	} else {
		delete(g.blocked, device)
	}
}

func (g *gatewayModel) blockedDevices() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]string, 0, len(g.blocked))
	for d := range g.blocked {
		out = append(out, d)
	}
	return out
}

// envoyBucket is Envoy's local rate limit token bucket: max_tokens N,
// tokens_per_fill N every fill_interval, starting full.
type envoyBucket struct {
	tokens int
	filled time.Time
}

func (b *envoyBucket) take(r topology.Rate, now time.Time) bool {
	if r.Per > 0 {
		if n := now.Sub(b.filled) / r.Per; n > 0 {
			b.tokens = r.N
			b.filled = b.filled.Add(n * r.Per)
		}
	}
	if b.tokens <= 0 {
		return false
	}
	b.tokens--
	return true
}

// hostOnly is an authority without its port.
func hostOnly(authority string) string {
	for i := len(authority) - 1; i >= 0; i-- {
		switch authority[i] {
		case ':':
			return authority[:i]
		case ']':
			return authority
		}
	}
	return authority
}
