package topology

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzLoad feeds Load arbitrary bytes. Load must never panic; a failure
// must wrap exactly one of ErrSyntax and ErrInvalid and be the same every
// time; a success must give an index whose lookups agree with each other,
// with a brute-force reading of the flows, and with the document's JSON form.
func FuzzLoad(f *testing.F) {
	city := smartCity(f)
	f.Add(city)
	if doc, err := Decode(city); err == nil {
		js, _ := json.Marshal(doc)
		f.Add(js)
	}
	fixtureYAML, _ := yaml.Marshal(validDoc())
	fixtureJSON, _ := json.MarshalIndent(validDoc(), "", "  ")
	f.Add(fixtureYAML)
	f.Add(fixtureJSON)
	f.Add([]byte(lookupDoc))
	for _, s := range []string{
		"",
		"apiVersion: vigil/v1\napiVersion: vigil/v1\n",
		"apiVersion: vigil/v1\n---\ntrustDomain: a\n",
		"apiVersion: vigil/v1\nzones:\n  - &z {name: a, labels: {\"a b\": x, \"c=d\": \"y\\n\"}}\n  - *z\n",
		"apiVersion: vigil/v2\ntrustDomain: A\ndevices: [{name: X, class: c, gateway: g}]\nflows: [{name: f, from: {}, to: {service: s, services: [s]}, http: {methods: [get], paths: [\"a//b*c\"]}}]\n",
		`{"apiVersion": "vigil/v1", "trustDomain": "a", "zones": [{"name": "z", "Name": "y"}]}`,
		`{"apiVersion": "vigil/v1", "trustDomain": "a", "zones": [{"name": "z"}]}}`,
		`{"apiVersion": "vigil/v1", "trustDomain": "a", "zones": [{"name": "z", "labels": {"k": "1", "k": "2"}}]`,
		"{\"apiVersion\": \"vigil/v1\",\n\"zones\": 3}",
		"- just\n- a list\n",
		"apiVersion: vigil/v1\ntrustDomain: a\nzones: [{name: z}]\ngateways: [{name: g, zone: z}]\ndeviceClasses:\n  - {name: c, response: {restrictAt: 30, quarantineAt: 30, mode: approve, learning: 7d, neverQuarantine: [d]}}\n  - {name: e, response: {restrictAt: 0, quarantineAt: 101, mode: x, learning: -1s, neverQuarantine: [d, d, f]}}\ndevices: [{name: d, class: c, gateway: g}, {name: f, class: e, gateway: g}]\nservices: [{name: s, zone: z, protocol: tcp}]\nflows: [{name: f, from: {classes: [c]}, to: {service: s}, essential: true}]\n",
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := Load(data)
		if err != nil {
			checkLoadError(t, data, ix, err)
			return
		}
		checkIndex(t, ix)

		// The JSON form of an accepted document is accepted and means the same.
		js, err := json.Marshal(ix.Document())
		if err != nil {
			t.Fatalf("json.Marshal of an accepted document: %v", err)
		}
		again, err := Load(js)
		if err != nil {
			t.Fatalf("the JSON form of an accepted document is rejected: %v\nJSON: %s", err, js)
		}
		js2, _ := json.Marshal(again.Document())
		if !bytes.Equal(js, js2) {
			t.Fatalf("JSON round trip changed the document:\n  %s\n  %s", js, js2)
		}
	})
}

func checkLoadError(t *testing.T, data []byte, ix *Index, err error) {
	t.Helper()
	if ix != nil {
		t.Fatalf("Load returned an index along with %v", err)
	}
	syntax, invalid := errors.Is(err, ErrSyntax), errors.Is(err, ErrInvalid)
	if syntax == invalid {
		t.Fatalf("error wraps ErrSyntax=%v, ErrInvalid=%v; want exactly one: %v", syntax, invalid, err)
	}
	if invalid {
		var verr *ValidationError
		if !errors.As(err, &verr) || len(verr.Errors) == 0 || len(verr.Errors) > maxReportedErrors+1 {
			t.Fatalf("ErrInvalid without a usable *ValidationError: %v", err)
		}
		for i, fe := range verr.Errors {
			if fe.Message == "" || (fe.Path == "" && i < maxReportedErrors) || fe.Line < 0 {
				t.Fatalf("malformed entry %d: %+v", i, fe)
			}
		}
	}
	if _, again := Load(data); again == nil || again.Error() != err.Error() {
		t.Fatalf("Load is not deterministic:\n  %v\n  %v", err, again)
	}
}

