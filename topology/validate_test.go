package topology

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestValidDocument guards the fixture every validation case starts from.
func TestValidDocument(t *testing.T) {
	ix, err := NewIndex(validDoc())
	if err != nil {
		t.Fatalf("validDoc() is invalid: %v", err)
	}
	if got := ix.NumDevices(); got != 3 {
		t.Errorf("NumDevices() = %d, want 3", got)
	}
}

func TestGatewayClasses(t *testing.T) {
	d := validDoc()
	d.DeviceClasses[0].Attestation.SPIRE = SPIRERequired
	d.DeviceClasses[0].Identity = IdentityAgent
	d.Gateways[1].Class = "light"
	ix, err := NewIndex(d)
	if err != nil {
		t.Fatal(err)
	}
	if c := ix.ClassOf(GatewaySubject("gw-s")); c == nil || c.Name != "light" || !c.SPIRETPM() || c.Attestation.SPIRE != SPIRERequired {
		t.Errorf("gw-s: %+v", c)
	}
	if c := ix.ClassOf(GatewaySubject("gw-n")); c != nil {
		t.Errorf("gw-n has no class, got %+v", c)
	}
	if c := ix.ClassOf(DeviceSubject("sensor-1")); c == nil || c.Name != "sensor" || c.SPIRETPM() {
		t.Errorf("sensor-1: %+v", c)
	}
	if c := ix.ClassOf(DeviceSubject("nope")); c != nil {
		t.Errorf("unknown device: %+v", c)
	}
}

