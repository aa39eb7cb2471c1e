package envoymodel

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// router is envoy.filters.http.router: no route answers 404; a direct
// response answers itself; a route action needs a known cluster (else
// cluster_not_found_response_code, 503 by default) and forwards the
// request with the route's, virtual host's and route configuration's
// header mutations (in that order) and path/host rewrites.
func (p *Proxy) router(sel *selected, h hmap, o *Outcome) (*Outcome, error) {
	r := sel.route
	if r == nil {
		path, _ := h.get(":path")
		host, _ := h.get(":authority")
		return o.end("router", 404, fmt.Sprintf("no route for %s%s", host, path)), nil
	}
	switch a := r.GetAction().(type) {
	case *routev3.Route_DirectResponse:
		body := a.DirectResponse.GetBody()
		if body.GetFilename() != "" || body.GetEnvironmentVariable() != "" {
			return nil, unmodelled("direct response body from a file or the environment")
		}
		o.Body = body.GetInlineString() + string(body.GetInlineBytes())
		return o.end("router", int(a.DirectResponse.GetStatus()), fmt.Sprintf("direct response of route %q: %s", r.GetName(), strings.TrimSpace(o.Body))), nil
	case *routev3.Route_Redirect:
		return o.end("router", 301, fmt.Sprintf("redirect by route %q", r.GetName())), nil
	case *routev3.Route_Route:
		return p.forward(sel, a.Route, h, o)
	}
	return nil, unmodelled("route action %T", r.GetAction())
}

func (p *Proxy) forward(sel *selected, ra *routev3.RouteAction, h hmap, o *Outcome) (*Outcome, error) {
	var cluster string
	switch cs := ra.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		cluster = cs.Cluster
	case *routev3.RouteAction_ClusterHeader:
		cluster, _ = h.get(cs.ClusterHeader)
	default:
		return nil, unmodelled("cluster specifier %T", cs)
	}
	if p.Resources.Cluster(cluster) == nil {
		status := map[routev3.RouteAction_ClusterNotFoundResponseCode]int{routev3.RouteAction_SERVICE_UNAVAILABLE: 503,
			routev3.RouteAction_NOT_FOUND: 404, routev3.RouteAction_INTERNAL_SERVER_ERROR: 500}[ra.GetClusterNotFoundResponseCode()]
		return o.end("router", status, fmt.Sprintf("route %q names cluster %q, which was not sent", sel.route.GetName(), cluster)), nil
	}
	if ra.GetRegexRewrite() != nil || ra.GetPathRewritePolicy() != nil || ra.GetAutoHostRewrite().GetValue() ||
		ra.GetHostRewriteHeader() != "" || ra.GetHostRewritePathRegex() != nil {
		return nil, unmodelled("route %q: regex, policy or automatic rewrites", sel.route.GetName())
	}
	if pr := ra.GetPrefixRewrite(); pr != "" {
		if pm, ok := sel.route.GetMatch().GetPathSpecifier().(*routev3.RouteMatch_Prefix); ok {
			path, _ := h.get(":path")
			h.set(":path", pr+path[len(pm.Prefix):])
		}
	}
	if hr := ra.GetHostRewriteLiteral(); hr != "" {
		h.set(":authority", hr)
	}
	for _, lvl := range []struct {
		remove []string
		add    []*corev3.HeaderValueOption
	}{
		{sel.route.GetRequestHeadersToRemove(), sel.route.GetRequestHeadersToAdd()},
		{sel.vhost.GetRequestHeadersToRemove(), sel.vhost.GetRequestHeadersToAdd()},
		{sel.config.GetRequestHeadersToRemove(), sel.config.GetRequestHeadersToAdd()},
	} {
		for _, n := range lvl.remove {
			h.del(strings.ToLower(n))
		}
		for _, hv := range lvl.add {
			if err := addHeader(&h, hv); err != nil {
				return nil, err
			}
		}
	}
	o.Forwarded, o.Cluster, o.Upstream = true, cluster, h.request()
	o.DecidedBy, o.Reason = "router", "forwarded"
	if t := ra.GetTimeout(); t != nil {
		o.step("router: to cluster %s, timeout %v", cluster, t.AsDuration())
	} else {
		o.step("router: to cluster %s, default 15s timeout", cluster)
	}
	return o, nil
}

