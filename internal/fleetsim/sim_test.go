package fleetsim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/xds"
)

// fakeCluster is one member as the simulator sees it: the real authorizer
// (Vigil's default policy) and the real access log service of xds on a
// gRPC server, and a fake API holding the runtime state. A stand-in for
// the monitor quarantines a device after its 10th request denied for
// where it went (or opens an incident awaiting approval, for a class in
// approve mode), after a tamper signal and after a replayed attestation.
type fakeCluster struct {
	t    *testing.T
	ix   *topology.Index
	snap atomic.Pointer[topology.Snapshot]

	mu        sync.Mutex
	state     map[string]*topology.SubjectState
	incidents []topology.Incident
	nonces    map[string]bool
	denies    map[string]int
	checks    map[string]int
	obs       []authz.Observation
	entries   []*xds.AccessEntry

	apiURL, authzAddr, xdsAddr string
}

func (f *fakeCluster) Current() *topology.Snapshot { return f.snap.Load() }

func newFakeCluster(t *testing.T, path string) *fakeCluster {
	t.Helper()
	f := &fakeCluster{t: t, ix: loadTopology(t, path), state: map[string]*topology.SubjectState{},
		nonces: map[string]bool{}, denies: map[string]int{}, checks: map[string]int{}}
	f.publish()

	engine, err := authz.NewEngine(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	az := authz.NewServer(authz.Config{Node: "m1", Snapshot: f.Current, Engine: engine, Observer: f.observe})
	xs, err := xds.NewServer(xds.Config{Source: f, NodeID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	f.authzAddr = serveGRPC(t, func(g *grpc.Server) { az.Register(g) })
	f.xdsAddr = serveGRPC(t, func(g *grpc.Server) {
		xs.RegisterALS(g, func(e *xds.AccessEntry) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.entries = append(f.entries, e)
		})
	})
	t.Cleanup(xs.Close)

	srv := httptest.NewServer(f.handler())
	t.Cleanup(srv.Close)
	f.apiURL = srv.URL
	return f
}

func serveGRPC(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	g := grpc.NewServer()
	register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// publish makes the state the authorizer's replica. Callers hold mu (or
// run before anything else does).
func (f *fakeCluster) publish() {
	updates := map[topology.Subject]*topology.SubjectState{}
	for name, st := range f.state {
		c := *st
		updates[topology.DeviceSubject(name)] = &c
	}
	rev := topology.Revision(1)
	if cur := f.snap.Load(); cur != nil {
		rev = cur.Revision() + 1
	}
	f.snap.Store(topology.NewSnapshot(rev, 1, f.ix, topology.NewState().With(updates)))
}

func (f *fakeCluster) stateOf(name string) *topology.SubjectState {
	st := f.state[name]
	if st == nil {
		st = &topology.SubjectState{}
		f.state[name] = st
	}
	return st
}

// respond is the stand-in monitor's playbook. Callers hold mu.
func (f *fakeCluster) respond(device, detector, severity string) {
	st := f.stateOf(device)
	if st.Quarantine != nil {
		return
	}
	for _, inc := range f.incidents {
		if inc.Subject.Name == device {
			return
		}
	}
	d, _ := f.ix.Device(device)
	c, _ := f.ix.Class(d.Class)
	now := time.Now().UTC()
	inc := topology.Incident{ID: fmt.Sprintf("inc-%d", len(f.incidents)+1), Subject: topology.DeviceSubject(device),
		Status: topology.IncidentOpen, Mode: "auto", OpenedAt: now, Risk: 90, Title: detector,
		Findings: []topology.Finding{{ID: "f1", Subject: topology.DeviceSubject(device), Detector: detector,
			Severity: severity, Score: 90, At: now, Summary: detector + " seen"}}}
	if c.Response.Approve {
		inc.Status, inc.Mode = topology.IncidentAwaiting, "approve"
	} else {
		st.Quarantine = &topology.Quarantine{Reason: detector, By: "test-monitor", Since: now}
		inc.Actions = []topology.Action{{At: now, Name: "quarantine", Outcome: topology.ActionOK}}
	}
	st.Risk = &topology.Risk{Score: 90, UpdatedAt: now}
	f.incidents = append(f.incidents, inc)
	f.publish()
}

func (f *fakeCluster) observe(o *authz.Observation) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := *o
	f.obs = append(f.obs, c)
	detector := ""
	f.checks[c.Subject.Name]++
	switch {
	case c.Bytes > 1<<20:
		detector = "size-outlier"
	case f.checks[c.Subject.Name] == 30:
		detector = "rate-spike"
	case !c.Allowed && (c.Cause == authz.CauseNoFlow || c.Cause == authz.CauseUnknownService):
		if f.denies[c.Subject.Name]++; f.denies[c.Subject.Name] == 10 {
			detector = "denied-burst"
		}
	}
	if detector != "" {
		go func() { // the monitor answers after the Check
			f.mu.Lock()
			defer f.mu.Unlock()
			f.respond(c.Subject.Name, detector, "high")
		}()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeCluster) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/topology", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, 200, api.TopologyResponse{Revision: 1, DocumentRevision: 1, Document: f.ix.Document()})
	})
	mux.HandleFunc("GET /v1/cluster/status", func(w http.ResponseWriter, r *http.Request) {
		// Two members, both this API: the simulator polls each.
		writeJSON(w, 200, map[string]any{"answeredBy": "m1", "leaderId": "m1", "members": []map[string]any{
			{"id": "m1", "apiAddr": r.Host, "voter": true}, {"id": "m2", "apiAddr": r.Host, "voter": true}}})
	})
	mux.HandleFunc("GET /v1/devices/{name}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		name := r.PathValue("name")
		d, ok := f.ix.Device(name)
		if !ok {
			writeJSON(w, 404, api.Error{Code: api.CodeNotFound, Message: "no device " + name})
			return
		}
		st := f.state[name]
		var cp *topology.SubjectState
		if st != nil {
			c := *st
			cp = &c
		}
		writeJSON(w, 200, api.Subject{Kind: topology.KindDevice, Name: name, Class: d.Class, Gateway: d.Gateway,
			Quarantined: st != nil && st.Quarantine != nil, State: cp})
	})
	mux.HandleFunc("GET /v1/incidents", func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		writeJSON(w, 200, append([]topology.Incident{}, f.incidents...))
	})
	mux.HandleFunc("POST /v1/devices/{name}/signals", func(w http.ResponseWriter, r *http.Request) {
		var req api.SignalRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		name := r.PathValue("name")
		if req.Signal == "tamper" {
			time.AfterFunc(100*time.Millisecond, func() {
				f.mu.Lock()
				defer f.mu.Unlock()
				f.respond(name, "tamper", "critical")
			})
		}
		writeJSON(w, 200, api.SignalResponse{Accepted: true, Owner: "m1"})
	})
	mux.HandleFunc("POST /v1/devices/{name}/enroll", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, 200, api.EnrollResponse{Revision: 1})
	})
	mux.HandleFunc("POST /v1/devices/{name}/challenge", func(w http.ResponseWriter, _ *http.Request) {
		b := make([]byte, 32)
		rand.Read(b)
		writeJSON(w, 200, api.ChallengeResponse{Nonce: hex.EncodeToString(b), Expires: time.Now().Add(time.Minute)})
	})
	mux.HandleFunc("POST /v1/devices/{name}/attestations", func(w http.ResponseWriter, r *http.Request) {
		var ev struct {
			Format string `json:"format"`
			Nonce  string `json:"nonce"`
		}
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil || ev.Format != topology.AttestTPM2Quote || len(ev.Nonce) != 64 {
			writeJSON(w, 400, api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("bad evidence (%v)", err)})
			return
		}
		name := r.PathValue("name")
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.nonces[ev.Nonce] {
			time.AfterFunc(50*time.Millisecond, func() {
				f.mu.Lock()
				defer f.mu.Unlock()
				f.respond(name, "nonce-replay", "critical")
			})
			writeJSON(w, 409, api.Error{Code: api.CodeReplay, Message: "nonce already used: this evidence is a replay"})
			return
		}
		f.nonces[ev.Nonce] = true
		d, _ := f.ix.Device(name)
		c, _ := f.ix.Class(d.Class)
		fw := c.Attestation.Firmware[0]
		now := time.Now().UTC()
		att := &topology.Attestation{Status: topology.AttestationPassed, Method: ev.Format, FirmwareVersion: fw.Version,
			FirmwareSHA256: fw.SHA256, VerifiedAt: now, ExpiresAt: now.Add(c.MaxAge)}
		f.stateOf(name).Attestation = att
		f.publish()
		writeJSON(w, 200, api.AttestResponse{Revision: 2, Attestation: att})
	})
	return mux
}

