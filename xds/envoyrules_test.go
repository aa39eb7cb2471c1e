package xds

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// Rules about how Envoy behaves that Validate() cannot see, checked on the
// translation of every golden case. Each names the Envoy behaviour it
// guards against (see docs/envoy.md).

// eachEnvoyCase translates every golden case served to an Envoy (not a
// proxyless gRPC client) and calls f with its resources.
func eachEnvoyCase(t *testing.T, f func(t *testing.T, res *Resources)) {
	inputs, _ := filepath.Glob("testdata/in/*.yaml")
	if len(inputs) == 0 {
		t.Fatal("no golden inputs")
	}
	for _, in := range inputs {
		t.Run(strings.TrimSuffix(filepath.Base(in), ".yaml"), func(t *testing.T) {
			snap, node, opts := loadCase(t, in)
			if node.Proxyless {
				t.Skip("proxyless gRPC: not an Envoy")
			}
			res, err := Translate(snap, node, opts)
			if err != nil {
				t.Fatal(err)
			}
			f(t, res)
		})
	}
}

// hcmOf is the HTTP connection manager of a listener's first filter chain.
func hcmOf(t *testing.T, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			if f.GetName() == wellknown.HTTPConnectionManager {
				if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
					t.Fatal(err)
				}
				return hcm
			}
		}
	}
	return nil
}

// TestFiltersRunCheapestFirst (issue 11, finding 7): RBAC (quarantines,
// the allow-list) and the local rate limit decide before ext_authz, so a
// quarantined device or a flood costs no Check; the router is last.
func TestFiltersRunCheapestFirst(t *testing.T) {
	eachEnvoyCase(t, func(t *testing.T, res *Resources) {
		for _, r := range res.Listeners {
			l := r.(*listenerv3.Listener)
			hcm := hcmOf(t, l)
			if hcm == nil {
				continue
			}
			var names []string
			for _, f := range hcm.GetHttpFilters() {
				names = append(names, f.GetName())
			}
			authz := slices.Index(names, extAuthzFilterName)
			if authz < 0 {
				continue // the deny-all listener asks nobody
			}
			for _, before := range []string{rbacFilterName, localRateLimitFilterName} {
				if i := slices.Index(names, before); i > authz {
					t.Errorf("listener %s: %s runs after ext_authz: %v", l.GetName(), before, names)
				}
			}
			if names[len(names)-1] != wellknown.Router {
				t.Errorf("listener %s: the router is not last: %v", l.GetName(), names)
			}
		}
	})
}

// TestTheGatewayKeepsXFCCOutOfItsCheck (finding 1): the HCM sets XFCC
// (SANITIZE_SET with the device's URI) before any filter, and ext_authz
// sends every header unless told not to; the authorizer then sees a device
// forwarding an identity and denies. The gateway's ext_authz must not send
// XFCC; the edge's must (it names the device the gateway speaks for).
func TestTheGatewayKeepsXFCCOutOfItsCheck(t *testing.T) {
	eachEnvoyCase(t, func(t *testing.T, res *Resources) {
		for _, r := range res.Listeners {
			l := r.(*listenerv3.Listener)
			hcm := hcmOf(t, l)
			if hcm == nil {
				continue
			}
			for _, f := range hcm.GetHttpFilters() {
				if f.GetName() != extAuthzFilterName {
					continue
				}
				cfg := &authzv3.ExtAuthz{}
				if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
					t.Fatal(err)
				}
				sends := cfg.GetAllowedHeaders() == nil
				for _, p := range cfg.GetDisallowedHeaders().GetPatterns() {
					if p.GetExact() == XFCCHeader {
						sends = false
					}
				}
				setsXFCC := hcm.GetForwardClientCertDetails() == hcmv3.HttpConnectionManager_SANITIZE_SET
				if setsXFCC && sends {
					t.Errorf("listener %s sets XFCC itself (SANITIZE_SET) and sends it to ext_authz: every device would be denied", l.GetName())
				}
				if hcm.GetForwardClientCertDetails() == hcmv3.HttpConnectionManager_FORWARD_ONLY && !sends {
					t.Errorf("listener %s forwards a gateway's XFCC but keeps it from ext_authz: the edge could not name the device", l.GetName())
				}
			}
		}
	})
}

// TestNoRouteIsShadowed (finding 4): Envoy takes the first route that
// matches, so a second route with the same match (two flows with the same
// path and method) would never apply.
func TestNoRouteIsShadowed(t *testing.T) {
	eachEnvoyCase(t, func(t *testing.T, res *Resources) {
		for _, r := range res.Routes {
			rc := r.(*routev3.RouteConfiguration)
			for _, vh := range rc.GetVirtualHosts() {
				seen := map[string]string{}
				for _, rt := range vh.GetRoutes() {
					if rt.GetDirectResponse() != nil {
						continue // the 403 catch-all: shadowing it only means every request has a flow
					}
					key := prototext.Format(rt.GetMatch())
					if prev, ok := seen[key]; ok {
						t.Errorf("%s/%s: route %s has the same match as %s, which Envoy takes first", rc.GetName(), vh.GetName(), rt.GetName(), prev)
					}
					seen[key] = rt.GetName()
				}
			}
		}
	})
}

