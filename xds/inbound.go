package xds

import (
	"slices"
	"strings"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vigil-iot/vigil/topology"
)

// XFCCHeader carries the device identity a gateway forwards.
const XFCCHeader = "x-forwarded-client-cert"

// inboundPlan is who may reach one service: the flows into it, each with
// the identities that may use it. The cloud edge and xDS-enabled gRPC
// servers enforce it with RBAC.
type inboundPlan struct {
	trustDomain string
	svc         *topology.Service
	spiffeID    string
	rules       []*inboundRule // document order
}

// inboundRule is one flow into the service and its admitted callers.
type inboundRule struct {
	rule *topology.Rule
	// gateways front a device the flow selects and are not quarantined,
	// sorted by SPIFFE ID.
	gateways []gatewaySource
	// services are the SPIFFE IDs of the source services, sorted.
	services []string
}

// gatewaySource is a gateway admitted on behalf of its devices, except the
// quarantined ones (SPIFFE IDs, sorted).
type gatewaySource struct {
	spiffeID    string
	quarantined []string
}

// quarantinedDevices maps each gateway to the SPIFFE IDs of its
// quarantined devices, sorted. It walks the runtime state (subjects with
// any state) rather than every device of every source gateway.
func quarantinedDevices(snap *topology.Snapshot) map[string][]string {
	ix := snap.Index()
	out := map[string][]string{}
	snap.State().Range(func(sub topology.Subject, st *topology.SubjectState) bool {
		if sub.Kind != topology.KindDevice || st.Quarantine == nil {
			return true
		}
		if d, ok := ix.Device(sub.Name); ok {
			gw, _ := ix.Gateway(d.Gateway)
			out[d.Gateway] = append(out[d.Gateway], topology.SPIFFEID(ix.TrustDomain(), gw.Zone, sub))
		}
		return true
	})
	for _, ids := range out {
		slices.Sort(ids)
	}
	return out
}

// planInbound decides who may reach svc. quarantined is quarantinedDevices
// of snap.
func planInbound(snap *topology.Snapshot, svc *topology.Service, quarantined map[string][]string) *inboundPlan {
	ix := snap.Index()
	td := ix.TrustDomain()
	p := &inboundPlan{trustDomain: td, svc: svc, spiffeID: topology.SPIFFEID(td, svc.Zone, topology.ServiceSubject(svc.Name))}
	for _, r := range ix.RulesTo(topology.ServiceSubject(svc.Name)) {
		src := ix.SourcesOf(r)
		ir := &inboundRule{rule: r}
		for _, name := range src.Gateways {
			if snap.Quarantined(topology.GatewaySubject(name)) {
				continue // a quarantined gateway speaks for nobody
			}
			gw, _ := ix.Gateway(name)
			ir.gateways = append(ir.gateways, gatewaySource{
				spiffeID:    topology.SPIFFEID(td, gw.Zone, topology.GatewaySubject(name)),
				quarantined: quarantined[name],
			})
		}
		for _, name := range src.Services {
			s, _ := ix.Service(name)
			ir.services = append(ir.services, topology.SPIFFEID(td, s.Zone, topology.ServiceSubject(name)))
		}
		slices.SortFunc(ir.gateways, func(a, b gatewaySource) int { return strings.Compare(a.spiffeID, b.spiffeID) })
		slices.Sort(ir.services)
		p.rules = append(p.rules, ir)
	}
	return p
}

// inboundRBAC is the allow-list of p: one policy per flow, admitting its
// callers on its methods and paths; anything else is denied (an ALLOW
// RBAC denies what no policy matches, so a service nobody may reach gets
// an RBAC that denies everything).
//
// A gateway is admitted only when it names the device it speaks for in
// x-forwarded-client-cert, and not for a quarantined device; a service
// only when it names no device (a device identity is forwarded by
// gateways alone). Quarantined gateways are left out.
func inboundRBAC(p *inboundPlan) *rbacconfigv3.RBAC {
	policies := map[string]*rbacconfigv3.Policy{}
	for _, ir := range p.rules {
		var principals []*rbacconfigv3.Principal
		for _, g := range ir.gateways {
			ids := []*rbacconfigv3.Principal{authenticated(g.spiffeID), xfccPresent()}
			if len(g.quarantined) > 0 {
				ids = append(ids, notPrincipal(xfccNames(g.quarantined)))
			}
			principals = append(principals, andPrincipals(ids...))
		}
		for _, id := range ir.services {
			principals = append(principals, andPrincipals(authenticated(id), notPrincipal(xfccPresent())))
		}
		if len(principals) == 0 {
			continue // nobody left to admit
		}
		policies[ir.rule.Name] = &rbacconfigv3.Policy{
			Permissions: []*rbacconfigv3.Permission{rulePermission(ir.rule)},
			Principals:  principals,
		}
	}
	return &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW, Policies: policies}
}

