package fleetsim

import (
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"

	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/xds"
)

// envoyRoute evaluates a gateway's route configuration as Envoy's router
// picks a route (virtual host by exact domain, else "*"; the first route
// whose path and :method match): the service its ext_authz context names,
// "" for a direct response (no Check), and the route's rate limit
// descriptor.
func envoyRoute(t *testing.T, rc *routev3.RouteConfiguration, host, method, path string) (service, descriptor string) {
	t.Helper()
	var vh, star *routev3.VirtualHost
	for _, v := range rc.GetVirtualHosts() {
		for _, d := range v.GetDomains() {
			switch {
			case d == host:
				vh = v
			case d == "*":
				star = v
			case strings.Contains(d, "*"):
				t.Fatalf("domain %q: wildcards are not modelled", d)
			}
		}
	}
	if vh == nil {
		vh = star
	}
	for _, r := range vh.GetRoutes() {
		m := r.GetMatch()
		var ok bool
		switch {
		case m.GetPrefix() != "":
			ok = strings.HasPrefix(path, m.GetPrefix())
		case m.GetPath() != "":
			ok = path == m.GetPath()
		default:
			t.Fatalf("route %s: path specifier %T not modelled", r.GetName(), m.GetPathSpecifier())
		}
		for _, h := range m.GetHeaders() {
			if h.GetName() != ":method" || h.GetStringMatch().GetExact() == "" {
				t.Fatalf("route %s: header matcher %v not modelled", r.GetName(), h)
			}
			ok = ok && h.GetStringMatch().GetExact() == method
		}
		if !ok {
			continue
		}
		if r.GetDirectResponse() != nil {
			return "", ""
		}
		for _, cfg := range r.GetTypedPerFilterConfig() {
			per := &authzv3.ExtAuthzPerRoute{}
			if cfg.UnmarshalTo(per) == nil {
				service = per.GetCheckSettings().GetContextExtensions()[ServiceExtension]
			}
		}
		for _, rl := range r.GetRoute().GetRateLimits() {
			for _, a := range rl.GetActions() {
				descriptor = a.GetGenericKey().GetDescriptorValue()
			}
		}
		if service == "" {
			t.Fatalf("route %s forwards without naming its service to ext_authz", r.GetName())
		}
		return service, descriptor
	}
	t.Fatalf("no route for %s %s%s in virtual host %s", method, host, path, vh.GetName())
	return "", ""
}

// TestGatewayModelMatchesXDS checks the simulator's model of a gateway
// against the route configuration Vigil's xDS really sends it: for every
// gateway, for requests to every host (and unknown ones) with the flows'
// methods and paths, the same requests reach ext_authz, for the same
// service, under the same local rate limit.
func TestGatewayModelMatchesXDS(t *testing.T) {
	for _, path := range []string{"testdata/small.yaml", smartCityPath} {
		ix := loadTopology(t, path)
		snap := topology.NewSnapshot(1, 1, ix, topology.NewState())
		hosts := []string{"unknown.example", "exfil.attacker.example"}
		for _, s := range ix.Services() {
			hosts = append(hosts, s.Hosts...)
		}
		paths := []string{"/", "/x", "/admin"}
		for _, r := range ix.Rules() {
			for _, p := range r.Paths {
				paths = append(paths, concretePath(p, "probe"), p.Value)
			}
		}
		for _, gw := range ix.Gateways() {
			res, err := xds.Translate(snap, xds.Node{ID: gw.Name, Cluster: gw.Zone}, xds.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var rc *routev3.RouteConfiguration
			for _, r := range res.Routes {
				if c, ok := r.(*routev3.RouteConfiguration); ok && c.GetName() == xds.GatewayRouteName {
					rc = c
				}
			}
			if rc == nil {
				t.Fatalf("%s: no route configuration %s", gw.Name, xds.GatewayRouteName)
			}
			limits := map[string]topology.Rate{}
			for _, cfg := range rc.GetTypedPerFilterConfig() {
				lr := &ratelimitv3.LocalRateLimit{}
				if cfg.UnmarshalTo(lr) != nil {
					continue
				}
				for _, d := range lr.GetDescriptors() {
					b := d.GetTokenBucket()
					limits[d.GetEntries()[0].GetValue()] = topology.Rate{N: int(b.GetMaxTokens()), Per: b.GetFillInterval().AsDuration()}
				}
			}
			model := newGatewayModel(ix, gw)
			checked := 0
			for _, h := range hosts {
				for _, m := range []string{"GET", "POST", "PUT", "DELETE"} {
					for _, p := range paths {
						wantSvc, desc := envoyRoute(t, rc, h, m, p)
						r := model.route(h, m, p)
						gotSvc, gotDesc, gotRate := "", "", topology.Rate{}
						if r != nil {
							gotSvc, gotRate = r.service, r.rate
							if !r.rate.IsZero() {
								gotDesc = r.key
							}
						}
						if gotSvc != wantSvc || gotDesc != desc || limits[desc] != gotRate {
							t.Errorf("%s %s: %s %s%s: model routes to %q (limit %q %v), xDS to %q (limit %q %v)",
								path, gw.Name, m, h, p, gotSvc, gotDesc, gotRate, wantSvc, desc, limits[desc])
						}
						if wantSvc != "" {
							checked++
						}
					}
				}
			}
			if checked == 0 {
				t.Errorf("%s %s: no request reached a route", path, gw.Name)
			}
		}
	}
}

func TestGatewayLocalAnswers(t *testing.T) {
	ix := small(t)
	gwA, _ := ix.Gateway("gw-a")
	g := newGatewayModel(ix, gwA)
	now := time.Unix(1_700_000_000, 0)
	r := g.route("tm.t.example:443", "POST", "/v1/readings")
	if r == nil || r.service != "telemetry" || r.rate != (topology.Rate{N: 12, Per: time.Minute}) {
		t.Fatalf("telemetry route = %+v", r)
	}
	for i := range 12 {
		if got := g.local("s-a-1", r, now.Add(time.Duration(i)*time.Second)); got != localNone {
			t.Fatalf("request %d: %q, want it sent to ext_authz", i, got)
		}
	}
	if got := g.local("s-a-1", r, now.Add(20*time.Second)); got != localRateLimit {
		t.Errorf("13th request in a minute: %q, want the local rate limit", got)
	}
	if got := g.local("s-a-2", r, now.Add(20*time.Second)); got != localNone {
		t.Errorf("another device's connection: %q, want its own bucket", got)
	}
	if got := g.local("s-a-1", r, now.Add(61*time.Second)); got != localNone {
		t.Errorf("after the fill interval: %q", got)
	}
	if got := g.local("s-a-1", g.route("fw.t.example", "GET", "/fw/x"), now); got != localNoRoute {
		t.Errorf("firmware is not routed at gw-a (only gw-b's devices have the flow): %q", got)
	}
	g.block("s-a-1", true)
	if got := g.local("s-a-1", r, now.Add(2*time.Minute)); got != localRBAC {
		t.Errorf("quarantined device: %q, want RBAC", got)
	}
	g.block("s-a-1", false)
	if got := g.local("s-a-1", r, now.Add(2*time.Minute)); got != localNone {
		t.Errorf("released device: %q", got)
	}
}
