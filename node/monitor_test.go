package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/monitor"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/xds"
)

func monitorDoc(ownerURL string) string {
	return `apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}, {name: south}, {name: cloud}]
gateways: [{name: gw-1, zone: north}, {name: gw-2, zone: south}]
deviceClasses:
  - name: sensor
    response: {restrictAt: 50, quarantineAt: 80, neverQuarantine: [sen-keep]}
  - name: camera
    response: {mode: approve}
devices:
  - {name: sen-1, class: sensor, gateway: gw-1, labels: {owner: "` + ownerURL + `"}}
  - {name: sen-2, class: sensor, gateway: gw-1}
  - {name: sen-keep, class: sensor, gateway: gw-1}
  - {name: cam-1, class: camera, gateway: gw-2}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.city.example], endpoints: ["10.0.0.1:8443"]}
  - {name: firmware, zone: cloud, protocol: http, hosts: [firmware.city.example], endpoints: ["10.0.0.1:8443"]}
  - {name: south-db, zone: south, protocol: http, hosts: [db.south.city.example], endpoints: ["10.0.0.2:8443"]}
flows:
  - {name: t, from: {classes: [sensor]}, to: {service: telemetry}, http: {methods: [POST], paths: ["/t"]}, essential: true}
  - {name: fw, from: {classes: [sensor]}, to: {service: firmware}, http: {methods: [GET], paths: ["/fw"]}}
  - {name: cam, from: {classes: [camera]}, to: {service: telemetry}, http: {methods: [POST], paths: ["/t"]}}
`
}

type checker struct {
	t  *testing.T
	cc *grpc.ClientConn
}

func newChecker(t *testing.T, addr string) *checker {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &checker{t: t, cc: cc}
}

func (c *checker) check(zone, dev, method, host, path string) (bool, string) {
	resp, err := authv3.NewAuthorizationClient(c.cc).Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: "spiffe://city.example/zone/" + zone + "/device/" + dev},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: host}},
	}})
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.GetStatus().GetCode() == int32(codes.OK), resp.GetDeniedResponse().GetBody()
}

type hookRecorder struct {
	mu   sync.Mutex
	got  []OwnerNotification
	fail bool
}

func (h *hookRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var n OwnerNotification
	json.NewDecoder(r.Body).Decode(&n)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, n)
}

func incidentOf(t *testing.T, cl *api.Client, sub topology.Subject, ready func(topology.Incident) bool) topology.Incident {
	t.Helper()
	var found topology.Incident
	testwait.For(t, 20*time.Second, "an incident for "+sub.String(), func() bool {
		incs, err := cl.Incidents(context.Background(), "")
		if err != nil {
			return false
		}
		for _, inc := range incs {
			if inc.Subject == sub && ready(inc) {
				found = inc
				return true
			}
		}
		return false
	})
	return found
}

func actionOutcome(inc topology.Incident, name string) string {
	for _, a := range inc.Actions {
		if a.Name == name {
			return a.Outcome
		}
	}
	return ""
}