// TestValidationRules has one case per rule NewIndex enforces. Each case
// breaks one rule of a valid document and names the exact path and part of
// the message of every error it expects.
func TestValidationRules(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	one := func(path, msg string) []want { return []want{{path, msg}} }
	respond := func(class int, p ResponsePolicy) func(d *Document) {
		return func(d *Document) { d.DeviceClasses[class].Response = &p }
	}
	tests := []struct {
		name   string
		mutate func(d *Document)
		want   []want
	}{
		// header
		{"apiVersion missing", func(d *Document) { d.APIVersion = "" }, one("apiVersion", `is required (want "vigil/v1")`)},
		{"apiVersion unsupported", func(d *Document) { d.APIVersion = "vigil/v2" }, one("apiVersion", `unsupported version "vigil/v2"`)},
		{"apiVersion wrong case", func(d *Document) { d.APIVersion = "Vigil/v1" }, one("apiVersion", `unsupported version "Vigil/v1"`)},
		{"trustDomain missing", func(d *Document) { d.TrustDomain = "" }, one("trustDomain", `"" is not a SPIFFE trust domain`)},
		{"trustDomain upper case", func(d *Document) { d.TrustDomain = "Test.Example" }, one("trustDomain", "is not a SPIFFE trust domain")},
		{"trustDomain with scheme", func(d *Document) { d.TrustDomain = "spiffe://test.example" }, one("trustDomain", "is not a SPIFFE trust domain")},
		{"trustDomain with port", func(d *Document) { d.TrustDomain = "test.example:443" }, one("trustDomain", "is not a SPIFFE trust domain")},
		{"trustDomain too long", func(d *Document) { d.TrustDomain = long(256) }, one("trustDomain", "is not a SPIFFE trust domain")},

		// names
		{"zone name missing", func(d *Document) { d.Zones = append(d.Zones, Zone{}) }, one("zones[3].name", "is required")},
		{"zone name upper case", func(d *Document) { d.Zones = append(d.Zones, Zone{Name: "East"}) }, one("zones[3].name", `"East" is not a valid name`)},
		{"zone name leading hyphen", func(d *Document) { d.Zones = append(d.Zones, Zone{Name: "-east"}) }, one("zones[3].name", "is not a valid name")},
		{"zone name trailing hyphen", func(d *Document) { d.Zones = append(d.Zones, Zone{Name: "east-"}) }, one("zones[3].name", "is not a valid name")},
		{"zone name underscore", func(d *Document) { d.Zones = append(d.Zones, Zone{Name: "east_1"}) }, one("zones[3].name", "is not a valid name")},
		{"zone name dot", func(d *Document) { d.Zones = append(d.Zones, Zone{Name: "east.1"}) }, one("zones[3].name", "is not a valid name")},
		{"zone name 64 characters", func(d *Document) { d.Zones = append(d.Zones, Zone{Name: long(64)}) }, one("zones[3].name", "at most 63")},
		{"gateway name invalid", func(d *Document) { d.Gateways = append(d.Gateways, Gateway{Name: "GW", Zone: "north"}) }, one("gateways[2].name", `"GW" is not a valid name`)},
		{"device class name invalid", func(d *Document) { d.DeviceClasses = append(d.DeviceClasses, DeviceClass{Name: "Lamp"}) }, one("deviceClasses[2].name", "is not a valid name")},
		// gateway classes and attestation.spire
		{"gateway class unknown", func(d *Document) { d.Gateways[0].Class = "edge" }, one("gateways[0].class", `unknown device class "edge"`)},
		{"gateway class without attestation", func(d *Document) { d.Gateways[0].Class = "sensor" }, one("gateways[0].class", `class "sensor" sets no attestation`)},
		{"spire unknown", func(d *Document) { d.DeviceClasses[0].Attestation.SPIRE = "always" }, []want{
			{"deviceClasses[0].attestation.spire", `unknown value "always"`},
		}},
		{"spire without tpm quotes", func(d *Document) {
			d.DeviceClasses[0].Attestation.SPIRE = SPIREOnboard
			d.DeviceClasses[0].Attestation.Formats = []string{AttestEAT}
			d.DeviceClasses[0].Identity = IdentityAgent
		}, one("deviceClasses[0].attestation.spire", `formats must include "tpm2-quote"`)},
		{"spire for delegated devices", func(d *Document) { d.DeviceClasses[0].Attestation.SPIRE = SPIRERequired }, []want{
			{"devices[0].class", "identity: agent"}, {"devices[1].class", "identity: agent"},
		}},
		{"device name invalid", func(d *Document) {
			d.Devices = append(d.Devices, Device{Name: "dev 1", Class: "light", Gateway: "gw-n"})
		}, one("devices[3].name", `"dev 1" is not a valid name`)},
		{"service name invalid", func(d *Document) {
			d.Services = append(d.Services, Service{Name: "svc_1", Zone: "cloud", Protocol: ProtocolTCP})
		}, one("services[3].name", "is not a valid name")},
		{"flow name missing", func(d *Document) { d.Flows[0].Name = "" }, one("flows[0].name", "is required")},
		{"flow name invalid", func(d *Document) { d.Flows[0].Name = "Sensor telemetry" }, one("flows[0].name", "is not a valid name")},

		// duplicate names, per kind
		{"duplicate zone", func(d *Document) { d.Zones = append(d.Zones, Zone{Name: "north"}) }, one("zones[3].name", `duplicate zone name "north"`)},
		{"duplicate gateway", func(d *Document) { d.Gateways = append(d.Gateways, Gateway{Name: "gw-n", Zone: "south"}) }, one("gateways[2].name", `duplicate gateway name "gw-n"`)},
		{"duplicate device class", func(d *Document) { d.DeviceClasses = append(d.DeviceClasses, DeviceClass{Name: "sensor"}) }, one("deviceClasses[2].name", `duplicate device class name "sensor"`)},
		{"duplicate device", func(d *Document) {
			d.Devices = append(d.Devices, Device{Name: "light-1", Class: "sensor", Gateway: "gw-s"})
		}, one("devices[3].name", `duplicate device name "light-1"`)},
		{"duplicate service", func(d *Document) {
			d.Services = append(d.Services, Service{Name: "mqtt", Zone: "cloud", Protocol: ProtocolTCP})
		}, one("services[3].name", `duplicate service name "mqtt"`)},
		{"duplicate flow", func(d *Document) { d.Flows = append(d.Flows, d.Flows[2]) }, one("flows[3].name", `duplicate flow name "lights-mqtt"`)},

		// labels, on every kind of object
		{"label key empty", func(d *Document) { d.Zones[0].Labels[""] = "x" }, one("zones[0].labels", `invalid label key ""`)},
		{"label key with space", func(d *Document) { d.Gateways[0].Labels = Labels{"road name": "x"} }, one("gateways[0].labels", `invalid label key "road name"`)},
		{"label key with equals", func(d *Document) { d.Devices[0].Labels = Labels{"a=b": "x"} }, one("devices[0].labels", `invalid label key "a=b"`)},
		{"label key with quote", func(d *Document) { d.DeviceClasses[1].Labels = Labels{`a"b`: "x"} }, one("deviceClasses[1].labels", "invalid label key")},
		{"label key too long", func(d *Document) { d.Services[0].Labels = Labels{long(254): "x"} }, one("services[0].labels", "invalid label key")},
		{"label value two lines", func(d *Document) { d.Flows[0].Labels = Labels{"note": "a\nb"} }, one("flows[0].labels.note", "label value must be one line")},
		{"label value too long", func(d *Document) { d.Zones[0].Labels["district"] = long(254) }, one("zones[0].labels.district", "at most 253 characters")},
		{"label errors in key order", func(d *Document) {
			d.Zones[1].Labels = Labels{"z z": "x", "a a": "1\r", "m m": "y"}
		}, []want{
			{"zones[1].labels", `invalid label key "a a"`},
			{"zones[1].labels.a a", "label value must be one line"},
			{"zones[1].labels", `invalid label key "m m"`},
			{"zones[1].labels", `invalid label key "z z"`},
		}},

		// references from gateways and devices
		{"gateway unknown zone", func(d *Document) { d.Gateways[0].Zone = "east" }, one("gateways[0].zone", `unknown zone "east"`)},
		{"gateway zone missing", func(d *Document) { d.Gateways[0].Zone = "" }, one("gateways[0].zone", "is required")},
		{"device unknown class", func(d *Document) { d.Devices[0].Class = "lamp" }, one("devices[0].class", `unknown device class "lamp"`)},
		{"device class missing", func(d *Document) { d.Devices[0].Class = "" }, one("devices[0].class", "is required")},
		{"device unknown gateway", func(d *Document) { d.Devices[1].Gateway = "gw-x" }, one("devices[1].gateway", `unknown gateway "gw-x"`)},
		{"device gateway missing", func(d *Document) { d.Devices[1].Gateway = "" }, one("devices[1].gateway", "is required")},

		// device classes
		{"maxAge missing", func(d *Document) { d.DeviceClasses[0].Attestation.MaxAge = "" }, one("deviceClasses[0].attestation.maxAge", "must be positive")},
		{"maxAge not a duration", func(d *Document) { d.DeviceClasses[0].Attestation.MaxAge = "soon" }, one("deviceClasses[0].attestation.maxAge", `duration "soon"`)},
		{"maxAge zero", func(d *Document) { d.DeviceClasses[0].Attestation.MaxAge = "0s" }, one("deviceClasses[0].attestation.maxAge", "must be positive")},
		{"maxAge negative", func(d *Document) { d.DeviceClasses[0].Attestation.MaxAge = "-1h" }, one("deviceClasses[0].attestation.maxAge", "must be positive")},
		{"maxAge zero days", func(d *Document) { d.DeviceClasses[0].Attestation.MaxAge = "0d" }, one("deviceClasses[0].attestation.maxAge", "must be positive")},
		{"maxAge over ten years", func(d *Document) { d.DeviceClasses[0].Attestation.MaxAge = "3651d" }, one("deviceClasses[0].attestation.maxAge", "must be positive")},
		{"firmware missing", func(d *Document) { d.DeviceClasses[0].Attestation.Firmware = nil }, one("deviceClasses[0].attestation.firmware", "at least one firmware reference value")},
		{"firmware version missing", func(d *Document) { d.DeviceClasses[0].Attestation.Firmware[0].Version = "" }, one("deviceClasses[0].attestation.firmware[0].version", "is required")},
		{"firmware version blank", func(d *Document) { d.DeviceClasses[0].Attestation.Firmware[0].Version = " \t" }, one("deviceClasses[0].attestation.firmware[0].version", "is required")},
		{"firmware version too long", func(d *Document) { d.DeviceClasses[0].Attestation.Firmware[0].Version = long(129) }, one("deviceClasses[0].attestation.firmware[0].version", "at most 128")},
		{"sha256 upper case", func(d *Document) { d.DeviceClasses[0].Attestation.Firmware[0].SHA256 = strings.ToUpper(testSHA) }, one("deviceClasses[0].attestation.firmware[0].sha256", "64 lowercase hex digits")},
		{"sha256 63 digits", func(d *Document) { d.DeviceClasses[0].Attestation.Firmware[0].SHA256 = testSHA[:63] }, one("deviceClasses[0].attestation.firmware[0].sha256", "64 lowercase hex digits")},
		{"sha256 not hex", func(d *Document) { d.DeviceClasses[0].Attestation.Firmware[0].SHA256 = "g" + testSHA[1:] }, one("deviceClasses[0].attestation.firmware[0].sha256", "64 lowercase hex digits")},
		{"sha256 missing", func(d *Document) { d.DeviceClasses[0].Attestation.Firmware[0].SHA256 = "" }, one("deviceClasses[0].attestation.firmware[0].sha256", "64 lowercase hex digits")},
		{"second firmware ref bad", func(d *Document) {
			a := d.DeviceClasses[0].Attestation
			a.Firmware = append(a.Firmware, FirmwareRef{Version: "1.1.0", SHA256: "sha256:" + testSHA})
		}, one("deviceClasses[0].attestation.firmware[1].sha256", "64 lowercase hex digits")},
		{"class rateLimit without unit", func(d *Document) { d.DeviceClasses[0].RateLimit = "60" }, one("deviceClasses[0].rateLimit", `rate "60" must look like N/s, N/m or N/h`)},
		{"class rateLimit zero", func(d *Document) { d.DeviceClasses[0].RateLimit = "0/m" }, one("deviceClasses[0].rateLimit", "whole number from 1 to 1000000000")},
		{"class rateLimit negative", func(d *Document) { d.DeviceClasses[0].RateLimit = "-5/s" }, one("deviceClasses[0].rateLimit", "whole number from 1")},
		{"class rateLimit too large", func(d *Document) { d.DeviceClasses[0].RateLimit = "1000000001/s" }, one("deviceClasses[0].rateLimit", "whole number from 1")},
		{"class rateLimit not a number", func(d *Document) { d.DeviceClasses[1].RateLimit = "ten/m" }, one("deviceClasses[1].rateLimit", "whole number from 1")},
		{"class rateLimit per day", func(d *Document) { d.DeviceClasses[1].RateLimit = "10/d" }, one("deviceClasses[1].rateLimit", `has unit "d"; use s, m or h`)},
		{"class rateLimit long unit", func(d *Document) { d.DeviceClasses[1].RateLimit = "10/min" }, one("deviceClasses[1].rateLimit", `has unit "min"`)},
		{"class identity unknown", func(d *Document) { d.DeviceClasses[1].Identity = "spire" }, one("deviceClasses[1].identity", `unknown identity "spire" (want "delegated", the default, or "agent")`)},
		{"class identity upper case", func(d *Document) { d.DeviceClasses[0].Identity = "Agent" }, one("deviceClasses[0].identity", `unknown identity "Agent"`)},
		{"class identity blank", func(d *Document) { d.DeviceClasses[0].Identity = " " }, one("deviceClasses[0].identity", `unknown identity " "`)},

		// response policies
		{"restrictAt zero", respond(0, ResponsePolicy{RestrictAt: intp(0)}), one("deviceClasses[0].response.restrictAt", "risk 0 is out of range (1 to 100)")},
		{"restrictAt over 100", respond(0, ResponsePolicy{RestrictAt: intp(101)}), one("deviceClasses[0].response.restrictAt", "risk 101 is out of range (1 to 100)")},
		{"quarantineAt negative", respond(1, ResponsePolicy{QuarantineAt: intp(-5)}), one("deviceClasses[1].response.quarantineAt", "risk -5 is out of range")},
		{"quarantineAt over 100", respond(1, ResponsePolicy{QuarantineAt: intp(1000)}), one("deviceClasses[1].response.quarantineAt", "risk 1000 is out of range")},
		{"both out of range: no order error", respond(0, ResponsePolicy{RestrictAt: intp(0), QuarantineAt: intp(101)}), []want{
			{"deviceClasses[0].response.restrictAt", "risk 0 is out of range"},
			{"deviceClasses[0].response.quarantineAt", "risk 101 is out of range"},
		}},
		{"restrictAt above quarantineAt", respond(0, ResponsePolicy{RestrictAt: intp(90), QuarantineAt: intp(60)}), one("deviceClasses[0].response.restrictAt", "restrictAt 90 is above quarantineAt 60")},
		{"restrictAt above the default quarantineAt", respond(0, ResponsePolicy{RestrictAt: intp(81)}), one("deviceClasses[0].response.restrictAt", "restrictAt 81 is above quarantineAt 80 (the default); give a quarantineAt of at least 81")},
		{"quarantineAt below the default restrictAt", respond(0, ResponsePolicy{QuarantineAt: intp(49)}), one("deviceClasses[0].response.quarantineAt", "quarantineAt 49 is below restrictAt 50 (the default); give a restrictAt of at most 49")},
		{"mode unknown", respond(0, ResponsePolicy{Mode: "manual"}), one("deviceClasses[0].response.mode", `unknown mode "manual" (want "auto", the default, or "approve")`)},
		{"mode upper case", respond(1, ResponsePolicy{Mode: "Approve"}), one("deviceClasses[1].response.mode", `unknown mode "Approve"`)},
		{"learning negative", respond(0, ResponsePolicy{Learning: "-1h"}), one("deviceClasses[0].response.learning", `duration "-1h" must be zero or positive`)},
		{"learning not a duration", respond(0, ResponsePolicy{Learning: "a while"}), one("deviceClasses[0].response.learning", `duration "a while" must be zero or positive`)},
		{"learning over ten years", respond(0, ResponsePolicy{Learning: "3651d"}), one("deviceClasses[0].response.learning", "at most 3650d")},
		{"neverQuarantine unknown device", respond(0, ResponsePolicy{NeverQuarantine: []string{"light-1", "light-9"}}), one("deviceClasses[0].response.neverQuarantine[1]", `unknown device "light-9"`)},
		{"neverQuarantine empty name", respond(0, ResponsePolicy{NeverQuarantine: []string{""}}), one("deviceClasses[0].response.neverQuarantine[0]", "is required")},
		{"neverQuarantine device of another class", respond(0, ResponsePolicy{NeverQuarantine: []string{"sensor-1"}}), one("deviceClasses[0].response.neverQuarantine[0]", `device "sensor-1" is of class "sensor"; only devices of class "light" may be listed`)},
		{"neverQuarantine gateway", respond(0, ResponsePolicy{NeverQuarantine: []string{"gw-n"}}), one("deviceClasses[0].response.neverQuarantine[0]", `unknown device "gw-n"`)},
		{"neverQuarantine duplicate", respond(0, ResponsePolicy{NeverQuarantine: []string{"light-1", "light-2", "light-1"}}), one("deviceClasses[0].response.neverQuarantine[2]", `device "light-1" is listed twice`)},
		{"every response error at once", respond(1, ResponsePolicy{RestrictAt: intp(95), QuarantineAt: intp(90), Mode: "off", Learning: "1w", NeverQuarantine: []string{"light-1", "nope"}}), []want{
			{"deviceClasses[1].response.restrictAt", "restrictAt 95 is above quarantineAt 90"},
			{"deviceClasses[1].response.mode", `unknown mode "off"`},
			{"deviceClasses[1].response.learning", `duration "1w"`},
			{"deviceClasses[1].response.neverQuarantine[0]", `device "light-1" is of class "light"; only devices of class "sensor"`},
			{"deviceClasses[1].response.neverQuarantine[1]", `unknown device "nope"`},
		}},
		{"response errors come in document order", func(d *Document) {
			d.DeviceClasses[0].Response = &ResponsePolicy{NeverQuarantine: []string{"light-9"}}
			d.Devices[1].Class = "lamp"
		}, []want{
			{"deviceClasses[0].response.neverQuarantine[0]", `unknown device "light-9"`},
			{"devices[1].class", `unknown device class "lamp"`},
		}},

		// services
		{"service unknown zone", func(d *Document) { d.Services[0].Zone = "edge" }, one("services[0].zone", `unknown zone "edge"`)},
		{"service zone missing", func(d *Document) { d.Services[2].Zone = "" }, one("services[2].zone", "is required")},
		{"service protocol missing", func(d *Document) { d.Services[0].Protocol = "" }, one("services[0].protocol", "is required (http, grpc or tcp)")},
		{"service protocol unknown", func(d *Document) { d.Services[0].Protocol = "udp" }, one("services[0].protocol", `unknown protocol "udp"`)},
		{"service protocol upper case", func(d *Document) { d.Services[1].Protocol = "GRPC" }, one("services[1].protocol", `unknown protocol "GRPC"`)},
		{"http service without hosts", func(d *Document) { d.Services[0].Hosts = nil }, one("services[0].hosts", "an http service needs at least one host")},
		{"grpc service without hosts", func(d *Document) { d.Services[1].Hosts = nil }, one("services[1].hosts", "an grpc service needs at least one host")},
		{"host upper case", func(d *Document) { d.Services[0].Hosts[0] = "Telemetry.test.example" }, one("services[0].hosts[0]", `"Telemetry.test.example" is not a lowercase DNS name`)},
		{"host with port", func(d *Document) { d.Services[0].Hosts[0] = "telemetry.test.example:443" }, one("services[0].hosts[0]", "is not a lowercase DNS name")},
		{"host with scheme", func(d *Document) { d.Services[0].Hosts[0] = "https://telemetry.test.example" }, one("services[0].hosts[0]", "is not a lowercase DNS name")},
		{"host with empty label", func(d *Document) { d.Services[0].Hosts[0] = "telemetry..example" }, one("services[0].hosts[0]", "is not a lowercase DNS name")},
		{"host wildcard", func(d *Document) { d.Services[1].Hosts[0] = "*.test.example" }, one("services[1].hosts[0]", "is not a lowercase DNS name")},
		{"host of another service", func(d *Document) {
			d.Services[1].Hosts = append(d.Services[1].Hosts, "telemetry.test.example")
		}, one("services[1].hosts[1]", `host "telemetry.test.example" already names service "telemetry"`)},
		{"host twice in one service", func(d *Document) {
			d.Services[0].Hosts = append(d.Services[0].Hosts, "telemetry.test.example")
		}, one("services[0].hosts[1]", `already names service "telemetry"`)},
		{"endpoint without port", func(d *Document) { d.Services[0].Endpoints[0] = "127.0.0.1" }, one("services[0].endpoints[0]", `endpoint "127.0.0.1" must be host:port`)},
		{"endpoint as URL", func(d *Document) { d.Services[0].Endpoints[0] = "https://127.0.0.1:8443" }, one("services[0].endpoints[0]", "must be host:port")},
		{"endpoint bad host", func(d *Document) { d.Services[0].Endpoints[0] = "bad_host:8443" }, one("services[0].endpoints[0]", "has an invalid host")},
		{"endpoint port zero", func(d *Document) { d.Services[0].Endpoints[0] = "127.0.0.1:0" }, one("services[0].endpoints[0]", "has an invalid port")},
		{"endpoint port too large", func(d *Document) { d.Services[0].Endpoints[0] = "127.0.0.1:65536" }, one("services[0].endpoints[0]", "has an invalid port")},
		{"endpoint named port", func(d *Document) { d.Services[0].Endpoints[0] = "127.0.0.1:https" }, one("services[0].endpoints[0]", "has an invalid port")},
		{"backend bad", func(d *Document) { d.Services[0].Backends = []string{"127.0.0.1"} }, one("services[0].backends[0]", "must be host:port")},
		{"backends of tcp", func(d *Document) {
			d.Services[2].Endpoints, d.Services[2].Backends = []string{"10.0.0.1:1883"}, []string{"127.0.0.1:1883"}
		}, one("services[2].backends", "a tcp service cannot be fronted")},
		{"backends without endpoints", func(d *Document) { d.Services[1].Backends = []string{"127.0.0.1:9000"} }, one("services[1].endpoints", "needs endpoints")},
		{"backends with two ports", func(d *Document) {
			d.Services[0].Endpoints = append(d.Services[0].Endpoints, "127.0.0.2:9443")
			d.Services[0].Backends = []string{"127.0.0.1:9000"}
		}, one("services[0].endpoints[1]", "port 9443 differs from 8443")},
		{"backends on a fronted port", func(d *Document) {
			d.Services[0].Backends = []string{"127.0.0.1:9000"}
			d.Services[1].Endpoints, d.Services[1].Backends = []string{"10.0.0.9:8443"}, []string{"127.0.0.1:9001"}
		}, one("services[1].endpoints", `port 8443 is already fronted by the cloud edge of zone "cloud" for service "telemetry"`)},

		// flow selectors
		{"from selects nothing", func(d *Document) { d.Flows[0].From = Selector{} }, one("flows[0].from", "selects nothing")},
		{"to selects nothing", func(d *Document) { d.Flows[2].To = Selector{} }, one("flows[2].to", "selects nothing")},
		{"service and services", func(d *Document) { d.Flows[0].To.Services = []string{"control"} }, one("flows[0].to", "give either service or services, not both")},
		{"services with classes", func(d *Document) { d.Flows[1].From.Classes = []string{"light"} }, one("flows[1].from", "a selector of services cannot also name classes, devices or gateways")},
		{"services with gateways", func(d *Document) { d.Flows[1].From.Gateways = []string{"gw-n"} }, one("flows[1].from", "a selector of services cannot also name")},
		{"service with devices", func(d *Document) { d.Flows[0].To.Devices = []string{"light-1"} }, one("flows[0].to", "a selector of services cannot also name")},
		{"unknown zone", func(d *Document) { d.Flows[0].From.Zones = []string{"east"} }, one("flows[0].from.zones[0]", `unknown zone "east"`)},
		{"unknown class", func(d *Document) { d.Flows[0].From.Classes = []string{"sensor", "lamp"} }, one("flows[0].from.classes[1]", `unknown device class "lamp"`)},
		{"unknown device", func(d *Document) { d.Flows[2].From.Devices[1] = "light-9" }, one("flows[2].from.devices[1]", `unknown device "light-9"`)},
		{"unknown gateway", func(d *Document) { d.Flows[0].From.Gateways = []string{"gw-x"} }, one("flows[0].from.gateways[0]", `unknown gateway "gw-x"`)},
		{"unknown service in services", func(d *Document) { d.Flows[1].From.Services = []string{"ctl"} }, one("flows[1].from.services[0]", `unknown service "ctl"`)},
		{"unknown service", func(d *Document) { d.Flows[0].To.Service = "telemtry" }, one("flows[0].to.service", `unknown service "telemtry"`)},
		{"unknown zone in to", func(d *Document) { d.Flows[1].To.Zones = []string{"north", "west"} }, one("flows[1].to.zones[1]", `unknown zone "west"`)},
		{"empty name in selector", func(d *Document) { d.Flows[0].From.Classes = []string{""} }, one("flows[0].from.classes[0]", "is required")},

		// http matching
		{"http on a tcp service", func(d *Document) { d.Flows[2].HTTP = &HTTPMatch{Methods: []string{"GET"}} }, one("flows[2].http", `service "mqtt" speaks tcp`)},
		{"http on a tcp service in a list", func(d *Document) {
			d.Flows[2].To = Selector{Services: []string{"telemetry", "mqtt"}}
			d.Flows[2].HTTP = &HTTPMatch{}
		}, one("flows[2].http", `service "mqtt" speaks tcp`)},
		{"method lower case", func(d *Document) { d.Flows[0].HTTP.Methods = []string{"post"} }, one("flows[0].http.methods[0]", `unknown HTTP method "post" (methods are upper case)`)},
		{"method unknown", func(d *Document) { d.Flows[0].HTTP.Methods = []string{"POST", "FETCH"} }, one("flows[0].http.methods[1]", `unknown HTTP method "FETCH"`)},
		{"method duplicate", func(d *Document) { d.Flows[0].HTTP.Methods = []string{"POST", "PUT", "POST"} }, one("flows[0].http.methods[2]", `duplicate method "POST"`)},
		{"path without leading slash", func(d *Document) { d.Flows[0].HTTP.Paths = []string{"api/v1"} }, one("flows[0].http.paths[0]", `path "api/v1" must start with /`)},
		{"path empty", func(d *Document) { d.Flows[0].HTTP.Paths = []string{""} }, one("flows[0].http.paths[0]", "must start with /")},
		{"path star in the middle", func(d *Document) { d.Flows[1].HTTP.Paths[1] = "/schedule/*/raw" }, one("flows[1].http.paths[1]", "may only have * as its last character")},
		{"path two stars", func(d *Document) { d.Flows[1].HTTP.Paths[1] = "/schedule/**" }, one("flows[1].http.paths[1]", "may only have * as its last character")},
		{"path double slash", func(d *Document) { d.Flows[0].HTTP.Paths = []string{"/api//v1"} }, one("flows[0].http.paths[0]", "must be normalised")},
		{"path dot dot", func(d *Document) { d.Flows[0].HTTP.Paths = []string{"/api/../admin"} }, one("flows[0].http.paths[0]", "must be normalised")},
		{"path trailing dot dot", func(d *Document) { d.Flows[0].HTTP.Paths = []string{"/api/.."} }, one("flows[0].http.paths[0]", "must be normalised")},
		{"path dot segment", func(d *Document) { d.Flows[0].HTTP.Paths = []string{"/api/./v1"} }, one("flows[0].http.paths[0]", "must be normalised")},
		{"path query", func(d *Document) { d.Flows[0].HTTP.Paths = []string{"/api?debug=1"} }, one("flows[0].http.paths[0]", "must not contain a query")},
		{"path fragment", func(d *Document) { d.Flows[0].HTTP.Paths = []string{"/api#top"} }, one("flows[0].http.paths[0]", "must not contain a query, fragment")},
		{"path white space", func(d *Document) { d.Flows[0].HTTP.Paths = []string{"/api v1"} }, one("flows[0].http.paths[0]", "white space")},
		{"flow rateLimit bad", func(d *Document) { d.Flows[0].RateLimit = "10/day" }, one("flows[0].rateLimit", `has unit "day"`)},
		{"flow rateLimit no count", func(d *Document) { d.Flows[0].RateLimit = "/s" }, one("flows[0].rateLimit", "whole number from 1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := validDoc()
			tt.mutate(d)
			ix, err := NewIndex(d)
			if ix != nil {
				t.Errorf("NewIndex returned an index along with an error")
			}
			if err == nil {
				t.Fatalf("NewIndex: no error\n  want:%v", tt.want)
			}
			if got := fieldErrors(t, err); !matchErrors(got, tt.want) {
				t.Errorf("errors differ\n  got: %s\n  want: %v", formatErrors(got), tt.want)
			}
		})
	}
}

