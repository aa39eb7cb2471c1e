package node

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/topology"
)

// TestDryRunFlipsTheMembersOwnDecisions: a member records real decisions;
// a dry run of a candidate without flow "t" reports the recorded allows of
// "t" as allow → deny under that flow, and a device quarantined since its
// decision as allow → deny too (the member's current state), while nothing
// is applied. max_lines bounds what is replayed; an invalid candidate is
// refused with its problems.
func TestDryRunFlipsTheMembersOwnDecisions(t *testing.T) {
	n, cl, _ := runNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	doc := monitorDoc("ops")
	if _, err := cl.ApplyTopology(ctx, []byte(doc)); err != nil {
		t.Fatal(err)
	}
	c := newChecker(t, n.AuthzAddr())
	for _, r := range []struct {
		dev, method, host, path string
		allowed                 bool
	}{
		{"sen-1", "POST", "telemetry.city.example", "/t", true},
		{"sen-2", "POST", "telemetry.city.example", "/t", true},
		{"sen-1", "POST", "telemetry.city.example", "/t", true},
		{"sen-1", "GET", "firmware.city.example", "/fw", true},
		{"sen-1", "GET", "telemetry.city.example", "/nope", false},
	} {
		zone := "north"
		if ok, body := c.check(zone, r.dev, r.method, r.host, r.path); ok != r.allowed {
			t.Fatalf("%s %s %s%s: allowed %v (%s), want %v", r.dev, r.method, r.host, r.path, ok, body, r.allowed)
		}
	}
	if ok, body := c.check("south", "cam-1", "POST", "telemetry.city.example", "/t"); !ok {
		t.Fatalf("cam-1: denied (%s)", body)
	}
	testwait.For(t, 10*time.Second, "6 decisions in the log", func() bool { return n.authz.log.Status().Written >= 6 })
	if _, err := cl.Quarantine(ctx, topology.KindDevice, "cam-1", "stolen"); err != nil {
		t.Fatal(err)
	}
	before := n.Store().Current()

	candidate := strings.Replace(doc,
		`  - {name: t, from: {classes: [sensor]}, to: {service: telemetry}, http: {methods: [POST], paths: ["/t"]}, essential: true}`+"\n", "", 1)
	if candidate == doc {
		t.Fatal("the candidate still has flow t")
	}
	res, err := cl.DryRunTopology(ctx, []byte(candidate), api.DryRunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rep authz.ReplayReport
	if err := json.Unmarshal(res.Report, &rep); err != nil {
		t.Fatal(err)
	}
	tot := rep.Totals
	if res.Member != "n1" || res.Applied || res.Log.Lines != 6 || tot.Lines != 6 || tot.Redecided != 6 ||
		tot.AllowToDeny != 4 || tot.DenyToAllow != 0 || tot.Unchanged != 2 {
		t.Fatalf("result %+v\ntotals %+v", res, tot)
	}
	if res.Current.DocumentRevision != before.DocumentRevision() || res.Current.Revision < before.Revision() || res.Current.Flows != 3 || res.Candidate.Flows != 2 ||
		res.Log.FirstSeq != 1 || res.Log.LastSeq != 6 || res.Log.Older != "" || res.Log.From.IsZero() || res.Log.To.Before(res.Log.From) {
		t.Errorf("current %+v, candidate %+v, log %+v", res.Current, res.Candidate, res.Log)
	}
	if rep.PolicyHash != n.authz.engine.Current().Hash {
		t.Errorf("policy %s, want the authorizer's %s", rep.PolicyHash, n.authz.engine.Current().Hash)
	}
	flows := map[string]authz.ReplayGroup{}
	for _, g := range rep.ByFlow {
		flows[g.Key] = g
	}
	if g := flows["t → (denied)"]; g.ToDeny != 3 || g.FlowBefore != "t" || len(g.Examples) != 3 {
		t.Errorf("flow t: %+v (all: %+v)", g, rep.ByFlow)
	}
	if g := flows["cam → (denied)"]; g.ToDeny != 1 || len(g.Examples) != 1 || !strings.Contains(g.Examples[0].After, "quarantine") {
		t.Errorf("flow cam (cam-1 quarantined since): %+v", g)
	}
	devices := map[string]int{}
	for _, g := range rep.ByDevice {
		devices[g.Key] = g.ToDeny
	}
	if devices["device/sen-1"] != 2 || devices["device/sen-2"] != 1 || devices["device/cam-1"] != 1 {
		t.Errorf("by device: %+v", rep.ByDevice)
	}

	// Nothing was applied. (The revision itself moves with the member's
	// decision-log checkpoints.)
	if after := n.Store().Current(); after.DocumentRevision() != before.DocumentRevision() || after.Index().NumFlows() != 3 {
		t.Fatalf("after the dry run: document of revision %d (was %d), %d flows",
			after.DocumentRevision(), before.DocumentRevision(), after.Index().NumFlows())
	}

	// The last 2 lines only.
	res, err = cl.DryRunTopology(ctx, []byte(candidate), api.DryRunOptions{MaxLines: 2})
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(res.Report, &rep)
	if res.Log.Lines != 2 || res.Log.Older != "max_lines" || res.Log.FirstSeq != 5 || res.Log.LastSeq != 6 ||
		rep.Totals.Lines != 2 || rep.Totals.AllowToDeny != 1 {
		t.Errorf("max_lines 2: log %+v, totals %+v", res.Log, rep.Totals)
	}
	// Since a time after every decision: nothing to replay.
	time.Sleep(20 * time.Millisecond)
	res, err = cl.DryRunTopology(ctx, []byte(candidate), api.DryRunOptions{Since: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(res.Report, &rep)
	if res.Log.Lines != 0 || res.Log.Older != "since" || res.Log.LeadingSkipped != 6 || rep.Totals.Lines != 0 {
		t.Errorf("since 10ms: log %+v, totals %+v", res.Log, rep.Totals)
	}

	// An invalid candidate: its problems, nothing replayed or applied.
	_, err = cl.DryRunTopology(ctx, []byte(strings.Replace(candidate, "class: sensor, gateway: gw-1}", "class: ghost, gateway: gw-1}", 1)), api.DryRunOptions{})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity || len(ae.Errors) == 0 {
		t.Fatalf("invalid candidate: %v", err)
	}
	if after := n.Store().Current(); after.DocumentRevision() != before.DocumentRevision() {
		t.Fatalf("document revision moved to %d", after.DocumentRevision())
	}
}

// TestDryRunDecidesWithTheMembersPolicy: a member with its own policy
// (--policy-dir) dry-runs with that policy, not Vigil's default one: under
// a policy that allows everything, removing a flow flips nothing.
func TestDryRunDecidesWithTheMembersPolicy(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.rego"),
		[]byte("package custom\n\ndecision := {\"allowed\": true, \"reason\": \"custom allows all\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, cl, _ := runNode(t, func(cfg *Config) { cfg.Authz.PolicyDir, cfg.Authz.PolicyQuery = dir, "data.custom.decision" })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	doc := monitorDoc("ops")
	if _, err := cl.ApplyTopology(ctx, []byte(doc)); err != nil {
		t.Fatal(err)
	}
	c := newChecker(t, n.AuthzAddr())
	for _, path := range []string{"/t", "/nope"} {
		if ok, body := c.check("north", "sen-1", "POST", "telemetry.city.example", path); !ok {
			t.Fatalf("POST %s denied (%s) under a policy that allows all", path, body)
		}
	}
	testwait.For(t, 10*time.Second, "2 decisions in the log", func() bool { return n.authz.log.Status().Written >= 2 })
	candidate := doc[:strings.Index(doc, "flows:")] + "flows: []\n"
	res, err := cl.DryRunTopology(ctx, []byte(candidate), api.DryRunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rep authz.ReplayReport
	if err := json.Unmarshal(res.Report, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.PolicyHash != n.authz.engine.Current().Hash || rep.Totals.Redecided != 2 || rep.Totals.AllowToDeny+rep.Totals.DenyToAllow != 0 {
		t.Errorf("policy %s (the member's: %s), totals %+v", rep.PolicyHash, n.authz.engine.Current().Hash, rep.Totals)
	}
}
