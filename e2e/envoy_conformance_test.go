package e2e_test

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/e2e/envoymodel"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/topology"
)

// TestEnvoyConformance runs requests through a model of Envoy (package
// envoymodel) fed with the configuration a real member serves each gateway
// and each cloud edge of the smart-city example (attestation requirements
// removed), with the member's real ext_authz answering the checks. Every
// flow must be allowed end to end for every device it selects (device →
// gateway → cloud edge for fronted services); requests no flow allows,
// devices of other gateways, edge requests that name no device or another
// gateway's device, and quarantined devices must be denied. Each failure
// names the gateway, device, flow, the hop and filter that decided, and
// the authorizer's reason. It runs with proxy mTLS (the model's ext_authz
// client presents the gateway's or edge's SVID) and without.
func TestEnvoyConformance(t *testing.T) {
	for _, mode := range []struct {
		name     string
		proxyTLS bool
	}{{"proxy-tls", true}, {"plain", false}} {
		t.Run(mode.name, func(t *testing.T) { conformance(t, mode.proxyTLS) })
	}
}

func conformance(t *testing.T, proxyTLS bool) {
	ctx := ctxFor(t, 5*time.Minute)
	ca := spiffetest.NewCA(t, "city.example")
	// The world plays forged identities, scans and floods on purpose and
	// expects the topology's answer to each: the monitor, which would
	// (rightly) restrict and quarantine the devices that do them, is off.
	args := []string{"--monitor=false"}
	if proxyTLS {
		member := ca.Issue(t, "spiffe://city.example/vigil/node/n1", "127.0.0.1")
		cert, key, bundle := ca.Write(t, member, t.TempDir(), "member")
		args = append(args, "--proxy-tls-cert", cert, "--proxy-tls-key", key, "--proxy-tls-ca", bundle)
	}
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 1, Args: args})
	doc := smartCityUnattested(t)
	if _, err := c.Client(0).ApplyTopology(ctx, doc); err != nil {
		t.Fatal(err)
	}
	ix, err := topology.Load(doc)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, ctx: ctx, c: c, ix: ix, sds: newSVIDs(t, ca, ix.TrustDomain()), proxyTLS: proxyTLS,
		env: []string{"VIGIL_TOKEN_FILE=" + c.TokenFile(), "VIGIL_SERVER=" + c.Member(0).APIAddr}}
	w.load()
	r := &report{t: t}
	defer r.finish()

	// Every flow, for every device behind every gateway. One allowed
	// request per gateway into a fronted service is kept for the edge and
	// quarantine checks.
	kept := map[string]keptReq{}
	for _, gw := range ix.Gateways() {
		for _, d := range ix.DevicesOf(gw.Name) {
			for _, tg := range w.deviceFlows(d.Name) {
				for _, p := range flowProbes(gw.Name, d.Name, tg) {
					h := w.send(p)
					if r.want(p, h, true) {
						w.checkForwarded(p, h, r)
						if _, ok := kept[gw.Name]; !ok && h.edge != nil {
							kept[gw.Name] = keptReq{p, h}
						}
					}
				}
			}
		}
	}

	for _, gw := range ix.Gateways() {
		w.nonFlows(gw, r)
		if k, ok := kept[gw.Name]; ok {
			w.edgeNonFlows(k.p, k.h, r)
		}
	}

	// Quarantine the kept device of each gateway: the gateway must refuse
	// it, and the edge must refuse the request its gateway forwarded
	// before (a gateway that did not enforce the quarantine).
	var gws []string
	for gw, k := range kept {
		gws = append(gws, gw)
		mustCLI(t, w.env, "device", "quarantine", k.p.device, "--reason", "e2e conformance")
	}
	sort.Strings(gws)
	deadline := time.Now().Add(15 * time.Second)
	for _, gw := range gws {
		k := kept[gw]
		p := k.p
		p.what = "quarantined device, " + strings.TrimPrefix(p.what, "flow ")
		var h hops
		for {
			w.load()
			if h = w.send(p); !h.allowed() || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		r.want(p, h, false)
		p.what = "edge replay of a quarantined device's request"
		r.want(p, hops{gw: k.h.gw, edge: w.forward(p, k.h.gw, nil)}, false)
	}
}