// denyAllRBACFilter is the listener-level RBAC of an inbound listener: an
// allow-list without policies, so that if the per-route allow-list were
// ever missing, everything would be denied (fail closed).
func denyAllRBACFilter() *hcmv3.HttpFilter {
	cfg := &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW}}
	return &hcmv3.HttpFilter{Name: rbacFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// inboundRBACPerRoute carries p's allow-list with the route configuration,
// so that a change (a quarantine, a flow) applies to the next request on
// open connections.
func inboundRBACPerRoute(p *inboundPlan) map[string]*anypb.Any {
	return map[string]*anypb.Any{rbacFilterName: mustAny(&rbacv3.RBACPerRoute{Rbac: &rbacv3.RBAC{Rules: inboundRBAC(p)}})}
}

// rulePermission is the flow's paths (any path when it names none) and,
// when it names methods, one of them.
func rulePermission(r *topology.Rule) *rbacconfigv3.Permission {
	var parts []*rbacconfigv3.Permission
	if len(r.Paths) > 0 {
		var paths []*rbacconfigv3.Permission
		for _, pm := range r.Paths {
			sm := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: pm.Value}}
			if pm.Prefix {
				sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: pm.Value}}
			}
			paths = append(paths, &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{
				UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: sm}},
			}})
		}
		parts = append(parts, orPermissions(paths))
	}
	if len(r.Methods) > 0 {
		var methods []*rbacconfigv3.Permission
		for _, m := range r.Methods {
			methods = append(methods, &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: &routev3.HeaderMatcher{
				Name:                 ":method",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m}}},
			}}})
		}
		parts = append(parts, orPermissions(methods))
	}
	switch len(parts) {
	case 0:
		return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}
	case 1:
		return parts[0]
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{Rules: parts}}}
}

func orPermissions(ps []*rbacconfigv3.Permission) *rbacconfigv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{Rules: ps}}}
}

// authenticated matches the SPIFFE ID of a verified peer certificate.
func authenticated(id string) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{
		Authenticated: &rbacconfigv3.Principal_Authenticated{PrincipalName: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id},
		}},
	}}
}

func xfccPresent() *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Header{Header: &routev3.HeaderMatcher{
		Name:                 XFCCHeader,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
	}}}
}

// xfccNames matches an x-forwarded-client-cert header with a URI element
// equal to one of ids. The value must end the header or be followed by
// ';' or ',' (so that device "d" does not match device "d2"): a suffix and
// two contains matchers per ID. No regex: Envoy refuses a safe_regex whose
// RE2 program is larger than 100, which an alternation of a few SPIFFE IDs
// already is, and it would NACK the whole route configuration. A false
// match (the text inside another element's quoted value) can only deny.
func xfccNames(ids []string) *rbacconfigv3.Principal {
	var any []*rbacconfigv3.Principal
	for _, id := range ids {
		uri := "URI=" + id
		for _, sm := range []*matcherv3.StringMatcher{
			{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: uri}},
			{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: uri + ";"}},
			{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: uri + ","}},
		} {
			any = append(any, &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Header{Header: &routev3.HeaderMatcher{
				Name:                 XFCCHeader,
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm},
			}}})
		}
	}
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_OrIds{OrIds: &rbacconfigv3.Principal_Set{Ids: any}}}
}

func notPrincipal(p *rbacconfigv3.Principal) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_NotId{NotId: p}}
}

func andPrincipals(ps ...*rbacconfigv3.Principal) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_AndIds{AndIds: &rbacconfigv3.Principal_Set{Ids: ps}}}
}
