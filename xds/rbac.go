package xds

import (
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

const (
	rbacFilterName = "envoy.filters.http.rbac"
	// QuarantinePolicy is the name of the RBAC policy that denies
	// quarantined identities.
	QuarantinePolicy = "vigil-quarantine"
)

// rbacFilter is present on the listener with no rules of its own; the rules
// come with the route configuration (quarantineRBAC), so that quarantining
// a device is an RDS push: it applies to the next request on every open
// connection, and the listener (whose change would drain connections under
// the old config) stays byte-identical.
func rbacFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: rbacFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbacv3.RBAC{})}}
}

// quarantineRBAC denies the gateway's quarantined devices by the SPIFFE ID
// Envoy verified, and everything when the gateway itself is quarantined.
// It returns nil when nobody is quarantined. It is set on every virtual
// host, so no route can escape it.
func quarantineRBAC(p *gatewayPlan) *anypb.Any {
	var principals []*rbacconfigv3.Principal
	switch {
	case p.gatewayQuarantined:
		principals = []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}}
	case len(p.quarantined) == 0:
		return nil
	default:
		for _, id := range p.quarantined {
			principals = append(principals, &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{
				Authenticated: &rbacconfigv3.Principal_Authenticated{PrincipalName: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id},
				}},
			}})
		}
	}
	return mustAny(&rbacv3.RBACPerRoute{Rbac: &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{
		Action: rbacconfigv3.RBAC_DENY,
		Policies: map[string]*rbacconfigv3.Policy{QuarantinePolicy: {
			Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}},
			Principals:  principals,
		}},
	}}})
}
