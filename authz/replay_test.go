package authz

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vigil-iot/vigil/topology"
)

const replayTopology = `apiVersion: vigil/v1
trustDomain: city.example
zones:
  - name: north
  - name: cloud
gateways:
  - name: gw-north
    zone: north
deviceClasses:
  - name: sensor
    attestation:
      maxAge: 12h
      firmware:
        - {version: "1.0", sha256: "a08c1e001b26ade302d9b9d102d3c5a76757bdcf773ab402309176644fb5c595"}
  - name: light
devices:
  - {name: s1, class: sensor, gateway: gw-north}
  - {name: l1, class: light, gateway: gw-north}
  - {name: l2, class: light, gateway: gw-north}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.city.example]}
  - {name: firmware, zone: cloud, protocol: http, hosts: [firmware.city.example]}
flows:
  - name: sensor-telemetry
    from: {classes: [sensor]}
    to: {service: telemetry}
    http: {methods: [POST], paths: ["/t"]}
  - name: light-telemetry
    from: {classes: [light]}
    to: {service: telemetry}
    http: {methods: [POST], paths: ["/t"]}
`

func replayIndex(t *testing.T, doc string) *topology.Index {
	t.Helper()
	ix, err := topology.Load([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func replayID(t *testing.T, ix *topology.Index, device string) string {
	t.Helper()
	id, ok := ix.SPIFFEID(topology.DeviceSubject(device))
	if !ok {
		t.Fatalf("no device %s", device)
	}
	return id
}

// recordReplayLog decides a fixed set of requests with the real server
// against the base topology and writes them with the real decision log:
//
//	l1, l2 POST /t telemetry   allowed (light-telemetry)   3 + 1
//	s1 POST /t telemetry       allowed (sensor-telemetry)  2
//	l1 GET /fw/a firmware      denied (no flow)            2
//	no principal               denied, 401                 1
func recordReplayLog(t *testing.T, ix *topology.Index) string {
	t.Helper()
	now := time.Now()
	st := topology.NewState().With(map[topology.Subject]*topology.SubjectState{
		topology.DeviceSubject("s1"): {Attestation: &topology.Attestation{Status: topology.AttestationPassed, Method: "tpm2-quote",
			FirmwareVersion: "1.0", VerifiedAt: now, ExpiresAt: now.Add(time.Hour)}},
	})
	snap := topology.NewSnapshot(7, 1, ix, st)
	engine, err := NewEngine(context.Background(), discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "decisions.log")
	l, stop := startDecisionLog(t, DecisionLogConfig{Path: path, Strict: true})
	s := NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine, Log: l, Logger: discardLogger()})
	check := func(principal, service, host, method, p string, n int) {
		for range n {
			req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
				Source: &authv3.AttributeContext_Peer{Principal: principal},
				Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
					Method: method, Path: p, Host: host, Scheme: "https",
				}},
				ContextExtensions: map[string]string{ServiceExtension: service},
			}}
			if _, err := s.Check(context.Background(), req); err != nil {
				t.Fatal(err)
			}
		}
	}
	check(replayID(t, ix, "l1"), "telemetry", "telemetry.city.example", "POST", "/t", 3)
	check(replayID(t, ix, "l2"), "telemetry", "telemetry.city.example", "POST", "/t", 1)
	check(replayID(t, ix, "s1"), "telemetry", "telemetry.city.example", "POST", "/t", 2)
	check(replayID(t, ix, "l1"), "firmware", "firmware.city.example", "GET", "/fw/a", 2)
	check("", "telemetry", "telemetry.city.example", "POST", "/t", 1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	return path
}

