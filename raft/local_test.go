package raft

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/topology"
)

// TestLocalQuarantineOnACutOffMember: a follower cut off from the others
// quarantines a device on its own at once (its view, and subscribers, see
// it over the revision it holds, as a newer local generation; the
// committed state does not), keeps it across a restart, and once the
// partition heals the quarantine is committed exactly once however often it
// is proposed, after which the member forgets it.
func TestLocalQuarantineOnACutOffMember(t *testing.T) {
	c := newCluster(t, 3, nil)
	ctx := ctxT(t)
	leader := c.leader()
	rev, err := leader.ReplaceDocument(ctx, mustIndex(t, testDoc(4)))
	if err != nil {
		t.Fatal(err)
	}
	c.converge(rev)
	var cut *Store
	for _, s := range c.stores {
		if s != leader {
			cut = s
			break
		}
	}
	// Cut it off both ways.
	for id, tr := range c.trans {
		if id != cut.ID() {
			tr.Disconnect(hraft.ServerAddress(cut.ID()))
			c.trans[cut.ID()].Disconnect(hraft.ServerAddress(id))
		}
	}
	sub, snapBefore := cut.Subscribe()
	defer sub.Close()
	dev := topology.DeviceSubject("dev-00001")
	lq, err := cut.QuarantineLocal(dev, topology.Quarantine{Reason: "tampering seen on site", By: "operator/ann", Since: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	view := cut.Current()
	if !view.Quarantined(dev) || view.Revision() != snapBefore.Revision() || view.Local() == 0 {
		t.Fatalf("view after a local quarantine: quarantined=%v revision %d (was %d) local %d; want quarantined at the same revision, local > 0",
			view.Quarantined(dev), view.Revision(), snapBefore.Revision(), view.Local())
	}
	if cut.fsm.current().Quarantined(dev) {
		t.Fatal("the local quarantine leaked into the committed state")
	}
	ev, err := sub.Next(ctx)
	if err != nil || len(ev.Subjects) != 1 || ev.Subjects[0] != dev || !ev.Snapshot.Newer(snapBefore) {
		t.Fatalf("subscribers got %+v, %v; want an event for %s with a newer snapshot", ev, err, dev)
	}
	if _, err := cut.QuarantineLocal(dev, topology.Quarantine{Reason: "again", Since: time.Now()}); !errors.Is(err, ErrRejected) {
		t.Fatalf("a second local quarantine of the same device: %v, want ErrRejected", err)
	}
	if _, err := cut.QuarantineLocal(topology.DeviceSubject("nope"), topology.Quarantine{Reason: "x", Since: time.Now()}); !errors.Is(err, ErrRejected) {
		t.Fatalf("a local quarantine of an unknown device: %v, want ErrRejected", err)
	}
	// It is on disk, and a new store on the same data dir holds it.
	data, err := os.ReadFile(filepath.Join(c.dirs[cut.ID()], localFile))
	if err != nil || !strings.Contains(string(data), lq.ID) {
		t.Fatalf("%s: %q, %v; want the pending quarantine", localFile, data, err)
	}
	reloaded := newFSM(quietLogger())
	if err := reloaded.openLocal(c.dirs[cut.ID()]); err != nil || len(reloaded.local.pending) != 1 {
		t.Fatalf("reload: %v, %d pending", err, len(reloaded.local.pending))
	}

	// Heal, then propose it twice through the leader: applied once.
	for id, tr := range c.trans {
		if id != cut.ID() {
			tr.Connect(hraft.ServerAddress(cut.ID()), c.trans[cut.ID()])
			c.trans[cut.ID()].Connect(hraft.ServerAddress(id), tr)
		}
	}
	committed := c.write(lq.Op())
	if _, err := c.leader().UpdateState(ctx, []StateOp{lq.Op()}); !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("second proposal of the same local quarantine: %v; want it refused as already used", err)
	}
	c.converge(committed)
	if !cut.LocalApplied(lq.ID) {
		t.Fatal("the member's replica applied the quarantine but LocalApplied is false")
	}
	beforeResolve := cut.Current()
	if err := cut.ResolveLocal(lq.ID); err != nil {
		t.Fatal(err)
	}
	if len(cut.LocalPending()) != 0 {
		t.Fatalf("pending after resolve: %v", cut.LocalPending())
	}
	if !cut.Current().Newer(beforeResolve) {
		t.Fatal("the view without the local quarantine does not come after the one with it: xDS would keep the older")
	}
	for id, s := range c.stores {
		st := s.Current().SubjectState(dev)
		if st == nil || st.Quarantine == nil || st.Quarantine.By != "operator/ann" {
			t.Fatalf("%s: state %+v; want the committed quarantine by operator/ann", id, st)
		}
	}
	// A release committed before the member forgets its local quarantine
	// is in force there too: the overlay yields to what was committed.
	lq2, err := cut.QuarantineLocal(topology.DeviceSubject("dev-00002"), topology.Quarantine{Reason: "r2", By: "operator/ann", Since: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	c.converge(c.write(lq2.Op()))
	c.converge(c.write(StateOp{Subject: topology.DeviceSubject("dev-00002"), Op: OpRelease}))
	if cut.Current().Quarantined(topology.DeviceSubject("dev-00002")) {
		t.Fatal("a release committed after the local quarantine was committed is not in force on its member")
	}
}