// TestEveryRouteHasATimeout (finding 6): Envoy's default route timeout is
// 15 s for the whole response, which cuts firmware downloads and streams.
func TestEveryRouteHasATimeout(t *testing.T) {
	eachEnvoyCase(t, func(t *testing.T, res *Resources) {
		for _, r := range res.Routes {
			rc := r.(*routev3.RouteConfiguration)
			for _, vh := range rc.GetVirtualHosts() {
				for _, rt := range vh.GetRoutes() {
					if a := rt.GetRoute(); a != nil && (a.GetTimeout() == nil || a.GetIdleTimeout() == nil) {
						t.Errorf("%s/%s: route %s keeps Envoy's default timeout", rc.GetName(), vh.GetName(), rt.GetName())
					}
				}
			}
		}
	})
}

// TestRateLimitsAreOneConfigPerRouteConfiguration (finding 3): Envoy keeps
// one per-connection limiter, built from the first route a connection hits
// (envoyproxy/envoy#22163). So the local rate limit configuration may sit
// only on the route configuration, where every route resolves the same
// one; each rate-limited route emits a descriptor that configuration has;
// and each descriptor's fill interval is a multiple of the default
// bucket's (Envoy's rule).
func TestRateLimitsAreOneConfigPerRouteConfiguration(t *testing.T) {
	eachEnvoyCase(t, func(t *testing.T, res *Resources) {
		for _, r := range res.Routes {
			rc := r.(*routev3.RouteConfiguration)
			cfg := &ratelimitv3.LocalRateLimit{}
			descriptors := map[string]bool{}
			if a := rc.GetTypedPerFilterConfig()[localRateLimitFilterName]; a != nil {
				if err := a.UnmarshalTo(cfg); err != nil {
					t.Fatal(err)
				}
				if !cfg.GetLocalRateLimitPerDownstreamConnection() || cfg.GetAlwaysConsumeDefaultTokenBucket().GetValue() {
					t.Errorf("%s: the limiter must be per connection and leave the default bucket to unmatched requests", rc.GetName())
				}
				base := cfg.GetTokenBucket().GetFillInterval().AsDuration()
				for _, d := range cfg.GetDescriptors() {
					descriptors[d.GetEntries()[0].GetValue()] = true
					if iv := d.GetTokenBucket().GetFillInterval().AsDuration(); base == 0 || iv%base != 0 {
						t.Errorf("%s: descriptor %v fills every %v, not a multiple of the default %v", rc.GetName(), d.GetEntries(), iv, base)
					}
				}
			}
			for _, vh := range rc.GetVirtualHosts() {
				if _, ok := vh.GetTypedPerFilterConfig()[localRateLimitFilterName]; ok {
					t.Errorf("%s/%s: a virtual host sets its own local rate limit", rc.GetName(), vh.GetName())
				}
				for _, rt := range vh.GetRoutes() {
					if _, ok := rt.GetTypedPerFilterConfig()[localRateLimitFilterName]; ok {
						t.Errorf("%s/%s: route %s sets its own local rate limit", rc.GetName(), vh.GetName(), rt.GetName())
					}
					for _, rl := range rt.GetRoute().GetRateLimits() {
						for _, a := range rl.GetActions() {
							if v := a.GetGenericKey().GetDescriptorValue(); !descriptors[v] {
								t.Errorf("%s/%s: route %s emits descriptor %q, which the configuration does not have", rc.GetName(), vh.GetName(), rt.GetName(), v)
							}
						}
					}
				}
			}
		}
	})
}

// TestMergedRoutesTakeTheMostGenerousRate: two flows with the same path
// and method become one route, limited at the more generous rate, so the
// gateway never refuses what one of them allows; the authorizer keeps each
// flow's exact budget.
func TestMergedRoutesTakeTheMostGenerousRate(t *testing.T) {
	snap, node, opts := loadCase(t, "testdata/in/smart-city-gw-north-1.yaml")
	res, err := Translate(snap, node, opts)
	if err != nil {
		t.Fatal(err)
	}
	rc := res.Routes[0].(*routev3.RouteConfiguration)
	cfg := &ratelimitv3.LocalRateLimit{}
	if err := rc.GetTypedPerFilterConfig()[localRateLimitFilterName].UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, d := range cfg.GetDescriptors() {
		if d.GetEntries()[0].GetValue() == "telemetry:/api/v1/telemetry" {
			found = true
			// aq-telemetry (12/m) and slc-telemetry (10/m) share the path.
			if n := d.GetTokenBucket().GetMaxTokens(); n != 12 {
				t.Errorf("merged telemetry route allows %d per minute, want the more generous 12", n)
			}
		}
	}
	if !found {
		t.Fatalf("no descriptor for the merged telemetry route in %s", prototext.Format(proto.Message(cfg)))
	}
}

