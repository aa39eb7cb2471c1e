package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/authz"
)

const replayCLITopology = `apiVersion: vigil/v1
trustDomain: city.example
zones:
  - name: north
  - name: cloud
gateways:
  - name: gw-north
    zone: north
deviceClasses:
  - name: light
devices:
  - {name: l1, class: light, gateway: gw-north}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.city.example]}
  - {name: firmware, zone: cloud, protocol: http, hosts: [firmware.city.example]}
flows:
  - name: light-telemetry
    from: {classes: [light]}
    to: {service: telemetry}
    http: {methods: [POST], paths: ["/t"]}
`

// writeReplayLog writes decisions with the real decision log writer: three
// allowed telemetry POSTs of l1 and one denied firmware GET.
func writeReplayLog(t *testing.T, path string) {
	t.Helper()
	l, err := authz.OpenDecisionLog(authz.DecisionLogConfig{Path: path, Strict: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	sub := "spiffe://city.example/zone/north/device/l1"
	for i, d := range []authz.Decision{
		{ID: "d-1", Service: "telemetry", Method: "POST", Path: "/t", Allowed: true, HTTPStatus: 200, Reason: `allowed by flow "light-telemetry"`},
		{ID: "d-2", Service: "telemetry", Method: "POST", Path: "/t", Allowed: true, HTTPStatus: 200, Reason: `allowed by flow "light-telemetry"`},
		{ID: "d-3", Service: "telemetry", Method: "POST", Path: "/t", Allowed: true, HTTPStatus: 200, Reason: `allowed by flow "light-telemetry"`},
		{ID: "d-4", Service: "firmware", Method: "GET", Path: "/fw/a", HTTPStatus: 403, Reason: "no flow allows this request"},
	} {
		d.Time, d.Node, d.Revision, d.Subject, d.Gateway, d.PolicyHash = time.Now().UTC(), "n1", 3, sub, "gw-north", "abc"
		d.LatencyUS = int64(i)
		l.Record(&d)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestReplayCLI: "vigil replay" reports the allows a candidate without the
// flow would flip, grouped under that flow, says what it assumed, prints
// JSON with -o json, and refuses a file that is not a decision log.
func TestReplayCLI(t *testing.T) {
	for _, k := range []string{"VIGIL_SERVER", "VIGIL_TOKEN", "VIGIL_TOKEN_FILE", "VIGIL_CA_FILE"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	dir := t.TempDir()
	logPath, cur, cand := filepath.Join(dir, "decisions.log"), filepath.Join(dir, "current.yaml"), filepath.Join(dir, "candidate.yaml")
	writeReplayLog(t, logPath)
	os.WriteFile(cur, []byte(replayCLITopology), 0o600)
	os.WriteFile(cand, []byte(replayCLITopology[:strings.Index(replayCLITopology, "flows:")]+"flows: []\n"), 0o600)

	out, err := runVigil("replay", "--log", logPath, "--topology", cand, "--current", cur)
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	for _, want := range []string{
		"assumes: no runtime state",
		"4 decisions; 4 re-decided: 1 unchanged, 3 allow → deny, 0 deny → allow",
		"light-telemetry → (denied)",
		"device/l1",
		"d-1", "d-3",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	out, err = runVigil("replay", "--log", logPath, "--topology", cand, "--current", cur, "-o", "json")
	if err != nil {
		t.Fatalf("replay -o json: %v\n%s", err, out)
	}
	var rep authz.ReplayReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.Totals.AllowToDeny != 3 || len(rep.ByFlow) != 1 || rep.ByFlow[0].FlowBefore != "light-telemetry" || len(rep.ByFlow[0].Examples) != 3 {
		t.Errorf("report %+v", rep)
	}

	if _, err := runVigil("replay", "--log", cur, "--topology", cand); err == nil || !strings.Contains(err.Error(), "not a decision log") {
		t.Errorf("a topology file as the log: error %v", err)
	}
}