func (f *fakeCluster) config() Config {
	return Config{Server: f.apiURL, Token: "test-token", AuthzAddrs: []string{f.authzAddr}, XDSAddrs: []string{f.xdsAddr},
		Seed: 7, Timeout: 10 * time.Second}
}

// TestWireShapes checks that the authorizer and the access log service
// read the simulator's requests as a gateway's: the device is the subject,
// behind its gateway, with the request's size, and the access log entry
// names the device as its peer, the gateway as its node, and carries the
// Check's decision ID.
func TestWireShapes(t *testing.T) {
	f := newFakeCluster(t, "testdata/small.yaml")
	ctx := context.Background()
	s, err := New(ctx, f.config())
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	d := s.byName["s-a-1"]
	allowed := s.send(ctx, &request{dev: d, host: "telemetry.t.example", method: "POST", path: "/v1/readings", body: 210, respBody: 50})
	lateral := s.send(ctx, &request{dev: d, host: "video.t.example", method: "PUT", path: "/upload/x", body: 5000})
	unrouted := s.send(ctx, &request{dev: d, host: ExfilHost, method: "POST", path: "/x", body: 5000})
	if !allowed.checked || !allowed.allowed || allowed.decisionID == "" || allowed.status != 200 {
		t.Errorf("telemetry: %+v, want allowed by ext_authz", allowed)
	}
	if !lateral.checked || lateral.allowed || lateral.status != 403 || lateral.decisionID == "" {
		t.Errorf("another class's route: %+v, want denied by ext_authz", lateral)
	}
	if unrouted.checked || unrouted.local != localNoRoute || unrouted.status != 403 {
		t.Errorf("unrouted host: %+v, want the gateway's 403", unrouted)
	}
	if n, err := s.stream(s.gateway("gw-a")).flush(ctx); err != nil || n != 3 {
		t.Fatalf("flush: %d entries, %v", n, err)
	}

	f.mu.Lock()
	obs := append([]authz.Observation(nil), f.obs...)
	f.mu.Unlock()
	if len(obs) != 2 {
		t.Fatalf("the authorizer saw %d Checks, want 2 (the unrouted request never reaches it)", len(obs))
	}
	o := obs[0]
	if o.Subject != topology.DeviceSubject("s-a-1") || o.Gateway != "gw-a" || o.Principal != d.SPIFFEID ||
		o.Service != "telemetry" || o.Bytes != 210 || !o.Allowed || o.DecisionID != allowed.decisionID {
		t.Errorf("allowed Check observed as %+v", o)
	}
	if o := obs[1]; o.Allowed || o.Cause != authz.CauseNoFlow || o.Service != "video" || !strings.HasPrefix(o.Reason, "no flow") {
		t.Errorf("lateral Check observed as %+v", o)
	}

	var entries []*xds.AccessEntry
	deadline := time.Now().Add(5 * time.Second)
	for len(entries) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		f.mu.Lock()
		entries = append([]*xds.AccessEntry(nil), f.entries...)
		f.mu.Unlock()
	}
	if len(entries) != 3 {
		t.Fatalf("the access log service got %d entries, want 3", len(entries))
	}
	for _, e := range entries {
		if e.Node != "gw-a" || e.Zone != "a" || e.PeerURI != d.SPIFFEID || e.Forwarded != "" {
			t.Errorf("entry %s %s: node %s/%s, peer %q, forwarded %q", e.Method, e.Authority, e.Node, e.Zone, e.PeerURI, e.Forwarded)
		}
	}
	if e := entries[0]; e.Status != 200 || e.DecisionID != allowed.decisionID || e.Method != "POST" || e.Path != "/v1/readings" ||
		e.Authority != "telemetry.t.example" || e.RequestBytes < 210 || e.Upstream != "svc-telemetry" {
		t.Errorf("allowed entry: %+v", e)
	}
	if e := entries[1]; e.Status != 403 || e.DecisionID != lateral.decisionID || e.Upstream != "" {
		t.Errorf("denied entry: %+v", e)
	}
	if e := entries[2]; e.Status != 403 || e.DecisionID != "" || e.Authority != ExfilHost {
		t.Errorf("gateway's own 403: %+v", e)
	}
	if xds.ALSLogName != ALSLogName || authz.DecisionIDHeader != DecisionIDHeader || authz.ServiceExtension != ServiceExtension {
		t.Error("wire names differ from authz's and xds's")
	}
}

