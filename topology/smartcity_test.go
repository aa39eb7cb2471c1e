package topology

import (
	"regexp"
	"slices"
	"testing"
)

// TestSmartCityExample checks that the shipped example loads and keeps the
// promises its comments make.
func TestSmartCityExample(t *testing.T) {
	ix, err := Load(smartCity(t))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if ix.TrustDomain() != "city.example" {
		t.Errorf("trust domain %q, want city.example", ix.TrustDomain())
	}
	if got := names(ix.Zones()); !slices.Equal(got, []string{"cloud", "north", "south"}) {
		t.Errorf("zones %v", got)
	}
	if got := names(ix.Gateways()); !slices.Equal(got, []string{"gw-north-1", "gw-north-2", "gw-south-1", "gw-south-2"}) {
		t.Errorf("gateways %v", got)
	}
	if ix.NumDevices() < 56 {
		t.Errorf("%d devices, want at least 56", ix.NumDevices())
	}
	for _, g := range ix.Gateways() {
		if n := len(ix.DevicesOf(g.Name)); n < 10 {
			t.Errorf("gateway %s fronts %d devices, want the devices spread over all gateways", g.Name, n)
		}
	}
	for host, svc := range map[string]string{
		"telemetry.city.example": "telemetry",
		"video.city.example":     "video-storage",
		"lighting.city.example":  "lighting",
		"firmware.city.example":  "firmware",
	} {
		if s, ok := ix.ServiceByHost(host); !ok || s.Name != svc || s.Zone != "cloud" {
			t.Errorf("ServiceByHost(%s) = %+v, %v; want %s in cloud", host, s, ok, svc)
		}
	}
	for _, c := range []string{"streetlight", "air-quality", "traffic-camera"} {
		class, ok := ix.Class(c)
		if !ok || class.MaxAge == 0 || class.Rate.IsZero() || len(class.Attestation.Firmware) == 0 {
			t.Errorf("class %s = %+v, %v; want attestation with firmware and a rate limit", c, class, ok)
		}
	}
	// Cameras are quarantined only with an operator's approval; the other
	// classes act on their own, never during a learning period (vigil dev
	// shows an attack contained within minutes).
	for c, approve := range map[string]bool{"streetlight": false, "air-quality": false, "traffic-camera": true} {
		class, _ := ix.Class(c)
		if r := class.Response; r.Approve != approve || r.Learning != 0 || r.RestrictAt > r.QuarantineAt {
			t.Errorf("class %s: response %+v, want approve=%v and no learning period", c, r, approve)
		}
	}
	// Telemetry, and only telemetry, stays allowed for a restricted device.
	for _, r := range ix.Rules() {
		if want := r.To.Service == "telemetry"; r.Essential != want {
			t.Errorf("flow %s: essential = %v, want %v", r.Name, r.Essential, want)
		}
	}
}

func TestSmartCityIdentities(t *testing.T) {
	ix := mustLoad(t, string(smartCity(t)))
	deviceName := regexp.MustCompile(`^(slc|aq|cam)-[ns][12]-\d{3}$`)
	var subjects []Subject
	for _, d := range ix.Devices() {
		if !deviceName.MatchString(d.Name) {
			t.Errorf("device name %q does not follow <class>-<gateway>-<nnn>", d.Name)
		}
		subjects = append(subjects, DeviceSubject(d.Name))
	}
	for _, g := range ix.Gateways() {
		subjects = append(subjects, GatewaySubject(g.Name))
	}
	for _, s := range ix.Services() {
		subjects = append(subjects, ServiceSubject(s.Name))
	}
	for _, s := range subjects {
		zone, _ := ix.ZoneOf(s)
		id, ok := ix.SPIFFEID(s)
		if want := SPIFFEID("city.example", zone, s); !ok || id != want {
			t.Errorf("SPIFFEID(%v) = %q, %v; want %q", s, id, ok, want)
			continue
		}
		if back, ok := ix.BySPIFFEID(id); !ok || back != s {
			t.Errorf("BySPIFFEID(%q) = %v, %v; want %v", id, back, ok, s)
		}
	}
}

