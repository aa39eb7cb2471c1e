package envoymodel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vigil-iot/vigil/internal/spiffetest"
)

// The model's own checks, against behaviour documented by Envoy (see
// doc.go), on small hand-written configurations in `vigil xds dump` form.

const modelListener = `# listeners
- name: l
  address: {socketAddress: {address: 0.0.0.0, portValue: 8443}}
  filterChains:
    - filters:
        - name: envoy.filters.network.http_connection_manager
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            statPrefix: t
            rds: {routeConfigName: r, configSource: {ads: {}}}
            forwardClientCertDetails: SANITIZE_SET
            setCurrentClientCertDetails: {uri: true}
            useRemoteAddress: true
            normalizePath: true
            mergeSlashes: true
            stripAnyHostPort: true
            httpFilters:
              - name: envoy.filters.http.rbac
                typedConfig: {'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC}
              - name: envoy.filters.http.ext_authz
                typedConfig:
                  '@type': type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                  grpcService: {envoyGrpc: {clusterName: authz}}
                  %s
              - name: envoy.filters.http.router
                typedConfig: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
      transportSocket:
        name: envoy.transport_sockets.tls
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          requireClientCertificate: true
          commonTlsContext:
            tlsCertificateSdsSecretConfigs: [{name: "spiffe://t.example/proxy"}]
            validationContextSdsSecretConfig: {name: "spiffe://t.example"}
---
# routes
- name: r
  virtualHosts:
    - name: wild
      domains: ["*.t.example"]
      routes: [{match: {prefix: /}, directResponse: {status: 404}}]
    - name: exact
      domains: [svc.t.example]
      routes:
        - name: post-only
          match: {path: /a, headers: [{name: ":method", stringMatch: {exact: POST}}]}
          route: {cluster: svc}
          typedPerFilterConfig:
            envoy.filters.http.ext_authz:
              '@type': type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
              checkSettings: {contextExtensions: {k: route}}
        - {name: deny, match: {prefix: /}, directResponse: {status: 403}}
    - name: any
      domains: ["*"]
      routes: [{match: {prefix: /}, directResponse: {status: 418}}]
---
# clusters
- name: svc
- name: authz
  loadAssignment:
    clusterName: authz
    endpoints: [{lbEndpoints: [{endpoint: {address: {socketAddress: {address: 127.0.0.1, portValue: %d}}}}]}]
---
`

type secrets struct {
	t  *testing.T
	ca *spiffetest.CA
	mu sync.Mutex
	m  map[string]*tls.Certificate
}

func (s *secrets) TLSCertificate(name string) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[name] == nil {
		c := s.ca.Issue(s.t, name).TLS
		s.m[name] = &c
	}
	return s.m[name], nil
}

func (s *secrets) ValidationContext(string) (*x509.CertPool, error) { return s.ca.Pool, nil }

type recorder struct {
	authv3.UnimplementedAuthorizationServer
	last *authv3.CheckRequest
}

func (r *recorder) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	r.last = req
	return &authv3.CheckResponse{Status: &status.Status{}}, nil
}

