package xds

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/vigil-iot/vigil/topology"
)

// randomDoc is a valid-looking topology with every feature translation
// reads: zones, gateways with and without devices, classes with and
// without rates, http, grpc and tcp services in the cloud and in device
// zones, with IP, DNS, mixed or no endpoints and with or without
// backends, and flows from classes, zones, devices, gateways and services
// with methods, exact and prefix paths and rates. Documents the index
// refuses are regenerated.
func randomDoc(r *rand.Rand) *topology.Document {
	td := []string{"city.example", "td.test"}[r.IntN(2)]
	doc := &topology.Document{APIVersion: topology.APIVersion, TrustDomain: td}
	nZones := 1 + r.IntN(3)
	var zones []string
	for z := range nZones {
		zones = append(zones, fmt.Sprintf("z%d", z))
		doc.Zones = append(doc.Zones, topology.Zone{Name: zones[z]})
	}
	doc.Zones = append(doc.Zones, topology.Zone{Name: "cloud"})
	nClasses := 1 + r.IntN(3)
	var classes []string
	for c := range nClasses {
		classes = append(classes, fmt.Sprintf("class%d", c))
		doc.DeviceClasses = append(doc.DeviceClasses, topology.DeviceClass{Name: classes[c],
			RateLimit: []string{"", "10/m", "5/s", "100/h"}[r.IntN(4)]})
	}
	var gateways, devices []string
	for _, z := range zones {
		for g := range 1 + r.IntN(3) {
			name := fmt.Sprintf("gw-%s-%d", z, g)
			gateways = append(gateways, name)
			doc.Gateways = append(doc.Gateways, topology.Gateway{Name: name, Zone: z})
			for d := range r.IntN(4) {
				dn := fmt.Sprintf("dev-%s-%d-%d", z, g, d)
				devices = append(devices, dn)
				doc.Devices = append(doc.Devices, topology.Device{Name: dn, Class: classes[r.IntN(nClasses)], Gateway: name})
			}
		}
	}
	var services []string
	for i := range 1 + r.IntN(5) {
		name := fmt.Sprintf("svc%d", i)
		services = append(services, name)
		svc := topology.Service{Name: name, Zone: "cloud", Protocol: []string{topology.ProtocolHTTP, topology.ProtocolHTTP, topology.ProtocolGRPC, topology.ProtocolTCP}[r.IntN(4)]}
		if r.IntN(4) == 0 {
			svc.Zone = zones[r.IntN(nZones)]
		}
		if svc.Protocol != topology.ProtocolTCP || r.IntN(2) == 0 {
			svc.Hosts = []string{name + ".example"}
			if r.IntN(3) == 0 {
				svc.Hosts = append(svc.Hosts, name+".alt.example")
			}
		}
		switch r.IntN(4) {
		case 0:
			svc.Endpoints = []string{fmt.Sprintf("10.0.0.%d:%d", i+1, 8000+i)}
		case 1:
			svc.Endpoints = []string{fmt.Sprintf("10.0.0.%d:443", i+1), fmt.Sprintf("10.0.1.%d:443", i+1)}
		case 2:
			svc.Endpoints = []string{name + ".internal:443"}
		}
		if svc.Zone == "cloud" && r.IntN(3) == 0 {
			svc.Backends = []string{fmt.Sprintf("10.9.0.%d:9000", i+1)}
		}
		doc.Services = append(doc.Services, svc)
	}
	pick := func(from []string) []string {
		var out []string
		for _, s := range from {
			if r.IntN(2) == 0 {
				out = append(out, s)
			}
		}
		if len(out) == 0 && len(from) > 0 {
			out = []string{from[r.IntN(len(from))]}
		}
		return out
	}
	for i := range 1 + r.IntN(6) {
		f := topology.Flow{Name: fmt.Sprintf("flow%d", i)}
		switch r.IntN(5) {
		case 0:
			f.From.Zones = pick(zones)
		case 1:
			f.From.Classes = pick(classes)
		case 2:
			f.From.Zones, f.From.Classes = pick(zones), pick(classes)
		case 3:
			if len(devices) > 0 {
				f.From.Devices = pick(devices)
			} else {
				f.From.Classes = pick(classes)
			}
		case 4:
			f.From.Services = pick(services)
		}
		if r.IntN(3) == 0 {
			f.To.Services = pick(services)
		} else {
			f.To.Service = services[r.IntN(len(services))]
		}
		if r.IntN(4) != 0 {
			f.HTTP = &topology.HTTPMatch{Methods: pick([]string{"GET", "POST", "PUT"})}
			if r.IntN(3) == 0 {
				f.HTTP.Methods = nil
			}
			f.HTTP.Paths = pick([]string{"/a", "/a/*", "/b", "/api/v1/x", "/*"})
		}
		if r.IntN(2) == 0 {
			f.RateLimit = []string{"1/s", "30/m", "7/h"}[r.IntN(3)]
		}
		doc.Flows = append(doc.Flows, f)
	}
	return doc
}

