package spire

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
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
	if !reflect.DeepEqual(o, Options{Owner: "vigil", DeviceTTL: 5 * time.Minute, GatewayTTL: 15 * time.Minute, ServiceTTL: time.Hour}) {
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
}
