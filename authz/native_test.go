package authz

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vigil-iot/vigil/topology"
)

// TestNativeMatchesRego is the differential test of decision 0009: for
// many random topologies, runtime states and requests, Vigil's default
// policy in Go (decideDefault) and the Rego it stands for
// (policy/vigil.rego, evaluated by OPA on the input Vigil builds) decide
// the same: the same allow, the same reason, the same status. Any
// difference fails, with the request, the state and both results.
func TestNativeMatchesRego(t *testing.T) {
	ctx := context.Background()
	rego, err := Compile(ctx, map[string]string{"vigil.rego": DefaultPolicy}, nil, DefaultQuery, "test")
	if err != nil {
		t.Fatal(err)
	}
	seeds, perTopology := 40, 400
	if testing.Short() {
		seeds, perTopology = 8, 200
	}
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	counts := map[string]int{}
	for seed := range seeds {
		rng := rand.New(rand.NewPCG(uint64(seed), 14))
		doc := randomDocument(rng)
		ix, err := topology.NewIndex(doc)
		if err != nil {
			t.Fatalf("seed %d: generated document is invalid: %v", seed, err)
		}
		snap := topology.NewSnapshot(7, 1, ix, randomState(rng, ix, now))
		for range perTopology {
			req := randomCheck(rng, ix)
			r, err := ParseRequest(req)
			if err != nil || r.Principal == "" {
				counts["not parsed"]++
				continue
			}
			res := resolve(snap, &r, now)
			if res.deny != "" {
				counts["identity refused before the policy"]++
				continue
			}
			got := decideDefault(&res)
			input, err := BuildInput(req, res.input("node"))
			if err != nil {
				t.Fatal(err)
			}
			want, err := rego.Eval(ctx, input)
			if err != nil {
				t.Fatal(err)
			}
			if got.Allowed != want.Allowed || got.Reason != want.Reason || got.HTTPStatus != want.HTTPStatus ||
				len(want.Headers)+len(want.ResponseHeadersToAdd)+len(want.RequestHeadersToRemove) != 0 || want.Body != "" {
				t.Fatalf("seed %d: Go and Rego differ for %s %s %s (service %q) as %s (forwarded %q)\n"+
					"state: %+v\nGo:   %+v\nRego: %+v",
					seed, r.Method, r.Host, r.Path, r.Service, r.Principal, r.Forwarded, res.subjState, got, want)
			}
			counts[outcome(got)]++
		}
	}
	t.Logf("decided both ways: %v", counts)
	// The generator must reach every branch of the policy, or the test
	// proves less than it says.
	for _, must := range []string{"allowed", "unknown identity", "unknown destination service", "is quarantined",
		"gateway", "has no attestation", "is not acceptable", "is restricted by risk", "to reach service", "from"} {
		if counts[must] == 0 {
			t.Errorf("no generated request reached %q; widen the generator", must)
		}
	}
}

// outcome names the branch of the policy a result came from.
func outcome(r Result) string {
	for _, k := range []string{"unknown identity", "unknown destination service", "is quarantined", "has no attestation",
		"is not acceptable", "is restricted by risk", "to reach service"} {
		if strings.Contains(r.Reason, k) {
			if k == "is quarantined" && strings.HasPrefix(r.Reason, "gateway ") {
				return "gateway"
			}
			return k
		}
	}
	switch {
	case r.Allowed:
		return "allowed"
	case strings.HasPrefix(r.Reason, "no flow allows") && strings.Contains(r.Reason, " from "):
		return "from"
	}
	return r.Reason
}

var (
	testMethods = []string{"GET", "POST", "PUT", "DELETE", "PATCH"}
	testPaths   = []string{"/api/v1/telemetry", "/api/v1", "/api/v1/telemetry/extra", "/firmware/", "/firmware/2.5.0.bin",
		"/upload/cam.jpg", "/upload", "/", "/a", "/api/v1/tele", "/ünï/cödé", "/ünï/cödéx", "/%C3%BC"}
	flowPaths = []string{"/api/v1/telemetry", "/firmware/*", "/upload/*", "/", "/*", "/api/*", "/ünï/cödé", "/a"}
)

