package authz

import (
	"context"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/vigil-iot/vigil/topology"
)

// observed collects what an observer is given, copied as the contract asks.
type observed struct{ list []Observation }

func (o *observed) observe(ob *Observation) { o.list = append(o.list, *ob) }

// TestObserverSeesEveryDecision sends one request of each kind and checks
// what the observer is told about it: the cause, derived in Go, and who,
// where and what the request was.
func TestObserverSeesEveryDecision(t *testing.T) {
	const (
		aqN1   = "spiffe://city.example/zone/north/device/aq-n1"
		aqN2   = "spiffe://city.example/zone/north/device/aq-n2"
		slcN1  = "spiffe://city.example/zone/north/device/slc-n1"
		slcS1  = "spiffe://city.example/zone/south/device/slc-s1"
		gwN    = "spiffe://city.example/zone/north/gateway/gw-north"
		gwS    = "spiffe://city.example/zone/south/gateway/gw-south"
		tele   = "telemetry.city.example"
		fw     = "firmware.city.example"
		posted = "/api/v1/telemetry"
	)
	dev := topology.DeviceSubject
	type want struct {
		cause          Cause
		subject        topology.Subject
		principal      string
		gateway        string
		service, zone  string // the destination and the subject's zone
		flow           string
		reason         string // a substring
		bytes          int64
		notReady, deny bool // the member is not ready; a custom policy denying everything
	}
	tests := []struct {
		name    string
		state   caseState
		repeat  int
		req     *authv3.CheckRequest
		size    int64
		body    string
		rawBody bool
		want    want
	}{
		{name: "allowed", req: checkRequest(aqN1, "", "", tele, "POST", posted), size: 512,
			want: want{cause: CauseNone, subject: dev("aq-n1"), principal: aqN1, gateway: "gw-north", service: "telemetry", zone: "north",
				flow: "north-sensors-telemetry", reason: "allowed by flow", bytes: 512}},
		{name: "allowed through the device's gateway", req: checkRequest(gwN, "URI="+aqN1, "telemetry", "", "POST", posted), body: "{\"t\": 21.5}",
			want: want{cause: CauseNone, subject: dev("aq-n1"), principal: aqN1, gateway: "gw-north", service: "telemetry", zone: "north",
				flow: "north-sensors-telemetry", bytes: 11}},
		{name: "size unknown, raw body", req: checkRequest(aqN1, "", "", tele, "POST", posted), size: -1, body: "abcd", rawBody: true,
			want: want{cause: CauseNone, subject: dev("aq-n1"), principal: aqN1, gateway: "gw-north", service: "telemetry", zone: "north",
				flow: "north-sensors-telemetry", bytes: 4}},
		{name: "no principal", req: checkRequest("", "", "", tele, "POST", posted),
			want: want{cause: CauseUnknownIdentity, service: "", reason: "no verified client identity"}},
		{name: "unknown identity", req: checkRequest("spiffe://city.example/zone/south/device/aq-n1", "", "", tele, "POST", posted),
			want: want{cause: CauseUnknownIdentity, principal: "spiffe://city.example/zone/south/device/aq-n1", service: "telemetry", reason: "unknown identity"}},
		{name: "forwarded by another gateway", req: checkRequest(gwS, "URI="+aqN1, "", tele, "POST", posted),
			want: want{cause: CauseForwardRefused, subject: topology.GatewaySubject("gw-south"), principal: gwS, gateway: "gw-south",
				service: "telemetry", zone: "south", reason: "device aq-n1 is not behind gateway gw-south"}},
		{name: "forwarded unknown device", req: checkRequest(gwN, "URI=spiffe://city.example/zone/north/device/ghost", "", tele, "POST", posted),
			want: want{cause: CauseForwardRefused, subject: topology.GatewaySubject("gw-north"), principal: gwN, gateway: "gw-north",
				service: "telemetry", zone: "north", reason: "is not a device of this topology"}},
		{name: "forwarded by a device", req: checkRequest(slcN1, "URI="+aqN1, "", tele, "POST", posted),
			want: want{cause: CauseForwardRefused, subject: dev("slc-n1"), principal: slcN1, gateway: "gw-north",
				service: "telemetry", zone: "north", reason: "may not forward"}},
		{name: "quarantined", req: checkRequest(slcS1, "", "", tele, "POST", posted),
			want: want{cause: CauseQuarantined, subject: dev("slc-s1"), principal: slcS1, gateway: "gw-south", service: "telemetry", zone: "south", reason: "is quarantined"}},
		{name: "gateway quarantined", state: caseState{Quarantined: []string{"gw-north"}}, req: checkRequest(gwN, "URI="+aqN1, "", tele, "POST", posted),
			want: want{cause: CauseQuarantined, subject: dev("aq-n1"), principal: aqN1, gateway: "gw-north", service: "telemetry", zone: "north", reason: "gateway gw-north is quarantined"}},
		{name: "stale attestation", req: checkRequest(aqN2, "", "", tele, "POST", posted),
			want: want{cause: CauseAttestation, subject: dev("aq-n2"), principal: aqN2, gateway: "gw-north", service: "telemetry", zone: "north", reason: "old; class air-quality"}},
		{name: "no attestation", state: caseState{ClearAttestation: []string{"aq-n1"}}, req: checkRequest(aqN1, "", "", tele, "POST", posted),
			want: want{cause: CauseAttestation, subject: dev("aq-n1"), principal: aqN1, gateway: "gw-north", service: "telemetry", zone: "north", reason: "has no attestation"}},
		{name: "no flow", req: checkRequest(aqN1, "", "", tele, "GET", posted),
			want: want{cause: CauseNoFlow, subject: dev("aq-n1"), principal: aqN1, gateway: "gw-north", service: "telemetry", zone: "north", reason: "no flow allows GET"}},
		{name: "no flow to the service", req: checkRequest(slcN1, "", "", "billing.city.example", "GET", "/"),
			want: want{cause: CauseNoFlow, subject: dev("slc-n1"), principal: slcN1, gateway: "gw-north", service: "billing", zone: "north", reason: "to reach service billing"}},
		{name: "unknown service", req: checkRequest(aqN1, "", "", "unknown.city.example", "POST", posted),
			want: want{cause: CauseUnknownService, subject: dev("aq-n1"), principal: aqN1, gateway: "gw-north", zone: "north", reason: "unknown destination service"}},
		{name: "rate limited", repeat: 3, req: checkRequest(slcN1, "", "", tele, "POST", posted),
			want: want{cause: CauseRateLimited, subject: dev("slc-n1"), principal: slcN1, gateway: "gw-north", service: "telemetry", zone: "north", reason: "rate limit of flow lights-telemetry"}},
		{name: "restricted by risk", state: caseState{Risk: map[string]int{"slc-n1": 63}}, req: checkRequest(slcN1, "", "", fw, "GET", "/firmware/a.bin"),
			want: want{cause: CauseRestricted, subject: dev("slc-n1"), principal: slcN1, gateway: "gw-north", service: "firmware", zone: "north",
				reason: slcN1 + " is restricted by risk 63 (restrictAt 60): only essential flows are allowed"}},
		{name: "restricted, an essential flow", state: caseState{Risk: map[string]int{"slc-n1": 99}}, req: checkRequest(slcN1, "", "", tele, "POST", posted),
			want: want{cause: CauseNone, subject: dev("slc-n1"), principal: slcN1, gateway: "gw-north", service: "telemetry", zone: "north", flow: "lights-telemetry"}},
		{name: "restricted, no flow at all", state: caseState{Risk: map[string]int{"slc-n1": 99}}, req: checkRequest(slcN1, "", "", fw, "DELETE", "/firmware/a.bin"),
			want: want{cause: CauseNoFlow, subject: dev("slc-n1"), principal: slcN1, gateway: "gw-north", service: "firmware", zone: "north"}},
		{name: "malformed path", req: checkRequest(slcN1, "", "", fw, "GET", "/firmware/../admin"),
			want: want{cause: CauseMalformed, subject: dev("slc-n1"), principal: slcN1, gateway: "gw-north", zone: "north", reason: "malformed request"}},
		{name: "malformed forwarded identity", req: checkRequest(gwN, "URI="+aqN1+",URI="+aqN2, "", tele, "POST", posted),
			want: want{cause: CauseMalformed, subject: topology.GatewaySubject("gw-north"), principal: gwN, gateway: "gw-north", service: "telemetry", zone: "north", reason: "malformed request"}},
		{name: "malformed, no HTTP request", req: &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}},
			want: want{cause: CauseMalformed, reason: "malformed request"}},
		{name: "member not ready", req: checkRequest(aqN1, "", "", tele, "POST", posted),
			want: want{cause: CauseOther, notReady: true, subject: dev("aq-n1"), principal: aqN1, gateway: "gw-north", service: "telemetry", zone: "north", reason: "still catching up"}},
		{name: "a custom policy's own deny", req: checkRequest(aqN1, "", "", tele, "POST", posted),
			want: want{cause: CauseOther, deny: true, subject: dev("aq-n1"), principal: aqN1, gateway: "gw-north", service: "telemetry", zone: "north", reason: "denied by policy"}},
	}
	ix := testIndex(t)
	base := applyState(t, ix, topology.NewState(), caseState{
		Attested: map[string]struct {
			Age      string `yaml:"age"`
			Firmware string `yaml:"firmware"`
		}{"aq-n1": {Age: "1h", Firmware: "1.8.3"}, "aq-n2": {Age: "13h", Firmware: "1.8.3"}},
		Quarantined: []string{"slc-s1"},
	})
	denyAll, err := Compile(context.Background(), map[string]string{"p.rego": "package custom\n\ndecision := false\n"}, nil, "data.custom.decision", "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			engine, err := NewEngine(context.Background(), quiet())
			if err != nil {
				t.Fatal(err)
			}
			if tt.want.deny {
				engine.Use(denyAll)
			}
			snap := topology.NewSnapshot(42, 1, ix, applyState(t, ix, base, tt.state))
			log, obs := &memLog{}, &observed{}
			s := NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine, Log: log,
				Now: func() time.Time { return testNow }, Logger: quiet(), Observer: obs.observe,
				Ready: func() bool { return !tt.want.notReady }})
			if h := tt.req.GetAttributes().GetRequest().GetHttp(); h != nil {
				h.Size = tt.size
				if tt.rawBody {
					h.RawBody = []byte(tt.body)
				} else {
					h.Body = tt.body
				}
			}
			for range tt.repeat {
				s.Check(context.Background(), tt.req)
			}
			resp, _ := s.Check(context.Background(), tt.req)
			if len(obs.list) != tt.repeat+1 {
				t.Fatalf("%d observations for %d checks", len(obs.list), tt.repeat+1)
			}
			o, d, w := obs.list[len(obs.list)-1], log.last(), tt.want
			if allowed := codes.Code(resp.GetStatus().GetCode()) == codes.OK; o.Allowed != allowed || d.Allowed != allowed {
				t.Errorf("observed allowed %v, decision %v, response %v", o.Allowed, d.Allowed, allowed)
			}
			if o.Cause != w.cause {
				t.Errorf("cause %v, want %v (reason %q)", o.Cause, w.cause, d.Reason)
			}
			if (o.Cause == CauseNone) != o.Allowed {
				t.Errorf("cause %v for allowed = %v", o.Cause, o.Allowed)
			}
			if o.Subject != w.subject || o.Principal != w.principal || o.Gateway != w.gateway || o.SubjectZone != w.zone {
				t.Errorf("subject %v (%q) in zone %q through %q, want %v (%q) in zone %q through %q",
					o.Subject, o.Principal, o.SubjectZone, o.Gateway, w.subject, w.principal, w.zone, w.gateway)
			}
			if o.Service != w.service || (w.service != "" && o.ServiceZone != "cloud") || (w.service == "" && o.ServiceZone != "") {
				t.Errorf("service %q in zone %q, want %q", o.Service, o.ServiceZone, w.service)
			}
			if o.Flow != w.flow {
				t.Errorf("flow %q, want %q", o.Flow, w.flow)
			}
			if o.Reason != d.Reason || !strings.Contains(o.Reason, w.reason) {
				t.Errorf("reason %q (logged %q), want it to contain %q", o.Reason, d.Reason, w.reason)
			}
			if o.DecisionID != d.ID || !o.At.Equal(testNow) || o.Bytes != w.bytes {
				t.Errorf("decision %q at %v, %d bytes; want %q at %v, %d bytes", o.DecisionID, o.At, o.Bytes, d.ID, testNow, w.bytes)
			}
			if h := tt.req.GetAttributes().GetRequest().GetHttp(); h != nil && w.cause != CauseMalformed {
				if o.Method != h.GetMethod() || o.Path != h.GetPath() {
					t.Errorf("request %s %s, want %s %s", o.Method, o.Path, h.GetMethod(), h.GetPath())
				}
			}
		})
	}
}

