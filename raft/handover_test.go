package raft

import (
	"testing"
	"time"
)

// TestHandOverElectsAnotherMember: the leader hands over, another member
// leads at once, and writes go on through it; on a follower HandOver does
// nothing.
func TestHandOverElectsAnotherMember(t *testing.T) {
	c := newCluster(t, 3, nil)
	old := c.leader()
	if _, err := old.ReplaceDocument(ctxT(t), mustIndex(t, testDoc(5))); err != nil {
		t.Fatal(err)
	}
	rev := c.write(quarantineOp("dev-00001", time.Now()))
	for _, s := range c.stores {
		if s != old {
			if err := s.HandOver(); err != nil {
				t.Fatalf("HandOver on follower %s: %v", s.ID(), err)
			}
		}
	}
	start := time.Now()
	if err := old.HandOver(); err != nil {
		t.Fatalf("HandOver on the leader: %v", err)
	}
	leader := c.leader()
	if leader.ID() == old.ID() {
		t.Fatalf("%s still leads after handing over", old.ID())
	}
	t.Logf("%s handed over to %s in %v", old.ID(), leader.ID(), time.Since(start).Round(time.Millisecond))
	if next := c.write(quarantineOp("dev-00002", time.Now())); next <= rev {
		t.Fatalf("revision %d after %d", next, rev)
	}
}

// TestContactAfterSteppingDown: a leader was in touch with its quorum
// until it stepped down; one cut off from the others (which then steps
// down when its lease runs out) counts its last contact from there, not
// from before it led (Contact, LastContact), so it is not taken for cut
// off before its time. (hashicorp/raft notes the step-down too, once its
// leader loop has ended; the store notes it as the state changes, so the
// moments in between, which a vote written to a slow or full disk
// lengthens, are covered as well.)
func TestContactAfterSteppingDown(t *testing.T) {
	c := newCluster(t, 3, nil)
	old := c.leader()
	c.trans[old.ID()].DisconnectAll()
	for id, tr := range c.trans {
		if id != old.ID() {
			tr.Disconnect(c.trans[old.ID()].LocalAddr())
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for old.IsLeader() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if old.IsLeader() {
		t.Fatal("a leader cut off from the others still leads")
	}
	ct := old.Contact()
	if age := time.Since(ct.Last); ct.Leader || age > 500*time.Millisecond {
		t.Fatalf("just after stepping down: contact %+v, age %v; want the step-down as the last contact", ct, age)
	}
	if last := old.LastContact(); time.Since(last) > 500*time.Millisecond {
		t.Fatalf("LastContact %v, want the step-down, moments ago", last)
	}
}
