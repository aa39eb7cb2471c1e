package spire

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/xds"
)

// testDoc is a small city: two device zones and a cloud zone, a class
// whose devices get their identity through their gateway (light) and one
// whose devices run their own agent (camera).
func testDoc() *topology.Document {
	return &topology.Document{
		APIVersion:  topology.APIVersion,
		TrustDomain: "city.example",
		Zones:       []topology.Zone{{Name: "north"}, {Name: "south"}, {Name: "cloud"}},
		Gateways:    []topology.Gateway{{Name: "gw-n", Zone: "north"}, {Name: "gw-s", Zone: "south"}},
		DeviceClasses: []topology.DeviceClass{
			{Name: "light"},
			{Name: "camera", Identity: topology.IdentityAgent},
		},
		Devices: []topology.Device{
			{Name: "l-1", Class: "light", Gateway: "gw-n"},
			{Name: "l-2", Class: "light", Gateway: "gw-s"},
			{Name: "c-1", Class: "camera", Gateway: "gw-n"},
		},
		Services: []topology.Service{
			{Name: "telemetry", Zone: "cloud", Protocol: topology.ProtocolTCP},
		},
	}
}

func snapshotOf(t testing.TB, doc *topology.Document, quarantined ...topology.Subject) *topology.Snapshot {
	t.Helper()
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	st := map[topology.Subject]*topology.SubjectState{}
	for _, s := range quarantined {
		st[s] = &topology.SubjectState{Quarantine: &topology.Quarantine{Reason: "test", By: "test", Since: time.Unix(1, 0)}}
	}
	return topology.NewSnapshot(7, 5, ix, topology.NewState().With(st))
}

