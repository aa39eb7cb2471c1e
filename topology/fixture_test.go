package topology

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testSHA is a well-formed firmware digest for fixtures.
const testSHA = "87576034ab229baee8834c07ea4de31c0167a5c14a6ae4e26d62fad1b48944a0"

// validDoc returns a fresh, small, valid document. Validation cases mutate
// it to break exactly one rule; the indexes they use refer to this layout:
//
//	zones:         0 north, 1 south, 2 cloud
//	gateways:      0 gw-n (north), 1 gw-s (south)
//	deviceClasses: 0 light (attested), 1 sensor (with a response policy)
//	devices:       0 light-1 (gw-n), 1 light-2 (gw-s), 2 sensor-1 (gw-n)
//	services:      0 telemetry (http), 1 control (grpc), 2 mqtt (tcp)
//	flows:         0 sensor-telemetry (essential), 1 control-lights, 2 lights-mqtt
func validDoc() *Document {
	return &Document{
		APIVersion:  APIVersion,
		TrustDomain: "test.example",
		Zones: []Zone{
			{Name: "north", Labels: Labels{"district": "n"}},
			{Name: "south"},
			{Name: "cloud"},
		},
		Gateways: []Gateway{
			{Name: "gw-n", Zone: "north"},
			{Name: "gw-s", Zone: "south"},
		},
		DeviceClasses: []DeviceClass{
			{
				Name: "light",
				Attestation: &AttestationPolicy{
					MaxAge:   "24h",
					Firmware: []FirmwareRef{{Version: "1.0.0", SHA256: testSHA}},
				},
				RateLimit: "60/m",
			},
			{
				Name: "sensor", RateLimit: "30/m",
				Response: &ResponsePolicy{RestrictAt: intp(40), Mode: ResponseApprove, Learning: "1h", NeverQuarantine: []string{"sensor-1"}},
			},
		},
		Devices: []Device{
			{Name: "light-1", Class: "light", Gateway: "gw-n"},
			{Name: "light-2", Class: "light", Gateway: "gw-s"},
			{Name: "sensor-1", Class: "sensor", Gateway: "gw-n"},
		},
		Services: []Service{
			{Name: "telemetry", Zone: "cloud", Protocol: ProtocolHTTP, Hosts: []string{"telemetry.test.example"}, Endpoints: []string{"127.0.0.1:8443"}},
			{Name: "control", Zone: "cloud", Protocol: ProtocolGRPC, Hosts: []string{"control.test.example"}},
			{Name: "mqtt", Zone: "cloud", Protocol: ProtocolTCP},
		},
		Flows: []Flow{
			{
				Name: "sensor-telemetry",
				From: Selector{Classes: []string{"sensor"}},
				To:   Selector{Service: "telemetry"},
				HTTP: &HTTPMatch{Methods: []string{"POST"}, Paths: []string{"/api/v1/telemetry"}},
				// a flow's own budget, below the class default
				RateLimit: "10/m",
				Essential: true,
			},
			{
				Name: "control-lights",
				From: Selector{Services: []string{"control"}},
				To:   Selector{Zones: []string{"north"}, Classes: []string{"light"}},
				HTTP: &HTTPMatch{Methods: []string{"PUT"}, Paths: []string{"/dim", "/schedule/*"}},
			},
			{
				Name: "lights-mqtt",
				From: Selector{Devices: []string{"light-1", "light-2"}},
				To:   Selector{Service: "mqtt"},
			},
		},
	}
}

// smartCity reads the smart-city example from the examples folder (read
// from disk rather than imported: topology imports nothing of this module,
// not even in tests).
func smartCity(t testing.TB) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "examples", "smart-city", "topology.yaml"))
	if err != nil {
		t.Fatalf("reading the smart-city example: %v", err)
	}
	return data
}

func mustLoad(t testing.TB, src string) *Index {
	t.Helper()
	ix, err := Load([]byte(src))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return ix
}

// fieldErrors unpacks a *ValidationError, failing the test for anything else.
func fieldErrors(t testing.TB, err error) []FieldError {
	t.Helper()
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("got error %v (%T), want a *ValidationError", err, err)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
	}
	if errors.Is(err, ErrSyntax) {
		t.Errorf("errors.Is(%v, ErrSyntax) = true for a validation error", err)
	}
	return verr.Errors
}

// want is one expected FieldError: its exact path and part of its message.
type want struct{ path, msg string }

func (w want) String() string { return w.path + ": …" + w.msg + "…" }

func matchErrors(got []FieldError, wants []want) bool {
	if len(got) != len(wants) {
		return false
	}
	for i, w := range wants {
		if got[i].Path != w.path || !strings.Contains(got[i].Message, w.msg) {
			return false
		}
	}
	return true
}

func formatErrors(errs []FieldError) string {
	var b strings.Builder
	for _, e := range errs {
		b.WriteString("\n    ")
		b.WriteString(e.Error())
	}
	if len(errs) == 0 {
		b.WriteString(" (none)")
	}
	return b.String()
}
