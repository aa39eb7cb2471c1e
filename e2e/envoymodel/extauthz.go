package envoymodel

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// extAuthz is envoy.filters.http.ext_authz with a gRPC service: it is
// skipped without a route or when the most specific ExtAuthzPerRoute
// disables it; otherwise the CheckRequest Envoy would build is sent to the
// real authorization service (reached as the cluster says: endpoints, TLS,
// client certificate), with context_extensions merged from the least to
// the most specific per-route config. OK applies the response's header
// mutations; a denial answers its status (403 by default) and body; a
// failed call answers status_on_error (403) unless failure_mode_allow.
func (p *Proxy) extAuthz(ctx context.Context, name string, cfgAny *anypb.Any, sel *selected, c *conn, h *hmap, o *Outcome) (bool, error) {
	cfg := &authzv3.ExtAuthz{}
	if err := cfgAny.UnmarshalTo(cfg); err != nil {
		return false, err
	}
	if sel.route == nil {
		o.step("%s: no route, so no check", name)
		return false, nil
	}
	levels, _, err := sel.perFilter(name)
	if err != nil {
		return false, err
	}
	per := make([]*authzv3.ExtAuthzPerRoute, len(levels))
	for i, a := range levels {
		per[i] = &authzv3.ExtAuthzPerRoute{}
		if err := a.UnmarshalTo(per[i]); err != nil {
			return false, fmt.Errorf("per-route config: %w", err)
		}
	}
	if len(per) > 0 && per[len(per)-1].GetDisabled() {
		o.step("%s: disabled by the route's ExtAuthzPerRoute", name)
		return false, nil
	}
	if fe := cfg.GetFilterEnabled(); fe != nil && !fullPercent(fe) {
		return false, unmodelled("ext_authz filter_enabled below 100%%")
	}
	if cfg.GetFilterEnabledMetadata() != nil || cfg.GetHttpService() != nil || len(cfg.GetMetadataContextNamespaces()) > 0 ||
		len(cfg.GetTypedMetadataContextNamespaces()) > 0 || len(cfg.GetRouteMetadataContextNamespaces()) > 0 {
		return false, unmodelled("ext_authz with an HTTP service, metadata context or filter_enabled_metadata")
	}
	svc := cfg.GetGrpcService()
	ext := map[string]string{}
	for _, pr := range per {
		for k, v := range pr.GetCheckSettings().GetContextExtensions() {
			ext[k] = v
		}
	}
	if len(per) > 0 {
		if s := per[len(per)-1].GetCheckSettings().GetGrpcService(); s != nil {
			svc = s
		}
	}
	req, err := checkRequest(cfg, c, *h, ext, p.now())
	if err != nil {
		return false, err
	}
	check := Check{Filter: name, Cluster: svc.GetEnvoyGrpc().GetClusterName(), Request: req}
	check.Response, check.Err = p.callAuthz(ctx, svc, req)
	o.Checks = append(o.Checks, check)
	if check.Err != nil {
		if isUnmodelled(check.Err) {
			return false, check.Err
		}
		if cfg.GetFailureModeAllow() {
			if cfg.GetFailureModeAllowHeaderAdd() {
				h.set("x-envoy-auth-failure-mode-allowed", "true")
			}
			o.step("%s: call failed (%v); failure_mode_allow lets it through", name, check.Err)
			return false, nil
		}
		status := 403
		if s := cfg.GetStatusOnError(); s != nil && s.GetCode() != 0 {
			status = int(s.GetCode())
		}
		o.end(name, status, "authorization call failed: "+check.Err.Error())
		return true, nil
	}
	resp := check.Response
	if code.Code(resp.GetStatus().GetCode()) != code.Code_OK {
		status := 403
		if d := resp.GetDeniedResponse(); d != nil && d.GetStatus().GetCode() != 0 {
			status = int(d.GetStatus().GetCode())
		}
		if cfg.GetShadowMode() {
			o.step("%s: denied %d in shadow mode: let through", name, status)
			return false, nil
		}
		o.end(name, status, authzReason(resp))
		o.Body = resp.GetDeniedResponse().GetBody()
		return true, nil
	}
	ok := resp.GetOkResponse()
	for _, hv := range ok.GetHeaders() {
		k, v := strings.ToLower(hv.GetHeader().GetKey()), hv.GetHeader().GetValue()
		if hv.GetAppend().GetValue() {
			if old, exists := h.get(k); exists {
				h.set(k, old+","+v)
			}
		} else {
			h.set(k, v)
		}
	}
	for _, k := range ok.GetHeadersToRemove() {
		if k = strings.ToLower(k); !strings.HasPrefix(k, ":") && k != "host" {
			h.del(k)
		}
	}
	if len(ok.GetQueryParametersToSet()) > 0 || len(ok.GetQueryParametersToRemove()) > 0 {
		return false, unmodelled("ext_authz query parameter mutations")
	}
	o.step("%s: OK (%s)", name, authzReason(resp))
	return false, nil
}