// modelProxy runs the listener above with extAuthzExtra added to the
// ext_authz config, against a recording authorization server.
func modelProxy(t *testing.T, extAuthzExtra string) (*Proxy, *recorder, *secrets) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, rec := grpc.NewServer(), &recorder{}
	authv3.RegisterAuthorizationServer(srv, rec)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	res, err := ParseDump([]byte(fmt.Sprintf(modelListener, extAuthzExtra, lis.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	sec := &secrets{t: t, ca: spiffetest.NewCA(t, "t.example"), m: map[string]*tls.Certificate{}}
	p := &Proxy{Name: "test", Resources: res, Secrets: sec}
	t.Cleanup(p.Close)
	return p, rec, sec
}

func (s *secrets) chain(t *testing.T, id string) []*x509.Certificate {
	c, _ := s.TLSCertificate(id)
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{leaf}
}

func TestEnvoyConformanceModelXFCCReachesExtAuthzUnlessDisallowed(t *testing.T) {
	for _, tc := range []struct {
		extra    string
		wantXFCC bool
	}{
		{"", true},
		{"disallowedHeaders: {patterns: [{exact: x-forwarded-client-cert}]}", false},
		{"allowedHeaders: {patterns: [{prefix: x-forwarded}]}", true},
	} {
		p, rec, sec := modelProxy(t, tc.extra)
		dev := sec.chain(t, "spiffe://t.example/device/d1")
		forged := []Header{{"x-forwarded-client-cert", "URI=spiffe://t.example/device/other"}}
		o, err := p.Handle(context.Background(), Downstream{LocalPort: 8443, RemoteAddr: netip.MustParseAddrPort("10.0.0.9:5000"), PeerChain: dev},
			Request{Method: "POST", Path: "/x/..//a", Authority: "svc.t.example:8443", Headers: forged})
		if err != nil {
			t.Fatal(err)
		}
		if !o.Forwarded || o.Route != "post-only" || o.Upstream.Path != "/a" || o.Upstream.Authority != "svc.t.example" {
			t.Fatalf("%q: %s", tc.extra, o.Trace())
		}
		want := "By=spiffe://t.example/proxy;Hash=" + certHash(dev[0]) + ";URI=spiffe://t.example/device/d1"
		if got, _ := o.Upstream.Get("x-forwarded-client-cert"); got != want {
			t.Errorf("upstream XFCC %q, want %q", got, want)
		}
		attrs := rec.last.GetAttributes()
		_, sent := attrs.GetRequest().GetHttp().GetHeaders()["x-forwarded-client-cert"]
		if sent != tc.wantXFCC || attrs.GetSource().GetPrincipal() != "spiffe://t.example/device/d1" || attrs.GetContextExtensions()["k"] != "route" {
			t.Errorf("%q: check request %v", tc.extra, attrs)
		}
		if _, ok := attrs.GetRequest().GetHttp().GetHeaders()[":method"]; ok == (tc.extra != "" && strings.HasPrefix(tc.extra, "allowed")) {
			t.Errorf("%q: pseudo-headers in the check request: %v", tc.extra, ok)
		}
	}
}

func TestEnvoyConformanceModelRouting(t *testing.T) {
	p, _, sec := modelProxy(t, "")
	dev := sec.chain(t, "spiffe://t.example/device/d1")
	for _, tc := range []struct{ method, host, path, route string }{
		{"GET", "svc.t.example", "/a", "deny"}, // first match: the method does not
		{"POST", "SVC.t.example:9", "/a?q", "post-only"},
		{"POST", "x.t.example", "/a", ""}, // the suffix wildcard beats "*"
		{"POST", "t.example", "/a", ""},   // "*"
	} {
		o, err := p.Handle(context.Background(), Downstream{LocalPort: 8443, PeerChain: dev}, Request{Method: tc.method, Path: tc.path, Authority: tc.host})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"svc.t.example": "exact", "x.t.example": "wild", "t.example": "any"}[strings.ToLower(stripPort(tc.host))]
		if o.VirtualHost != want || o.Route != tc.route {
			t.Errorf("%s %s%s: virtual host %q route %q, want %q %q", tc.method, tc.host, tc.path, o.VirtualHost, o.Route, want, tc.route)
		}
	}
	if o, _ := p.Handle(context.Background(), Downstream{LocalPort: 8443}, Request{Method: "GET", Path: "/", Authority: "svc.t.example"}); o.DecidedBy != "tls" {
		t.Errorf("no client certificate: %s", o.Summary())
	}
}

func TestEnvoyConformanceModelRBACPerRouteReplaces(t *testing.T) {
	p, _, sec := modelProxy(t, "")
	rc := p.Resources.RouteConfig("r")
	deny := &rbacv3.RBACPerRoute{Rbac: &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_DENY,
		Policies: map[string]*rbacconfigv3.Policy{"q": {
			Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}},
			Principals: []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: &rbacconfigv3.Principal_Authenticated{
				PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "/d2"}}}}}},
		}}}}}
	a, _ := anypb.New(deny)
	rc.VirtualHosts[1].TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.rbac": a}
	for dev, want := range map[string]bool{"d1": true, "d2": false} {
		o, err := p.Handle(context.Background(), Downstream{LocalPort: 8443, PeerChain: sec.chain(t, "spiffe://t.example/device/"+dev)},
			Request{Method: "POST", Path: "/a", Authority: "svc.t.example"})
		if err != nil {
			t.Fatal(err)
		}
		if o.Forwarded != want || (!want && o.DecidedBy != "envoy.filters.http.rbac") {
			t.Errorf("%s: %s", dev, o.Trace())
		}
	}
	// An RBACPerRoute without rbac switches the filter off for the route.
	a, _ = anypb.New(&rbacv3.RBACPerRoute{})
	rc.VirtualHosts[1].Routes[0].TypedPerFilterConfig["envoy.filters.http.rbac"] = a
	o, _ := p.Handle(context.Background(), Downstream{LocalPort: 8443, PeerChain: sec.chain(t, "spiffe://t.example/device/d2")},
		Request{Method: "POST", Path: "/a", Authority: "svc.t.example"})
	if !o.Forwarded {
		t.Errorf("route-level RBACPerRoute{} should disable the virtual host's: %s", o.Trace())
	}
}

// withAccessLogs replaces the access logs of p's listener.
func withAccessLogs(t *testing.T, p *Proxy, logs ...*accesslogv3.AccessLog) {
	t.Helper()
	f := p.Resources.Listeners[0].FilterChains[0].Filters[0]
	hcm := &hcmv3.HttpConnectionManager{}
	if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	hcm.AccessLog = logs
	a, err := anypb.New(hcm)
	if err != nil {
		t.Fatal(err)
	}
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
}