// keptReq is an allowed request and what happened to it.
type keptReq struct {
	p probe
	h hops
}

// nonFlows sends, through gw, requests no flow allows: from a
// representative device of each class to services, methods, paths and
// hosts outside its flows, a forged XFCC, and devices of other gateways.
func (w *world) nonFlows(gw *topology.Gateway, r *report) {
	seen := map[string]bool{}
	for _, d := range w.ix.DevicesOf(gw.Name) {
		if seen[d.Class] {
			continue
		}
		seen[d.Class] = true
		flows := w.deviceFlows(d.Name)
		for _, svc := range w.ix.Services() {
			if len(svc.Hosts) == 0 || slices.ContainsFunc(flows, func(tg target) bool { return tg.svc == svc }) {
				continue
			}
			p := probe{what: fmt.Sprintf("no flow from class %s to service %s", d.Class, svc.Name), gateway: gw.Name, device: d.Name,
				method: "GET", path: "/", host: svc.Hosts[0]}
			if other := w.anyFlowInto(svc); other != nil { // a route the gateway has, for other devices
				p.method, p.path = methodOr(other.Methods), concretePath(pathOr(other.Paths), d.Name)
			}
			r.want(p, w.send(p), false)
		}
		if len(flows) == 0 {
			continue
		}
		base := flowProbes(gw.Name, d.Name, flows[0])[0]
		variants := []probe{
			{what: "method DELETE, outside flow " + flows[0].rule.Name, method: "DELETE"},
			{what: "path /admin, outside flow " + flows[0].rule.Name, path: "/admin"},
			{what: "dot segments out of flow " + flows[0].rule.Name, path: base.path + "/../../../admin"},
			{what: "host no service has", host: "admin." + w.ix.TrustDomain()},
		}
		for _, v := range variants {
			p := base
			p.what, p.method, p.path, p.host = v.what, orStr(v.method, p.method), orStr(v.path, p.path), orStr(v.host, p.host)
			h := w.send(p)
			if !r.want(p, h, false) {
				devID, _ := w.ix.SPIFFEID(topology.DeviceSubject(p.device))
				w.checkLogged(p, h.gw, w.gateways[p.gateway], devID, "", r)
			}
		}
		// A device sending its own XFCC naming another device: the gateway
		// must replace it with the identity it verified.
		if others := w.ix.DevicesOf(gw.Name); len(others) > 1 {
			other := others[0]
			if other.Name == d.Name {
				other = others[1]
			}
			otherID, _ := w.ix.SPIFFEID(topology.DeviceSubject(other.Name))
			p := base
			p.what = "forged x-forwarded-client-cert naming " + other.Name + ", " + base.what
			p.headers = []envoymodel.Header{{Name: "x-forwarded-client-cert", Value: "URI=" + otherID}}
			if h := w.send(p); r.want(p, h, true) {
				w.checkForwarded(p, h, r)
			}
		}
	}
	// Devices of another gateway presenting their own SVIDs to this one,
	// on one of their flows into a fronted service (the edge checks which
	// gateway speaks for a device) and, with proxy mTLS, into a service
	// reached directly (only the gateway's authorizer, which knows the
	// asking gateway, can check it then).
	for _, other := range w.ix.Gateways() {
		if other.Name == gw.Name {
			continue
		}
		for _, fronted := range []bool{true, false} {
			if !fronted && !w.proxyTLS {
				continue
			}
			for _, d := range w.ix.DevicesOf(other.Name) {
				flows := w.deviceFlows(d.Name)
				i := slices.IndexFunc(flows, func(tg target) bool { return (len(tg.svc.Backends) > 0) == fronted })
				if i < 0 {
					continue
				}
				p := flowProbes(gw.Name, d.Name, flows[i])[0]
				p.what = fmt.Sprintf("device of %s (zone %s) claiming %s", other.Name, other.Zone, p.what)
				r.want(p, w.send(p), false)
				break
			}
		}
	}
}

