package e2e_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/vigil-iot/vigil/e2e/envoymodel"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/topology"
)

// svids plays the SPIRE agent's SDS for every modelled Envoy and device:
// one SVID per SPIFFE ID of the trust domain, issued on first use, and
// the trust domain's bundle.
type svids struct {
	t      *testing.T
	ca     *spiffetest.CA
	td     string
	mu     sync.Mutex
	issued map[string]*tls.Certificate
}

func newSVIDs(t *testing.T, ca *spiffetest.CA, td string) *svids {
	return &svids{t: t, ca: ca, td: td, issued: map[string]*tls.Certificate{}}
}

func (s *svids) TLSCertificate(name string) (*tls.Certificate, error) {
	if !strings.HasPrefix(name, "spiffe://"+s.td+"/") {
		return nil, fmt.Errorf("the SPIRE agent issues no SVID named %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.issued[name]; c != nil {
		return c, nil
	}
	svid := s.ca.Issue(s.t, name)
	s.issued[name] = &svid.TLS
	return &svid.TLS, nil
}

func (s *svids) ValidationContext(name string) (*x509.CertPool, error) {
	if name != "spiffe://"+s.td {
		return nil, fmt.Errorf("the SPIRE agent has no bundle named %q", name)
	}
	return s.ca.Pool, nil
}

// chain is the certificate chain the holder of id presents.
func (s *svids) chain(id string) []*x509.Certificate {
	c, err := s.TLSCertificate(id)
	if err != nil {
		s.t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		s.t.Fatal(err)
	}
	return []*x509.Certificate{leaf}
}

// world is a running member with the smart-city topology and the modelled
// Envoys of its gateways and cloud edges, fed by `vigil xds dump`.
type world struct {
	t        *testing.T
	ctx      context.Context
	c        *harness.Cluster
	env      []string
	ix       *topology.Index
	sds      *svids
	gateways map[string]*envoymodel.Proxy
	edges    map[string]*envoymodel.Proxy // by zone
	proxyTLS bool                         // the member runs with --proxy-tls-*
	// boots are the proxies' bootstraps (`vigil envoy bootstrap`), by
	// proxy name: they do not change with the topology.
	boots map[string]*bootstrapv3.Bootstrap
}

// edgeNode is the node.id of every zone's cloud edge.
const edgeNode = "edge-1"

// smartCityUnattested is the smart-city example with every device class's
// attestation requirement removed (attestations can only be recorded from
// verified evidence, which does not exist yet).
func smartCityUnattested(t *testing.T) []byte {
	_, data := smartCity(t)
	doc, err := topology.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	for i := range doc.DeviceClasses {
		doc.DeviceClasses[i].Attestation = nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// load fetches every gateway's and fronting edge's configuration.
func (w *world) load() {
	w.t.Helper()
	for _, p := range w.gateways {
		p.Close()
	}
	for _, p := range w.edges {
		p.Close()
	}
	w.gateways, w.edges = map[string]*envoymodel.Proxy{}, map[string]*envoymodel.Proxy{}
	for _, gw := range w.ix.Gateways() {
		w.gateways[gw.Name] = w.proxy("gateway "+gw.Name, []string{"--node", gw.Name}, []string{"--node", gw.Name})
	}
	for _, svc := range w.ix.Services() {
		if len(svc.Backends) > 0 && w.edges[svc.Zone] == nil {
			w.edges[svc.Zone] = w.proxy(fmt.Sprintf("edge %s (zone %s)", edgeNode, svc.Zone),
				[]string{"--node", edgeNode, "--cluster", svc.Zone}, []string{"--node", edgeNode, "--edge-zone", svc.Zone})
		}
	}
}

// proxy models the Envoy that runs the bootstrap `vigil envoy bootstrap
// bootArgs` prints and gets the resources of `vigil xds dump dumpArgs`;
// its access logs must be ones Envoy accepts.
func (w *world) proxy(name string, dumpArgs, bootArgs []string) *envoymodel.Proxy {
	w.t.Helper()
	out := mustCLI(w.t, w.env, append([]string{"xds", "dump"}, dumpArgs...)...)
	res, err := envoymodel.ParseDump([]byte(out.stdout))
	if err != nil {
		w.t.Fatalf("%s: vigil xds dump %s: %v", name, strings.Join(dumpArgs, " "), err)
	}
	if len(res.Listeners) == 0 {
		w.t.Fatalf("%s: vigil xds dump %s sent no listener", name, strings.Join(dumpArgs, " "))
	}
	if w.boots == nil {
		w.boots = map[string]*bootstrapv3.Bootstrap{}
	}
	boot := w.boots[name]
	if boot == nil {
		args := append([]string{"envoy", "bootstrap", "--xds-server", w.c.Member(0).XDSAddr}, bootArgs...)
		if w.proxyTLS {
			args = append(args, "--xds-tls")
		}
		out := mustCLI(w.t, w.env, args...)
		if boot, err = envoymodel.ParseBootstrap([]byte(out.stdout)); err != nil {
			w.t.Fatalf("%s: vigil %s: %v", name, strings.Join(args, " "), err)
		}
		w.boots[name] = boot
	}
	p := &envoymodel.Proxy{Name: name, Resources: res, Bootstrap: boot, Secrets: w.sds, AuthzTimeout: 5 * time.Second}
	w.t.Cleanup(p.Close)
	if err := p.CheckAccessLogs(); err != nil {
		w.t.Fatalf("%s: %v", name, err)
	}
	return p
}

// probe is one request from a device through its gateway.
type probe struct {
	what    string         // the flow, or what the non-flow tries
	rule    *topology.Rule // the flow, when the probe is one
	gateway string         // the gateway the device connects to
	device  string         // the device whose SVID is presented
	method  string
	path    string
	host    string
	headers []envoymodel.Header
}

func (p probe) String() string {
	return fmt.Sprintf("gateway %s, device %s, %s: %s %s%s", p.gateway, p.device, p.what, p.method, p.host, p.path)
}

// hops are the outcomes of one probe: at the gateway, then (for a fronted
// service the gateway forwarded to) at the service's cloud edge.
type hops struct {
	gw, edge *envoymodel.Outcome
	svc      *topology.Service
}

// allowed: forwarded by the gateway, and by the edge when there is one.
func (h hops) allowed() bool { return h.gw.Forwarded && (h.edge == nil || h.edge.Forwarded) }

// verdict names the hop and filter that decided, and why.
func (h hops) verdict() string {
	last := h.gw
	if h.gw.Forwarded && h.edge != nil {
		last = h.edge
	}
	if h.allowed() {
		return "allowed end to end: " + last.Summary()
	}
	status := ""
	if last.Status != 0 {
		status = fmt.Sprintf(" (%d)", last.Status)
	}
	return fmt.Sprintf("denied at %s by %s%s, route %q: %s", last.Proxy, last.DecidedBy, status, last.Route, last.Reason)
}

func ipFor(base byte, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, base, byte(i / 250), byte(i%250 + 1)})
}

// send runs p through the gateway's model and, when the request is
// forwarded to a service the zone's edge fronts, through the edge's.
func (w *world) send(p probe) hops {
	w.t.Helper()
	gw := w.gateways[p.gateway]
	dev, _ := w.ix.Device(p.device)
	devID, _ := w.ix.SPIFFEID(topology.DeviceSubject(p.device))
	port := gw.Resources.ListenerPorts()[0]
	devIdx := slices.IndexFunc(w.ix.Devices(), func(d *topology.Device) bool { return d == dev })
	headers := append([]envoymodel.Header{{Name: "user-agent", Value: "vigil-e2e-device/1"}}, p.headers...)
	req := envoymodel.Request{Method: p.method, Path: p.path, Authority: fmt.Sprintf("%s:%d", p.host, port), Headers: headers}
	out, err := gw.Handle(w.ctx, envoymodel.Downstream{LocalPort: port, RemoteAddr: netip.AddrPortFrom(ipFor(20, devIdx), 40000),
		PeerChain: w.sds.chain(devID)}, req)
	if err != nil {
		w.t.Fatalf("%s: the model cannot run the gateway: %v", p, err)
	}
	h := hops{gw: out}
	h.svc, _ = w.ix.ServiceByHost(p.host)
	if out.Forwarded && h.svc != nil && len(h.svc.Backends) > 0 {
		h.edge = w.forward(p, out, nil)
	}
	return h
}

// forward sends what the gateway forwarded, with edit applied to the
// upstream request, to the edge of the service's zone.
func (w *world) forward(p probe, out *envoymodel.Outcome, edit func(*envoymodel.Request)) *envoymodel.Outcome {
	w.t.Helper()
	svc, _ := w.ix.ServiceByHost(p.host)
	o := *out
	up := *out.Upstream
	up.Headers = slices.Clone(up.Headers)
	if edit != nil {
		edit(&up)
	}
	o.Upstream = &up
	gwIdx := slices.IndexFunc(w.ix.Gateways(), func(g *topology.Gateway) bool { return g.Name == p.gateway })
	edge, err := w.gateways[p.gateway].Forward(w.ctx, &o, netip.AddrPortFrom(ipFor(30, gwIdx), 40000), w.edges[svc.Zone])
	if err != nil {
		w.t.Fatalf("%s: the model cannot run the edge: %v", p, err)
	}
	return edge
}

// withHeader returns an edit that sets (value != "") or removes header.
func withHeader(name, value string) func(*envoymodel.Request) {
	return func(r *envoymodel.Request) {
		r.Headers = slices.DeleteFunc(r.Headers, func(h envoymodel.Header) bool { return h.Name == name })
		if value != "" {
			r.Headers = append(r.Headers, envoymodel.Header{Name: name, Value: value})
		}
	}
}

// concretePath is a request path a flow path allows: a prefix gets a
// suffix.
func concretePath(pm topology.PathMatch, device string) string {
	if pm.Prefix {
		return strings.TrimSuffix(pm.Value, "/") + "/" + device + "/e2e-object"
	}
	return pm.Value
}

// target is a flow from a device into a service with hosts (one the
// gateway's HTTP listener carries).
type target struct {
	rule *topology.Rule
	svc  *topology.Service
}

// deviceFlows are the flows from a device to services with hosts, in
// document order.
func (w *world) deviceFlows(device string) []target {
	var out []target
	for _, r := range w.ix.RulesFrom(topology.DeviceSubject(device)) {
		for _, name := range append([]string{r.To.Service}, r.To.Services...) {
			if svc, ok := w.ix.Service(name); ok && len(svc.Hosts) > 0 {
				out = append(out, target{r, svc})
			}
		}
	}
	return out
}

// flowProbes are the requests a flow allows a device: each method (or
// GET) on each path (or "/").
func flowProbes(gateway, device string, tg target) []probe {
	r, host := tg.rule, tg.svc.Hosts[0]
	methods, paths := r.Methods, r.Paths
	if len(methods) == 0 {
		methods = []string{"GET"}
	}
	if len(paths) == 0 {
		paths = []topology.PathMatch{{Value: "/", Prefix: true}}
	}
	var out []probe
	for _, m := range methods {
		for _, pm := range paths {
			out = append(out, probe{what: "flow " + r.Name, rule: r, gateway: gateway, device: device, method: m, path: concretePath(pm, device), host: host})
		}
	}
	return out
}