// TestScenarios runs the simulator against the fake cluster: the benign
// fleet attests and sends, and each scenario ends as its class expects,
// measured on both members.
func TestScenarios(t *testing.T) {
	f := newFakeCluster(t, "testdata/small.yaml")
	cfg := f.config()
	cfg.Attest = true
	cfg.Rate = 20
	cfg.Warmup = 2 * time.Second
	cfg.Scenarios = []string{"scan,tamper", "replay", "zone-probe"}
	var progress bytes.Buffer
	var pmu sync.Mutex
	cfg.Out = writerFunc(func(p []byte) (int, error) { pmu.Lock(); defer pmu.Unlock(); return progress.Write(p) })
	var seen []string
	cfg.OnScenario = func(r ScenarioResult) { seen = append(seen, r.Scenario) }
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.Run(ctx)
	pmu.Lock()
	t.Logf("progress:\n%s", progress.String())
	pmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	t.Logf("report:\n%s", text.String())

	if rep.Attestation == nil || rep.Attestation.Attested != 2 || len(rep.Attestation.Failed) != 0 {
		t.Errorf("attestation: %+v, want both cameras attested", rep.Attestation)
	}
	if len(rep.Scenarios) != 4 || strings.Join(seen, ",") != "scan,tamper,replay,zone-probe" {
		t.Fatalf("scenarios reported: %v (callback %v)", len(rep.Scenarios), seen)
	}
	targets := map[string]bool{}
	for _, sc := range rep.Scenarios {
		if !sc.OK || sc.Target == "" || sc.Incident == "" || sc.QuarantineMS <= 0 || len(sc.Findings) == 0 ||
			len(sc.Members) != 2 || sc.AttackStart.IsZero() {
			t.Errorf("%s: %+v", sc.Scenario, sc)
		}
		if targets[sc.Target] {
			t.Errorf("%s: target %s attacked twice", sc.Scenario, sc.Target)
		}
		targets[sc.Target] = true
		switch sc.Scenario {
		case ScenarioScan:
			// The routes of other classes at its gateway reach the
			// authorizer, the rest the gateway answers. The monitor
			// counts both kinds of refusal toward its burst (10 in a
			// window), so how many were checked before it fired varies.
			if sc.Status != StatusQuarantined || sc.Checked == 0 || sc.Denied+sc.GatewayDenied < 10 || sc.GatewayDenied == 0 || sc.DecidedMS <= 0 {
				t.Errorf("scan: %+v", sc)
			}
		case ScenarioZoneProbe:
			if sc.Class != "camera" || sc.Mode != "approve" || sc.Status != StatusAwaiting || sc.Expected != StatusAwaiting {
				t.Errorf("zone-probe on a camera of an approve-mode class: %+v", sc)
			}
		case ScenarioReplay:
			if sc.Class != "camera" || !strings.Contains(sc.Detail, "refused") {
				t.Errorf("replay: %+v", sc)
			}
		case ScenarioTamper:
			if sc.Status != StatusQuarantined || sc.Findings[0].Detector != "tamper" {
				t.Errorf("tamper: %+v", sc)
			}
		}
	}
	if !rep.OK() || rep.UnexpectedQuarantines != 0 || len(rep.Quarantines) != 2 || len(rep.Incidents) != 4 {
		t.Errorf("report: ok %v, quarantines %+v (unexpected %d), incidents %+v", rep.OK(), rep.Quarantines, rep.UnexpectedQuarantines, rep.Incidents)
	}
	if rep.Totals.Sent == 0 || rep.Totals.Allowed == 0 || rep.Totals.AccessLogs == 0 || len(rep.Classes) != 3 {
		t.Errorf("benign traffic: %+v, classes %+v", rep.Totals, rep.Classes)
	}

	// The JSON shape the command documents.
	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(data, &generic); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "started", "ended", "mode", "members", "authz", "xds", "devices", "idle", "gateways",
		"attestation", "warmupSeconds", "classes", "totals", "scenarios", "quarantines", "unexpectedQuarantines", "incidents", "errors"} {
		if _, ok := generic[k]; !ok {
			t.Errorf("report JSON has no %q", k)
		}
	}
	sc := generic["scenarios"].([]any)[0].(map[string]any)
	for _, k := range []string{"scenario", "target", "class", "gateway", "mode", "expected", "status", "ok", "attackStart",
		"requests", "checked", "denied", "gatewayDenied", "quarantineMs", "decidedMs", "members", "incident", "incidentStatus",
		"risk", "findings"} {
		if _, ok := sc[k]; !ok {
			t.Errorf("scenario JSON has no %q", k)
		}
	}
	cl := generic["classes"].([]any)[0].(map[string]any)
	for _, k := range []string{"class", "devices", "sent", "checked", "allowed", "denied", "gatewayDenied", "rateLimited", "errors", "denyReasons"} {
		if _, ok := cl[k]; !ok {
			t.Errorf("class JSON has no %q", k)
		}
	}
}

