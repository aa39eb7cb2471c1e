package authz

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// TestStaleMemberRestrictsToEssentialFlows: a member cut off from its
// quorum keeps deciding from its replica and marks every decision with its
// staleness; past MaxStaleness only essential flows pass, with both
// engines, and a quarantine it knew of stays in force.
func TestStaleMemberRestrictsToEssentialFlows(t *testing.T) {
	const (
		slcN1  = "spiffe://city.example/zone/north/device/slc-n1"
		tele   = "telemetry.city.example"
		fw     = "firmware.city.example"
		posted = "/api/v1/telemetry"
	)
	ix := testIndex(t)
	quarantined := applyState(t, ix, topology.NewState(), caseState{Quarantined: []string{"slc-s1"}})
	snap := topology.NewSnapshot(42, 1, ix, quarantined)
	for _, engineName := range []string{"go", "rego"} {
		engine, err := NewEngine(context.Background(), quiet())
		if err != nil {
			t.Fatal(err)
		}
		if engineName == "rego" {
			engine.Use(engine.Current().WithRego())
		}
		var stale time.Duration
		log := &memLog{}
		s := NewServer(Config{Node: "n3", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine, Log: log,
			Now: func() time.Time { return testNow }, Logger: quiet(),
			Staleness: func() time.Duration { return stale }, MaxStaleness: 10 * time.Minute})
		check := func(principal, host, method, path string) Decision {
			t.Helper()
			if _, err := s.Check(context.Background(), checkRequest(principal, "", "", host, method, path)); err != nil {
				t.Fatal(err)
			}
			return log.last()
		}
		for _, tc := range []struct {
			stale                   time.Duration
			principal, host, method string
			path                    string
			allowed                 bool
			reason                  string
		}{
			{0, slcN1, fw, "GET", "/firmware/a.bin", true, `allowed by flow "firmware-fetch"`},
			{3 * time.Second, slcN1, fw, "GET", "/firmware/a.bin", true, `allowed by flow "firmware-fetch"`},
			{3 * time.Second, "spiffe://city.example/zone/south/device/slc-s1", tele, "POST", posted, false, "is quarantined"},
			{11 * time.Minute, slcN1, fw, "GET", "/firmware/a.bin", false, "member n3 has been cut off from its cluster, or unable to store what it commits, for 11m0s, longer than its --max-staleness 10m0s: only essential flows are allowed"},
			{11 * time.Minute, slcN1, tele, "POST", posted, true, `allowed by flow "lights-telemetry"`},
			{11 * time.Minute, "spiffe://city.example/zone/south/device/slc-s1", tele, "POST", posted, false, "is quarantined"},
		} {
			stale = tc.stale
			d := check(tc.principal, tc.host, tc.method, tc.path)
			if d.Allowed != tc.allowed || !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("%s, stale %v, %s %s %s: allowed=%v %q; want allowed=%v and a reason with %q",
					engineName, tc.stale, tc.principal, tc.method, tc.path, d.Allowed, d.Reason, tc.allowed, tc.reason)
			}
			if d.StaleMS != tc.stale.Milliseconds() {
				t.Errorf("%s: decision stale_ms %d, want %d", engineName, d.StaleMS, tc.stale.Milliseconds())
			}
		}
	}
}