// TestValidationAccepts lists variations the rules must not reject.
func TestValidationAccepts(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(d *Document)
	}{
		{"rate per second", func(d *Document) { d.DeviceClasses[0].RateLimit = "5/s" }},
		{"rate per hour", func(d *Document) { d.Flows[0].RateLimit = "100/h" }},
		{"largest rate", func(d *Document) { d.Flows[0].RateLimit = "1000000000/s" }},
		{"maxAge in days", func(d *Document) { d.DeviceClasses[0].Attestation.MaxAge = "7d" }},
		{"maxAge compound", func(d *Document) { d.DeviceClasses[0].Attestation.MaxAge = "1h30m" }},
		{"class without attestation or rate", func(d *Document) { d.DeviceClasses[0] = DeviceClass{Name: "light"} }},
		{"class identity delegated", func(d *Document) { d.DeviceClasses[0].Identity = IdentityDelegated }},
		{"class identity agent", func(d *Document) { d.DeviceClasses[1].Identity = IdentityAgent }},
		{"tcp service with hosts", func(d *Document) { d.Services[2].Hosts = []string{"mqtt.test.example"} }},
		{"endpoint by host name", func(d *Document) { d.Services[0].Endpoints = []string{"telemetry.internal:8443"} }},
		{"endpoint IPv6", func(d *Document) { d.Services[0].Endpoints = []string{"[::1]:8443"} }},
		{"prefix path for everything", func(d *Document) { d.Flows[0].HTTP.Paths = []string{"/*"} }},
		{"empty http match", func(d *Document) { d.Flows[0].HTTP = &HTTPMatch{} }},
		{"services narrowed by zone", func(d *Document) { d.Flows[1].From.Zones = []string{"cloud"} }},
		{"same name in different kinds", func(d *Document) {
			d.Gateways = append(d.Gateways, Gateway{Name: "north", Zone: "north"})
			d.Flows[0].Name = "telemetry"
		}},
		{"label keys with dots and slashes", func(d *Document) { d.Devices[0].Labels = Labels{"vigil.io/owner": "ops team"} }},
		{"device to device flow", func(d *Document) {
			d.Flows = append(d.Flows, Flow{Name: "peer", From: Selector{Devices: []string{"light-1"}}, To: Selector{Devices: []string{"light-2"}}})
		}},
		{"header only", func(d *Document) { *d = Document{APIVersion: APIVersion, TrustDomain: "a_b.example-1"} }},
		{"empty response", func(d *Document) { d.DeviceClasses[0].Response = &ResponsePolicy{} }},
		{"restrictAt equal to quarantineAt", func(d *Document) {
			d.DeviceClasses[0].Response = &ResponsePolicy{RestrictAt: intp(70), QuarantineAt: intp(70)}
		}},
		{"risk bounds", func(d *Document) {
			d.DeviceClasses[0].Response = &ResponsePolicy{RestrictAt: intp(1), QuarantineAt: intp(100)}
			d.DeviceClasses[1].Response = &ResponsePolicy{RestrictAt: intp(100), QuarantineAt: intp(100)}
		}},
		{"restrictAt below the default quarantineAt", func(d *Document) { d.DeviceClasses[0].Response = &ResponsePolicy{RestrictAt: intp(80)} }},
		{"quarantineAt above the default restrictAt", func(d *Document) { d.DeviceClasses[0].Response = &ResponsePolicy{QuarantineAt: intp(50)} }},
		{"mode auto", func(d *Document) { d.DeviceClasses[0].Response = &ResponsePolicy{Mode: ResponseAuto} }},
		{"mode approve", func(d *Document) { d.DeviceClasses[0].Response = &ResponsePolicy{Mode: ResponseApprove} }},
		{"learning zero", func(d *Document) { d.DeviceClasses[0].Response = &ResponsePolicy{Learning: "0s"} }},
		{"learning in days", func(d *Document) { d.DeviceClasses[0].Response = &ResponsePolicy{Learning: "14d"} }},
		{"neverQuarantine every device of the class", func(d *Document) {
			d.DeviceClasses[0].Response = &ResponsePolicy{NeverQuarantine: []string{"light-2", "light-1"}}
		}},
		{"essential flows", func(d *Document) { d.Flows[0].Essential, d.Flows[1].Essential = true, true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := validDoc()
			tt.mutate(d)
			if _, err := NewIndex(d); err != nil {
				t.Errorf("NewIndex: %v, want no error", err)
			}
		})
	}
}