// randomDocument is a small city with random classes (attestation or not,
// restrictAt), gateways, devices, services and flows (selectors, methods,
// exact and prefix paths, essential or not).
func randomDocument(rng *rand.Rand) *topology.Document {
	doc := &topology.Document{APIVersion: "vigil/v1", TrustDomain: "city.example"}
	zones := 1 + rng.IntN(3)
	for z := range zones {
		doc.Zones = append(doc.Zones, topology.Zone{Name: fmt.Sprintf("z%d", z)})
	}
	doc.Zones = append(doc.Zones, topology.Zone{Name: "cloud"})
	for g := range 1 + rng.IntN(4) {
		doc.Gateways = append(doc.Gateways, topology.Gateway{Name: fmt.Sprintf("gw%d", g), Zone: fmt.Sprintf("z%d", g%zones)})
	}
	for c := range 1 + rng.IntN(3) {
		cl := topology.DeviceClass{Name: fmt.Sprintf("class%d", c)}
		if rng.IntN(2) == 0 {
			cl.Attestation = &topology.AttestationPolicy{MaxAge: "12h", Firmware: []topology.FirmwareRef{
				{Version: "1.0.0", SHA256: strings.Repeat("a", 64)}, {Version: "1.1.0", SHA256: strings.Repeat("b", 64)}}}
		}
		if rng.IntN(2) == 0 {
			at := 1 + rng.IntN(100)
			q := max(at, 1+rng.IntN(100))
			cl.Response = &topology.ResponsePolicy{RestrictAt: &at, QuarantineAt: &q}
		}
		doc.DeviceClasses = append(doc.DeviceClasses, cl)
	}
	for d := range 3 + rng.IntN(20) {
		doc.Devices = append(doc.Devices, topology.Device{Name: fmt.Sprintf("dev%d", d),
			Class:   doc.DeviceClasses[rng.IntN(len(doc.DeviceClasses))].Name,
			Gateway: doc.Gateways[rng.IntN(len(doc.Gateways))].Name})
	}
	hosts := []string{"telemetry.city.example", "firmware.city.example", "video.city.example", "billing.city.example"}
	for s, h := range hosts[:1+rng.IntN(len(hosts))] {
		doc.Services = append(doc.Services, topology.Service{Name: fmt.Sprintf("svc%d", s), Zone: "cloud",
			Protocol: topology.ProtocolHTTP, Hosts: []string{h}})
	}
	for f := range rng.IntN(7) {
		fl := topology.Flow{Name: fmt.Sprintf("flow%d", f), To: topology.Selector{Service: doc.Services[rng.IntN(len(doc.Services))].Name},
			Essential: rng.IntN(3) == 0}
		switch rng.IntN(4) {
		case 0:
			fl.From.Classes = []string{doc.DeviceClasses[rng.IntN(len(doc.DeviceClasses))].Name}
		case 1:
			fl.From.Zones = []string{doc.Zones[rng.IntN(zones)].Name}
		case 2:
			fl.From.Devices = []string{doc.Devices[rng.IntN(len(doc.Devices))].Name}
		default:
			fl.From.Gateways = []string{doc.Gateways[rng.IntN(len(doc.Gateways))].Name}
		}
		if rng.IntN(4) > 0 {
			fl.HTTP = &topology.HTTPMatch{}
			for _, m := range testMethods {
				if rng.IntN(3) == 0 {
					fl.HTTP.Methods = append(fl.HTTP.Methods, m)
				}
			}
			for range rng.IntN(3) {
				p := flowPaths[rng.IntN(len(flowPaths))]
				if !slices.Contains(fl.HTTP.Paths, p) {
					fl.HTTP.Paths = append(fl.HTTP.Paths, p)
				}
			}
		}
		doc.Flows = append(doc.Flows, fl)
	}
	return doc
}

// randomState quarantines, scores and attests random devices and gateways.
func randomState(rng *rand.Rand, ix *topology.Index, now time.Time) *topology.State {
	updates := map[topology.Subject]*topology.SubjectState{}
	for _, d := range ix.Devices() {
		st := &topology.SubjectState{}
		if rng.IntN(6) == 0 {
			st.Quarantine = &topology.Quarantine{Reason: "tamper \"switch\" opened", By: "test", Since: now}
		}
		if rng.IntN(2) == 0 {
			st.Risk = &topology.Risk{Score: rng.IntN(101), UpdatedAt: now}
		}
		a := &topology.Attestation{Status: "passed", Method: "tpm2-quote", FirmwareVersion: "1.0.0",
			FirmwareSHA256: strings.Repeat("a", 64), VerifiedAt: now.Add(-time.Hour), ExpiresAt: now.Add(time.Hour)}
		switch rng.IntN(7) {
		case 0:
			a = nil
		case 1:
			a.Status, a.Reasons = "failed", []string{"PCR 0 does not match"}
		case 2:
			a.ExpiresAt = now.Add(-time.Minute)
		case 3:
			a.VerifiedAt = now.Add(-13 * time.Hour)
		case 4:
			a.FirmwareVersion = "9.9.9"
		}
		st.Attestation = a
		if !st.IsZero() {
			updates[topology.DeviceSubject(d.Name)] = st
		}
	}
	for _, g := range ix.Gateways() {
		if rng.IntN(5) == 0 {
			updates[topology.GatewaySubject(g.Name)] = &topology.SubjectState{
				Quarantine: &topology.Quarantine{Reason: "cabinet forced", By: "test", Since: now}}
		}
	}
	return topology.NewState().With(updates)
}

