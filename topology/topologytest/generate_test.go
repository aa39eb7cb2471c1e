package topologytest

import (
	"testing"

	"github.com/vigil-iot/vigil/topology"
)

func TestGenerateIsValid(t *testing.T) {
	for _, s := range []Spec{{}, {Zones: 1, GatewaysPerZone: 1}, {Zones: 3, GatewaysPerZone: 4, Devices: 1000}} {
		doc := Generate(s)
		ix, err := topology.NewIndex(doc)
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		if ix.NumDevices() != s.Devices && s.Zones*s.GatewaysPerZone > 0 {
			t.Errorf("%+v: %d devices", s, ix.NumDevices())
		}
		if s.Devices > 0 {
			if rules := ix.RulesFrom(topology.DeviceSubject(DeviceName(0))); len(rules) != 2 {
				t.Errorf("%+v: device 0 has %d outbound flows, want 2", s, len(rules))
			}
		}
	}
}