// TestValidationReportsEverything checks that several problems are all
// reported at once, in document order, with the line of each.
func TestValidationReportsEverything(t *testing.T) {
	const src = `apiVersion: vigil/v2
trustDomain: city.example
zones:
  - name: north
gateways:
  - name: gw-1
    zone: east
deviceClasses:
  - name: light
    rateLimit: 10/d
devices:
  - name: d-1
    class: light
    gateway: gw-1
  - name: d-2
    class: lamp
    gateway: gw-1
flows:
  - name: f
    from: {}
    to: {service: nope}
`
	_, err := Load([]byte(src))
	got := fieldErrors(t, err)
	wantErrs := []FieldError{
		{Path: "apiVersion", Line: 1},
		{Path: "gateways[0].zone", Line: 7},
		{Path: "deviceClasses[0].rateLimit", Line: 10},
		{Path: "devices[1].class", Line: 16},
		{Path: "flows[0].from", Line: 20},
		{Path: "flows[0].to.service", Line: 21},
	}
	if len(got) != len(wantErrs) {
		t.Fatalf("got %d errors, want %d:%s", len(got), len(wantErrs), formatErrors(got))
	}
	for i, w := range wantErrs {
		if got[i].Path != w.Path || got[i].Line != w.Line {
			t.Errorf("error %d: got %s at line %d, want %s at line %d", i, got[i].Path, got[i].Line, w.Path, w.Line)
		}
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "invalid topology document: 6 errors\n") ||
		!strings.Contains(msg, `line 16: devices[1].class: unknown device class "lamp"`) {
		t.Errorf("Error() =\n%s", msg)
	}
}

