package e2e_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// TestFaultNetClusterForms: a cluster whose members reach each other only
// through a FaultNet forms, forwards a follower's write to the leader, and
// when the leader is isolated the other two elect a new one and take
// writes; healed, the cluster is whole again and the old leader catches up.
func TestFaultNetClusterForms(t *testing.T) {
	f := harness.NewFaultNet()
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, Faults: f})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("faults: %s\nstats: %+v", f, f.Stats())
		}
	})
	for i := range c.Size() {
		if m := c.Member(i); m.RaftAdvertise == m.RaftAddr || m.APIAdvertise == m.APIAddr {
			t.Fatalf("%s advertises %s and %s, its own listeners: want its proxies", m.ID, m.RaftAdvertise, m.APIAdvertise)
		}
	}

	doc := topologytest.Generate(topologytest.Spec{Zones: 1, GatewaysPerZone: 1, Devices: 4, NoAttestation: true})
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(0).ApplyTopology(ctxFor(t, time.Minute), data); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	follower := aFollower(t, c)
	s, err := c.Client(follower).Quarantine(ctxFor(t, 15*time.Second), topology.KindDevice, topologytest.DeviceName(0), "faultnet")
	if err != nil {
		t.Fatalf("quarantine through follower %s: %v", c.Member(follower).ID, err)
	}
	if !s.Quarantined {
		t.Fatalf("quarantine through follower %s answered %+v", c.Member(follower).ID, s)
	}

	// Members' traffic to each other went through the proxies, named by PID.
	lid, fid := c.Member(leader).ID, c.Member(follower).ID
	st := f.Stats()
	if st.Pairs[harness.Pair{From: lid, To: fid}].Accepted == 0 && st.Pairs[harness.Pair{From: fid, To: lid}].Accepted == 0 {
		t.Errorf("no connection between %s and %s went through the FaultNet: %+v", lid, fid, st)
	}
	t.Logf("before the partition: %d connections, %d bytes relayed; %s", st.Accepted, st.Relayed, pairSummary(st))

	// Isolate the leader: the other two elect one of themselves. Poll their
	// own raft status (Self): a cluster status would wait up to 2s on its
	// probe of the unreachable member and hide how fast the election is.
	var rest []string
	var majority []int
	for i := range c.Size() {
		if i != leader {
			rest, majority = append(rest, c.Member(i).ID), append(majority, i)
		}
	}
	f.Isolate(lid, rest...)
	cut := time.Now()
	newLeader := ""
	for deadline := cut.Add(20 * time.Second); newLeader == ""; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("20s after isolating leader %s, %v have not agreed on another leader", lid, rest)
		}
		var seen []string
		for _, i := range majority {
			if st, err := c.Client(i).Self(ctxFor(t, time.Second)); err == nil {
				seen = append(seen, st.LeaderID)
			}
		}
		if len(seen) == 2 && seen[0] == seen[1] && seen[0] != "" && seen[0] != lid {
			newLeader = seen[0]
		}
	}
	t.Logf("isolated %s; %s leads %v after %v", lid, newLeader, rest, time.Since(cut).Round(time.Millisecond))
	if old, err := c.Client(leader).Self(ctxFor(t, time.Second)); err == nil {
		t.Logf("the isolated %s is %s and says the leader is %q (term %d)", lid, old.State, old.LeaderID, old.Term)
	}

	// The majority takes writes; the old leader cannot.
	nl := c.Member(majority[0]).ID
	s, err = c.Client(majority[0]).Quarantine(ctxFor(t, 15*time.Second), topology.KindDevice, topologytest.DeviceName(1), "partitioned")
	if err != nil {
		t.Fatalf("quarantine through %s in the majority: %v", nl, err)
	}
	during := s.Revision
	if _, err := c.Client(leader).Quarantine(ctxFor(t, 5*time.Second), topology.KindDevice, topologytest.DeviceName(2), "isolated"); err == nil {
		t.Errorf("the isolated old leader %s accepted a write", lid)
	} else {
		t.Logf("a write through the isolated %s: %v", lid, err)
	}

	f.HealAll()
	healed := time.Now()
	if err := c.WaitReady(); err != nil {
		t.Fatalf("after HealAll: %v", err)
	}
	t.Logf("whole again %v after HealAll", time.Since(healed).Round(time.Millisecond))
	cl := c.Client(leader)
	cl.MinRevision = during
	got, err := cl.Subject(ctxFor(t, 30*time.Second), topology.KindDevice, topologytest.DeviceName(1))
	if err != nil || !got.Quarantined {
		t.Fatalf("the old leader %s at revision >= %d: %+v, %v; want %s quarantined", lid, during, got, err, topologytest.DeviceName(1))
	}
	st = f.Stats()
	t.Logf("in all: %d connections, %d bytes relayed, %d discarded; %s", st.Accepted, st.Relayed, st.Discarded, pairSummary(st))
}

// pairSummary lists each direction's connections and bytes, sorted.
func pairSummary(st harness.FaultStats) string {
	var out []string
	for p, ps := range st.Pairs {
		out = append(out, fmt.Sprintf("%s: %d conns, %d B relayed, %d B discarded", p, ps.Accepted, ps.Relayed, ps.Discarded))
	}
	slices.Sort(out)
	return fmt.Sprint(out)
}

// TestClusterPauseResume: a paused (SIGSTOPped) follower does not stop the
// others from writing or agreeing on a leader, catches up once resumed,
// and a member left paused is still killed when the test ends.
func TestClusterPauseResume(t *testing.T) {
	c := startCluster(t, 3)
	doc := topologytest.Generate(topologytest.Spec{Zones: 1, GatewaysPerZone: 1, Devices: 4, NoAttestation: true})
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(0).ApplyTopology(ctxFor(t, time.Minute), data); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	follower := aFollower(t, c)
	if err := c.Pause(follower); err != nil {
		t.Fatal(err)
	}
	if !c.Paused(follower) || !c.Running(follower) {
		t.Fatalf("after Pause: paused %v, running %v; want both", c.Paused(follower), c.Running(follower))
	}
	if l, err := c.WaitLeader(); err != nil || l != leader {
		t.Fatalf("with %s paused, WaitLeader: %d, %v; want %d", c.Member(follower).ID, l, err, leader)
	}
	s, err := c.Client(leader).Quarantine(ctxFor(t, 15*time.Second), topology.KindDevice, topologytest.DeviceName(0), "paused")
	if err != nil {
		t.Fatalf("a write with %s paused: %v", c.Member(follower).ID, err)
	}
	if err := c.Resume(follower); err != nil {
		t.Fatal(err)
	}
	cl := c.Client(follower)
	cl.MinRevision = s.Revision
	if got, err := cl.Subject(ctxFor(t, 30*time.Second), topology.KindDevice, topologytest.DeviceName(0)); err != nil || !got.Quarantined {
		t.Fatalf("resumed %s at revision >= %d: %+v, %v; want the device quarantined", c.Member(follower).ID, s.Revision, got, err)
	}
	if err := c.WaitReady(); err != nil {
		t.Fatal(err)
	}
	// Left paused: the cleanup's Close must still kill it, promptly.
	if err := c.Pause(follower); err != nil {
		t.Fatal(err)
	}
}