// TestSmartCityLeastPrivilege checks the allow-list: what each kind of
// device may reach, with which requests, and that devices never reach each
// other.
func TestSmartCityLeastPrivilege(t *testing.T) {
	ix := mustLoad(t, string(smartCity(t)))
	type request struct {
		method, path string
		allowed      bool
	}
	// Destinations each class may reach, and requests checked against the
	// flows to them.
	allowed := map[string]map[string][]request{
		"air-quality": {"telemetry": {
			{"POST", "/api/v1/telemetry", true},
			{"GET", "/api/v1/telemetry", false},
			{"POST", "/api/v1/telemetry/bulk", false},
		}},
		"streetlight": {
			"telemetry": {{"POST", "/api/v1/telemetry", true}, {"PUT", "/api/v1/telemetry", false}},
			"firmware":  {{"GET", "/firmware/slc/2.5.0.bin", true}, {"POST", "/firmware/x", false}, {"GET", "/admin", false}},
		},
		"traffic-camera": {
			"video-storage": {
				{"PUT", "/upload/cam-n1-001/0001.mp4", true},
				{"POST", "/upload/cam-n1-001", true},
				{"GET", "/upload/cam-n1-001/0001.mp4", false},
				{"DELETE", "/upload/cam-n1-001/0001.mp4", false},
				{"PUT", "/recordings/x", false},
			},
			"firmware": {{"GET", "/firmware/cam/5.2.0.bin", true}},
		},
	}
	for _, d := range ix.Devices() {
		s := DeviceSubject(d.Name)
		want := allowed[d.Class]
		reached := make(map[string]bool)
		for _, r := range ix.RulesFrom(s) {
			if !r.To.selectsServices() {
				t.Errorf("%s: flow %s goes from a device to devices", d.Name, r.Name)
				continue
			}
			for _, svc := range r.To.serviceNames() {
				reached[svc] = true
				checks, ok := want[svc]
				if !ok {
					t.Errorf("%s (%s): flow %s reaches %s, which the class must not reach", d.Name, d.Class, r.Name, svc)
				}
				for _, req := range checks {
					if got := r.AllowsRequest(req.method, req.path); got != req.allowed {
						t.Errorf("%s: flow %s allows %s %s = %v, want %v", d.Name, r.Name, req.method, req.path, got, req.allowed)
					}
				}
			}
			if r.Rate.IsZero() {
				if c, _ := ix.Class(d.Class); c.Rate.IsZero() {
					t.Errorf("%s: flow %s has no rate limit, not even from its class", d.Name, r.Name)
				}
			}
		}
		for svc := range want {
			if !reached[svc] {
				t.Errorf("%s (%s) cannot reach %s", d.Name, d.Class, svc)
			}
		}
		// Only the lighting service may call a device, and only a street light.
		var callers []string
		for _, r := range ix.RulesTo(s) {
			if !r.From.selectsServices() {
				t.Errorf("%s: flow %s lets devices call a device", d.Name, r.Name)
			}
			callers = append(callers, r.From.serviceNames()...)
		}
		if wantCallers := map[string][]string{"streetlight": {"lighting"}}[d.Class]; !slices.Equal(callers, wantCallers) {
			t.Errorf("%s (%s) is called by %v, want %v", d.Name, d.Class, callers, wantCallers)
		}
	}

	// The lighting service may dim and schedule street lights, nothing else.
	from := ix.RulesFrom(ServiceSubject("lighting"))
	if len(from) != 1 || from[0].Name != "lighting-commands" {
		t.Fatalf("RulesFrom(lighting) = %v, want [lighting-commands]", ruleNames(from))
	}
	for _, req := range []request{
		{"PUT", "/dim", true}, {"PUT", "/schedule", true}, {"GET", "/dim", false}, {"PUT", "/reboot", false}, {"PUT", "/dim/0", false},
	} {
		if got := from[0].AllowsRequest(req.method, req.path); got != req.allowed {
			t.Errorf("lighting-commands allows %s %s = %v, want %v", req.method, req.path, got, req.allowed)
		}
	}
	// Services do not call each other, and nothing calls the lighting service.
	for _, svc := range ix.Services() {
		for _, r := range ix.RulesTo(ServiceSubject(svc.Name)) {
			if r.From.selectsServices() {
				t.Errorf("flow %s lets a service call service %s", r.Name, svc.Name)
			}
		}
	}
	if got := ix.RulesTo(ServiceSubject("lighting")); len(got) != 0 {
		t.Errorf("RulesTo(lighting) = %v, want none", ruleNames(got))
	}
}