// checkIndex checks an index against itself and against a brute-force
// evaluation of every flow.
func checkIndex(t *testing.T, ix *Index) {
	t.Helper()
	devices := ix.Devices()
	if len(devices) != ix.NumDevices() {
		t.Fatalf("Devices() lists %d, NumDevices() = %d", len(devices), ix.NumDevices())
	}
	if !slices.IsSortedFunc(devices, func(a, b *Device) int { return cmp.Compare(a.Name, b.Name) }) {
		t.Fatal("Devices() is not sorted by name")
	}
	var subjects []Subject
	for _, d := range devices {
		g, ok := ix.Gateway(d.Gateway)
		if !ok {
			t.Fatalf("device %s is behind unknown gateway %q", d.Name, d.Gateway)
		}
		if zone, _ := ix.ZoneOf(DeviceSubject(d.Name)); zone != g.Zone {
			t.Fatalf("ZoneOf(%s) = %q, want its gateway's zone %q", d.Name, zone, g.Zone)
		}
		if !slices.Contains(ix.DevicesOf(d.Gateway), d) {
			t.Fatalf("DevicesOf(%s) misses %s", d.Gateway, d.Name)
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
		id, ok := ix.SPIFFEID(s)
		if !ok {
			t.Fatalf("%v has no SPIFFE ID", s)
		}
		if back, ok := ix.BySPIFFEID(id); !ok || back != s {
			t.Fatalf("BySPIFFEID(%q) = %v, %v; want %v", id, back, ok, s)
		}
	}

	for _, dc := range ix.Document().DeviceClasses {
		c, _ := ix.Class(dc.Name)
		r := c.Response
		if r.RestrictAt < 1 || r.RestrictAt > r.QuarantineAt || r.QuarantineAt > 100 {
			t.Fatalf("class %s: risk thresholds %d and %d are not 1 ≤ restrictAt ≤ quarantineAt ≤ 100", c.Name, r.RestrictAt, r.QuarantineAt)
		}
		if r.Learning < 0 {
			t.Fatalf("class %s: negative learning period %v", c.Name, r.Learning)
		}
		for n := range r.NeverQuarantine {
			if d, ok := ix.Device(n); !ok || d.Class != c.Name {
				t.Fatalf("class %s: neverQuarantine names %q, which is not a device of the class", c.Name, n)
			}
		}
	}

	rules := ix.Rules()
	if len(subjects)*len(rules) > 200_000 {
		return // keep each input fast
	}
	for _, s := range subjects {
		for _, side := range []struct {
			name string
			got  []*Rule
			sel  func(*Rule) *Selector
		}{
			{"RulesFrom", ix.RulesFrom(s), func(r *Rule) *Selector { return &r.From }},
			{"RulesTo", ix.RulesTo(s), func(r *Rule) *Selector { return &r.To }},
		} {
			var want []*Rule
			for _, r := range rules {
				if bruteSelects(ix, side.sel(r), s) {
					want = append(want, r)
				}
			}
			if !slices.Equal(side.got, want) {
				t.Fatalf("%s(%v) = %v, want %v", side.name, s, ruleNames(side.got), ruleNames(want))
			}
		}
	}
}

// bruteSelects evaluates a selector the slow, obvious way.
func bruteSelects(ix *Index, sel *Selector, s Subject) bool {
	zone, _ := ix.ZoneOf(s)
	in := func(list []string, v string) bool { return len(list) == 0 || slices.Contains(list, v) }
	switch s.Kind {
	case KindService:
		names := sel.Services
		if sel.Service != "" {
			names = append([]string{sel.Service}, names...)
		}
		return len(names) > 0 && slices.Contains(names, s.Name) && in(sel.Zones, zone)
	case KindDevice:
		if sel.Service != "" || len(sel.Services) > 0 {
			return false
		}
		d, _ := ix.Device(s.Name)
		return in(sel.Zones, zone) && in(sel.Classes, d.Class) && in(sel.Gateways, d.Gateway) && in(sel.Devices, d.Name)
	}
	return false
}