// fixture is testDoc changed by mutate, with the given subjects
// quarantined, and the default options changed by opts (both may be nil).
func fixture(t testing.TB, mutate func(*topology.Document), opts func(*Options), quarantined ...topology.Subject) (*topology.Snapshot, Options) {
	t.Helper()
	doc := testDoc()
	if mutate != nil {
		mutate(doc)
	}
	o := DefaultOptions()
	if opts != nil {
		opts(&o)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	return snapshotOf(t, doc, quarantined...), o
}

const (
	gwN = "spiffe://city.example/zone/north/gateway/gw-n"
	gwS = "spiffe://city.example/zone/south/gateway/gw-s"
)

func deviceEntry(name, zone, parent string) Entry {
	return Entry{ID: "vigil.device." + name, SPIFFEID: "spiffe://city.example/zone/" + zone + "/device/" + name,
		ParentID: parent, Selectors: []string{"vigil:device:" + name}, X509TTL: 300, Hint: "vigil"}
}

func serviceEntry(selectors ...string) Entry {
	return Entry{ID: "vigil.service.telemetry", SPIFFEID: "spiffe://city.example/zone/cloud/service/telemetry",
		ParentID: "spiffe://city.example/zone/cloud/hosts", Selectors: selectors, X509TTL: 3600, Hint: "vigil"}
}

const (
	cloudHosts = "spiffe://city.example/zone/cloud/hosts"
	uid101     = "unix:uid:101"
)

func edgeEntry(zone, id, parent string) Entry {
	return Entry{ID: "vigil.edge." + zone + "." + id, SPIFFEID: "spiffe://city.example/zone/" + zone + "/edge/" + id,
		ParentID: parent, Selectors: []string{uid101}, X509TTL: 900, Hint: "vigil"}
}

func frontedEntry(service, zone, parent string) Entry {
	return Entry{ID: "vigil.fronted." + service, SPIFFEID: "spiffe://city.example/zone/" + zone + "/service/" + service,
		ParentID: parent, Selectors: []string{uid101}, X509TTL: 3600, Hint: "vigil"}
}

// fronted makes telemetry a service with backends behind the cloud edge,
// and adds a cloud service without backends (reached directly) and one
// with backends in zone north.
func fronted(d *topology.Document) {
	d.Services[0] = topology.Service{Name: "telemetry", Zone: "cloud", Protocol: topology.ProtocolHTTP,
		Hosts: []string{"telemetry.city.example"}, Endpoints: []string{"edge.cloud.city.example:9443"}, Backends: []string{"10.1.2.3:8080"}}
	d.Services = append(d.Services,
		topology.Service{Name: "firmware", Zone: "cloud", Protocol: topology.ProtocolGRPC, Hosts: []string{"firmware.city.example"},
			Endpoints: []string{"10.1.2.9:9000"}},
		topology.Service{Name: "lighting", Zone: "north", Protocol: topology.ProtocolHTTP, Hosts: []string{"lighting.city.example"},
			Endpoints: []string{"edge.north.city.example:9443"}, Backends: []string{"10.2.0.1:8080"}})
}

// withEdges declares edges (selector unix:uid:101) and edge parents.
func withEdges(edges []string, parents ...string) func(*Options) {
	return func(o *Options) { o.Edges, o.EdgeSelectors, o.EdgeParents = edges, []string{uid101}, parents }
}

func serviceEntryOf(name, zone string) Entry {
	return Entry{ID: "vigil.service." + name, SPIFFEID: "spiffe://city.example/zone/" + zone + "/service/" + name,
		ParentID: "spiffe://city.example/zone/" + zone + "/hosts", Selectors: []string{"vigil:service:" + name}, X509TTL: 3600, Hint: "vigil"}
}

func TestDesired(t *testing.T) {
	tests := []struct {
		name        string
		mutate      func(*topology.Document)
		quarantined []topology.Subject
		opts        func(*Options)
		want        []Entry
		wantErr     string
	}{
		{
			name: "delegated devices under their gateway, agent-class devices and gateways without entries, services under the zone's hosts",
			want: []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS), serviceEntry("vigil:service:telemetry")},
		},
		{
			name:        "a quarantined device has no entry; a device behind a quarantined gateway keeps its own",
			quarantined: []topology.Subject{topology.DeviceSubject("l-1"), topology.GatewaySubject("gw-s")},
			want:        []Entry{deviceEntry("l-2", "south", gwS), serviceEntry("vigil:service:telemetry")},
		},
		{
			name:   "a device that moves follows its gateway's zone",
			mutate: func(d *topology.Document) { d.Devices[0].Gateway = "gw-s" },
			want: []Entry{deviceEntry("l-1", "south", gwS), deviceEntry("l-2", "south", gwS),
				serviceEntry("vigil:service:telemetry")},
		},
		{
			name:   "a class that turns to agents loses its devices' entries",
			mutate: func(d *topology.Document) { d.DeviceClasses[0].Identity = topology.IdentityAgent },
			want:   []Entry{serviceEntry("vigil:service:telemetry")},
		},
		{
			name: "service selectors from the label, sorted and without repeats",
			mutate: func(d *topology.Document) {
				d.Services[0].Labels = topology.Labels{SelectorsLabel: "k8s:sa:telemetry, k8s:ns:city,k8s:sa:telemetry"}
			},
			want: []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS),
				serviceEntry("k8s:ns:city", "k8s:sa:telemetry")},
		},
		{
			name:    "a service label that does not parse: no entry, an error",
			mutate:  func(d *topology.Document) { d.Services[0].Labels = topology.Labels{SelectorsLabel: "k8s:ns:city,uid"} },
			want:    []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS)},
			wantErr: `service telemetry: label spire.vigil.io/selectors: selector "uid" is not "type:value"`,
		},
		{
			name:   "cloud edges: each its own entry; each service with backends in their zone one entry (not one per edge) under the zone's hosts alias; services' own entries unchanged",
			mutate: fronted,
			opts:   withEdges([]string{"cloud/edge-2", "cloud/edge-1", " cloud/edge-1"}),
			want: []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS),
				edgeEntry("cloud", "edge-1", cloudHosts), edgeEntry("cloud", "edge-2", cloudHosts),
				frontedEntry("telemetry", "cloud", cloudHosts),
				serviceEntryOf("firmware", "cloud"), serviceEntryOf("lighting", "north"), serviceEntry("vigil:service:telemetry")},
		},
		{
			name:   "edge parents per zone: a path in the document's trust domain, or a SPIFFE ID; other zones keep the hosts alias",
			mutate: fronted,
			opts: withEdges([]string{"cloud/edge-1", "north/edge-n"}, "cloud=/zone/cloud/edge-hosts",
				"north=spiffe://city.example/spire/agent/x509pop/abc"),
			want: []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS),
				edgeEntry("cloud", "edge-1", "spiffe://city.example/zone/cloud/edge-hosts"),
				edgeEntry("north", "edge-n", "spiffe://city.example/spire/agent/x509pop/abc"),
				frontedEntry("lighting", "north", "spiffe://city.example/spire/agent/x509pop/abc"),
				frontedEntry("telemetry", "cloud", "spiffe://city.example/zone/cloud/edge-hosts"),
				serviceEntryOf("firmware", "cloud"), serviceEntryOf("lighting", "north"), serviceEntry("vigil:service:telemetry")},
		},
		{
			name: "an edge of a zone without fronted services gets its own entry only",
			opts: withEdges([]string{"cloud/edge-1"}),
			want: []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS),
				edgeEntry("cloud", "edge-1", cloudHosts), serviceEntry("vigil:service:telemetry")},
		},
		{
			name: "a service whose own selectors are the edges' needs no second entry (SPIRE would refuse it as a duplicate)",
			mutate: func(d *topology.Document) {
				fronted(d)
				d.Services[0].Labels = topology.Labels{SelectorsLabel: uid101}
			},
			opts: withEdges([]string{"cloud/edge-1"}),
			want: []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS),
				edgeEntry("cloud", "edge-1", cloudHosts),
				serviceEntryOf("firmware", "cloud"), serviceEntryOf("lighting", "north"), serviceEntry(uid101)},
		},
		{
			name:    "an edge of a zone the topology does not have is skipped",
			mutate:  fronted,
			opts:    withEdges([]string{"mars/edge-1"}),
			want:    []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS), serviceEntryOf("firmware", "cloud"), serviceEntryOf("lighting", "north"), serviceEntry("vigil:service:telemetry")},
			wantErr: `cloud edge mars/edge-1 skipped: the topology has no zone "mars"`,
		},
		{
			name:    "an edge whose ID names a device is skipped (so is one naming a gateway or service)",
			opts:    withEdges([]string{"cloud/l-1"}),
			want:    []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS), serviceEntry("vigil:service:telemetry")},
			wantErr: `cloud edge cloud/l-1 skipped: its ID "l-1" names a gateway, device or service of the topology`,
		},
		{
			name:    "an edge whose ID names a gateway is skipped",
			opts:    withEdges([]string{"north/gw-n"}),
			want:    []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS), serviceEntry("vigil:service:telemetry")},
			wantErr: `cloud edge north/gw-n skipped: its ID "gw-n" names a gateway, device or service of the topology`,
		},
		{
			name:    "an edge parent of another trust domain: the zone's edges are skipped",
			mutate:  fronted,
			opts:    withEdges([]string{"cloud/edge-1"}, "cloud=spiffe://other.example/zone/cloud/hosts"),
			want:    []Entry{deviceEntry("l-1", "north", gwN), deviceEntry("l-2", "south", gwS), serviceEntryOf("firmware", "cloud"), serviceEntryOf("lighting", "north"), serviceEntry("vigil:service:telemetry")},
			wantErr: `cloud edge cloud/edge-1 skipped: its parent spiffe://other.example/zone/cloud/hosts is not in the trust domain city.example`,
		},
		{
			name: "owner and TTLs from the options",
			opts: func(o *Options) { o.Owner, o.DeviceTTL, o.ServiceTTL = "city", 90*time.Second, 0 },
			want: []Entry{
				{ID: "city.device.l-1", SPIFFEID: "spiffe://city.example/zone/north/device/l-1", ParentID: gwN,
					Selectors: []string{"vigil:device:l-1"}, X509TTL: 90, Hint: "city"},
				{ID: "city.device.l-2", SPIFFEID: "spiffe://city.example/zone/south/device/l-2", ParentID: gwS,
					Selectors: []string{"vigil:device:l-2"}, X509TTL: 90, Hint: "city"},
				{ID: "city.service.telemetry", SPIFFEID: "spiffe://city.example/zone/cloud/service/telemetry",
					ParentID: "spiffe://city.example/zone/cloud/hosts", Selectors: []string{"vigil:service:telemetry"}, X509TTL: 3600, Hint: "city"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, opts := fixture(t, tt.mutate, tt.opts, tt.quarantined...)
			got, errs := Desired(snap, opts)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Desired:\n got %+v\nwant %+v", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && len(errs) > 0:
				t.Errorf("errors %v, want none", errs)
			case tt.wantErr != "" && (len(errs) != 1 || errs[0].Error() != tt.wantErr):
				t.Errorf("errors %v, want [%s]", errs, tt.wantErr)
			}
		})
	}
}