// TestObserverAndLogAgree: with and without an observer a server decides
// the same, and the observer's copy outlives the Check.
func TestObserverAndLogAgree(t *testing.T) {
	snap, engine := hardeningState(t)
	obs := &observed{}
	var plain, watched memLog
	mk := func(log *memLog, o func(*Observation)) *Server {
		return NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine, Log: log,
			Now: func() time.Time { return testNow }, Logger: quiet(), Observer: o})
	}
	a, b := mk(&plain, nil), mk(&watched, obs.observe)
	reqs := []*authv3.CheckRequest{
		checkRequest("spiffe://city.example/zone/north/device/aq-n1", "", "", "telemetry.city.example", "POST", "/api/v1/telemetry"),
		checkRequest("spiffe://city.example/zone/north/device/aq-n1", "", "", "telemetry.city.example", "GET", "/api/v1/telemetry"),
		checkRequest("spiffe://city.example/zone/north/device/nobody", "", "", "telemetry.city.example", "POST", "/api/v1/telemetry"),
	}
	for _, r := range reqs {
		ra, _ := a.Check(context.Background(), r)
		rb, _ := b.Check(context.Background(), r)
		if ra.GetStatus().GetCode() != rb.GetStatus().GetCode() || plain.last().Reason != watched.last().Reason {
			t.Errorf("without an observer %v %q, with one %v %q", ra.GetStatus().GetCode(), plain.last().Reason, rb.GetStatus().GetCode(), watched.last().Reason)
		}
	}
	if len(obs.list) != len(reqs) {
		t.Fatalf("%d observations, want %d", len(obs.list), len(reqs))
	}
	if o := obs.list[0]; o.Cause != CauseNone || o.Subject != topology.DeviceSubject("aq-n1") || o.Flow != "north-sensors-telemetry" {
		t.Errorf("the first observation, kept after its Check: %+v", o)
	}
}

