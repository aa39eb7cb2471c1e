package topology

import (
	"slices"
	"testing"
	"time"
)

// lookupDoc selects devices in every way a selector can: by zone and class,
// by explicit names, by gateway, by class alone; and services by name,
// narrowed by zone. Objects are listed out of name order on purpose.
const lookupDoc = `apiVersion: vigil/v1
trustDomain: test.example
zones:
  - name: north
  - name: south
  - name: cloud
gateways:
  - {name: gw-n2, zone: north}
  - {name: gw-n1, zone: north}
  - {name: gw-s1, zone: south}
deviceClasses:
  - name: light
  - name: sensor
    attestation: {maxAge: 7d, firmware: [{version: "1.0", sha256: "` + testSHA + `"}]}
    rateLimit: 30/m
devices:
  - {name: light-b, class: light, gateway: gw-n1}
  - {name: light-a, class: light, gateway: gw-n1}
  - {name: light-c, class: light, gateway: gw-n2}
  - {name: light-s, class: light, gateway: gw-s1}
  - {name: sensor-a, class: sensor, gateway: gw-n1}
  - {name: sensor-s, class: sensor, gateway: gw-s1}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.test.example, ingest.test.example]}
  - {name: control, zone: cloud, protocol: grpc, hosts: [control.test.example]}
  - {name: edge-cache, zone: north, protocol: http, hosts: [cache.north.test.example]}
flows:
  - name: north-lights-telemetry         # 0: zone and class
    from: {zones: [north], classes: [light]}
    to: {service: telemetry}
    http: {methods: [POST], paths: ["/api/v1/telemetry"]}
  - name: picked-devices                 # 1: device names (named twice)
    from: {devices: [light-a, sensor-s, light-a]}
    to: {service: telemetry}
  - name: gw-n1-cache                    # 2: gateway
    from: {gateways: [gw-n1]}
    to: {services: [edge-cache, edge-cache]}
    http: {methods: [GET, HEAD], paths: ["/cache/*"]}
  - name: all-sensors                    # 3: class only
    from: {classes: [sensor]}
    to: {service: telemetry}
    rateLimit: 5/s
  - name: control-lights                 # 4: service to devices
    from: {services: [control]}
    to: {classes: [light], zones: [north]}
    http: {methods: [PUT], paths: ["/dim", "/schedule/*"]}
  - name: north-services                 # 5: services narrowed by zone; a name twice
    from: {services: [control, edge-cache], zones: [north]}
    to: {devices: [light-s, light-s]}
  - name: named-but-other-zone           # 6: a name the zone rules out
    from: {devices: [light-s], zones: [north]}
    to: {service: control}
`

func names[T interface {
	*Device | *Gateway | *Service | *Zone
}](list []T) []string {
	out := make([]string, len(list))
	for i, v := range list {
		switch v := any(v).(type) {
		case *Device:
			out[i] = v.Name
		case *Gateway:
			out[i] = v.Name
		case *Service:
			out[i] = v.Name
		case *Zone:
			out[i] = v.Name
		}
	}
	return out
}

func ruleNames(rules []*Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.Name
	}
	return out
}

func TestLookupByName(t *testing.T) {
	ix := mustLoad(t, lookupDoc)
	if d, ok := ix.Device("light-a"); !ok || d.Class != "light" || d.Gateway != "gw-n1" {
		t.Errorf("Device(light-a) = %+v, %v", d, ok)
	}
	if g, ok := ix.Gateway("gw-s1"); !ok || g.Zone != "south" {
		t.Errorf("Gateway(gw-s1) = %+v, %v", g, ok)
	}
	if z, ok := ix.Zone("cloud"); !ok || z.Name != "cloud" {
		t.Errorf("Zone(cloud) = %+v, %v", z, ok)
	}
	if s, ok := ix.Service("control"); !ok || s.Protocol != ProtocolGRPC {
		t.Errorf("Service(control) = %+v, %v", s, ok)
	}
	if c, ok := ix.Class("sensor"); !ok || c.MaxAge != 7*24*time.Hour || c.Rate != (Rate{30, time.Minute}) {
		t.Errorf("Class(sensor) = %+v, %v; want MaxAge 168h, Rate 30/m", c, ok)
	}
	if c, ok := ix.Class("light"); !ok || c.MaxAge != 0 || !c.Rate.IsZero() {
		t.Errorf("Class(light) = %+v, %v; want no attestation and no rate", c, ok)
	}
	if r, ok := ix.Flow("all-sensors"); !ok || r.Position != 3 || r.Rate != (Rate{5, time.Second}) {
		t.Errorf("Flow(all-sensors) = %+v, %v; want position 3, rate 5/s", r, ok)
	}
	for name, found := range map[string]bool{
		"light-a": true, "nope": false, "Light-A": false, "": false,
	} {
		if _, ok := ix.Device(name); ok != found {
			t.Errorf("Device(%q) found = %v, want %v", name, ok, found)
		}
	}
	if _, ok := ix.Gateway("gw-x"); ok {
		t.Error("Gateway(gw-x) found")
	}
	if _, ok := ix.Flow("nope"); ok {
		t.Error("Flow(nope) found")
	}
	if ix.TrustDomain() != "test.example" || ix.Document().TrustDomain != "test.example" {
		t.Errorf("TrustDomain() = %q", ix.TrustDomain())
	}
	counts := []int{ix.NumZones(), ix.NumGateways(), ix.NumDevices(), ix.NumServices(), ix.NumFlows()}
	if want := []int{3, 3, 6, 3, 7}; !slices.Equal(counts, want) {
		t.Errorf("counts (zones, gateways, devices, services, flows) = %v, want %v", counts, want)
	}
}

