package raft

import (
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// TestRestartWhileCutOffResumesWhatItHadApplied: a follower that restarts
// while cut off from the others serves the state it had applied before it
// stopped (a quarantine committed after its last snapshot included), not
// its older snapshot, and raft applying the same entries once it is back
// changes nothing.
func TestRestartWhileCutOffResumesWhatItHadApplied(t *testing.T) {
	c := newCluster(t, 3, nil)
	ctx := ctxT(t)
	rev, err := c.leader().ReplaceDocument(ctx, mustIndex(t, testDoc(4)))
	if err != nil {
		t.Fatal(err)
	}
	c.converge(rev)
	var follower *Store
	for _, s := range c.stores {
		if !s.IsLeader() {
			follower = s
			break
		}
	}
	id := follower.ID()
	if err := follower.Snapshot(); err != nil { // the snapshot predates the quarantine
		t.Fatal(err)
	}
	dev := topology.DeviceSubject("dev-00002")
	rev = c.write(quarantineOp("dev-00002", time.Now()))
	rev = c.write(StateOp{Subject: topology.DeviceSubject("dev-00003"), Op: OpSetRisk, Risk: &topology.Risk{Score: 40, UpdatedAt: time.Now()}})
	c.converge(rev)
	c.stop(id)

	// Restart it with no peer reachable.
	s := c.start(id, false)
	for other, tr := range c.trans {
		if other != id {
			tr.DisconnectAll()
		}
	}
	c.trans[id].DisconnectAll()
	cur := s.Current()
	if cur.Revision() != rev || !cur.Quarantined(dev) {
		t.Fatalf("restarted while cut off: revision %d, quarantined %v; want revision %d with the quarantine", cur.Revision(), cur.Quarantined(dev), rev)
	}
	if r := s.Resumed(); r.Index == 0 || r.LastContact.IsZero() {
		t.Fatalf("Resumed() = %+v; want the index replayed and the last contact before the stop", r)
	}
	if st := cur.SubjectState(topology.DeviceSubject("dev-00003")); st == nil || st.Risk == nil || st.Risk.Score != 40 {
		t.Fatalf("risk after the restart: %+v", st)
	}
}