// mutate changes doc the ways documents change between revisions: a
// flow's paths, a service's endpoints, protocol or hosts, a gateway's
// zone, a device's class or gateway, a rate.
func mutate(r *rand.Rand, doc *topology.Document) {
	switch r.IntN(7) {
	case 0:
		if f := &doc.Flows[r.IntN(len(doc.Flows))]; f.HTTP != nil {
			f.HTTP.Paths = append(f.HTTP.Paths, fmt.Sprintf("/new/%d", r.IntN(100)))
		}
	case 1:
		s := &doc.Services[r.IntN(len(doc.Services))]
		s.Endpoints = append(slices.Clone(s.Endpoints), fmt.Sprintf("10.7.0.%d:80", r.IntN(200)+1))
	case 2:
		s := &doc.Services[r.IntN(len(doc.Services))]
		if s.Protocol == topology.ProtocolHTTP {
			s.Protocol = topology.ProtocolGRPC
		} else if s.Protocol == topology.ProtocolGRPC {
			s.Protocol = topology.ProtocolHTTP
		}
	case 3:
		s := &doc.Services[r.IntN(len(doc.Services))]
		if len(s.Hosts) > 0 {
			s.Hosts = append([]string{fmt.Sprintf("h%d.example", r.IntN(100))}, s.Hosts...)
		}
	case 4:
		g := &doc.Gateways[r.IntN(len(doc.Gateways))]
		g.Zone = doc.Zones[r.IntN(len(doc.Zones)-1)].Name
		for i := range doc.Devices {
			if doc.Devices[i].Gateway == g.Name {
				doc.Devices[i].Gateway = g.Name // devices follow their gateway
			}
		}
	case 5:
		if len(doc.Devices) > 0 {
			d := &doc.Devices[r.IntN(len(doc.Devices))]
			d.Class = doc.DeviceClasses[r.IntN(len(doc.DeviceClasses))].Name
			d.Gateway = doc.Gateways[r.IntN(len(doc.Gateways))].Name
		}
	case 6:
		c := &doc.DeviceClasses[r.IntN(len(doc.DeviceClasses))]
		c.RateLimit = []string{"", "11/m", "2/s"}[r.IntN(3)]
	}
}

// cloneDoc deep-copies what mutate changes.
func cloneDoc(d *topology.Document) *topology.Document {
	c := *d
	c.Zones = slices.Clone(d.Zones)
	c.Gateways = slices.Clone(d.Gateways)
	c.Devices = slices.Clone(d.Devices)
	c.DeviceClasses = slices.Clone(d.DeviceClasses)
	c.Services = slices.Clone(d.Services)
	for i := range c.Services {
		c.Services[i].Endpoints = slices.Clone(c.Services[i].Endpoints)
		c.Services[i].Hosts = slices.Clone(c.Services[i].Hosts)
	}
	c.Flows = slices.Clone(d.Flows)
	for i := range c.Flows {
		if h := c.Flows[i].HTTP; h != nil {
			hc := *h
			hc.Paths = slices.Clone(h.Paths)
			c.Flows[i].HTTP = &hc
		}
	}
	return &c
}