// TestAScanIsContained plays a sensor scanning destinations through the
// real ext_authz service: the monitor finds it, restricts and then
// quarantines it, opens an incident with its actions, notifies the owner
// and seals an evidence bundle that `vigil audit verify` accepts. Benign
// traffic of the other sensor raises nothing.
func TestAScanIsContained(t *testing.T) {
	hook := &hookRecorder{}
	hs := httptest.NewServer(hook)
	defer hs.Close()
	syslog := startSyslogReceiver(t)
	n, cl, _ := runNode(t, func(c *Config) { c.Monitor.SIEM.Syslog = "tcp://" + syslog.addr })
	ctx := context.Background()
	if _, err := cl.ApplyTopology(ctx, []byte(monitorDoc(hs.URL+"/hook"))); err != nil {
		t.Fatal(err)
	}
	c := newChecker(t, n.AuthzAddr())
	if ok, body := c.check("north", "sen-2", "POST", "telemetry.city.example", "/t"); !ok {
		t.Fatalf("benign request denied: %s", body)
	}
	start := time.Now()
	for i := range 12 {
		c.check("north", "sen-1", "GET", fmt.Sprintf("10.9.9.%d", i), "/admin")
	}
	testwait.For(t, 10*time.Second, "sen-1 quarantined", func() bool {
		return n.Store().Current().Quarantined(topology.DeviceSubject("sen-1"))
	})
	t.Logf("scan → quarantined in %v", time.Since(start))
	if ok, body := c.check("north", "sen-1", "POST", "telemetry.city.example", "/t"); ok || !strings.Contains(body, "quarantined") {
		t.Fatalf("a quarantined sensor: allowed=%v %s", ok, body)
	}
	st := n.Store().Current().SubjectState(topology.DeviceSubject("sen-1"))
	if st.Risk == nil || st.Risk.Score < 80 || len(st.Risk.Signals) == 0 || !strings.HasPrefix(st.Quarantine.By, "vigil/monitor@n1") {
		t.Fatalf("state %+v risk %+v", st.Quarantine, st.Risk)
	}
	inc := incidentOf(t, cl, topology.DeviceSubject("sen-1"), func(inc topology.Incident) bool {
		return actionOutcome(inc, "evidence") != "" && actionOutcome(inc, "notify-owner") != ""
	})
	if inc.Status != topology.IncidentOpen || inc.Mode != "auto" || actionOutcome(inc, "quarantine") != topology.ActionOK ||
		actionOutcome(inc, "evidence") != topology.ActionOK || actionOutcome(inc, "notify-owner") != topology.ActionOK ||
		actionOutcome(inc, "alert") != topology.ActionOK || len(inc.Findings) == 0 {
		t.Fatalf("incident %+v", inc)
	}
	hook.mu.Lock()
	if len(hook.got) != 1 || hook.got[0].Incident != inc.ID || hook.got[0].Subject.Name != "sen-1" {
		t.Fatalf("owner notifications %+v", hook.got)
	}
	hook.mu.Unlock()
	ex, err := cl.ExportIncident(ctx, inc.ID)
	if err != nil || ex.Evidence == "" {
		t.Fatalf("export: %v %q", err, ex.EvidenceError)
	}
	rep, err := authz.VerifyDecisionLog(strings.NewReader(ex.Evidence))
	if err != nil {
		t.Fatalf("the evidence bundle does not verify: %v\n%s", err, ex.Evidence)
	}
	if !strings.Contains(ex.Evidence, `"path":"/admin"`) || strings.Contains(ex.Evidence, "sen-2") {
		t.Fatalf("the bundle does not hold the sensor's decisions, or holds another's:\n%s", ex.Evidence)
	}
	var evAction string
	for _, a := range inc.Actions {
		if a.Name == "evidence" {
			evAction = a.Detail
		}
	}
	if !strings.Contains(evAction, rep.Head) {
		t.Fatalf("the incident records %q, the bundle's head is %s", evAction, rep.Head)
	}
	// A tampered bundle does not verify.
	tampered := strings.Replace(ex.Evidence, `"/admin"`, `"/admiN"`, 1)
	if _, err := authz.VerifyDecisionLog(strings.NewReader(tampered)); err == nil {
		t.Fatal("a tampered bundle verified")
	}
	// The SOC heard of the findings and the incident, as CEF over syslog.
	testwait.For(t, 10*time.Second, "the incident's syslog message", func() bool {
		return strings.Contains(syslog.text(), "CEF:0|Vigil|Vigil|") && strings.Contains(syslog.text(), inc.ID) &&
			strings.Contains(syslog.text(), "denied-burst")
	})
	// The benign sensor is untouched.
	if st := n.Store().Current().SubjectState(topology.DeviceSubject("sen-2")); st != nil && (st.Risk != nil || st.Quarantine != nil) {
		t.Fatalf("benign sensor state %+v", st)
	}
	// The CLI's JSON shape: id, device, status, findings and actions.
	raw, _ := json.Marshal(inc)
	for _, k := range []string{`"id"`, `"status"`, `"findings"`, `"actions"`, `"subject"`} {
		if !bytes.Contains(raw, []byte(k)) {
			t.Fatalf("incident JSON lacks %s: %s", k, raw)
		}
	}
}