// edgeNonFlows replays at the edge what the gateway forwarded for p, as a
// compromised or buggy gateway might alter it: naming no device, or
// naming a device of another gateway.
func (w *world) edgeNonFlows(p probe, h hops, r *report) {
	q := p
	q.what = "edge request from " + p.gateway + " naming no device"
	r.want(q, hops{gw: h.gw, edge: w.forward(q, h.gw, withHeader("x-forwarded-client-cert", ""))}, false)
	dev, _ := w.ix.Device(p.device)
	for _, other := range w.ix.Gateways() {
		if other.Name == p.gateway {
			continue
		}
		for _, d := range w.ix.DevicesOf(other.Name) {
			if d.Class != dev.Class {
				continue
			}
			id, _ := w.ix.SPIFFEID(topology.DeviceSubject(d.Name))
			gwID, _ := w.ix.SPIFFEID(topology.GatewaySubject(p.gateway))
			q.what = fmt.Sprintf("edge request from %s naming %s (behind %s)", p.gateway, d.Name, other.Name)
			r.want(q, hops{gw: h.gw, edge: w.forward(q, h.gw, withHeader("x-forwarded-client-cert", "By="+gwID+";URI="+id))}, false)
			return
		}
	}
}

func (w *world) anyFlowInto(svc *topology.Service) *topology.Rule {
	for _, r := range w.ix.RulesTo(topology.ServiceSubject(svc.Name)) {
		return r
	}
	return nil
}

func methodOr(ms []string) string {
	if len(ms) == 0 {
		return "GET"
	}
	return ms[0]
}

func pathOr(ps []topology.PathMatch) topology.PathMatch {
	if len(ps) == 0 {
		return topology.PathMatch{Value: "/", Prefix: true}
	}
	return ps[0]
}

func orStr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// checkForwarded checks what an allowed request carried: the gateway asked
// about the device itself, forwarded the identity it verified in XFCC, to
// the service's endpoints; the edge asked about the gateway and forwarded
// to the service's backends.
func (w *world) checkForwarded(p probe, h hops, r *report) {
	devID, _ := w.ix.SPIFFEID(topology.DeviceSubject(p.device))
	gwID, _ := w.ix.SPIFFEID(topology.GatewaySubject(p.gateway))
	for _, c := range h.gw.Checks {
		if got := c.Request.GetAttributes().GetSource().GetPrincipal(); got != devID {
			r.fail(p, fmt.Sprintf("gateway %s asked the authorizer (%s) about %q, want the device %q", p.gateway, c.Filter, got, devID))
		}
	}
	xfcc, _ := h.gw.Upstream.Get("x-forwarded-client-cert")
	if !strings.Contains(xfcc, "URI="+devID) || !strings.Contains(xfcc, "By="+gwID) || strings.Count(xfcc, "URI=") != 1 {
		r.fail(p, fmt.Sprintf("gateway %s forwards x-forwarded-client-cert %q, want one element By=%s;…;URI=%s", p.gateway, xfcc, gwID, devID))
	}
	w.checkRateLimit(p, h, r)
	gw := w.gateways[p.gateway]
	w.checkLogged(p, h.gw, gw, devID, "", r)
	if got := gw.Resources.Addresses(gw.Resources.Cluster(h.gw.Cluster)); len(h.svc.Endpoints) > 0 && !slices.Equal(got, h.svc.Endpoints) {
		r.fail(p, fmt.Sprintf("gateway %s forwards to cluster %s at %v, want the service's endpoints %v", p.gateway, h.gw.Cluster, got, h.svc.Endpoints))
	}
	if h.edge == nil {
		return
	}
	for _, c := range h.edge.Checks {
		if got := c.Request.GetAttributes().GetSource().GetPrincipal(); got != gwID {
			r.fail(p, fmt.Sprintf("%s asked the authorizer about %q, want the gateway %q", h.edge.Proxy, got, gwID))
		}
	}
	edge := w.edges[h.svc.Zone]
	if got := edge.Resources.Addresses(edge.Resources.Cluster(h.edge.Cluster)); !slices.Equal(got, h.svc.Backends) {
		r.fail(p, fmt.Sprintf("%s forwards to cluster %s at %v, want the service's backends %v", h.edge.Proxy, h.edge.Cluster, got, h.svc.Backends))
	}
	w.checkLogged(p, h.edge, edge, gwID, devID, r)
}