// TestValidationLinesFromJSON checks that lines are traced in JSON sources too.
func TestValidationLinesFromJSON(t *testing.T) {
	src := `{
  "apiVersion": "vigil/v1",
  "trustDomain": "city.example",
  "zones": [{"name": "north"}],
  "gateways": [{"name": "gw-1", "zone": "north"}],
  "deviceClasses": [{"name": "light"}],
  "devices": [
    {"name": "d-1", "class": "light", "gateway": "gw-1"},
    {"name": "d-2",
     "class": "lamp", "gateway": "gw-1"}
  ]
}`
	got := fieldErrors(t, func() error { _, err := Load([]byte(src)); return err }())
	if len(got) != 1 || got[0].Path != "devices[1].class" || got[0].Line != 10 {
		t.Errorf("got%s\nwant devices[1].class at line 10", formatErrors(got))
	}
}

// TestValidationErrorCap checks that a document with more than
// maxReportedErrors problems reports that many and counts the rest.
func TestValidationErrorCap(t *testing.T) {
	const extra = 137
	d := validDoc()
	for i := range maxReportedErrors + extra {
		d.Devices = append(d.Devices, Device{Name: fmt.Sprintf("bad-%d", i), Class: "lamp", Gateway: "gw-n"})
	}
	ix, err := NewIndex(d)
	if ix != nil {
		t.Error("NewIndex returned an index for an invalid document")
	}
	got := fieldErrors(t, err)
	if len(got) != maxReportedErrors+1 {
		t.Fatalf("got %d errors, want %d", len(got), maxReportedErrors+1)
	}
	if want := "devices[3].class"; got[0].Path != want {
		t.Errorf("first error at %s, want %s", got[0].Path, want)
	}
	last := got[len(got)-1]
	if want := fmt.Sprintf("%d more errors not shown", extra); last.Message != want || last.Path != "" {
		t.Errorf("last error = %+v, want message %q and no path", last, want)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Error("errors.Is(err, ErrInvalid) = false")
	}
}

