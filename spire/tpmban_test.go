package spire

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// These tests run the reconciler against fakeSPIRE, which, unlike the real
// server, holds agents attested by vigil_tpm.

// fakeReconciler is a leader's reconciler of f whose clock is now.
func fakeReconciler(t *testing.T, cl *Client) *Reconciler {
	t.Helper()
	r, err := NewReconciler(Config{Client: cl, Options: DefaultOptions(), IsLeader: func() bool { return true },
		Now: func() time.Time { return now }, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tpmAgent is gw-n's agent as vigil_tpm attests it, with the AK of fp.
func tpmAgent(t *testing.T, banned bool, fp string) Agent {
	v, _ := TPMSelectorValues(snapshotWith(t, tpmGateway(topology.SPIRERequired), nil).Index(), topology.GatewaySubject("gw-n"), passedAt(now), fp)
	a := Agent{ID: tpmAgentGwN, AttestationType: TPMAttestor, Banned: banned, CanReattest: true}
	for _, s := range v {
		a.Selectors = append(a.Selectors, TPMAttestor+":"+s)
	}
	return a
}

// callIndex is where call is in calls (-1: absent).
func callIndex(calls []string, call string) int { return slices.Index(calls, call) }

// changes are the calls that change the server.
func changes(calls []string) []string {
	return slices.DeleteFunc(slices.Clone(calls), func(c string) bool { return strings.HasPrefix(c, "list ") })
}

// TestTPMBanRecordLifecycle: a quarantine bans the agent and creates the
// ban record; a release evicts the agent before the record is deleted, in
// the same pass; a failed eviction leaves the agent banned and the record
// in place for the next pass; then the plan converges.
func TestTPMBanRecordLifecycle(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	f, cl := startFakeSPIRE(t, cityTD)
	r := fakeReconciler(t, cl)
	gw := topology.GatewaySubject("gw-n")
	mutate := tpmGateway(topology.SPIRERequired)
	snap := snapshotWith(t, mutate, map[topology.Subject]*topology.SubjectState{gw: tpmState(false, passedAt(now.Add(-time.Hour)), akFP)})
	qsnap := snapshotWith(t, mutate, map[topology.Subject]*topology.SubjectState{gw: tpmState(true, passedAt(now.Add(-time.Hour)), akFP)})
	f.addAgent(tpmAgent(t, false, akFP))
	record := "vigil.agent.gateway.gw-n.banned"
	binding := "vigil.agent.gateway.gw-n.tpm"

	if res, err := r.Reconcile(ctx, snap); err != nil || res.Created != 6 || res.Banned+res.Evicted+res.Failed != 0 {
		t.Fatalf("first pass: %+v, %v; want 6 created (3 entries; the binding, 2 aliases), nothing banned or evicted", res, err)
	}
	if a, ok := f.agent(tpmAgentGwN); !ok || a.Banned || !slices.Contains(a.Selectors, "vigil_tpm:ak:"+akFP[:16]) {
		t.Fatalf("the attested agent, its selectors read back: %+v, %v", a, ok)
	}
	f.takeCalls()

	// Quarantined: banned, then its binding and aliases go and its record
	// comes.
	res, err := r.reconcileSubjects(ctx, qsnap, []topology.Subject{gw})
	if err != nil || res.Banned != 1 || res.Created != 1 || res.Deleted != 3 {
		t.Fatalf("quarantine: %+v, %v; want 1 banned, 1 created, 3 deleted", res, err)
	}
	calls := f.takeCalls()
	if i, j := callIndex(calls, "ban "+tpmAgentGwN), callIndex(calls, "create "+record); i < 0 || j < 0 || i > j {
		t.Errorf("quarantine: calls %q; want the ban, then the record", calls)
	}
	if !f.hasEntry(record) || f.hasEntry(binding) {
		t.Errorf("quarantine: record %v, binding %v", f.hasEntry(record), f.hasEntry(binding))
	}
	if res, err := r.Reconcile(ctx, qsnap); err != nil || res.Created+res.Updated+res.Deleted+res.Banned+res.Evicted+res.Failed != 0 {
		t.Errorf("full pass while quarantined: %+v, %v; want no change", res, err)
	}
	if c := changes(f.takeCalls()); len(c) != 0 {
		t.Errorf("full pass while quarantined: %q", c)
	}

	// Released, but the eviction fails: the pass fails before it deletes
	// the record; the agent stays banned.
	f.failEvict[tpmAgentGwN] = true
	if _, err := r.reconcileSubjects(ctx, snap, []topology.Subject{gw}); err == nil {
		t.Error("release with a failing eviction: no error")
	}
	if _, err := r.Reconcile(ctx, snap); err == nil {
		t.Error("release with a failing eviction, full pass: no error")
	}
	if calls := f.takeCalls(); slices.Contains(calls, "delete "+record) {
		t.Errorf("release with a failing eviction: calls %q deleted the record", calls)
	}
	if a, ok := f.agent(tpmAgentGwN); !ok || !a.Banned || !f.hasEntry(record) {
		t.Errorf("after a failed eviction: agent %+v (%v), record %v; want banned, and the record", a, ok, f.hasEntry(record))
	}

	// The eviction works: it comes before the record's deletion, in the
	// same pass.
	delete(f.failEvict, tpmAgentGwN)
	res, err = r.reconcileSubjects(ctx, snap, []topology.Subject{gw})
	if err != nil || res.Evicted != 1 || res.Deleted != 1 || res.Created != 3 || res.Failed != 0 {
		t.Fatalf("release: %+v, %v; want 1 evicted, 1 deleted (the record), 3 created", res, err)
	}
	calls = f.takeCalls()
	if i, j := callIndex(calls, "evict "+tpmAgentGwN), callIndex(calls, "delete "+record); i < 0 || j < 0 || i > j {
		t.Errorf("release: calls %q; want the eviction, then the record's deletion", calls)
	}
	if _, ok := f.agent(tpmAgentGwN); ok || f.hasEntry(record) || !f.hasEntry(binding) {
		t.Errorf("after the release: agent %v, record %v, binding %v", ok, f.hasEntry(record), f.hasEntry(binding))
	}
	// The agent attests afresh: nothing more to do.
	f.addAgent(tpmAgent(t, false, akFP))
	if res, err := r.Reconcile(ctx, snap); err != nil || res.Created+res.Updated+res.Deleted+res.Banned+res.Evicted+res.Failed != 0 {
		t.Errorf("after the agent attested afresh: %+v, %v; want no change", res, err)
	}

	// The same through full passes.
	if res, err := r.Reconcile(ctx, qsnap); err != nil || res.Banned != 1 || res.Created != 1 || res.Deleted != 3 {
		t.Errorf("quarantine, full pass: %+v, %v", res, err)
	}
	f.takeCalls()
	if res, err := r.Reconcile(ctx, snap); err != nil || res.Evicted != 1 || res.Deleted != 1 || res.Created != 3 {
		t.Errorf("release, full pass: %+v, %v", res, err)
	}
	calls = f.takeCalls()
	if i, j := callIndex(calls, "evict "+tpmAgentGwN), callIndex(calls, "delete "+record); i < 0 || j < 0 || i > j {
		t.Errorf("release, full pass: calls %q; want the eviction, then the record's deletion", calls)
	}
}

// TestTPMOperatorBanLeftAlone: an agent an operator banned (spire-server
// agent ban: no ban record) stays banned, whether its subject is fine,
// was quarantined and released by Vigil meanwhile, or left the topology;
// and the plan does not come back to it.
func TestTPMOperatorBanLeftAlone(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	f, cl := startFakeSPIRE(t, cityTD)
	r := fakeReconciler(t, cl)
	gw := topology.GatewaySubject("gw-n")
	mutate := tpmGateway(topology.SPIRERequired)
	snap := snapshotWith(t, mutate, map[topology.Subject]*topology.SubjectState{gw: tpmState(false, passedAt(now.Add(-time.Hour)), akFP)})
	f.addAgent(tpmAgent(t, true, akFP))
	for i := range 2 {
		if res, err := r.Reconcile(ctx, snap); err != nil || res.Banned+res.Evicted+res.Failed != 0 {
			t.Errorf("full pass %d: %+v, %v; want the banned agent left alone", i, res, err)
		}
		if res, err := r.reconcileSubjects(ctx, snap, []topology.Subject{gw}); err != nil || res.Banned+res.Evicted+res.Failed+res.Created+res.Deleted != 0 {
			t.Errorf("targeted pass %d: %+v, %v; want nothing", i, res, err)
		}
	}
	// Expired, failed, another AK: still not Vigil's to lift.
	stale := snapshotWith(t, mutate, map[topology.Subject]*topology.SubjectState{gw: tpmState(false, passedAt(now.Add(-48*time.Hour)), akFP2)})
	if res, err := r.Reconcile(ctx, stale); err != nil || res.Banned+res.Evicted+res.Failed != 0 {
		t.Errorf("stale attestation, new AK: %+v, %v; want the banned agent left alone", res, err)
	}
	// Removed from the topology: left banned too.
	removed := snapshotWith(t, both(tpmCameras, func(d *topology.Document) {
		d.Gateways = d.Gateways[1:]
		d.Devices = d.Devices[1:2]
	}), nil)
	if res, err := r.Reconcile(ctx, removed); err != nil || res.Banned+res.Evicted+res.Failed != 0 {
		t.Errorf("subject removed: %+v, %v; want the banned agent left alone", res, err)
	}
	if c := slices.DeleteFunc(changes(f.takeCalls()), func(c string) bool { return !strings.Contains(c, "/spire/agent/") }); len(c) != 0 {
		t.Errorf("calls on the agent: %q", c)
	}
	if a, ok := f.agent(tpmAgentGwN); !ok || !a.Banned {
		t.Errorf("the operator's ban: %+v, %v", a, ok)
	}
}

// TestTPMAgentsUntouchedWithoutTPMClass: a cluster none of whose classes
// sets attestation.spire neither lists nor touches vigil_tpm agents (they
// may be another cluster's on a shared SPIRE server), nor shows them; one
// that does evicts those it does not onboard.
func TestTPMAgentsUntouchedWithoutTPMClass(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	f, cl := startFakeSPIRE(t, cityTD)
	r := fakeReconciler(t, cl)
	f.addAgent(tpmAgent(t, false, akFP))
	f.addAgent(Agent{ID: tpmAgentC1, AttestationType: TPMAttestor, Banned: true})
	plain := snapshotWith(t, nil, nil)
	res, err := r.Reconcile(ctx, plain)
	if err != nil || res.Banned+res.Evicted+res.Failed != 0 {
		t.Errorf("no TPM class: %+v, %v; want the vigil_tpm agents left alone", res, err)
	}
	if calls := f.takeCalls(); slices.ContainsFunc(calls, func(c string) bool {
		return strings.Contains(c, "/spire/agent/") || strings.HasPrefix(c, "list agents of")
	}) {
		t.Errorf("no TPM class: calls %q", calls)
	}
	for kind, n := range map[topology.Kind]int{topology.KindGateway: 2, topology.KindDevice: 1} {
		list, err := r.Agents(ctx, plain, kind)
		if err != nil || len(list) != n {
			t.Fatalf("Agents(%s): %+v, %v", kind, list, err)
		}
		for _, sa := range list {
			if len(sa.Agents) != 0 {
				t.Errorf("Agents(%s), no TPM class: %s shows %+v", kind, sa.Subject, sa.Agents)
			}
		}
	}

	// The cameras onboard by TPM: gw-n, which does not, loses its agent;
	// c-1's banned agent has no ban record, so it stays banned.
	snap := snapshotWith(t, tpmCameras, nil)
	if res, err := r.Reconcile(ctx, snap); err != nil || res.Evicted != 1 || res.Banned+res.Failed != 0 {
		t.Errorf("cameras onboard by TPM: %+v, %v; want gw-n's agent evicted", res, err)
	}
	if calls := changes(f.takeCalls()); !slices.Contains(calls, "evict "+tpmAgentGwN) || slices.Contains(calls, "evict "+tpmAgentC1) {
		t.Errorf("cameras onboard by TPM: calls %q", calls)
	}
}

// TestTPMAgentEvictedOnNewAKOrExpiry: a full pass evicts an attested agent
// whose ak selector (read back from the server) is not the current
// enrollment's, or whose subject's attestation expired; not one that is
// current.
func TestTPMAgentEvictedOnNewAKOrExpiry(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	gw := topology.GatewaySubject("gw-n")
	mutate := tpmGateway(topology.SPIREOnboard)
	for _, tc := range []struct {
		name  string
		state *topology.SubjectState
		evict bool
	}{
		{"current", tpmState(false, passedAt(now.Add(-time.Hour)), akFP), false},
		{"AK enrolled again", tpmState(false, passedAt(now.Add(-time.Hour)), akFP2), true},
		{"attestation expired", tpmState(false, passedAt(now.Add(-25*time.Hour)), akFP), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, cl := startFakeSPIRE(t, cityTD)
			r := fakeReconciler(t, cl)
			f.addAgent(tpmAgent(t, false, akFP))
			res, err := r.Reconcile(ctx, snapshotWith(t, mutate, map[topology.Subject]*topology.SubjectState{gw: tc.state}))
			if err != nil || res.Evicted != map[bool]int{true: 1}[tc.evict] || res.Banned != 0 {
				t.Errorf("%+v, %v; want evicted %v", res, err, tc.evict)
			}
			if _, ok := f.agent(tpmAgentGwN); ok == tc.evict {
				t.Errorf("agent still there: %v", ok)
			}
		})
	}
}
