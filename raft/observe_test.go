package raft

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestObserverTimesCommitsAndApplies: the leader reports a commit for each
// command it proposed and waited for (each chunk of a document too), every
// member an apply for each entry, and a failover is a leader change.
func TestObserverTimesCommitsAndApplies(t *testing.T) {
	c := newCluster(t, 3, nil)
	ctx := ctxT(t)
	leader := c.leader()
	var commits, applies, follower atomic.Int64
	var negative atomic.Bool
	watch := func(n *atomic.Int64) func(time.Duration) {
		return func(d time.Duration) {
			n.Add(1)
			negative.Store(negative.Load() || d < 0)
		}
	}
	leader.SetObserver(Observer{Committed: watch(&commits), Applied: watch(&applies)})
	for id, s := range c.stores {
		if id != leader.ID() {
			s.SetObserver(Observer{Applied: watch(&follower)})
		}
	}
	// Two chunks, then one state batch.
	leader.cfg.ChunkSize = 64
	if _, err := leader.ReplaceDocument(ctx, mustIndex(t, testDoc(2))); err != nil {
		t.Fatal(err)
	}
	chunks := commits.Load()
	if chunks < 2 {
		t.Fatalf("a document of several chunks reported %d commits", chunks)
	}
	rev, err := leader.UpdateState(ctx, []StateOp{quarantineOp("dev-00000", time.Now())})
	if err != nil {
		t.Fatal(err)
	}
	c.converge(rev)
	if got := commits.Load(); got != chunks+1 {
		t.Errorf("%d commits, want %d", got, chunks+1)
	}
	// The quarantine's barrier is no command of the FSM's; every entry
	// the leader waited for was applied here too.
	if applies.Load() < commits.Load() {
		t.Errorf("%d applies on the leader, fewer than its %d commits", applies.Load(), commits.Load())
	}
	if follower.Load() < 2*commits.Load() {
		t.Errorf("%d applies on two followers, want at least %d", follower.Load(), 2*commits.Load())
	}
	if negative.Load() {
		t.Error("a negative duration was reported")
	}

	// Every member has seen the first leader; a failover is a change.
	for id, s := range c.stores {
		if n := s.LeaderChanges(); n < 1 {
			t.Errorf("%s saw %d leader changes, want at least 1", id, n)
		}
	}
	oldID := leader.ID()
	var survivor *Store
	for id, s := range c.stores {
		if id != oldID {
			survivor = s
			break
		}
	}
	before := survivor.LeaderChanges()
	c.stop(oldID)
	if c.leader().ID() == oldID {
		t.Fatal("stopped member still leads")
	}
	deadline := time.Now().Add(10 * time.Second)
	for survivor.LeaderChanges() == before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if survivor.LeaderChanges() <= before {
		t.Errorf("a surviving member saw no leader change after the failover (%d)", before)
	}
}
