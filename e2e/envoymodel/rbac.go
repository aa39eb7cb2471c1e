package envoymodel

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// rbacFilter is envoy.filters.http.rbac: the most specific RBACPerRoute
// replaces the listener's config (an RBACPerRoute without rbac turns the
// filter off for the route); a config without rules enforces nothing;
// ALLOW admits what some policy matches, DENY refuses it, LOG admits all.
// Denials answer 403 "RBAC: access denied".
func (p *Proxy) rbacFilter(name string, cfgAny *anypb.Any, sel *selected, c *conn, h hmap, o *Outcome) (bool, error) {
	cfg := &rbacv3.RBAC{}
	if err := cfgAny.UnmarshalTo(cfg); err != nil {
		return false, err
	}
	level := "listener"
	per, err := sel.mostSpecific(name)
	if err != nil {
		return false, err
	}
	if per != nil {
		pr := &rbacv3.RBACPerRoute{}
		if err := per.UnmarshalTo(pr); err != nil {
			return false, fmt.Errorf("per-route config: %w", err)
		}
		if pr.GetRbac() == nil {
			o.step("%s: RBACPerRoute without rbac: off for this route", name)
			return false, nil
		}
		cfg, level = pr.GetRbac(), "route"
	}
	if cfg.GetMatcher() != nil {
		return false, unmodelled("RBAC matcher tree")
	}
	rules := cfg.GetRules()
	if rules == nil {
		o.step("%s (%s config): no rules, nothing enforced", name, level)
		return false, nil
	}
	matched, err := firstMatchingPolicy(rules, c, h)
	if err != nil {
		return false, err
	}
	var deny string
	switch rules.GetAction() {
	case rbacconfigv3.RBAC_ALLOW:
		if matched == "" {
			deny = fmt.Sprintf("no ALLOW policy matches (%s config, %d policies)", level, len(rules.GetPolicies()))
		}
	case rbacconfigv3.RBAC_DENY:
		if matched != "" {
			deny = fmt.Sprintf("DENY policy %q matches (%s config)", matched, level)
		}
	case rbacconfigv3.RBAC_LOG:
	default:
		return false, unmodelled("RBAC action %v", rules.GetAction())
	}
	if deny != "" {
		o.end(name, 403, deny)
		o.Body = "RBAC: access denied"
		return true, nil
	}
	o.step("%s (%s config): %s allows (policy %q)", name, level, rules.GetAction(), matched)
	return false, nil
}

// firstMatchingPolicy evaluates policies in lexicographic order of name
// and returns the first that matches ("" for none).
func firstMatchingPolicy(rules *rbacconfigv3.RBAC, c *conn, h hmap) (string, error) {
	names := make([]string, 0, len(rules.GetPolicies()))
	for n := range rules.GetPolicies() {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		pol := rules.GetPolicies()[n]
		if pol.GetCondition() != nil || pol.GetCheckedCondition() != nil || pol.GetCelConfig() != nil {
			return "", unmodelled("RBAC policy %q: CEL condition", n)
		}
		perm, err := anyOf(pol.GetPermissions(), func(x *rbacconfigv3.Permission) (bool, error) { return permission(x, c, h) })
		if err != nil {
			return "", fmt.Errorf("policy %q: %w", n, err)
		}
		if !perm {
			continue
		}
		prin, err := anyOf(pol.GetPrincipals(), func(x *rbacconfigv3.Principal) (bool, error) { return principal(x, c, h) })
		if err != nil {
			return "", fmt.Errorf("policy %q: %w", n, err)
		}
		if prin {
			return n, nil
		}
	}
	return "", nil
}