// authzReason is the authorizer's reason: "reason" of a JSON body (Vigil's
// form), else the body, else the gRPC status message.
func authzReason(resp *authv3.CheckResponse) string {
	body := resp.GetDeniedResponse().GetBody()
	var v struct{ Reason string }
	if json.Unmarshal([]byte(body), &v) == nil && v.Reason != "" {
		return v.Reason
	}
	if body != "" {
		return strings.TrimSpace(body)
	}
	return fmt.Sprintf("%s: %s", code.Code(resp.GetStatus().GetCode()), resp.GetStatus().GetMessage())
}

// checkRequest is CheckRequestUtils::createHttpCheck.
func checkRequest(cfg *authzv3.ExtAuthz, c *conn, h hmap, ext map[string]string, now time.Time) (*authv3.CheckRequest, error) {
	src := &authv3.AttributeContext_Peer{Address: sockAddr(c.remote), Principal: principalOf(c.peer)}
	if cfg.GetIncludePeerCertificate() && c.peer != nil {
		src.Certificate = urlEncodedPEM(c.peer)
	}
	dst := &authv3.AttributeContext_Peer{Address: sockAddr(netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(c.localPort))), Principal: principalOf(c.local)}
	method, _ := h.get(":method")
	path, _ := h.get(":path")
	host, _ := h.get(":authority")
	scheme, _ := h.get(":scheme")
	hr := &authv3.AttributeContext_HttpRequest{Id: "1", Method: method, Path: path, Host: host, Scheme: scheme, Protocol: "HTTP/2"}
	if cfg.GetEncodeRawHeaders() {
		hr.HeaderMap = &corev3.HeaderMap{}
	} else {
		hr.Headers = map[string]string{}
	}
	for _, e := range h {
		if e.Name == "x-envoy-auth-partial-body" {
			continue
		}
		if skip, err := keyMatches(cfg.GetDisallowedHeaders(), e.Name); err != nil || skip {
			if err != nil {
				return nil, err
			}
			continue
		}
		if cfg.GetAllowedHeaders() != nil {
			if keep, err := keyMatches(cfg.GetAllowedHeaders(), e.Name); err != nil || !keep {
				if err != nil {
					return nil, err
				}
				continue
			}
		}
		if hr.HeaderMap != nil {
			hr.HeaderMap.Headers = append(hr.HeaderMap.Headers, &corev3.HeaderValue{Key: e.Name, RawValue: []byte(e.Value)})
		} else if old, ok := hr.Headers[e.Name]; ok {
			hr.Headers[e.Name] = old + "," + e.Value
		} else {
			hr.Headers[e.Name] = e.Value
		}
	}
	attrs := &authv3.AttributeContext{Source: src, Destination: dst,
		Request:           &authv3.AttributeContext_Request{Time: timestamppb.New(now), Http: hr},
		ContextExtensions: ext}
	if cfg.GetIncludeTlsSession() {
		attrs.TlsSession = &authv3.AttributeContext_TLSSession{Sni: c.sni}
	}
	return &authv3.CheckRequest{Attributes: attrs}, nil
}

// keyMatches is HeaderKeyMatcher: any pattern matches the (lower-case)
// header name; false for no list.
func keyMatches(l *matcherv3.ListStringMatcher, key string) (bool, error) {
	for _, m := range l.GetPatterns() {
		if ok, err := matchString(m, key); err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

func sockAddr(a netip.AddrPort) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: a.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(a.Port())}}}}
}

// callAuthz sends the check over the gRPC service's cluster.
func (p *Proxy) callAuthz(ctx context.Context, svc *corev3.GrpcService, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if svc.GetEnvoyGrpc() == nil {
		return nil, unmodelled("ext_authz google_grpc service")
	}
	cc, err := p.authzConn(svc.GetEnvoyGrpc().GetClusterName())
	if err != nil {
		return nil, err
	}
	timeout := 200 * time.Millisecond // ext_authz's default
	if svc.GetTimeout() != nil {
		timeout = svc.GetTimeout().AsDuration()
	}
	if p.AuthzTimeout > 0 {
		timeout = p.AuthzTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return authv3.NewAuthorizationClient(cc).Check(ctx, req)
}

// authzConn dials the cluster's first endpoint as the cluster's transport
// socket says: the client certificate from SDS, the server checked
// against the validation context and its SAN matchers.
func (p *Proxy) authzConn(cluster string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cc := p.conns[cluster]; cc != nil {
		return cc, nil
	}
	cl := p.Resources.Cluster(cluster)
	if cl == nil {
		return nil, fmt.Errorf("cluster %q was not sent", cluster)
	}
	addrs := p.Resources.Addresses(cl)
	if len(addrs) == 0 {
		return nil, fmt.Errorf("cluster %q has no endpoint", cluster)
	}
	tp, err := p.tlsPolicyOf(cl.GetTransportSocket())
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", cluster, err)
	}
	creds := insecure.NewCredentials()
	if tp != nil {
		creds = credentials.NewTLS(tp.clientTLS(p.now))
	}
	cc, err := grpc.NewClient(addrs[0], grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	if p.conns == nil {
		p.conns = map[string]*grpc.ClientConn{}
	}
	p.conns[cluster] = cc
	return cc, nil
}

func isUnmodelled(err error) bool { return strings.Contains(err.Error(), "envoymodel: not modelled") }
