// Package topologytest generates valid topology documents of any size for
// tests, benchmarks and load tools, the way net/http/httptest serves tests
// of net/http. It imports only topology.
package topologytest

import (
	"fmt"

	"github.com/vigil-iot/vigil/topology"
)

// Spec sizes a generated city.
type Spec struct {
	Zones           int // device zones; a "cloud" zone for services is added
	GatewaysPerZone int
	Devices         int // spread round-robin over all gateways
	// NoAttestation leaves the classes without an attestation requirement.
	NoAttestation bool
}

// Classes, services and flows every generated document has.
var (
	classes  = []string{"streetlight", "air-quality", "traffic-camera"}
	services = []struct{ name, host string }{
		{"telemetry", "telemetry.city.example"},
		{"video-storage", "video.city.example"},
		{"lighting", "lighting.city.example"},
		{"firmware", "firmware.city.example"},
	}
)

// ZoneName, GatewayName and DeviceName are the names Generate uses.
func ZoneName(i int) string    { return fmt.Sprintf("z-%03d", i) }
func GatewayName(i int) string { return fmt.Sprintf("gw-%05d", i) }
func DeviceName(i int) string  { return fmt.Sprintf("d-%07d", i) }

// Generate builds a valid document: Zones*GatewaysPerZone gateways,
// Devices devices of three classes, four cloud services and the flows of a
// least-privilege city (sensors post telemetry, cameras upload video,
// lighting commands street lights, everyone fetches firmware).
func Generate(s Spec) *topology.Document {
	sha := "a3f1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
	doc := &topology.Document{
		APIVersion:  topology.APIVersion,
		TrustDomain: "city.example",
		Zones:       make([]topology.Zone, 0, s.Zones+1),
		Gateways:    make([]topology.Gateway, 0, s.Zones*s.GatewaysPerZone),
		Devices:     make([]topology.Device, 0, s.Devices),
	}
	for z := range s.Zones {
		doc.Zones = append(doc.Zones, topology.Zone{Name: ZoneName(z)})
		for g := range s.GatewaysPerZone {
			doc.Gateways = append(doc.Gateways, topology.Gateway{Name: GatewayName(z*s.GatewaysPerZone + g), Zone: ZoneName(z)})
		}
	}
	doc.Zones = append(doc.Zones, topology.Zone{Name: "cloud"})
	for _, c := range classes {
		dc := topology.DeviceClass{Name: c, RateLimit: "60/m"}
		if !s.NoAttestation {
			dc.Attestation = &topology.AttestationPolicy{MaxAge: "24h", Firmware: []topology.FirmwareRef{{Version: "1.0.0", SHA256: sha}}}
		}
		doc.DeviceClasses = append(doc.DeviceClasses, dc)
	}
	for i, svc := range services {
		doc.Services = append(doc.Services, topology.Service{
			Name: svc.name, Zone: "cloud", Protocol: topology.ProtocolHTTP,
			Hosts: []string{svc.host}, Endpoints: []string{fmt.Sprintf("127.0.0.1:%d", 8443+i)},
		})
	}
	nGW := len(doc.Gateways)
	for i := range s.Devices {
		doc.Devices = append(doc.Devices, topology.Device{
			Name: DeviceName(i), Class: classes[i%len(classes)], Gateway: GatewayName(i % max(nGW, 1)),
		})
	}
	post := func(paths ...string) *topology.HTTPMatch {
		return &topology.HTTPMatch{Methods: []string{"POST"}, Paths: paths}
	}
	doc.Flows = []topology.Flow{
		{Name: "sensor-telemetry", From: topology.Selector{Classes: []string{"air-quality", "streetlight"}},
			To: topology.Selector{Service: "telemetry"}, HTTP: post("/api/v1/telemetry"), RateLimit: "10/m"},
		{Name: "camera-upload", From: topology.Selector{Classes: []string{"traffic-camera"}},
			To: topology.Selector{Service: "video-storage"}, HTTP: post("/upload/*")},
		{Name: "lighting-commands", From: topology.Selector{Services: []string{"lighting"}},
			To:   topology.Selector{Classes: []string{"streetlight"}},
			HTTP: &topology.HTTPMatch{Methods: []string{"PUT"}, Paths: []string{"/dim", "/schedule"}}},
		{Name: "firmware-fetch", From: topology.Selector{Classes: classes},
			To: topology.Selector{Service: "firmware"}, HTTP: &topology.HTTPMatch{Methods: []string{"GET"}, Paths: []string{"/firmware/*"}}},
	}
	if nGW == 0 {
		doc.Devices = nil
	}
	return doc
}