// TestTrafficScenarios: exfiltration and flood, with every request
// checked.
func TestTrafficScenarios(t *testing.T) {
	f := newFakeCluster(t, "testdata/small.yaml")
	cfg := f.config()
	cfg.CheckAll = true
	cfg.Warmup = -1
	cfg.Scenarios = []string{ScenarioExfiltration, ScenarioFlood}
	cfg.Targets = map[string]string{ScenarioExfiltration: "s-a-1", ScenarioFlood: "s-b-1"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Scenarios) != 2 {
		t.Fatalf("scenarios: %+v", rep.Scenarios)
	}
	ex, fl := rep.Scenarios[0], rep.Scenarios[1]
	if !ex.OK || ex.Target != "s-a-1" || ex.Findings[0].Detector != "size-outlier" || !strings.Contains(ex.Detail, ExfilHost) || ex.Checked == 0 {
		t.Errorf("exfiltration: %+v", ex)
	}
	if !fl.OK || fl.Target != "s-b-1" || fl.Checked < 30 || !strings.Contains(fl.Detail, "on flow") || fl.Requests > 200 {
		t.Errorf("flood (ends once the quarantine is seen): %+v", fl)
	}
	if !rep.OK() {
		t.Errorf("report not OK: %+v", rep)
	}
}

