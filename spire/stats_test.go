package spire

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"

	"github.com/vigil-iot/vigil/internal/testwait"
)

// TestStatsCountPassesErrorsAndLag runs the reconciler against the real
// server: passes that succeed and an entry that cannot be planned are
// counted; a pass that fails as a whole (a document of another trust
// domain) is counted and leaves the change waiting, which is lag; once a
// good document is committed the lag is gone. A member that does not lead
// has none.
func TestStatsCountPassesErrorsAndLag(t *testing.T) {
	_, cl := realServer(t)
	ctx := ctxFor(t, 2*time.Minute)
	var leader atomic.Bool
	leader.Store(true)
	r := newReconciler(t, cl, &leader, DefaultOptions())
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() { stop(); <-done }()

	doc := city(20)
	doc.Services[0].Labels = topology.Labels{SelectorsLabel: "not-a-selector"}
	r.Update(snapshotOf(t, doc), Change{Document: true})
	testwait.For(t, 30*time.Second, "a full pass", func() bool { return r.Stats().Passes.Full >= 1 })
	st := r.Stats()
	// Each full pass (one, unless the first tick of leadership made
	// another) plans the bad service in vain.
	if st.Errors != [len(ErrorOps)]uint64{st.Passes.Full, 0, 0, 0} || st.Failed != (PassCounts{}) || st.Lag != 0 {
		t.Errorf("after a good pass with one bad service: %+v, want a plan error per pass, no failure, no lag", st)
	}

	other := city(20)
	other.TrustDomain = "elsewhere.example"
	r.Update(snapshotOf(t, other), Change{Document: true})
	testwait.For(t, 30*time.Second, "a failed full pass", func() bool { return r.Stats().Failed.Full >= 1 })
	time.Sleep(20 * time.Millisecond)
	if st := r.Stats(); st.Lag < 20*time.Millisecond {
		t.Errorf("the change that fails to apply has waited %v", st.Lag)
	}
	leader.Store(false)
	if st := r.Stats(); st.Lag != 0 {
		t.Errorf("a member that does not lead lags %v", st.Lag)
	}
	leader.Store(true)

	passes := r.Stats().Passes.Full
	r.Update(snapshotOf(t, city(20)), Change{Document: true})
	testwait.For(t, 30*time.Second, "a good full pass again", func() bool {
		st := r.Stats()
		return st.Passes.Full > passes && st.Lag == 0
	})
}