func TestFieldErrorFormat(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"with line", FieldError{Path: "devices[1].class", Line: 7, Message: "bad"}, "line 7: devices[1].class: bad"},
		{"without line", FieldError{Path: "devices[1].class", Message: "bad"}, "devices[1].class: bad"},
		{"without path", FieldError{Message: "3 more errors not shown"}, "3 more errors not shown"},
		{"one error", &ValidationError{Errors: []FieldError{{Path: "a", Message: "b"}}}, "invalid topology document: 1 error\n  a: b"},
		{"two errors", &ValidationError{Errors: []FieldError{{Path: "a", Message: "b"}, {Path: "c", Line: 2, Message: "d"}}},
			"invalid topology document: 2 errors\n  a: b\n  line 2: c: d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestClassIdentity checks how a class's identity setting reads.
func TestClassIdentity(t *testing.T) {
	for _, tt := range []struct {
		identity string
		ownAgent bool
	}{{"", false}, {IdentityDelegated, false}, {IdentityAgent, true}} {
		d := validDoc()
		d.DeviceClasses[1].Identity = tt.identity
		ix, err := NewIndex(d)
		if err != nil {
			t.Fatal(err)
		}
		if c, _ := ix.Class("sensor"); c.OwnAgent() != tt.ownAgent {
			t.Errorf("identity %q: OwnAgent() = %v, want %v", tt.identity, c.OwnAgent(), tt.ownAgent)
		}
	}
}

// TestClassIdentityYAML reads the field from a document, with its line.
func TestClassIdentityYAML(t *testing.T) {
	doc := "apiVersion: vigil/v1\ntrustDomain: t.example\ndeviceClasses:\n  - name: cam\n    identity: agent\n  - name: lamp\n    identity: own\n"
	_, err := Load([]byte(doc))
	var verr *ValidationError
	if !errors.As(err, &verr) || len(verr.Errors) != 1 {
		t.Fatalf("Load: %v, want one validation error", err)
	}
	if fe := verr.Errors[0]; fe.Path != "deviceClasses[1].identity" || fe.Line != 7 {
		t.Errorf("error at %s line %d, want deviceClasses[1].identity line 7", fe.Path, fe.Line)
	}
}

func intp(v int) *int { return &v }

// TestClassResponse checks the parsed response policy: defaults for what
// is not given, and ResponseOf for every kind of subject.
func TestClassResponse(t *testing.T) {
	d := validDoc()
	d.DeviceClasses[0].Response = &ResponsePolicy{RestrictAt: intp(60), QuarantineAt: intp(90), Mode: ResponseApprove,
		Learning: "2d", NeverQuarantine: []string{"light-2"}}
	d.DeviceClasses[1].Response = &ResponsePolicy{Mode: ResponseAuto}
	d.Flows[0].Essential = true
	ix, err := NewIndex(d)
	if err != nil {
		t.Fatal(err)
	}
	light, _ := ix.Class("light")
	want := ClassResponse{RestrictAt: 60, QuarantineAt: 90, Approve: true, Learning: 48 * time.Hour, NeverQuarantine: map[string]bool{"light-2": true}}
	if !reflect.DeepEqual(light.Response, want) {
		t.Errorf("light: Response = %+v, want %+v", light.Response, want)
	}
	if light.DeviceClass.Response != d.DeviceClasses[0].Response {
		t.Error("the class's document response policy is not the document's")
	}
	sensor, _ := ix.Class("sensor")
	if !reflect.DeepEqual(sensor.Response, DefaultResponse()) {
		t.Errorf("sensor (mode auto only): Response = %+v, want the defaults %+v", sensor.Response, DefaultResponse())
	}
	if def := DefaultResponse(); def.RestrictAt != 50 || def.QuarantineAt != 80 || def.Approve || def.Learning != 0 || def.NeverQuarantine != nil {
		t.Errorf("DefaultResponse() = %+v", def)
	}
	for _, tt := range []struct {
		s    Subject
		want ClassResponse
	}{
		{DeviceSubject("light-1"), want},
		{DeviceSubject("sensor-1"), DefaultResponse()},
		{GatewaySubject("gw-n"), DefaultResponse()},
		{ServiceSubject("telemetry"), DefaultResponse()},
		{DeviceSubject("nobody"), DefaultResponse()},
	} {
		if got := ix.ResponseOf(tt.s); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ResponseOf(%v) = %+v, want %+v", tt.s, got, tt.want)
		}
	}
	r := ix.ResponseOf(DeviceSubject("light-1"))
	for _, tt := range []struct {
		risk                   int
		restricts, quarantines bool
	}{{0, false, false}, {59, false, false}, {60, true, false}, {89, true, false}, {90, true, true}, {100, true, true}} {
		if r.Restricts(tt.risk) != tt.restricts || r.Quarantines(tt.risk) != tt.quarantines {
			t.Errorf("risk %d: Restricts = %v, Quarantines = %v; want %v, %v", tt.risk, r.Restricts(tt.risk), r.Quarantines(tt.risk), tt.restricts, tt.quarantines)
		}
	}
	if rule, _ := ix.Flow("sensor-telemetry"); !rule.Essential {
		t.Error("rule sensor-telemetry is not essential")
	}
	if rule, _ := ix.Flow("control-lights"); rule.Essential {
		t.Error("rule control-lights is essential")
	}
}