// TestRiskRestrictsToEssentialFlowsAndApproveWaits: a tamper signal on a
// camera of an approve class restricts it and waits for an operator; the
// approval quarantines. A sensor on neverQuarantine is restricted, never
// quarantined; its essential flow stays allowed.
func TestRiskRestrictsToEssentialFlowsAndApproveWaits(t *testing.T) {
	n, cl, _ := runNode(t, nil)
	ctx := context.Background()
	if _, err := cl.ApplyTopology(ctx, []byte(monitorDoc("ops-team"))); err != nil {
		t.Fatal(err)
	}
	c := newChecker(t, n.AuthzAddr())
	if _, err := cl.Signal(ctx, topology.DeviceSubject("cam-1"), api.SignalRequest{Signal: "tamper", Detail: "enclosure opened"}); err != nil {
		t.Fatal(err)
	}
	inc := incidentOf(t, cl, topology.DeviceSubject("cam-1"), func(topology.Incident) bool { return true })
	if inc.Status != topology.IncidentAwaiting || actionOutcome(inc, "quarantine") != topology.ActionWaiting || actionOutcome(inc, "restrict") != topology.ActionOK {
		t.Fatalf("approve-mode incident %+v", inc)
	}
	if n.Store().Current().Quarantined(topology.DeviceSubject("cam-1")) {
		t.Fatal("an approve-mode camera was quarantined without approval")
	}
	if ok, body := c.check("south", "cam-1", "POST", "telemetry.city.example", "/t"); ok || !strings.Contains(body, "restricted by risk") {
		t.Fatalf("a restricted camera's non-essential flow: allowed=%v %s", ok, body)
	}
	approved, err := cl.DecideIncident(ctx, inc.ID, "approve", "confirmed on site")
	if err != nil {
		t.Fatal(err)
	}
	if approved.Status != topology.IncidentOpen || actionOutcome(*approved, "approve") != topology.ActionOK ||
		!n.Store().Current().Quarantined(topology.DeviceSubject("cam-1")) {
		t.Fatalf("after approval: %+v", approved)
	}
	if _, err := cl.DecideIncident(ctx, inc.ID, "resolve", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.DecideIncident(ctx, inc.ID, "approve", ""); err == nil || !strings.Contains(err.Error(), "only an incident awaiting approval") {
		t.Fatalf("approving a resolved incident: %v", err)
	}

	// neverQuarantine: a replayed… tamper on sen-keep: restricted, not quarantined.
	if _, err := cl.Signal(ctx, topology.DeviceSubject("sen-keep"), api.SignalRequest{Signal: "tamper"}); err != nil {
		t.Fatal(err)
	}
	inc = incidentOf(t, cl, topology.DeviceSubject("sen-keep"), func(topology.Incident) bool { return true })
	if actionOutcome(inc, "quarantine") != topology.ActionSkipped || n.Store().Current().Quarantined(topology.DeviceSubject("sen-keep")) {
		t.Fatalf("neverQuarantine device: %+v", inc)
	}
	if ok, body := c.check("north", "sen-keep", "POST", "telemetry.city.example", "/t"); !ok {
		t.Fatalf("an essential flow of a restricted device is denied: %s", body)
	}
	if ok, body := c.check("north", "sen-keep", "GET", "firmware.city.example", "/fw"); ok || !strings.Contains(body, "restricted") {
		t.Fatalf("a non-essential flow of a restricted device: allowed=%v %s", ok, body)
	}
}

type syslogReceiver struct {
	addr string
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (r *syslogReceiver) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

// startSyslogReceiver accepts TCP syslog on loopback and keeps what
// arrives.
func startSyslogReceiver(t *testing.T) *syslogReceiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &syslogReceiver{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 64<<10)
				for {
					n, err := c.Read(b)
					r.mu.Lock()
					r.buf.Write(b[:n])
					r.mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return r
}

// TestReleasedDevicesStartAgain: a release clears the device's risk and
// the monitor's findings, so it is not quarantined again for what it did
// before; a new attack after the release quarantines it again and goes
// into its still-open incident.
func TestReleasedDevicesStartAgain(t *testing.T) {
	n, cl, _ := runNode(t, nil)
	ctx := context.Background()
	if _, err := cl.ApplyTopology(ctx, []byte(monitorDoc("ops"))); err != nil {
		t.Fatal(err)
	}
	sen := topology.DeviceSubject("sen-2")
	if _, err := cl.Signal(ctx, sen, api.SignalRequest{Signal: "tamper"}); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 10*time.Second, "sen-2 quarantined", func() bool { return n.Store().Current().Quarantined(sen) })
	inc := incidentOf(t, cl, sen, func(topology.Incident) bool { return true })
	if _, err := cl.Release(ctx, topology.KindDevice, "sen-2"); err != nil {
		t.Fatal(err)
	}
	if st := n.Store().Current().SubjectState(sen); st != nil && st.Risk != nil {
		t.Fatalf("risk after release: %+v", st.Risk)
	}
	time.Sleep(2500 * time.Millisecond) // a few decay passes of the monitor
	if n.Store().Current().Quarantined(sen) {
		t.Fatal("the released device was quarantined again for its old findings")
	}
	if st := n.Store().Current().SubjectState(sen); st != nil && st.Risk != nil && st.Risk.Score > 0 {
		t.Fatalf("the monitor published the released device's old risk again: %+v", st.Risk)
	}
	// A new attack: quarantined again, in the same (still open) incident.
	c := newChecker(t, n.AuthzAddr())
	for i := range 12 {
		c.check("north", "sen-2", "GET", fmt.Sprintf("10.7.7.%d", i), "/")
	}
	testwait.For(t, 10*time.Second, "sen-2 quarantined again", func() bool { return n.Store().Current().Quarantined(sen) })
	testwait.For(t, 10*time.Second, "the new findings in the open incident", func() bool {
		got, err := cl.Incident(ctx, inc.ID)
		return err == nil && len(got.Findings) > len(inc.Findings)
	})
	if incs, _ := cl.Incidents(ctx, ""); len(incs) != 1 {
		t.Fatalf("%d incidents, want the one", len(incs))
	}
}

// TestAGatewayCannotFrameOthers: with authenticated proxies, what a
// gateway reports about identities not behind it counts against the
// gateway itself, never against the device or gateway it named.
func TestAGatewayCannotFrameOthers(t *testing.T) {
	n, cl, _ := runNode(t, nil)
	ctx := context.Background()
	if _, err := cl.ApplyTopology(ctx, []byte(monitorDoc("ops"))); err != nil {
		t.Fatal(err)
	}
	m := n.monitor
	ix := n.Store().Current().Index()
	gw1 := "spiffe://city.example/zone/north/gateway/gw-1"
	cam := "spiffe://city.example/zone/south/device/cam-1"
	cases := []struct {
		name string
		ev   monitor.Event
		keep bool
		want topology.Subject
	}{
		{"its own device", monitor.Event{Kind: monitor.EventDecision, SubKind: topology.KindDevice, Subject: "sen-1", Caller: gw1}, true, topology.DeviceSubject("sen-1")},
		{"another gateway's device", monitor.Event{Kind: monitor.EventDecision, SubKind: topology.KindDevice, Subject: "cam-1", Name: cam, Caller: gw1}, true, topology.GatewaySubject("gw-1")},
		{"another gateway", monitor.Event{Kind: monitor.EventUnknownIdentity, SubKind: topology.KindGateway, Subject: "gw-2", Caller: gw1}, true, topology.GatewaySubject("gw-1")},
		{"an edge's repeat", monitor.Event{Kind: monitor.EventDecision, SubKind: topology.KindDevice, Subject: "sen-1", Forwarded: true,
			Caller: "spiffe://city.example/zone/cloud/edge/e1"}, false, topology.Subject{}},
		{"an edge's forward refusal", monitor.Event{Kind: monitor.EventUnknownIdentity, SubKind: topology.KindGateway, Subject: "gw-2",
			Caller: "spiffe://city.example/zone/cloud/edge/e1"}, true, topology.GatewaySubject("gw-2")},
		{"a device asking", monitor.Event{Kind: monitor.EventUnknownIdentity, SubKind: topology.KindGateway, Subject: "gw-2", Caller: cam}, false, topology.Subject{}},
	}
	for _, c := range cases {
		ev := c.ev
		if keep := m.attribute(ix, &ev); keep != c.keep || keep && ev.Subj() != c.want {
			t.Errorf("%s: kept %v, about %s; want %v, %s", c.name, keep, ev.Subj(), c.keep, c.want)
		}
	}
	// An access-log entry of gw-1 naming cam-1 (behind gw-2): gw-1 is
	// judged, cam-1 is not.
	for i := range 3 {
		m.accessEntry(&xds.AccessEntry{At: time.Now(), Node: "gw-1", Zone: "north", PeerURI: cam, Authority: "telemetry.city.example",
			Method: "POST", Path: fmt.Sprintf("/x/%d", i), Status: 403, DeclaredBytes: 5 << 20})
	}
	testwait.For(t, 5*time.Second, "gw-1's unknown-identity finding", func() bool {
		return m.eng.RiskOf(topology.GatewaySubject("gw-1"), time.Now()).Score > 0
	})
	if r := m.eng.RiskOf(topology.DeviceSubject("cam-1"), time.Now()); r.Score != 0 {
		t.Fatalf("cam-1 was blamed for gw-1's entries: %+v", r)
	}
}

// TestAQuarantineWithoutItsIncidentIsReconciled: a monitor quarantine
// whose playbook never ran (its member died after the write) gets its
// incident, evidence and alert from the subject's owner.
func TestAQuarantineWithoutItsIncidentIsReconciled(t *testing.T) {
	every, grace := reconcileEvery, reconcileGrace
	reconcileEvery, reconcileGrace = 200*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { reconcileEvery, reconcileGrace = every, grace })
	n, cl, _ := runNode(t, nil)
	ctx := context.Background()
	if _, err := cl.ApplyTopology(ctx, []byte(monitorDoc("ops"))); err != nil {
		t.Fatal(err)
	}
	sub := topology.DeviceSubject("sen-2")
	_, err := n.Store().UpdateState(ctx, []raft.StateOp{
		{Subject: sub, Op: raft.OpSetRisk, Risk: &topology.Risk{Score: 90, UpdatedAt: time.Now(), Signals: []topology.Signal{
			{Name: monitor.DetTamper, Score: 90, Severity: topology.SeverityCritical, At: time.Now(), Finding: "f-lost-1"}}}},
		{Subject: sub, Op: raft.OpQuarantine, Quarantine: &topology.Quarantine{Reason: "monitor: risk 90 reached quarantineAt 80 (tamper)",
			By: "vigil/monitor@gone", Since: time.Now().Add(-time.Second)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	inc := incidentOf(t, cl, sub, func(inc topology.Incident) bool { return actionOutcome(inc, "evidence") != "" })
	if actionOutcome(inc, "quarantine") != topology.ActionOK || inc.Risk != 90 {
		t.Fatalf("reconciled incident %+v", inc)
	}
}