func grpcAccessLog(t *testing.T, cluster string, version corev3.ApiVersion) *accesslogv3.AccessLog {
	t.Helper()
	a, err := anypb.New(&grpclogv3.HttpGrpcAccessLogConfig{
		CommonConfig: &grpclogv3.CommonGrpcAccessLogConfig{
			LogName:             "test",
			GrpcService:         &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster}}},
			TransportApiVersion: version,
		},
		AdditionalRequestHeadersToLog: []string{"x-forwarded-client-cert", "x-absent"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &accesslogv3.AccessLog{Name: "envoy.access_loggers.http_grpc", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: a}}
}

const modelBootstrap = `# a bootstrap as vigil envoy bootstrap prints it
node: {id: proxy-1, cluster: z}
static_resources:
  clusters:
    - name: als
      type: STATIC
      load_assignment: {cluster_name: als, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18000}}}}]}]}
overload_manager:
  resource_monitors:
    - name: envoy.resource_monitors.global_downstream_max_connections
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
        max_active_downstream_connections: 10
`

// TestEnvoyConformanceModelAccessLogs: a gRPC access log must name a
// static (bootstrap) cluster with transport V3, as Envoy requires; each
// request is then logged with the peer, the request as the filters left
// it, and a local reply's status.
func TestEnvoyConformanceModelAccessLogs(t *testing.T) {
	boot, err := ParseBootstrap([]byte(modelBootstrap))
	if err != nil {
		t.Fatal(err)
	}
	dev := "spiffe://t.example/device/d1"
	send := func(p *Proxy, sec *secrets, method string) (*Outcome, error) {
		return p.Handle(context.Background(), Downstream{LocalPort: 8443, RemoteAddr: netip.MustParseAddrPort("10.0.0.9:5000"), PeerChain: sec.chain(t, dev)},
			Request{Method: method, Path: "/a", Authority: "svc.t.example"})
	}
	for _, tc := range []struct {
		name      string
		boot      bool
		log       *accesslogv3.AccessLog
		wantError string
	}{
		{"static cluster", true, grpcAccessLog(t, "als", corev3.ApiVersion_V3), ""},
		{"a CDS cluster", true, grpcAccessLog(t, "svc", corev3.ApiVersion_V3), "gRPC client cluster 'svc' is not static"},
		{"no such cluster", true, grpcAccessLog(t, "nowhere", corev3.ApiVersion_V3), "Unknown gRPC client cluster 'nowhere'"},
		{"transport AUTO", true, grpcAccessLog(t, "als", corev3.ApiVersion_AUTO), "V2 (and AUTO)"},
		{"no bootstrap", false, grpcAccessLog(t, "als", corev3.ApiVersion_V3), "not modelled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _, sec := modelProxy(t, "")
			if tc.boot {
				p.Bootstrap = boot
			}
			stdout, _ := anypb.New(&streamv3.StdoutAccessLog{})
			withAccessLogs(t, p, &accesslogv3.AccessLog{Name: "envoy.access_loggers.stdout", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: stdout}}, tc.log)
			if err := p.CheckAccessLogs(); tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("CheckAccessLogs: %v, want %q", err, tc.wantError)
				}
				if _, err := send(p, sec, "POST"); err == nil || !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("Handle: %v, want %q", err, tc.wantError)
				}
				return
			} else if err != nil {
				t.Fatal(err)
			}
			o, err := send(p, sec, "POST")
			if err != nil || !o.Forwarded || len(o.AccessLogs) != 2 {
				t.Fatalf("%v: %s, logs %v", err, o.Trace(), o.AccessLogs)
			}
			al := o.AccessLogs[1]
			e := al.Entry
			if al.Cluster != "als" || al.Identifier.GetNode().GetId() != "proxy-1" || al.Identifier.GetLogName() != "test" || o.AccessLogs[0].Cluster != "" {
				t.Errorf("logger %q to %q, identifier %v", al.Logger, al.Cluster, al.Identifier)
			}
			peer := e.GetCommonProperties().GetTlsProperties().GetPeerCertificateProperties().GetSubjectAltName()
			if len(peer) != 1 || peer[0].GetUri() != dev || e.GetCommonProperties().GetUpstreamCluster() != "svc" ||
				e.GetRequest().GetRequestMethod() != corev3.RequestMethod_POST || e.GetRequest().GetAuthority() != "svc.t.example" ||
				e.GetRequest().GetPath() != "/a" || e.GetResponse().GetResponseCode() != nil {
				t.Errorf("forwarded request's entry %v", e)
			}
			headers := e.GetRequest().GetRequestHeaders()
			if _, ok := headers["x-absent"]; len(headers) != 1 || !strings.HasSuffix(headers["x-forwarded-client-cert"], ";URI="+dev) || ok {
				t.Errorf("logged request headers %v, want the XFCC the connection manager set", headers)
			}
			o, err = send(p, sec, "GET") // the "deny" route: 403
			if err != nil || o.Forwarded || len(o.AccessLogs) != 2 {
				t.Fatalf("%v: %s", err, o.Trace())
			}
			if e := o.AccessLogs[1].Entry; e.GetResponse().GetResponseCode().GetValue() != 403 || e.GetCommonProperties().GetUpstreamCluster() != "" {
				t.Errorf("local reply's entry %v", e)
			}
		})
	}
}