func TestServiceByHost(t *testing.T) {
	ix := mustLoad(t, lookupDoc)
	tests := []struct{ host, want string }{
		{"telemetry.test.example", "telemetry"},
		{"ingest.test.example", "telemetry"},
		{"cache.north.test.example", "edge-cache"},
		{"telemetry.test.example:443", ""},
		{"TELEMETRY.test.example", ""},
		{"unknown.test.example", ""},
		{"", ""},
	}
	for _, tt := range tests {
		s, ok := ix.ServiceByHost(tt.host)
		if got := ""; ok {
			got = s.Name
			if got != tt.want {
				t.Errorf("ServiceByHost(%q) = %s, want %q", tt.host, got, tt.want)
			}
		} else if tt.want != "" {
			t.Errorf("ServiceByHost(%q) not found, want %s", tt.host, tt.want)
		}
	}
}

func TestSorting(t *testing.T) {
	ix := mustLoad(t, lookupDoc)
	tests := []struct {
		name      string
		got, want []string
	}{
		{"DevicesOf(gw-n1)", names(ix.DevicesOf("gw-n1")), []string{"light-a", "light-b", "sensor-a"}},
		{"DevicesOf(gw-s1)", names(ix.DevicesOf("gw-s1")), []string{"light-s", "sensor-s"}},
		{"DevicesOf(unknown)", names(ix.DevicesOf("gw-x")), []string{}},
		{"GatewaysIn(north)", names(ix.GatewaysIn("north")), []string{"gw-n1", "gw-n2"}},
		{"GatewaysIn(cloud)", names(ix.GatewaysIn("cloud")), []string{}},
		{"ServicesIn(cloud)", names(ix.ServicesIn("cloud")), []string{"control", "telemetry"}},
		{"Devices()", names(ix.Devices()), []string{"light-a", "light-b", "light-c", "light-s", "sensor-a", "sensor-s"}},
		{"Gateways()", names(ix.Gateways()), []string{"gw-n1", "gw-n2", "gw-s1"}},
		{"Zones()", names(ix.Zones()), []string{"cloud", "north", "south"}},
		{"Services()", names(ix.Services()), []string{"control", "edge-cache", "telemetry"}},
		{"Rules()", ruleNames(ix.Rules()), []string{
			"north-lights-telemetry", "picked-devices", "gw-n1-cache", "all-sensors",
			"control-lights", "north-services", "named-but-other-zone",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !slices.Equal(tt.got, tt.want) {
				t.Errorf("got %v, want %v", tt.got, tt.want)
			}
		})
	}
	for i, r := range ix.Rules() {
		if r.Position != i {
			t.Errorf("Rules()[%d].Position = %d", i, r.Position)
		}
	}
}