// TestClassResponseYAML reads a response block and essential flags from a
// document, and reports a bad value with its line.
func TestClassResponseYAML(t *testing.T) {
	const src = `apiVersion: vigil/v1
trustDomain: t.example
zones: [{name: z}]
gateways: [{name: gw, zone: z}]
deviceClasses:
  - name: cam
    response:
      restrictAt: 0
      quarantineAt: 100
      mode: approve
      learning: 0s
      neverQuarantine: [cam-1]
  - name: lamp
    response: {restrictAt: 40, quarantineAt: 40, learning: 1h}
devices:
  - {name: cam-1, class: cam, gateway: gw}
  - {name: lamp-1, class: lamp, gateway: gw}
services: [{name: s, zone: z, protocol: http, hosts: [s.t.example]}]
flows:
  - {name: f, from: {classes: [cam]}, to: {service: s}, essential: true}
  - {name: g, from: {classes: [lamp]}, to: {service: s}}
`
	_, err := Load([]byte(src))
	got := fieldErrors(t, err)
	if len(got) != 1 || got[0].Path != "deviceClasses[0].response.restrictAt" || got[0].Line != 8 ||
		!strings.Contains(got[0].Message, "risk 0 is out of range (1 to 100)") {
		t.Fatalf("got%s\nwant deviceClasses[0].response.restrictAt at line 8", formatErrors(got))
	}
	ix := mustLoad(t, strings.Replace(src, "restrictAt: 0", "restrictAt: 1", 1))
	cam, _ := ix.Class("cam")
	if want := (ClassResponse{RestrictAt: 1, QuarantineAt: 100, Approve: true, NeverQuarantine: map[string]bool{"cam-1": true}}); !reflect.DeepEqual(cam.Response, want) {
		t.Errorf("cam: %+v, want %+v", cam.Response, want)
	}
	lamp, _ := ix.Class("lamp")
	if want := (ClassResponse{RestrictAt: 40, QuarantineAt: 40, Learning: time.Hour}); !reflect.DeepEqual(lamp.Response, want) {
		t.Errorf("lamp: %+v, want %+v", lamp.Response, want)
	}
	if f, _ := ix.Flow("f"); !f.Essential {
		t.Error("flow f is not essential")
	}
	if g, _ := ix.Flow("g"); g.Essential {
		t.Error("flow g is essential")
	}
	// An explicit zero is kept in the JSON form, so it is refused there too.
	doc, err := Decode([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(doc)
	if !strings.Contains(string(js), `"restrictAt":0`) {
		t.Errorf("the JSON form drops restrictAt 0: %s", js)
	}
	if _, err := Load(js); err == nil {
		t.Error("the JSON form with restrictAt 0 was accepted")
	}
}
