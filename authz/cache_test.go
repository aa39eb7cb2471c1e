package authz

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/vigil-iot/vigil/topology"
)

func (c *decisionCache) len() int {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.Lock()
		n += len(c.shards[i].m)
		c.shards[i].mu.Unlock()
	}
	return n
}

func TestCachedDecisionsFollowWhatThePolicyReads(t *testing.T) {
	ix := testIndex(t)
	engine, err := NewEngine(context.Background(), quiet())
	if err != nil {
		t.Fatal(err)
	}
	engine.Use(engine.Current().WithRego()) // the cache serves the default policy run by OPA
	snap := topology.NewSnapshot(1, 1, ix, topology.NewState())
	s := NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine, Log: &memLog{},
		Now: func() time.Time { return testNow }})
	c := checkCase{}
	c.Request.Principal = "spiffe://city.example/zone/north/device/slc-n1"
	c.Request.Host, c.Request.Method, c.Request.Path = "firmware.city.example", "GET", "/firmware/a.bin"
	check := func() codes.Code {
		resp, err := s.Check(context.Background(), c.request())
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.GetStatus().GetCode())
	}
	if got := check(); got != codes.OK {
		t.Fatalf("first check: %v", got)
	}
	if check(); s.cache.len() != 1 {
		t.Fatalf("the same request made %d cache entries, want 1", s.cache.len())
	}
	// Another device's quarantine is a new revision but changes nothing this
	// request's policy reads: the entry stands.
	q := &topology.SubjectState{Quarantine: &topology.Quarantine{Reason: "r", By: "t", Since: testNow}}
	snap = topology.NewSnapshot(2, 1, ix, snap.State().With(map[topology.Subject]*topology.SubjectState{topology.DeviceSubject("slc-s1"): q}))
	if got := check(); got != codes.OK || s.cache.len() != 1 {
		t.Fatalf("after another device's quarantine: %v, %d entries", got, s.cache.len())
	}
	// This device's quarantine changes what the policy reads: denied at once.
	snap = topology.NewSnapshot(3, 1, ix, snap.State().With(map[topology.Subject]*topology.SubjectState{topology.DeviceSubject("slc-n1"): q}))
	if got := check(); got != codes.PermissionDenied {
		t.Fatalf("after its own quarantine: %v, want PermissionDenied", got)
	}
	// A new document empties the cache, so no entry keeps the old one alive.
	check()
	ix2 := testIndex(t)
	snap = topology.NewSnapshot(4, 4, ix2, snap.State())
	check()
	if n := s.cache.len(); n != 1 {
		t.Fatalf("after a new document the cache holds %d entries, want only the new one", n)
	}
	// A custom policy may read anything, so nothing of it is cached.
	p, err := Compile(context.Background(), map[string]string{"p.rego": allowAll}, nil, "data.custom.decision", "test")
	if err != nil {
		t.Fatal(err)
	}
	engine.Use(p)
	s.cache = newDecisionCache()
	check()
	if n := s.cache.len(); n != 0 {
		t.Fatalf("a custom policy's result was cached (%d entries)", n)
	}
}

// TestARiskChangeFlipsACachedDecision: the cache key holds the subject's
// state by identity, and a new risk is a new state, so a cached allow does
// not outlive the risk that restricts the device, nor a cached deny the
// risk that fell again.
func TestARiskChangeFlipsACachedDecision(t *testing.T) {
	ix := testIndex(t)
	engine, err := NewEngine(context.Background(), quiet())
	if err != nil {
		t.Fatal(err)
	}
	engine.Use(engine.Current().WithRego()) // the cache serves the default policy run by OPA
	snap := topology.NewSnapshot(1, 1, ix, topology.NewState())
	log := &memLog{}
	s := NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine, Log: log,
		Now: func() time.Time { return testNow }})
	c := checkCase{}
	c.Request.Principal = "spiffe://city.example/zone/north/device/slc-n1"
	c.Request.Host, c.Request.Method, c.Request.Path = "firmware.city.example", "GET", "/firmware/a.bin"
	check := func() codes.Code {
		resp, err := s.Check(context.Background(), c.request())
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.GetStatus().GetCode())
	}
	setRisk := func(rev topology.Revision, name string, score int) {
		st := &topology.SubjectState{Risk: &topology.Risk{Score: score, UpdatedAt: testNow}}
		snap = topology.NewSnapshot(rev, 1, ix, snap.State().With(map[topology.Subject]*topology.SubjectState{topology.DeviceSubject(name): st}))
	}
	for _, step := range []struct {
		what    string
		set     func()
		want    codes.Code
		entries int
	}{
		{"no risk", func() {}, codes.OK, 1},
		{"the same request again", func() {}, codes.OK, 1},
		{"another device's risk", func() { setRisk(2, "slc-s1", 99) }, codes.OK, 1},
		{"its risk below restrictAt", func() { setRisk(3, "slc-n1", 59) }, codes.OK, 2},
		{"its risk at restrictAt", func() { setRisk(4, "slc-n1", 60) }, codes.PermissionDenied, 3},
		{"the restricted request again", func() {}, codes.PermissionDenied, 3},
		{"its risk decayed", func() { setRisk(5, "slc-n1", 10) }, codes.OK, 4},
	} {
		step.set()
		if got := check(); got != step.want {
			t.Fatalf("%s: %v (%s), want %v", step.what, got, log.last().Reason, step.want)
		}
		if n := s.cache.len(); n != step.entries {
			t.Fatalf("%s: %d cache entries, want %d", step.what, n, step.entries)
		}
	}
	if d := log.last(); d.Risk != 10 {
		t.Errorf("last decision records risk %d, want 10", d.Risk)
	}
}