func TestRulesFromAndTo(t *testing.T) {
	ix := mustLoad(t, lookupDoc)
	tests := []struct {
		name     string
		subject  Subject
		from, to []string
	}{
		// zone+class (0) and gateway (2) merged with a name (1), in document order
		{"device by group and by name", DeviceSubject("light-a"), []string{"north-lights-telemetry", "picked-devices", "gw-n1-cache"}, []string{"control-lights"}},
		{"device by zone, class and gateway", DeviceSubject("light-b"), []string{"north-lights-telemetry", "gw-n1-cache"}, []string{"control-lights"}},
		{"device by zone and class only", DeviceSubject("light-c"), []string{"north-lights-telemetry"}, []string{"control-lights"}},
		{"device named where its zone is ruled out", DeviceSubject("light-s"), nil, []string{"north-services"}},
		{"device by gateway and class", DeviceSubject("sensor-a"), []string{"gw-n1-cache", "all-sensors"}, nil},
		{"device by name and class", DeviceSubject("sensor-s"), []string{"picked-devices", "all-sensors"}, nil},
		{"service to devices", ServiceSubject("control"), []string{"control-lights"}, []string{"named-but-other-zone"}},
		{"service named twice", ServiceSubject("edge-cache"), []string{"north-services"}, []string{"gw-n1-cache"}},
		{"service as destination", ServiceSubject("telemetry"), nil, []string{"north-lights-telemetry", "picked-devices", "all-sensors"}},
		{"gateways are not flow subjects", GatewaySubject("gw-n1"), nil, nil},
		{"unknown device", DeviceSubject("nope"), nil, nil},
		{"unknown service", ServiceSubject("nope"), nil, nil},
		{"zero subject", Subject{}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ruleNames(ix.RulesFrom(tt.subject)); !slices.Equal(got, tt.from) {
				t.Errorf("RulesFrom(%v) = %v, want %v", tt.subject, got, tt.from)
			}
			if got := ruleNames(ix.RulesTo(tt.subject)); !slices.Equal(got, tt.to) {
				t.Errorf("RulesTo(%v) = %v, want %v", tt.subject, got, tt.to)
			}
		})
	}
	// Merging must not disturb the index's own lists.
	_ = ix.RulesFrom(DeviceSubject("light-a"))
	if got := ruleNames(ix.RulesFrom(DeviceSubject("light-b"))); !slices.Equal(got, []string{"north-lights-telemetry", "gw-n1-cache"}) {
		t.Errorf("after a merge, RulesFrom(light-b) = %v", got)
	}
}

func TestSourcesOf(t *testing.T) {
	ix := mustLoad(t, lookupDoc)
	tests := []struct {
		flow               string
		gateways, services []string
	}{
		{"north-lights-telemetry", []string{"gw-n1", "gw-n2"}, nil},
		{"picked-devices", []string{"gw-n1", "gw-s1"}, nil}, // light-a named twice
		{"gw-n1-cache", []string{"gw-n1"}, nil},
		{"all-sensors", []string{"gw-n1", "gw-s1"}, nil},
		{"control-lights", nil, []string{"control"}},
		{"north-services", nil, []string{"edge-cache"}}, // control is in cloud
		{"named-but-other-zone", nil, nil},
	}
	for _, tt := range tests {
		r, ok := ix.Flow(tt.flow)
		if !ok {
			t.Fatalf("no flow %q", tt.flow)
		}
		got := ix.SourcesOf(r)
		if !slices.Equal(got.Gateways, tt.gateways) || !slices.Equal(got.Services, tt.services) {
			t.Errorf("SourcesOf(%s) = gateways %v services %v, want %v %v", tt.flow, got.Gateways, got.Services, tt.gateways, tt.services)
		}
	}
	if got := EmptyIndex().SourcesOf(&Rule{}); len(got.Gateways)+len(got.Services) != 0 {
		t.Errorf("SourcesOf(a foreign rule) = %+v, want nothing", got)
	}
}

func TestAllowsRequest(t *testing.T) {
	ix := mustLoad(t, lookupDoc)
	tests := []struct {
		flow, method, path string
		want               bool
	}{
		{"north-lights-telemetry", "POST", "/api/v1/telemetry", true},
		{"north-lights-telemetry", "GET", "/api/v1/telemetry", false},
		{"north-lights-telemetry", "post", "/api/v1/telemetry", false},
		{"north-lights-telemetry", "POST", "/api/v1/telemetry/x", false},
		{"north-lights-telemetry", "POST", "/api/v1", false},
		{"gw-n1-cache", "GET", "/cache/tiles/1", true},
		{"gw-n1-cache", "HEAD", "/cache/", true},
		{"gw-n1-cache", "GET", "/cache", false},
		{"gw-n1-cache", "POST", "/cache/x", false},
		{"control-lights", "PUT", "/dim", true},
		{"control-lights", "PUT", "/schedule/nightly", true},
		{"control-lights", "PUT", "/dimmer", false},
		{"control-lights", "DELETE", "/dim", false},
		{"picked-devices", "DELETE", "/anything", true}, // no http match: any request
		{"picked-devices", "", "", true},
	}
	for _, tt := range tests {
		r, ok := ix.Flow(tt.flow)
		if !ok {
			t.Fatalf("no flow %s", tt.flow)
		}
		if got := r.AllowsRequest(tt.method, tt.path); got != tt.want {
			t.Errorf("%s.AllowsRequest(%s %s) = %v, want %v", tt.flow, tt.method, tt.path, got, tt.want)
		}
	}
}