func anyOf[T any](xs []T, f func(T) (bool, error)) (bool, error) {
	for _, x := range xs {
		if ok, err := f(x); err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

func allOf[T any](xs []T, f func(T) (bool, error)) (bool, error) {
	for _, x := range xs {
		if ok, err := f(x); err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func permission(pm *rbacconfigv3.Permission, c *conn, h hmap) (bool, error) {
	rec := func(x *rbacconfigv3.Permission) (bool, error) { return permission(x, c, h) }
	switch r := pm.GetRule().(type) {
	case *rbacconfigv3.Permission_Any:
		return r.Any, nil
	case *rbacconfigv3.Permission_AndRules:
		return allOf(r.AndRules.GetRules(), rec)
	case *rbacconfigv3.Permission_OrRules:
		return anyOf(r.OrRules.GetRules(), rec)
	case *rbacconfigv3.Permission_NotRule:
		ok, err := rec(r.NotRule)
		return !ok, err
	case *rbacconfigv3.Permission_Header:
		return matchHeader(r.Header, h)
	case *rbacconfigv3.Permission_UrlPath:
		path, _ := h.get(":path")
		return matchString(r.UrlPath.GetPath(), pathOnly(path))
	case *rbacconfigv3.Permission_DestinationPort:
		return r.DestinationPort == c.localPort, nil
	case *rbacconfigv3.Permission_RequestedServerName:
		return matchString(r.RequestedServerName, c.sni)
	}
	return false, unmodelled("RBAC permission %v", pm)
}

func principal(pr *rbacconfigv3.Principal, c *conn, h hmap) (bool, error) {
	rec := func(x *rbacconfigv3.Principal) (bool, error) { return principal(x, c, h) }
	switch id := pr.GetIdentifier().(type) {
	case *rbacconfigv3.Principal_Any:
		return id.Any, nil
	case *rbacconfigv3.Principal_AndIds:
		return allOf(id.AndIds.GetIds(), rec)
	case *rbacconfigv3.Principal_OrIds:
		return anyOf(id.OrIds.GetIds(), rec)
	case *rbacconfigv3.Principal_NotId:
		ok, err := rec(id.NotId)
		return !ok, err
	case *rbacconfigv3.Principal_Header:
		return matchHeader(id.Header, h)
	case *rbacconfigv3.Principal_UrlPath:
		path, _ := h.get(":path")
		return matchString(id.UrlPath.GetPath(), pathOnly(path))
	case *rbacconfigv3.Principal_Authenticated_:
		return authenticated(id.Authenticated, c)
	case *rbacconfigv3.Principal_DirectRemoteIp:
		return inCIDR(id.DirectRemoteIp.GetAddressPrefix(), id.DirectRemoteIp.GetPrefixLen().GetValue(), c.remote.Addr())
	case *rbacconfigv3.Principal_RemoteIp:
		return inCIDR(id.RemoteIp.GetAddressPrefix(), id.RemoteIp.GetPrefixLen().GetValue(), c.remote.Addr())
	}
	return false, unmodelled("RBAC principal %v", pr)
}

// authenticated is AuthenticatedMatcher: a TLS peer certificate; with
// principal_name, any URI SAN, else any DNS SAN, else the subject must
// match.
func authenticated(a *rbacconfigv3.Principal_Authenticated, c *conn) (bool, error) {
	if c.peer == nil {
		return false, nil
	}
	m := a.GetPrincipalName()
	if m == nil {
		return true, nil
	}
	for _, u := range uriSANs(c.peer) {
		if ok, err := matchString(m, u); err != nil || ok {
			return ok, err
		}
	}
	for _, d := range c.peer.DNSNames {
		if ok, err := matchString(m, d); err != nil || ok {
			return ok, err
		}
	}
	return matchString(m, c.peer.Subject.String())
}

func inCIDR(prefix string, bits uint32, a netip.Addr) (bool, error) {
	pa, err := netip.ParseAddr(strings.TrimSpace(prefix))
	if err != nil {
		return false, err
	}
	pf, err := pa.Prefix(int(bits))
	if err != nil {
		return false, err
	}
	return pf.Contains(a.Unmap()), nil
}