// randomSnapshot indexes doc with a random set of quarantined subjects.
func randomSnapshot(r *rand.Rand, ix *topology.Index, rev topology.Revision) *topology.Snapshot {
	updates := map[topology.Subject]*topology.SubjectState{}
	q := &topology.SubjectState{Quarantine: &topology.Quarantine{Reason: "test", Since: time.Unix(0, 0)}}
	for _, g := range ix.Gateways() {
		if r.IntN(8) == 0 {
			updates[topology.GatewaySubject(g.Name)] = q
		}
		for _, d := range ix.DevicesOf(g.Name) {
			if r.IntN(6) == 0 {
				updates[topology.DeviceSubject(d.Name)] = q
			}
		}
	}
	return topology.NewSnapshot(rev, rev, ix, topology.NewState().With(updates))
}

// nodesOf are the nodes that may ask for configuration at ix: every
// gateway as Envoy and as gRPC (with its own identity, and with another
// one), an edge per zone, every service as gRPC, and unknown names.
func nodesOf(ix *topology.Index) []Node {
	td := ix.TrustDomain()
	var out []Node
	for _, g := range ix.Gateways() {
		self := topology.SPIFFEID(td, g.Zone, topology.GatewaySubject(g.Name))
		out = append(out, Node{ID: g.Name, Cluster: g.Zone, Peer: self}, Node{ID: g.Name, Peer: self},
			Node{ID: g.Name, Peer: self + "x"}, Node{ID: g.Name, Cluster: "cloud"},
			Node{ID: g.Name, Proxyless: true, Peer: self})
	}
	for _, z := range []string{"cloud", "z0", "z1"} {
		out = append(out, Node{ID: "edge-" + z, Cluster: z, Peer: EdgeSPIFFEID(td, z, "edge-"+z)})
	}
	for _, s := range ix.Services() {
		out = append(out, Node{ID: s.Name, Proxyless: true, Peer: topology.SPIFFEID(td, s.Zone, topology.ServiceSubject(s.Name))})
	}
	return append(out, Node{ID: "nobody"}, Node{ID: "nobody", Proxyless: true})
}