func runReplay(t *testing.T, path string, cfg ReplayConfig) *ReplayReport {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := Replay(context.Background(), f, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func replayGroup(t *testing.T, groups []ReplayGroup, key string) ReplayGroup {
	t.Helper()
	for _, g := range groups {
		if g.Key == key {
			return g
		}
	}
	t.Fatalf("no group %q in %+v", key, groups)
	return ReplayGroup{}
}

// TestReplayUnchanged: against the topology it was decided with, nothing
// flips, and the unauthenticated decision is skipped with its reason.
func TestReplayUnchanged(t *testing.T) {
	ix := replayIndex(t, replayTopology)
	path := recordReplayLog(t, ix)
	rep := runReplay(t, path, ReplayConfig{Candidate: ix, Current: ix})
	tt := rep.Totals
	if tt.Lines != 9 || tt.Decisions != 9 || tt.Redecided != 8 || tt.Unchanged != 8 || tt.AllowToDeny != 0 || tt.DenyToAllow != 0 {
		t.Fatalf("totals %+v", tt)
	}
	if tt.Skipped[SkipNoSubject] != 1 {
		t.Errorf("skipped %v, want one without a subject", tt.Skipped)
	}
	if len(rep.ByFlow)+len(rep.ByDevice)+len(rep.ByService) != 0 {
		t.Errorf("groups without flips: %+v", rep)
	}
	if !strings.Contains(strings.Join(rep.Assumptions, "\n"), "attested") {
		t.Errorf("assumptions do not say attestation is assumed: %q", rep.Assumptions)
	}
}

// TestReplayRemovedFlowAndDevice: a candidate without light-telemetry and
// without device s1 flips their allows to deny, grouped under the flow that
// allowed them, s1's as an unknown subject.
func TestReplayRemovedFlowAndDevice(t *testing.T) {
	ix := replayIndex(t, replayTopology)
	path := recordReplayLog(t, ix)
	cand := strings.Replace(replayTopology, "  - {name: s1, class: sensor, gateway: gw-north}\n", "", 1)
	cand = cand[:strings.Index(cand, "  - name: light-telemetry")]
	rep := runReplay(t, path, ReplayConfig{Candidate: replayIndex(t, cand), Current: ix, Examples: 2})
	tt := rep.Totals
	if tt.Redecided != 8 || tt.AllowToDeny != 6 || tt.DenyToAllow != 0 || tt.Unchanged != 2 {
		t.Fatalf("totals %+v", tt)
	}
	g := replayGroup(t, rep.ByFlow, "light-telemetry → (denied)")
	if g.ToDeny != 4 || g.FlowBefore != "light-telemetry" || len(g.Examples) != 2 || g.Examples[0].DecisionID == "" {
		t.Errorf("light-telemetry group %+v", g)
	}
	if !strings.Contains(g.Examples[0].After, "no flow") {
		t.Errorf("reason after %q", g.Examples[0].After)
	}
	g = replayGroup(t, rep.ByFlow, "sensor-telemetry → (denied)")
	if g.ToDeny != 2 || !strings.Contains(g.Examples[0].After, "not in the candidate topology") {
		t.Errorf("sensor-telemetry group %+v", g)
	}
	if g := replayGroup(t, rep.ByDevice, "device/l1"); g.ToDeny != 3 {
		t.Errorf("device l1 %+v", g)
	}
	if g := replayGroup(t, rep.ByDevice, "device/s1"); g.ToDeny != 2 {
		t.Errorf("device s1 %+v", g)
	}
	if g := replayGroup(t, rep.ByService, "telemetry"); g.ToDeny != 6 {
		t.Errorf("service telemetry %+v", g)
	}
	// Without the current topology the flow before is unknown.
	rep = runReplay(t, path, ReplayConfig{Candidate: replayIndex(t, cand)})
	if g := replayGroup(t, rep.ByFlow, "(unknown flow) → (denied)"); g.ToDeny != 6 || len(g.Examples) != 3 {
		t.Errorf("unknown flow group %+v", g)
	}
}

// TestReplayAddedFlow: a candidate that lets lights fetch firmware flips
// those denies to allow, grouped under the new flow.
func TestReplayAddedFlow(t *testing.T) {
	ix := replayIndex(t, replayTopology)
	path := recordReplayLog(t, ix)
	cand := replayTopology + `  - name: light-firmware
    from: {classes: [light]}
    to: {service: firmware}
    http: {methods: [GET], paths: ["/fw/*"]}
`
	rep := runReplay(t, path, ReplayConfig{Candidate: replayIndex(t, cand), Current: ix})
	if tt := rep.Totals; tt.DenyToAllow != 2 || tt.AllowToDeny != 0 || tt.Unchanged != 6 {
		t.Fatalf("totals %+v", tt)
	}
	g := replayGroup(t, rep.ByFlow, "(denied) → light-firmware")
	if g.ToAllow != 2 || g.FlowAfter != "light-firmware" || !strings.Contains(g.Examples[0].After, "light-firmware") {
		t.Errorf("group %+v", g)
	}
	if g := replayGroup(t, rep.ByService, "firmware"); g.ToAllow != 2 {
		t.Errorf("service group %+v", g)
	}
}

// TestReplayCandidatePolicy: a policy that refuses POST flips every
// recorded POST allow to deny, with the policy's reason.
func TestReplayCandidatePolicy(t *testing.T) {
	ix := replayIndex(t, replayTopology)
	path := recordReplayLog(t, ix)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "freeze.rego"), []byte(`package vigil.authz

decision := {"allowed": false, "reason": "POST is frozen"} if {
	input.attributes.request.http.method == "POST"
} else := {"allowed": false, "reason": "no flow allows this request"}
`), 0o600)
	p, err := LoadDir(context.Background(), dir, DefaultQuery)
	if err != nil {
		t.Fatal(err)
	}
	rep := runReplay(t, path, ReplayConfig{Candidate: ix, Current: ix, Policy: p})
	if tt := rep.Totals; tt.AllowToDeny != 6 || tt.DenyToAllow != 0 || tt.Unchanged != 2 {
		t.Fatalf("totals %+v", tt)
	}
	if rep.PolicyHash != p.Hash {
		t.Errorf("policy hash %q, want %q", rep.PolicyHash, p.Hash)
	}
	g := replayGroup(t, rep.ByFlow, "light-telemetry → (denied)")
	if g.ToDeny != 4 || g.Examples[0].After != "POST is frozen" {
		t.Errorf("group %+v", g)
	}
}