// checkLogged checks what o's Envoy logs over gRPC ALS (issue 13): one
// logger, to the bootstrap cluster Envoy gets its xDS from (where the
// member's access log service listens), its stream naming the proxy's
// node; the entry names the downstream peer and, at a cloud edge, the
// device its gateway forwarded in XFCC (a gateway does not log XFCC); an
// allowed request carries the authorizer's decision ID and its cluster, a
// local reply its status.
func (w *world) checkLogged(p probe, o *envoymodel.Outcome, proxy *envoymodel.Proxy, peer, forwarded string, r *report) {
	var logs []envoymodel.AccessLog
	for _, al := range o.AccessLogs {
		if al.Cluster != "" {
			logs = append(logs, al)
		}
	}
	if len(logs) != 1 {
		r.fail(p, fmt.Sprintf("%s logs the request over gRPC %d times, want once", o.Proxy, len(logs)))
		return
	}
	al, e := logs[0], logs[0].Entry
	var ads string
	if svcs := proxy.Bootstrap.GetDynamicResources().GetAdsConfig().GetGrpcServices(); len(svcs) > 0 {
		ads = svcs[0].GetEnvoyGrpc().GetClusterName()
	}
	node := proxy.Bootstrap.GetNode()
	if al.Cluster != ads || al.Identifier.GetNode().GetId() != node.GetId() || al.Identifier.GetNode().GetCluster() != node.GetCluster() {
		r.fail(p, fmt.Sprintf("%s logs to cluster %q as node %v, want the xDS cluster %q as %v", o.Proxy, al.Cluster, al.Identifier.GetNode(), ads, node))
	}
	var gotPeer string
	if sans := e.GetCommonProperties().GetTlsProperties().GetPeerCertificateProperties().GetSubjectAltName(); len(sans) > 0 {
		gotPeer = sans[0].GetUri()
	}
	xfcc, logsXFCC := e.GetRequest().GetRequestHeaders()["x-forwarded-client-cert"]
	switch {
	case gotPeer != peer:
		r.fail(p, fmt.Sprintf("%s logs the peer %q, want %q", o.Proxy, gotPeer, peer))
	case forwarded == "" && logsXFCC:
		r.fail(p, fmt.Sprintf("%s logs x-forwarded-client-cert %q; its device is the peer", o.Proxy, xfcc))
	case forwarded != "" && !strings.Contains(xfcc, "URI="+forwarded):
		r.fail(p, fmt.Sprintf("%s logs x-forwarded-client-cert %q, want the forwarded device %s", o.Proxy, xfcc, forwarded))
	}
	if o.Forwarded {
		if e.GetRequest().GetRequestHeaders()["x-vigil-decision-id"] == "" || e.GetCommonProperties().GetUpstreamCluster() != o.Cluster {
			r.fail(p, fmt.Sprintf("%s logs an allowed request without its decision ID or cluster %s: %v", o.Proxy, o.Cluster, e))
		}
	} else if got := e.GetResponse().GetResponseCode().GetValue(); got != uint32(o.Status) {
		r.fail(p, fmt.Sprintf("%s logs status %d, answered %d", o.Proxy, got, o.Status))
	}
}

