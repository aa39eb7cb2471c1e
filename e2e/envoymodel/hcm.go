package envoymodel

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// conn is what the filters know of the downstream connection.
type conn struct {
	tls         bool
	peer, local *x509.Certificate
	remote      netip.AddrPort
	localPort   uint32
	sni         string
}

// Handle runs one request through the modelled Envoy: listener, TLS
// handshake, the connection manager's request header processing, route
// selection, then the HTTP filters in order. Configuration the model does
// not cover is an error, never a guess.
//
// Once the connection is up, the connection manager's access logs are
// checked as Envoy checks them when it loads the listener (an error when
// Envoy would refuse them), and what each records for the request is in
// the outcome's AccessLogs.
func (p *Proxy) Handle(ctx context.Context, dc Downstream, req Request) (_ *Outcome, err error) {
	o := &Outcome{Proxy: p.Name}
	l := p.Resources.Listener(dc.LocalPort)
	if l == nil {
		return o.end("listener", 0, fmt.Sprintf("no listener on port %d", dc.LocalPort)), nil
	}
	o.Listener = l.GetName()
	if len(l.GetFilterChains()) != 1 || l.GetFilterChains()[0].GetFilterChainMatch() != nil || l.GetDefaultFilterChain() != nil {
		return nil, unmodelled("listener %s: filter chain selection (want exactly one chain without a match)", l.GetName())
	}
	fc := l.GetFilterChains()[0]
	c := &conn{remote: dc.RemoteAddr, localPort: dc.LocalPort, sni: dc.SNI}
	tp, err := p.tlsPolicyOf(fc.GetTransportSocket())
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", l.GetName(), err)
	}
	if tp != nil {
		c.tls = true
		if c.local, err = leafOf(tp.local); err != nil {
			return nil, err
		}
		o.LocalCert = c.local
		if err := tp.verifyPeer(dc.PeerChain, p.now()); err != nil {
			return o.end("tls", 0, "handshake fails: "+err.Error()), nil
		}
		if len(dc.PeerChain) > 0 {
			c.peer = dc.PeerChain[0]
		}
		o.PeerCert = c.peer
		o.step("tls: peer %q, local %q", principalOf(c.peer), principalOf(c.local))
	}
	hcm, err := hcmOf(l.GetName(), fc)
	if err != nil {
		return nil, err
	}
	loggers, err := p.accessLoggers(l.GetName(), hcm)
	if err != nil {
		return nil, err
	}
	if hcm.GetForwardClientCertMatcher() != nil || hcm.GetTypedHeaderValidationConfig() != nil ||
		len(hcm.GetEarlyHeaderMutationExtensions()) > 0 || len(hcm.GetOriginalIpDetectionExtensions()) > 0 || hcm.GetXffNumTrustedHops() > 0 {
		return nil, unmodelled("listener %s: forward_client_cert_matcher, header validation, early header mutation or trusted XFF hops", l.GetName())
	}
	rc, err := p.routeConfig(hcm)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", l.GetName(), err)
	}
	if req.Scheme == "" {
		req.Scheme = "http"
		if c.tls {
			req.Scheme = "https"
		}
	}
	h := hmap(req.headerMap())
	start := p.now()
	defer func() {
		if err == nil {
			p.logRequest(loggers, dc, c, h, start, o)
		}
	}()
	if status, why := prepareHeaders(hcm, c, &h, o); status != 0 {
		return o.end("hcm", status, why), nil
	}
	sel, err := route(rc, h, o)
	if err != nil {
		return nil, err
	}
	for _, f := range hcm.GetHttpFilters() {
		name := f.GetName()
		if f.GetConfigDiscovery() != nil {
			return nil, unmodelled("HTTP filter %s from ECDS", name)
		}
		levels, disabled, err := sel.perFilter(name)
		if err != nil {
			return nil, err
		}
		skip := f.GetDisabled() && len(levels) == 0
		if disabled != nil {
			skip = *disabled
		}
		if skip {
			o.step("%s: disabled for this route", name)
			continue
		}
		var stop bool
		cfg := f.GetTypedConfig()
		switch {
		case cfg.MessageIs(&rbacv3.RBAC{}):
			stop, err = p.rbacFilter(name, cfg, sel, c, h, o)
		case cfg.MessageIs(&ratelimitv3.LocalRateLimit{}):
			err = p.localRateLimit(name, cfg, sel, c, h, o)
		case cfg.MessageIs(&authzv3.ExtAuthz{}):
			stop, err = p.extAuthz(ctx, name, cfg, sel, c, &h, o)
		case cfg.MessageIs(&routerv3.Router{}):
			return p.router(sel, h, o)
		default:
			return nil, unmodelled("HTTP filter %s (%s)", name, cfg.GetTypeUrl())
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if stop {
			return o, nil
		}
	}
	return nil, unmodelled("listener %s: the HTTP filter chain has no router", l.GetName())
}