// randomCheck is a Check from a device, gateway, service or stranger, for
// a service named or found by host, with a random method and path;
// sometimes a gateway speaking for a device (XFCC).
func randomCheck(rng *rand.Rand, ix *topology.Index) *authv3.CheckRequest {
	principal := "spiffe://city.example/zone/z0/device/stranger"
	devs, gws, svcs := ix.Devices(), ix.Gateways(), ix.Services()
	headers := map[string]string{}
	switch k := rng.IntN(10); {
	case k < 7:
		principal, _ = ix.SPIFFEID(topology.DeviceSubject(devs[rng.IntN(len(devs))].Name))
	case k == 7:
		g := gws[rng.IntN(len(gws))]
		principal, _ = ix.SPIFFEID(topology.GatewaySubject(g.Name))
		if ds := ix.DevicesOf(g.Name); len(ds) > 0 && rng.IntN(2) == 0 {
			id, _ := ix.SPIFFEID(topology.DeviceSubject(ds[rng.IntN(len(ds))].Name))
			headers[ForwardedClientCertHeader] = "URI=" + id
		}
	case k == 8:
		principal, _ = ix.SPIFFEID(topology.ServiceSubject(svcs[rng.IntN(len(svcs))].Name))
	}
	host := []string{"telemetry.city.example", "firmware.city.example", "video.city.example", "billing.city.example", "nowhere.example"}[rng.IntN(5)]
	method, path := testMethods[rng.IntN(len(testMethods))], testPaths[rng.IntN(len(testPaths))]
	// Half the time, aim at one of the subject's flows: its service, one
	// of its methods, one of its paths (or just past it).
	if sub, ok := ix.BySPIFFEID(principal); ok && rng.IntN(2) == 0 {
		if flows := ix.RulesFrom(sub); len(flows) > 0 {
			f := flows[rng.IntN(len(flows))]
			for _, svc := range svcs {
				if slices.Contains(ix.RulesTo(topology.ServiceSubject(svc.Name)), f) {
					host = svc.Hosts[0]
				}
			}
			if len(f.Methods) > 0 {
				method = f.Methods[rng.IntN(len(f.Methods))]
			}
			if len(f.Paths) > 0 {
				p := f.Paths[rng.IntN(len(f.Paths))]
				path = p.Value
				if path == "" || rng.IntN(3) == 0 {
					path += []string{"x", "/x", "ü", "/deeper/still"}[rng.IntN(4)]
				}
				if !strings.HasPrefix(path, "/") {
					path = "/" + path
				}
			}
		}
	}
	a := &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: principal},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: host, Headers: headers}},
	}
	if rng.IntN(3) == 0 {
		svc := "svc-unknown"
		if rng.IntN(4) > 0 {
			svc = svcs[rng.IntN(len(svcs))].Name
		}
		a.ContextExtensions = map[string]string{ServiceExtension: svc}
	}
	return &authv3.CheckRequest{Attributes: a}
}

// BenchmarkPolicyEvalNative is policy evaluation alone for the default
// policy in Go (decideDefault on resolved requests), the counterpart of
// BenchmarkPolicyEval (OPA), with its p99.
func BenchmarkPolicyEvalNative(b *testing.B) {
	for _, bs := range benchSpecs {
		s, reqs := benchServer(b, bs.spec)
		snap := s.cfg.Snapshot()
		var allowed, denied []resolution
		for i, req := range reqs {
			r, err := ParseRequest(req)
			if err != nil {
				b.Fatal(err)
			}
			if i%2 == 0 {
				allowed = append(allowed, resolve(snap, &r, time.Now()))
			} else {
				denied = append(denied, resolve(snap, &r, time.Now()))
			}
		}
		for _, set := range []struct {
			name string
			ress []resolution
			want bool
		}{{"allow", allowed, true}, {"deny", denied, false}} {
			b.Run(bs.name+"/"+set.name, func(b *testing.B) {
				times := make([]time.Duration, 0, 1<<16)
				i := 0
				for b.Loop() {
					t0 := time.Now()
					res := decideDefault(&set.ress[i%len(set.ress)])
					if res.Allowed != set.want {
						b.Fatalf("allowed=%v (%s), want %v", res.Allowed, res.Reason, set.want)
					}
					if len(times) < cap(times) {
						times = append(times, time.Since(t0))
					}
					i++
				}
				slices.Sort(times)
				b.ReportMetric(float64(times[len(times)*99/100].Nanoseconds())/1000, "p99-µs")
			})
		}
	}
}