// TestObserverNamesTheAskingGateway: an identity the topology does not
// know, asked about by a gateway's proxy (proxy TLS), is attributed to
// that gateway.
func TestObserverNamesTheAskingGateway(t *testing.T) {
	snap, engine := hardeningState(t)
	obs := &observed{}
	s := NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine, Log: &memLog{},
		Now: func() time.Time { return testNow }, Logger: quiet(), Observer: obs.observe, RequireCaller: true})
	ctx := callerContext(t, "spiffe://city.example/zone/north/gateway/gw-north")
	for _, principal := range []string{"spiffe://city.example/zone/north/device/rogue", "spiffe://city.example/zone/north/device/aq-n1",
		"spiffe://city.example/zone/south/device/slc-s1"} {
		s.Check(ctx, checkRequest(principal, "", "", "telemetry.city.example", "POST", "/api/v1/telemetry"))
	}
	if o := obs.list[0]; o.Cause != CauseUnknownIdentity || o.Gateway != "gw-north" || o.Subject.Kind != 0 || o.Principal != "spiffe://city.example/zone/north/device/rogue" {
		t.Errorf("unknown identity at gw-north observed as %+v", o)
	}
	if o := obs.list[1]; o.Cause != CauseNone || o.Gateway != "gw-north" || o.Subject != topology.DeviceSubject("aq-n1") {
		t.Errorf("aq-n1 through gw-north observed as %+v", o)
	}
	// A device of another gateway: the asking gateway may not ask.
	if o := obs.list[2]; o.Cause != CauseOther || o.Subject != topology.DeviceSubject("slc-s1") || !strings.Contains(o.Reason, "may ask only about its own devices") {
		t.Errorf("slc-s1 asked about by gw-north observed as %+v", o)
	}
}

func TestCauseString(t *testing.T) {
	want := []string{"none", "unknown-identity", "forward-refused", "quarantined", "attestation", "no-flow",
		"unknown-service", "rate-limited", "restricted", "malformed", "other"}
	for c := CauseNone; c <= CauseOther; c++ {
		if got := c.String(); got != want[c] {
			t.Errorf("Cause(%d).String() = %q, want %q", c, got, want[c])
		}
	}
	if got := Cause(200).String(); got != "other" {
		t.Errorf("Cause(200).String() = %q, want other", got)
	}
}