// TestBenignRun: no scenario, a bounded run, no quarantine; with
// --check-all every request reaches the authorizer.
func TestBenignRun(t *testing.T) {
	f := newFakeCluster(t, "testdata/small.yaml")
	cfg := f.config()
	cfg.Attest = true
	cfg.Rate = 50
	cfg.CheckAll = true
	cfg.Duration = 3 * time.Second
	ctx := context.Background()
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rep, err := s.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a 3s run took %v", took)
	}
	if rep.Mode != "check-all" || rep.Totals.Sent == 0 || rep.Totals.Checked != rep.Totals.Sent || rep.Totals.Denied != 0 ||
		rep.Totals.Errors != 0 || len(rep.Quarantines) != 0 || !rep.OK() || len(rep.Scenarios) != 0 {
		t.Errorf("benign run: %+v", rep)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if uint64(len(f.obs)) != rep.Totals.Checked {
		t.Errorf("the authorizer saw %d Checks, the report says %d", len(f.obs), rep.Totals.Checked)
	}
}

// TestRefusedMember: an address that does not speak the simulator's plain
// gRPC is reported clearly.
func TestRefusedMember(t *testing.T) {
	f := newFakeCluster(t, "testdata/small.yaml")
	cfg := f.config()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { // a TLS-only port: it hangs up on cleartext
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer lis.Close()
	cfg.AuthzAddrs = []string{lis.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = New(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "without --proxy-tls") {
		t.Errorf("New against a refusing ext_authz: %v", err)
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// TestUnsuitableTarget: a scenario that cannot be played on its target is
// skipped, and a skipped scenario does not fail the run.
func TestUnsuitableTarget(t *testing.T) {
	f := newFakeCluster(t, "testdata/small.yaml")
	cfg := f.config()
	cfg.Scenarios = []string{ScenarioReplay}
	cfg.Targets = map[string]string{ScenarioReplay: "s-a-1"} // a sensor: its class requires no attestation
	cfg.Warmup = -1
	ctx := context.Background()
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Scenarios) != 1 || rep.Scenarios[0].Status != StatusSkipped || !strings.Contains(rep.Scenarios[0].Error, "cannot play replay") || !rep.OK() {
		t.Errorf("scenarios: %+v, ok %v", rep.Scenarios, rep.OK())
	}
	cfg.Targets = map[string]string{"scan": "s-a-1"}
	if _, err := New(ctx, cfg); err == nil {
		t.Error("a target for a scenario not played was accepted")
	}
}