// checkRateLimit records the local rate limit buckets the gateway would
// spend, and requires an enabled, enforced bucket for a flow that has a
// rate (its own, or its device's class's).
func (w *world) checkRateLimit(p probe, h hops, r *report) {
	if p.rule == nil {
		return
	}
	dev, _ := w.ix.Device(p.device)
	class, _ := w.ix.Class(dev.Class)
	limited := !p.rule.Rate.IsZero() || !class.Rate.IsZero()
	spent := false
	for _, rl := range h.gw.RateLimits {
		r.note(p.gateway+" "+p.rule.Name+" "+p.method, fmt.Sprintf("%s, flow %s %s: %s enabled %v, enforced %v, per connection %v, descriptors %v, buckets %v",
			p.gateway, p.rule.Name, p.method, rl.Filter, rl.Enabled, rl.Enforced, rl.PerConnection, rl.Descriptors, rl.Buckets))
		spent = spent || (rl.Enabled && rl.Enforced && len(rl.Buckets) > 0)
	}
	if limited && !spent {
		r.fail(p, fmt.Sprintf("flow rate %v, class rate %v, but gateway %s spends no enforced local rate limit bucket: %+v",
			p.rule.Rate, class.Rate, p.gateway, h.gw.RateLimits))
	}
}

// report collects failures (at most maxShown printed one by one, then a
// count per hop, filter and reason) and logs every denial's verdict.
type report struct {
	t        *testing.T
	failures []string
	traces   []string
	byCause  map[string]int
	denials  []string
	notes    map[string]string
}

// note keeps one line per key, logged at the end.
func (r *report) note(key, line string) {
	if r.notes == nil {
		r.notes = map[string]string{}
	}
	if _, ok := r.notes[key]; !ok {
		r.notes[key] = line
	}
}

const maxShown = 25

// want records whether h's end-to-end result is the wanted one, and
// returns whether it is allowed.
func (r *report) want(p probe, h hops, allowed bool) bool {
	if !allowed && !h.allowed() {
		r.denials = append(r.denials, fmt.Sprintf("%s: %s", p, h.verdict()))
	}
	if h.allowed() == allowed {
		return h.allowed()
	}
	want := "allowed end to end"
	if !allowed {
		want = "denied"
	}
	r.fail(p, fmt.Sprintf("want %s; %s", want, h.verdict()))
	last := h.gw
	if h.gw.Forwarded && h.edge != nil {
		last = h.edge
	}
	if r.byCause == nil {
		r.byCause = map[string]int{}
	}
	r.byCause[fmt.Sprintf("%s at %s by %s: %s", want, strings.Fields(last.Proxy)[0], last.DecidedBy, generic(last.Reason))]++
	r.traces = append(r.traces, last.Trace())
	return h.allowed()
}

func (r *report) fail(p probe, msg string) {
	r.failures = append(r.failures, fmt.Sprintf("%s: %s", p, msg))
}

// generic strips the names out of a reason, to count failures by cause.
func generic(reason string) string {
	var out []string
	for _, f := range strings.Fields(reason) {
		if strings.HasPrefix(f, "spiffe://") || strings.Contains(f, "-n1-") || strings.Contains(f, "-n2-") ||
			strings.Contains(f, "-s1-") || strings.Contains(f, "-s2-") || strings.HasPrefix(f, "gw-") {
			f = "…"
		}
		out = append(out, f)
	}
	return strings.Join(out, " ")
}

func (r *report) finish() {
	r.t.Helper()
	var notes []string
	for _, n := range r.notes {
		notes = append(notes, n)
	}
	sort.Strings(notes)
	r.t.Logf("local rate limits, one request per gateway, flow and method:\n\t%s", strings.Join(notes, "\n\t"))
	r.t.Logf("%d denials, as expected or not:\n\t%s", len(r.denials), strings.Join(r.denials, "\n\t"))
	for i, f := range r.failures {
		if i == maxShown {
			r.t.Errorf("… and %d more failures", len(r.failures)-maxShown)
			break
		}
		r.t.Error(f)
	}
	if len(r.byCause) > 0 {
		var causes []string
		for c, n := range r.byCause {
			causes = append(causes, fmt.Sprintf("%4d × %s", n, c))
		}
		sort.Strings(causes)
		r.t.Errorf("%d failures by cause:\n%s\nfirst failing request's model trace:\n%s", len(r.failures), strings.Join(causes, "\n"), r.traces[0])
	}
}
