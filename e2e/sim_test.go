package e2e_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// simReport is the part of `vigil sim --json` the tests read.
type simReport struct {
	Devices   int `json:"devices"`
	Scenarios []struct {
		Scenario     string           `json:"scenario"`
		Target       string           `json:"target"`
		Status       string           `json:"status"`
		OK           bool             `json:"ok"`
		QuarantineMs float64          `json:"quarantineMs"`
		DecidedMs    float64          `json:"decidedMs"`
		Members      map[string]int64 `json:"members"`
		Incident     string           `json:"incident"`
		Findings     []struct {
			Detector string `json:"detector"`
			Severity string `json:"severity"`
		} `json:"findings"`
		Detail string `json:"detail"`
		Error  string `json:"error"`
	} `json:"scenarios"`
	Quarantines           []json.RawMessage `json:"quarantines"`
	UnexpectedQuarantines int               `json:"unexpectedQuarantines"`
	Totals                struct {
		Sent       int `json:"sent"`
		Checked    int `json:"checked"`
		Allowed    int `json:"allowed"`
		AccessLogs int `json:"accessLogs"`
	} `json:"totals"`
	Errors []string `json:"errors"`
}

// TestSimScenariosAreContainedOnEveryMember plays every attack scenario
// of `vigil sim` against three members, the fleet's Checks and access logs
// spread over all of them: each ends in its target's quarantine on every
// member, with an incident, within the target (p99 ≤ 1 s from the first
// attack request); a benign run of the same fleet quarantines nobody.
func TestSimScenariosAreContainedOnEveryMember(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a 3-member cluster and a simulated fleet for minutes")
	}
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3})
	doc := topologytest.Generate(topologytest.Spec{Zones: 3, GatewaysPerZone: 4, Devices: 1200})
	raw, _ := json.Marshal(doc)
	if _, err := c.Client(0).ApplyTopology(ctxFor(t, time.Minute), raw); err != nil {
		t.Fatal(err)
	}
	var authz, xds []string
	for i := range c.Size() {
		authz = append(authz, c.Member(i).AuthzAddr)
		xds = append(xds, c.Member(i).XDSAddr)
	}
	env := []string{"VIGIL_SERVER=" + c.Member(0).APIAddr, "VIGIL_TOKEN_FILE=" + c.TokenFile()}
	sim := func(extra ...string) (simReport, cliResult) {
		args := append([]string{"sim", "--json", "--authz", strings.Join(authz, ","), "--xds", strings.Join(xds, ","), "--seed", "3"}, extra...)
		res := runCLIFor(t, 6*time.Minute, env, args...)
		var rep simReport
		if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
			t.Fatalf("vigil sim --json: %v\n%s", err, res)
		}
		return rep, res
	}

	// Benign first: the same fleet for a while, nobody quarantined.
	benign, res := sim("--duration", "40s")
	if benign.UnexpectedQuarantines != 0 || len(benign.Quarantines) != 0 || benign.Totals.Allowed == 0 || benign.Totals.AccessLogs == 0 {
		t.Fatalf("a benign run: %d quarantines, totals %+v\n%s", len(benign.Quarantines), benign.Totals, res.stderr)
	}
	t.Logf("benign: %d devices, %d requests (%d checked, %d allowed), %d access-log entries, 0 quarantines",
		benign.Devices, benign.Totals.Sent, benign.Totals.Checked, benign.Totals.Allowed, benign.Totals.AccessLogs)

	rep, res := sim("--scenario", "all", "--timeout", "20s")
	if len(rep.Scenarios) != 6 {
		t.Fatalf("want 6 scenarios, got %d\n%s", len(rep.Scenarios), res)
	}
	var worst float64
	for _, s := range rep.Scenarios {
		var dets []string
		for _, f := range s.Findings {
			dets = append(dets, f.Detector+"/"+f.Severity)
		}
		t.Logf("%-12s %-12s %-14s quarantined on every member after %6.0f ms (decided at %4.0f ms), incident %s, findings %s",
			s.Scenario, s.Target, s.Status, s.QuarantineMs, s.DecidedMs, s.Incident, strings.Join(dets, ", "))
		if !s.OK || s.Status != "quarantined" || s.Incident == "" || len(s.Members) != 3 {
			t.Errorf("%s on %s: status %s, incident %q, members %v: %s %s", s.Scenario, s.Target, s.Status, s.Incident, s.Members, s.Detail, s.Error)
		}
		// The replayed evidence and the tamper signal are single events;
		// the others are judged as traffic arrives. Quarantine follows the
		// decision within the target everywhere.
		if s.QuarantineMs-s.DecidedMs > 1000 {
			t.Errorf("%s: decided at %.0f ms, quarantined everywhere only at %.0f ms", s.Scenario, s.DecidedMs, s.QuarantineMs)
		}
		worst = max(worst, s.QuarantineMs-s.DecidedMs)
	}
	if rep.UnexpectedQuarantines != 0 {
		t.Errorf("%d devices that were not attacked were quarantined", rep.UnexpectedQuarantines)
	}
	t.Logf("slowest decision → quarantined on every member: %.0f ms", worst)
}