func TestDesiredWithoutDocument(t *testing.T) {
	if got, errs := Desired(topology.EmptySnapshot(), DefaultOptions()); len(got)+len(errs) != 0 {
		t.Errorf("Desired(empty) = %v, %v; want nothing", got, errs)
	}
}

func TestDiff(t *testing.T) {
	a, b, c := deviceEntry("a", "north", gwN), deviceEntry("b", "north", gwN), deviceEntry("c", "north", gwN)
	moved := deviceEntry("b", "south", gwS)
	longer := c
	longer.X509TTL = 600
	reordered := serviceEntry("k8s:ns:city", "k8s:sa:x")
	tests := []struct {
		name              string
		desired, existing []Entry
		want              Changes
	}{
		{"nothing there yet", []Entry{c, a}, nil, Changes{Create: []Entry{a, c}}},
		{"all in place", []Entry{a, b}, []Entry{b, a}, Changes{}},
		{"all gone", nil, []Entry{b, a}, Changes{Delete: []string{a.ID, b.ID}}},
		{"moved, retimed, added and removed", []Entry{moved, longer, a}, []Entry{b, c, deviceEntry("z", "north", gwN)},
			Changes{Create: []Entry{a}, Update: []Entry{moved, longer}, Delete: []string{"vigil.device.z"}}},
		{"created-at does not count", []Entry{a}, []Entry{func() Entry { e := a; e.CreatedAt = 42; return e }()}, Changes{}},
		{"selectors compared as sets in sorted form", []Entry{reordered}, []Entry{reordered}, Changes{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Diff(tt.desired, tt.existing)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Diff:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"zero values take the defaults", Options{}, ""},
		{"owner not a label", Options{Owner: "Vigil.io"}, `owner "Vigil.io" must be a lowercase DNS label`},
		{"TTL under a second", Options{DeviceTTL: time.Millisecond}, "device SVID TTL 1ms must be at least 1s"},
		{"negative TTL", Options{GatewayTTL: -time.Minute}, "gateway SVID TTL -1m0s must be at least 1s"},
		{"selector without value", Options{GatewaySelectors: []string{"unix:uid:101", "unix"}}, `gateway selectors: selector "unix" is not "type:value"`},
		{"edges", Options{Edges: []string{"cloud/edge-1", "north/edge-1"}, EdgeSelectors: []string{uid101},
			EdgeParents: []string{"cloud=spiffe://city.example/zone/cloud/edge-hosts", "north=/zone/north/hosts"}}, ""},
		{"edge not ZONE/ID", Options{Edges: []string{"edge-1"}, EdgeSelectors: []string{uid101}}, `edge "edge-1" is not ZONE/ID`},
		{"edge ID not a label", Options{Edges: []string{"cloud/Edge_1"}, EdgeSelectors: []string{uid101}}, `edge "cloud/Edge_1" is not ZONE/ID`},
		{"edges without selectors", Options{Edges: []string{"cloud/edge-1"}}, "cloud edges need edge selectors"},
		{"edge selector without value", Options{Edges: []string{"cloud/edge-1"}, EdgeSelectors: []string{"unix"}}, `edge selectors: selector "unix" is not "type:value"`},
		{"edge parent of a zone without edges", Options{Edges: []string{"cloud/edge-1"}, EdgeSelectors: []string{uid101},
			EdgeParents: []string{"north=/zone/north/hosts"}}, "edge parent of zone north, which has no edge"},
		{"edge parent twice", Options{Edges: []string{"cloud/edge-1"}, EdgeSelectors: []string{uid101},
			EdgeParents: []string{"cloud=/a", "cloud=/b"}}, "edge parent of zone cloud given twice"},
		{"edge parent not an ID", Options{Edges: []string{"cloud/edge-1"}, EdgeSelectors: []string{uid101},
			EdgeParents: []string{"cloud=edge-hosts"}}, `edge parent of zone cloud: "edge-hosts" is neither a SPIFFE ID nor a path`},
		{"edge parent without zone", Options{Edges: []string{"cloud/edge-1"}, EdgeSelectors: []string{uid101},
			EdgeParents: []string{"spiffe://city.example/x"}}, "is not ZONE=SPIFFE-ID"},
		{"edge parent without path", Options{Edges: []string{"cloud/edge-1"}, EdgeSelectors: []string{uid101},
			EdgeParents: []string{"cloud=spiffe://city.example"}}, "has no path"},
		{"edge parent the server", Options{Edges: []string{"cloud/edge-1"}, EdgeSelectors: []string{uid101},
			EdgeParents: []string{"cloud=/spire/server"}}, "is the SPIRE server"},
		{"edge TTL under a second", Options{EdgeTTL: time.Millisecond}, "edge SVID TTL 1ms must be at least 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opts.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate: %v, want %q", err, tt.want)
			}
		})
	}
	o := Options{}
	o.Validate()
	if !reflect.DeepEqual(o, Options{Owner: "vigil", DeviceTTL: 5 * time.Minute, GatewayTTL: 15 * time.Minute, ServiceTTL: time.Hour, EdgeTTL: 15 * time.Minute}) {
		t.Errorf("defaults: %+v", o)
	}
}

