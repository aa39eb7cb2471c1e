package spire

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/topology"
)

// A member that believes it leads (IsLeader) but whose leadership a quorum
// does not confirm (VerifyLeader: a stalled leader that resumed) changes
// nothing on the server, neither entries nor join tokens, and counts the
// passes it stopped; once confirmed, it converges.
func TestNothingChangesWithoutConfirmedLeadership(t *testing.T) {
	_, cl := realServer(t)
	ctx := ctxFor(t, 2*time.Minute)
	var confirmed atomic.Bool
	var asked atomic.Int64
	r, err := NewReconciler(Config{Client: cl, Options: DefaultOptions(), IsLeader: func() bool { return true },
		VerifyLeader: func(context.Context) bool { asked.Add(1); return confirmed.Load() },
		Logger:       slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	doc := city(20)
	snap := snapshotOf(t, doc)
	r.Update(snap, Change{Document: true})
	testwait.For(t, 10*time.Second, "a pass stopped for want of confirmation", func() bool {
		return r.Stats().Unconfirmed.Full > 0
	})
	if list, err := cl.ListEntries(ctx, "vigil", ""); err != nil || len(list) != 0 {
		t.Fatalf("an unconfirmed leader changed the server: %d entries (%v)", len(list), err)
	}
	if st := r.Stats(); st.Passes.Full != 0 || st.Failed.Full != 0 {
		t.Errorf("stats %+v: an unconfirmed pass counted as made or failed", st)
	}
	if _, err := r.Onboard(ctx, snap, topology.GatewaySubject("gw-00000"), time.Hour); !errors.Is(err, ErrNotConfirmed) {
		t.Errorf("Onboard by an unconfirmed leader: %v, want ErrNotConfirmed", err)
	}
	opts := DefaultOptions()
	if list, err := cl.ListEntries(ctx, opts.bindingHint(), ""); err != nil || len(list) != 0 {
		t.Errorf("an unconfirmed leader bound a join token: %d bindings (%v)", len(list), err)
	}

	confirmed.Store(true)
	testwait.For(t, 10*time.Second, "the confirmed leader's full pass", func() bool {
		st := r.Status()
		return st.LastFull != nil && st.LastFull.Created == 24
	})
	checkConverged(t, ctx, cl, snap)
	if n := asked.Load(); n > 20 {
		t.Errorf("VerifyLeader asked %d times for a few passes of 24 entries", n)
	}

	// A quarantine is not acted on by a leader no longer confirmed.
	confirmed.Store(false)
	q := topology.DeviceSubject("d-0000005")
	before := r.Stats().Unconfirmed.Subjects
	r.Update(snapshotOf(t, doc, q), Change{Subjects: []topology.Subject{q}})
	testwait.For(t, 10*time.Second, "the quarantine's pass stopped for want of confirmation", func() bool {
		return r.Stats().Unconfirmed.Subjects > before
	})
	if _, found, err := cl.GetEntry(ctx, "vigil.device.d-0000005"); err != nil || !found {
		t.Errorf("an unconfirmed leader deleted the quarantined device's entry (found %v, %v)", found, err)
	}
}