func TestZoneOfAndSPIFFEID(t *testing.T) {
	ix := mustLoad(t, lookupDoc)
	tests := []struct {
		subject Subject
		zone    string
		id      string
	}{
		{DeviceSubject("light-a"), "north", "spiffe://test.example/zone/north/device/light-a"},
		{DeviceSubject("sensor-s"), "south", "spiffe://test.example/zone/south/device/sensor-s"},
		{GatewaySubject("gw-n2"), "north", "spiffe://test.example/zone/north/gateway/gw-n2"},
		{ServiceSubject("telemetry"), "cloud", "spiffe://test.example/zone/cloud/service/telemetry"},
		{ServiceSubject("edge-cache"), "north", "spiffe://test.example/zone/north/service/edge-cache"},
	}
	for _, tt := range tests {
		t.Run(tt.subject.String(), func(t *testing.T) {
			if z, ok := ix.ZoneOf(tt.subject); !ok || z != tt.zone {
				t.Errorf("ZoneOf = %q, %v; want %q", z, ok, tt.zone)
			}
			if !ix.Exists(tt.subject) {
				t.Error("Exists = false")
			}
			id, ok := ix.SPIFFEID(tt.subject)
			if !ok || id != tt.id {
				t.Errorf("SPIFFEID = %q, %v; want %q", id, ok, tt.id)
			}
			if s, ok := ix.BySPIFFEID(id); !ok || s != tt.subject {
				t.Errorf("BySPIFFEID(%q) = %v, %v; want %v", id, s, ok, tt.subject)
			}
		})
	}
	for _, s := range []Subject{DeviceSubject("nope"), GatewaySubject("light-a"), ServiceSubject("gw-n1"), {Kind: 0, Name: "light-a"}} {
		if z, ok := ix.ZoneOf(s); ok || ix.Exists(s) {
			t.Errorf("ZoneOf(%v) = %q, %v; want not found", s, z, ok)
		}
		if id, ok := ix.SPIFFEID(s); ok {
			t.Errorf("SPIFFEID(%v) = %q, want not found", s, id)
		}
	}
}

func TestBySPIFFEIDRejects(t *testing.T) {
	ix := mustLoad(t, lookupDoc)
	for name, id := range map[string]string{
		"other trust domain":      "spiffe://other.example/zone/north/device/light-a",
		"trust domain suffix":     "spiffe://test.example.evil/zone/north/device/light-a",
		"wrong zone":              "spiffe://test.example/zone/south/device/light-a",
		"wrong kind":              "spiffe://test.example/zone/north/gateway/light-a",
		"unknown kind":            "spiffe://test.example/zone/north/sensor/light-a",
		"kind in upper case":      "spiffe://test.example/zone/north/Device/light-a",
		"unknown device":          "spiffe://test.example/zone/north/device/light-z",
		"no zone segment":         "spiffe://test.example/zones/north/device/light-a",
		"too few segments":        "spiffe://test.example/zone/north/device",
		"trailing slash":          "spiffe://test.example/zone/north/device/light-a/",
		"extra segment":           "spiffe://test.example/zone/north/device/light-a/x",
		"empty name":              "spiffe://test.example/zone/north/device/",
		"other scheme":            "https://test.example/zone/north/device/light-a",
		"no scheme":               "test.example/zone/north/device/light-a",
		"trust domain only":       "spiffe://test.example",
		"node identity":           NodeSPIFFEID("test.example", "node-1"),
		"operator identity":       OperatorSPIFFEID("test.example", "alice"),
		"empty":                   "",
		"query appended":          "spiffe://test.example/zone/north/device/light-a?x=1",
		"upper-case trust domain": "spiffe://TEST.example/zone/north/device/light-a",
	} {
		if s, ok := ix.BySPIFFEID(id); ok {
			t.Errorf("%s: BySPIFFEID(%q) = %v, want not found", name, id, s)
		}
	}
}

func TestIdentityFormats(t *testing.T) {
	tests := []struct{ got, want string }{
		{SPIFFEID("city.example", "north", DeviceSubject("slc-1")), "spiffe://city.example/zone/north/device/slc-1"},
		{SPIFFEID("city.example", "north", GatewaySubject("gw-1")), "spiffe://city.example/zone/north/gateway/gw-1"},
		{SPIFFEID("city.example", "cloud", ServiceSubject("telemetry")), "spiffe://city.example/zone/cloud/service/telemetry"},
		{NodeSPIFFEID("city.example", "n1"), "spiffe://city.example/vigil/node/n1"},
		{OperatorSPIFFEID("city.example", "alice"), "spiffe://city.example/operator/alice"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestEmptyIndex(t *testing.T) {
	ix := EmptyIndex()
	if ix.NumDevices()+ix.NumGateways()+ix.NumZones()+ix.NumServices()+ix.NumFlows() != 0 {
		t.Error("EmptyIndex holds objects")
	}
	if len(ix.Devices()) != 0 || len(ix.Rules()) != 0 || ix.RulesFrom(DeviceSubject("x")) != nil {
		t.Error("EmptyIndex lists objects")
	}
	if _, ok := ix.BySPIFFEID("spiffe://unset.invalid/zone/a/device/b"); ok {
		t.Error("EmptyIndex resolves an identity")
	}
}