// addHeader applies one HeaderValueOption (no %FORMATTER% values).
func addHeader(h *hmap, hv *corev3.HeaderValueOption) error {
	k, v := strings.ToLower(hv.GetHeader().GetKey()), hv.GetHeader().GetValue()
	if strings.Contains(v, "%") {
		return unmodelled("header value formatter in %q", v)
	}
	_, exists := h.get(k)
	action := hv.GetAppendAction()
	if hv.GetAppend() != nil {
		action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		if hv.GetAppend().GetValue() {
			action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
		}
	}
	switch action {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		h.add(k, v)
	case corev3.HeaderValueOption_ADD_IF_ABSENT:
		if !exists {
			h.add(k, v)
		}
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		h.set(k, v)
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		if exists {
			h.set(k, v)
		}
	}
	return nil
}

// Forward sends the request o forwarded to next, the proxy that listens on
// the port of the cluster's first endpoint, as o's upstream connection
// would: the client presents the cluster's SDS certificate, and refuses a
// server whose certificate fails the cluster's validation context. from is
// the address next sees the connection come from.
func (p *Proxy) Forward(ctx context.Context, o *Outcome, from netip.AddrPort, next *Proxy) (*Outcome, error) {
	if !o.Forwarded {
		return nil, fmt.Errorf("envoymodel: %s did not forward the request", p.Name)
	}
	up := &Outcome{Proxy: p.Name, Cluster: o.Cluster}
	cl := p.Resources.Cluster(o.Cluster)
	addrs := p.Resources.Addresses(cl)
	if len(addrs) == 0 {
		return up.end("upstream", 503, fmt.Sprintf("cluster %s has no endpoint (no healthy upstream)", o.Cluster)), nil
	}
	ap, err := netip.ParseAddrPort(addrs[0])
	if err != nil {
		return nil, unmodelled("endpoint %q of cluster %s is not an IP address", addrs[0], o.Cluster)
	}
	tp, err := p.tlsPolicyOf(cl.GetTransportSocket())
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", o.Cluster, err)
	}
	dc := Downstream{LocalPort: uint32(ap.Port()), RemoteAddr: from}
	if tp != nil {
		dc.SNI = tp.sni
		if tp.local != nil {
			if dc.PeerChain, err = chainOf(tp.local); err != nil {
				return nil, err
			}
		}
		server, err := next.serverChain(dc.LocalPort)
		if err != nil {
			return nil, err
		}
		if len(server) == 0 {
			return up.end("upstream tls", 503, fmt.Sprintf("%s presents no certificate on port %d", next.Name, dc.LocalPort)), nil
		}
		if err := tp.verifyPeer(server, p.now()); err != nil {
			return up.end("upstream tls", 503, fmt.Sprintf("%s refuses %s's certificate: %v", p.Name, next.Name, err)), nil
		}
		up.step("upstream tls: %s presents %q, accepted", next.Name, principalOf(server[0]))
	}
	out, err := next.Handle(ctx, dc, *o.Upstream)
	if out != nil {
		out.Steps = append(up.Steps, out.Steps...)
	}
	return out, err
}

// serverChain is the certificate chain the listener on port presents (nil
// for no listener or no TLS).
func (p *Proxy) serverChain(port uint32) ([]*x509.Certificate, error) {
	l := p.Resources.Listener(port)
	if l == nil || len(l.GetFilterChains()) == 0 {
		return nil, nil
	}
	tp, err := p.tlsPolicyOf(l.GetFilterChains()[0].GetTransportSocket())
	if err != nil || tp == nil || tp.local == nil {
		return nil, err
	}
	return chainOf(tp.local)
}