func TestEntryIDsReadBack(t *testing.T) {
	o := DefaultOptions()
	for _, tt := range []struct {
		id   string
		want topology.Subject
		ok   bool
	}{
		{"vigil.device.l-1", topology.DeviceSubject("l-1"), true},
		{"vigil.service.telemetry", topology.ServiceSubject("telemetry"), true},
		{"vigil.gateway.gw-n", topology.Subject{}, false}, // gateways have bindings, not entries
		{"vigil.device.L-1", topology.Subject{}, false},
		{"vigil.device.l-1.x", topology.Subject{}, false},
		{"other.device.l-1", topology.Subject{}, false},
		{"vigil.agent.gateway.gw-n.ab12cd34", topology.Subject{}, false},
		{"7a1c1e9e-5d5e-4f57-9e5b-8d2e1f0c9a11", topology.Subject{}, false},
	} {
		if got, ok := o.subjectOf(tt.id); got != tt.want || ok != tt.ok {
			t.Errorf("subjectOf(%q) = %v, %v; want %v, %v", tt.id, got, ok, tt.want, tt.ok)
		}
	}
	for id, want := range map[string]bool{
		"vigil.device.l-1":                  true,
		"vigil.service.telemetry":           true,
		"vigil.edge.cloud.edge-1":           true,
		"vigil.fronted.telemetry":           true,
		"vigil.edge.cloud":                  false,
		"vigil.edge.cloud.edge-1.x":         false,
		"vigil.edge.Cloud.edge-1":           false,
		"vigil.fronted.telemetry.x":         false,
		"vigil.fronted.":                    false,
		"other.edge.cloud.edge-1":           false,
		"vigil.agent.gateway.gw-n.ab12cd34": false,
		"vigil.gateway.gw-n":                false,
	} {
		if got := o.owns(id); got != want {
			t.Errorf("owns(%q) = %v, want %v", id, got, want)
		}
	}
}

// TestEdgeSPIFFEID: the entries give an edge the identity the xDS server
// expects of it.
func TestEdgeSPIFFEID(t *testing.T) {
	if got, want := EdgeSPIFFEID("city.example", "cloud", "edge-1"), xds.EdgeSPIFFEID("city.example", "cloud", "edge-1"); got != want {
		t.Errorf("EdgeSPIFFEID = %s, xds.EdgeSPIFFEID = %s", got, want)
	}
}