// hcmOf is the chain's HTTP connection manager, its only network filter.
func hcmOf(listener string, fc *listenerv3.FilterChain) (*hcmv3.HttpConnectionManager, error) {
	fs := fc.GetFilters()
	if len(fs) != 1 || !fs[0].GetTypedConfig().MessageIs(&hcmv3.HttpConnectionManager{}) {
		return nil, unmodelled("listener %s: network filters other than one HTTP connection manager", listener)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	return hcm, fs[0].GetTypedConfig().UnmarshalTo(hcm)
}

func (p *Proxy) routeConfig(hcm *hcmv3.HttpConnectionManager) (*routev3.RouteConfiguration, error) {
	switch {
	case hcm.GetRouteConfig() != nil:
		return hcm.GetRouteConfig(), nil
	case hcm.GetRds() != nil:
		name := hcm.GetRds().GetRouteConfigName()
		if rc := p.Resources.RouteConfig(name); rc != nil {
			return rc, nil
		}
		return nil, fmt.Errorf("route configuration %q (RDS) was not sent", name)
	}
	return nil, unmodelled("scoped routes")
}

// prepareHeaders is what the connection manager does to request headers
// before any filter (ConnectionManagerImpl::ActiveStream::decodeHeaders):
// header name checks, mutateRequestHeaders (XFF, x-forwarded-proto,
// x-request-id, XFCC), maybeNormalizePath and maybeNormalizeHost. A
// non-zero status is a local reply.
func prepareHeaders(hcm *hcmv3.HttpConnectionManager, c *conn, h *hmap, o *Outcome) (int, string) {
	switch hcm.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction() {
	case corev3.HttpProtocolOptions_REJECT_REQUEST:
		for _, e := range *h {
			if !strings.HasPrefix(e.Name, ":") && strings.Contains(e.Name, "_") {
				return 400, fmt.Sprintf("header %q has an underscore (headers_with_underscores_action: REJECT_REQUEST)", e.Name)
			}
		}
	case corev3.HttpProtocolOptions_DROP_HEADER:
		var drop []string
		for _, e := range *h {
			if !strings.HasPrefix(e.Name, ":") && strings.Contains(e.Name, "_") {
				drop = append(drop, e.Name)
			}
		}
		for _, n := range drop {
			h.del(n)
		}
	}
	for _, n := range []string{"connection", "upgrade", "keep-alive", "proxy-connection", "transfer-encoding", "x-envoy-internal"} {
		h.del(n)
	}
	proto := "http"
	if c.tls {
		proto = "https"
	}
	_, hadXFF := h.get("x-forwarded-for")
	if hcm.GetUseRemoteAddress().GetValue() {
		if !hcm.GetSkipXffAppend() {
			appendValue(h, "x-forwarded-for", c.remote.Addr().String())
		}
		h.set("x-forwarded-proto", proto)
	} else if _, ok := h.get("x-forwarded-proto"); !ok {
		h.set("x-forwarded-proto", proto)
	}
	// Internal: one XFF address that is private or loopback (the legacy
	// internal_address_config default).
	internal := hcm.GetUseRemoteAddress().GetValue() && !hadXFF && isInternal(c.remote.Addr())
	edge := hcm.GetUseRemoteAddress().GetValue() && !internal
	if internal {
		h.set("x-envoy-internal", "true")
	} else if edge {
		h.set("x-envoy-external-address", c.remote.Addr().String())
	}
	if _, ok := h.get("x-request-id"); (edge || !ok) && (hcm.GetGenerateRequestId() == nil || hcm.GetGenerateRequestId().GetValue()) {
		h.set("x-request-id", uuid())
	}
	xfcc(hcm, c, h, o)
	if status, why := normalizePath(hcm, h, o); status != 0 {
		return status, why
	}
	normalizeHost(hcm, c, h)
	return 0, ""
}

// xfcc is mutateXfccRequestHeader (conn_manager_utility.cc).
func xfcc(hcm *hcmv3.HttpConnectionManager, c *conn, h *hmap, o *Outcome) {
	const name = "x-forwarded-client-cert"
	mode := hcm.GetForwardClientCertDetails()
	switch {
	case mode == hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY:
		return
	case mode == hcmv3.HttpConnectionManager_SANITIZE || c.peer == nil:
		h.del(name)
		return
	case mode == hcmv3.HttpConnectionManager_FORWARD_ONLY:
		return
	}
	var details []string
	if c.local != nil && len(c.local.URIs) > 0 {
		details = append(details, "By="+c.local.URIs[0].String())
	}
	details = append(details, "Hash="+certHash(c.peer))
	set := hcm.GetSetCurrentClientCertDetails()
	if set.GetCert() {
		details = append(details, `Cert="`+urlEncodedPEM(c.peer)+`"`)
	}
	if set.GetChain() {
		details = append(details, `Chain="`+urlEncodedPEM(c.peer)+`"`) // the chain is the leaf here
	}
	if set.GetSubject().GetValue() {
		details = append(details, `Subject="`+c.peer.Subject.String()+`"`)
	}
	if set.GetUri() {
		if u := uriSANs(c.peer); len(u) > 0 {
			for _, v := range u {
				details = append(details, "URI="+v)
			}
		} else {
			details = append(details, "URI=")
		}
	}
	if set.GetDns() {
		for _, d := range c.peer.DNSNames {
			details = append(details, "DNS="+d)
		}
	}
	v := strings.Join(details, ";")
	if mode == hcmv3.HttpConnectionManager_APPEND_FORWARD {
		appendValue(h, name, v)
	} else {
		h.set(name, v)
	}
	got, _ := h.get(name)
	o.step("hcm: %s %s: %s", mode, name, got)
}

func appendValue(h *hmap, name, v string) {
	if old, ok := h.get(name); ok {
		h.set(name, old+","+v)
		return
	}
	h.set(name, v)
}

func normalizeHost(hcm *hcmv3.HttpConnectionManager, c *conn, h *hmap) {
	host, _ := h.get(":authority")
	if hcm.GetStripTrailingHostDot() {
		hp, port, hasPort := strings.Cut(host, ":")
		hp = strings.TrimSuffix(hp, ".")
		if host = hp; hasPort {
			host += ":" + port
		}
	}
	switch {
	case hcm.GetStripAnyHostPort():
		host = stripPort(host)
	case hcm.GetStripMatchingHostPort():
		if strings.HasSuffix(host, fmt.Sprintf(":%d", c.localPort)) {
			host = stripPort(host)
		}
	}
	h.set(":authority", host)
}

// stripPort removes a :port from a host (not from a bare IPv6 literal).
func stripPort(host string) string {
	i := strings.LastIndexByte(host, ':')
	if i < 0 || strings.Contains(host[i:], "]") || (strings.Count(host, ":") > 1 && !strings.HasPrefix(host, "[")) {
		return host
	}
	return host[:i]
}

func isInternal(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || a.IsPrivate()
}

func uuid() string {
	var b [16]byte
	rand.Read(b[:])
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// route is the route table lookup: a virtual host by :authority, then the
// first route of it that matches (RouteMatcher::route).
func route(rc *routev3.RouteConfiguration, h hmap, o *Outcome) (*selected, error) {
	host, _ := h.get(":authority")
	vh := findVirtualHost(rc, host)
	if vh == nil {
		o.step("route: no virtual host of %s matches %q", rc.GetName(), host)
		return &selected{config: rc}, nil
	}
	if vh.GetMatcher() != nil || vh.GetRequireTls() != routev3.VirtualHost_NONE {
		return nil, unmodelled("virtual host %s: matcher or require_tls", vh.GetName())
	}
	o.VirtualHost = vh.GetName()
	for _, r := range vh.GetRoutes() {
		ok, err := matchRoute(r.GetMatch(), h)
		if err != nil {
			return nil, fmt.Errorf("virtual host %s, route %q: %w", vh.GetName(), r.GetName(), err)
		}
		if ok {
			o.Route = r.GetName()
			o.step("route: virtual host %q (for %q), route %q", vh.GetName(), host, r.GetName())
			return &selected{config: rc, vhost: vh, route: r}, nil
		}
	}
	o.step("route: virtual host %q has no route for this request", vh.GetName())
	return &selected{config: rc, vhost: vh}, nil
}