// TestAccessLogsGoToTheBootstrapsXDSCluster (issue 13): every connection
// manager sent to an Envoy logs over gRPC ALS to the Vigil members. Envoy
// accepts an ALS cluster only if it is static, defined in the bootstrap
// ("Unknown gRPC client cluster" / "gRPC client cluster … is not static",
// envoyproxy/envoy#2360, #17908), and only transport_api_version V3;
// otherwise it NACKs the whole listener. The stdout log stays. The cloud
// edge logs XFCC (its device is forwarded), a gateway does not (its device
// is the peer certificate). The deny-all listener logs nothing over gRPC:
// it must be accepted whatever bootstrap the unknown node runs.
func TestAccessLogsGoToTheBootstrapsXDSCluster(t *testing.T) {
	boot, err := Bootstrap(Node{ID: "gw-north-1", Cluster: "north"}, []string{"10.0.0.1:18000"}, Options{}, "")
	if err != nil {
		t.Fatal(err)
	}
	static := map[string]bool{}
	for _, c := range boot.GetStaticResources().GetClusters() {
		static[c.GetName()] = true
	}
	checked := map[bool]int{} // listeners, by whether they forward XFCC
	eachEnvoyCase(t, func(t *testing.T, res *Resources) {
		for _, r := range res.Clusters {
			if static[name(r)] {
				t.Errorf("cluster %s is sent by CDS; it must only be in the bootstrap", name(r))
			}
		}
		for _, r := range res.Listeners {
			l := r.(*listenerv3.Listener)
			hcm := hcmOf(t, l)
			if hcm == nil {
				continue
			}
			var stdout int
			var als []*grpclogv3.HttpGrpcAccessLogConfig
			for _, a := range hcm.GetAccessLog() {
				if a.GetFilter() != nil {
					t.Errorf("listener %s: access log %s has a filter; every request is logged", l.GetName(), a.GetName())
				}
				switch cfg := a.GetTypedConfig(); {
				case cfg.MessageIs(&streamv3.StdoutAccessLog{}):
					stdout++
				case cfg.MessageIs(&grpclogv3.HttpGrpcAccessLogConfig{}):
					c := &grpclogv3.HttpGrpcAccessLogConfig{}
					if err := cfg.UnmarshalTo(c); err != nil {
						t.Fatal(err)
					}
					if a.GetName() != "envoy.access_loggers.http_grpc" {
						t.Errorf("listener %s: gRPC access log named %q", l.GetName(), a.GetName())
					}
					als = append(als, c)
				default:
					t.Errorf("listener %s: access log %s of type %s", l.GetName(), a.GetName(), cfg.GetTypeUrl())
				}
			}
			if stdout != 1 || len(als) != 1 {
				t.Errorf("listener %s: %d stdout and %d gRPC access logs, want one of each", l.GetName(), stdout, len(als))
				continue
			}
			common := als[0].GetCommonConfig()
			if cluster := common.GetGrpcService().GetEnvoyGrpc().GetClusterName(); cluster != XDSCluster || !static[cluster] {
				t.Errorf("listener %s: ALS to cluster %q (a bootstrap cluster: %v), want the bootstrap's %s", l.GetName(), cluster, static[cluster], XDSCluster)
			}
			if common.GetTransportApiVersion() != corev3.ApiVersion_V3 || common.GetLogName() != ALSLogName {
				t.Errorf("listener %s: ALS transport %v, log name %q", l.GetName(), common.GetTransportApiVersion(), common.GetLogName())
			}
			if common.GetBufferSizeBytes().GetValue() == 0 || common.GetBufferSizeBytes().GetValue() > MaxRequestBytes/4 {
				t.Errorf("listener %s: ALS buffer %v: a message must stay far below the server's MaxRequestBytes", l.GetName(), common.GetBufferSizeBytes())
			}
			wantXFCC := hcm.GetForwardClientCertDetails() == hcmv3.HttpConnectionManager_FORWARD_ONLY
			checked[wantXFCC]++
			if got := slices.Contains(als[0].GetAdditionalRequestHeadersToLog(), xfccHeader); got != wantXFCC {
				t.Errorf("listener %s (XFCC %v): logs %s: %v, want %v", l.GetName(), hcm.GetForwardClientCertDetails(), xfccHeader, got, wantXFCC)
			}
			if !slices.Contains(als[0].GetAdditionalRequestHeadersToLog(), decisionIDHeader) || !slices.Contains(als[0].GetAdditionalResponseHeadersToLog(), decisionIDHeader) {
				t.Errorf("listener %s: the decision ID is not logged from the request and the reply", l.GetName())
			}
		}
	})
	if checked[true] == 0 || checked[false] == 0 {
		t.Errorf("checked %d edge and %d gateway listeners; the golden cases must have both", checked[true], checked[false])
	}
	deny, err := DenyAll(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range hcmOf(t, deny.Listeners[0].(*listenerv3.Listener)).GetAccessLog() {
		if a.GetTypedConfig().MessageIs(&grpclogv3.HttpGrpcAccessLogConfig{}) {
			t.Error("the deny-all listener logs over gRPC: an unknown node's bootstrap may lack the cluster, and Envoy would NACK it")
		}
	}
}