// TestReplayStateOf: with runtime state from StateOf, a quarantined
// device's allows flip to deny; each subject is asked for once.
func TestReplayStateOf(t *testing.T) {
	ix := replayIndex(t, replayTopology)
	path := recordReplayLog(t, ix)
	asked := map[topology.Subject]int{}
	rep := runReplay(t, path, ReplayConfig{Candidate: ix, Current: ix,
		StateOf: func(_ context.Context, s topology.Subject) (*topology.SubjectState, error) {
			asked[s]++
			if s == topology.DeviceSubject("l1") {
				return &topology.SubjectState{Quarantine: &topology.Quarantine{Reason: "tampered", By: "op"}}, nil
			}
			return nil, nil
		}})
	// l1's 3 allows flip; s1 has no attestation now, so its 2 allows flip.
	if tt := rep.Totals; tt.AllowToDeny != 5 || tt.DenyToAllow != 0 {
		t.Fatalf("totals %+v", tt)
	}
	if g := replayGroup(t, rep.ByDevice, "device/l1"); g.ToDeny != 3 || !strings.Contains(g.Examples[0].After, "quarantined") {
		t.Errorf("l1 %+v", g)
	}
	for s, n := range asked {
		if n != 1 {
			t.Errorf("%s asked for %d times", s, n)
		}
	}
	if asked[topology.GatewaySubject("gw-north")] != 1 {
		t.Errorf("gateway state not asked for: %v", asked)
	}
}

// TestReplaySkipsOtherLines: aggregate, gap and chain_restart lines are
// counted as skipped, not decided.
func TestReplaySkipsOtherLines(t *testing.T) {
	ix := replayIndex(t, replayTopology)
	path := recordReplayLog(t, ix)
	prev := strings.Repeat("0", 64)
	extra := `{"seq":10,"prev":"` + prev + `","aggregate":"denies","count":5}
{"seq":11,"prev":"` + prev + `","gap":"write-failed","dropped":3,"error":"disk full"}
garbage torn bytes
{"seq":12,"prev":"` + prev + `","chain_restart":true,"torn":"` + prev + `","time":"2025-01-01T00:00:00Z"}
`
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(extra)
	f.Close()
	rep := runReplay(t, path, ReplayConfig{Candidate: ix})
	sk := rep.Totals.Skipped
	if sk[SkipAggregate] != 1 || sk[SkipGap] != 1 || sk[SkipChainRestart] != 1 || sk[SkipUnreadable] != 1 || rep.Totals.Lines != 13 {
		t.Fatalf("totals %+v", rep.Totals)
	}
}

// TestReplayRefusesOtherFiles: a file that is not a decision log is an
// error, not an empty report.
func TestReplayRefusesOtherFiles(t *testing.T) {
	ix := replayIndex(t, replayTopology)
	for _, in := range []string{"apiVersion: vigil/v1\n", `{"hello":"world"}` + "\n", "\x00\x00\x00"} {
		_, err := Replay(context.Background(), bytes.NewReader([]byte(in)), ReplayConfig{Candidate: ix})
		if !errors.Is(err, ErrNotDecisionLog) {
			t.Errorf("%q: error %v, want ErrNotDecisionLog", in, err)
		}
	}
}