// TestServerBuildsAreTranslate is the bar for the server's shared,
// spliced and reused builds: for many generated topologies, each followed
// by a run of changed documents and quarantines, every node the server
// builds (reusing its previous build, as rebuilds do) gets byte for byte
// the resources Translate gives it (or DenyAll's, when Translate refuses
// it), under several options.
func TestServerBuildsAreTranslate(t *testing.T) {
	seeds := 60
	if testing.Short() {
		seeds = 15
	}
	optionSets := []Options{
		{},
		{AuthzTLS: true, RequirePeer: true},
		{AuthzTLS: true, AuthzEndpoints: []string{"authz.vigil.internal:9191", "10.0.0.9:9191"}, ListenerPort: 10443, SDSSocket: "/run/other.sock"},
	}
	checked, spliced, served, mutations, invalid := 0, 0, 0, 0, 0
	for seed := range seeds {
		r := rand.New(rand.NewPCG(uint64(seed), 15))
		doc := randomDoc(r)
		ix, err := topology.NewIndex(doc)
		for tries := 0; err != nil && tries < 50; tries++ {
			invalid++
			doc = randomDoc(r)
			ix, err = topology.NewIndex(doc)
		}
		if err != nil {
			t.Fatalf("seed %d: no valid document: %v", seed, err)
		}
		opts := optionSets[seed%len(optionSets)]
		srv, err := NewServer(Config{Source: &source{}, Options: opts, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		prev := map[Node]*gatewayParts{}
		for rev := topology.Revision(1); rev <= 6; rev++ {
			if rev > 1 {
				next := cloneDoc(doc)
				mutate(r, next)
				if nix, err := topology.NewIndex(next); err == nil {
					doc, ix = next, nix
					mutations++
				}
			}
			snap := randomSnapshot(r, ix, rev)
			for _, node := range nodesOf(ix) {
				enc, parts, denyAll, err := srv.encodeNode(node, snap, prev[node])
				if err != nil {
					t.Fatalf("seed %d rev %d %+v: %v", seed, rev, node, err)
				}
				prev[node] = parts
				want, werr := Translate(snap, node, srv.cfg.Options)
				if werr != nil {
					want = srv.denyAll
					if node.Proxyless {
						want = &Resources{}
					}
				}
				if !denyAll {
					served++
				}
				if denyAll != (werr != nil) {
					t.Fatalf("seed %d rev %d %+v: deny-all %v, Translate: %v", seed, rev, node, denyAll, werr)
				}
				for i, list := range lists(want) {
					if len(list) != len(enc[i]) {
						t.Fatalf("seed %d rev %d %+v %s: %d resources, Translate %d", seed, rev, node, typeURLs[i], len(enc[i]), len(list))
					}
					for j, m := range list {
						b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
						if err != nil {
							t.Fatal(err)
						}
						got := enc[i][j]
						if got.name != name(m) || !bytes.Equal(got.bytes(), b) {
							t.Fatalf("seed %d rev %d %+v %s %q: the server's encoding differs from Translate's", seed, rev, node, typeURLs[i], name(m))
						}
						if d, _ := digestOf(m); d != got.digest {
							t.Fatalf("seed %d rev %d %+v %s %q: digest differs", seed, rev, node, typeURLs[i], name(m))
						}
						checked++
					}
				}
			}
		}
		for _, sh := range srv.shapes.m {
			if sh.levels != nil {
				spliced++
			}
		}
		srv.Close()
	}
	t.Logf("%d resources compared in %d configurations served (not deny-all); %d documents changed, %d generated documents refused; %d spliceable shapes made",
		checked, served, mutations, invalid, spliced)
	if spliced == 0 {
		t.Error("no shape could be spliced: every gateway resource was built whole")
	}
}

// TestNodeSnapshotIsGoControlPlanes: what the cache reads from a node's
// snapshot (versions, names, delta's per-resource versions) is what
// go-control-plane's own snapshot of the translated resources gives.
func TestNodeSnapshotIsGoControlPlanes(t *testing.T) {
	snap := smartCitySnapshot(t, 3)
	res, err := Translate(snap, Node{ID: gw}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	enc, err := encodeAll(res)
	if err != nil {
		t.Fatal(err)
	}
	theirs := &cachev3.Snapshot{}
	ours := &nodeSnapshot{}
	for i, list := range lists(res) {
		v := fmt.Sprint("v", i)
		theirs.Resources[cachev3.GetResponseType(typeURLs[i])] = cachev3.NewResources(v, list)
		ours.versions[i], ours.groups[i] = v, newGroup(enc[i])
	}
	if err := theirs.ConstructVersionMap(); err != nil {
		t.Fatal(err)
	}
	if err := ours.ConstructVersionMap(); err != nil {
		t.Fatal(err)
	}
	for _, typ := range append(slices.Clone(allTypes), resourcev3.SecretType) {
		if ours.GetVersion(typ) != theirs.GetVersion(typ) {
			t.Errorf("%s: version %q, go-control-plane %q", typ, ours.GetVersion(typ), theirs.GetVersion(typ))
		}
		if !maps.Equal(ours.GetVersionMap(typ), theirs.GetVersionMap(typ)) {
			t.Errorf("%s: version map %v, go-control-plane %v", typ, ours.GetVersionMap(typ), theirs.GetVersionMap(typ))
		}
		if got, want := slices.Sorted(maps.Keys(ours.GetResourcesAndTTL(typ))), slices.Sorted(maps.Keys(theirs.GetResourcesAndTTL(typ))); !slices.Equal(got, want) {
			t.Errorf("%s: names %v, go-control-plane %v", typ, got, want)
		}
		for n, r := range ours.GetResources(typ) {
			a, _ := cachev3.MarshalResource(r)
			b, _ := cachev3.MarshalResource(theirs.GetResources(typ)[n])
			if !bytes.Equal(a, b) {
				t.Errorf("%s %q: encodings differ", typ, n)
			}
		}
	}
}
