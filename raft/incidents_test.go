package raft

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// TestIncidentLifecycle: one unresolved incident per subject, updates
// append and move the status only along the allowed transitions, a
// guarded update refuses a status it did not expect, and incidents
// survive a snapshot.
func TestIncidentLifecycle(t *testing.T) {
	f := loadedFSM(t)
	idx := f.lastIndex + 1
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	apply := func(c incidentCmd) error {
		r := f.Apply(entry(t, idx, cmdIncident, c)).(Result)
		idx++
		return r.Err
	}
	inc := topology.Incident{ID: "inc-1", Subject: topology.DeviceSubject("dev-00001"), Status: topology.IncidentAwaiting,
		Mode: "approve", Title: "scan", OpenedAt: at, OpenedBy: "m1", Risk: 85,
		Findings: []topology.Finding{{ID: "f1", Subject: topology.DeviceSubject("dev-00001"), Detector: "denied-burst", Severity: "high", Score: 60, At: at}},
		Actions:  []topology.Action{{At: at, Name: "restrict", Outcome: topology.ActionOK, By: "monitor"}}}
	if err := apply(incidentCmd{Open: &inc}); err != nil {
		t.Fatal(err)
	}
	second := inc
	second.ID = "inc-2"
	var exists *IncidentExistsError
	if err := apply(incidentCmd{Open: &second}); !errors.As(err, &exists) || exists.ID != "inc-1" || !errors.Is(err, ErrRejected) {
		t.Fatalf("a second unresolved incident for the subject: %v", err)
	}
	unknown := inc
	unknown.ID, unknown.Subject = "inc-3", topology.DeviceSubject("nope")
	if err := apply(incidentCmd{Open: &unknown}); err == nil || !strings.Contains(err.Error(), "unknown device/nope") {
		t.Fatalf("incident for an unknown device: %v", err)
	}
	// Approve: awaiting → open, guarded.
	approve := IncidentUpdate{ID: "inc-1", Status: topology.IncidentOpen, From: []string{topology.IncidentAwaiting}, At: at.Add(time.Second),
		Actions: []topology.Action{{At: at.Add(time.Second), Name: "approve", Outcome: topology.ActionOK, By: "operator/alice"}}}
	if err := apply(incidentCmd{Update: &approve}); err != nil {
		t.Fatal(err)
	}
	if err := apply(incidentCmd{Update: &approve}); err == nil || !strings.Contains(err.Error(), "is open, not awaiting") {
		t.Fatalf("approving twice: %v", err)
	}
	back := IncidentUpdate{ID: "inc-1", Status: topology.IncidentAwaiting, At: at.Add(2 * time.Second)}
	if err := apply(incidentCmd{Update: &back}); err == nil || !strings.Contains(err.Error(), "cannot go from open to awaiting") {
		t.Fatalf("open → awaiting: %v", err)
	}
	resolve := IncidentUpdate{ID: "inc-1", Status: topology.IncidentResolved, At: at.Add(3 * time.Second),
		Actions: []topology.Action{{At: at.Add(3 * time.Second), Name: "resolve", Outcome: topology.ActionOK, By: "operator/alice"}}}
	if err := apply(incidentCmd{Update: &resolve}); err != nil {
		t.Fatal(err)
	}
	got := f.incidents.byID["inc-1"]
	if got.Status != topology.IncidentResolved || len(got.Actions) != 3 || !got.UpdatedAt.Equal(at.Add(3*time.Second)) {
		t.Fatalf("incident after resolve: %+v", got)
	}
	// Resolved: a new incident may open for the subject.
	if err := apply(incidentCmd{Open: &second}); err != nil {
		t.Fatal(err)
	}
	g := newFSM(quietLogger())
	if err := g.Restore(io.NopCloser(bytes.NewReader(persist(t, f)))); err != nil {
		t.Fatal(err)
	}
	if len(g.incidents.byID) != 2 || g.incidents.open[inc.Subject] != "inc-2" {
		t.Fatalf("restored incidents %v open %v", g.incidents.byID, g.incidents.open)
	}
	// Bad values are rejected before and after proposing.
	bad := inc
	bad.ID = "Bad ID"
	if err := checkIncident(&bad); err == nil {
		t.Fatal("an incident with a bad ID passed the check")
	}
	if err := apply(incidentCmd{Update: &IncidentUpdate{ID: "inc-2", At: at, Actions: []topology.Action{{Name: "x", At: at, Outcome: "maybe"}}}}); err == nil {
		t.Fatal("an action with an unknown outcome was applied")
	}
}

func TestResolvedIncidentsAreForgottenOldestFirst(t *testing.T) {
	in := newIncidents()
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	for i := range maxIncidents + 10 {
		id := "inc-" + strings.Repeat("0", 1) + string(rune('a'+i%26)) + "-" + itoa(i)
		status := topology.IncidentResolved
		if i == 0 {
			status = topology.IncidentOpen // never forgotten
		}
		in.byID[id] = &topology.Incident{ID: id, Status: status, OpenedAt: at}
		in.orders = append(in.orders, id)
		in.trim()
	}
	if len(in.byID) != maxIncidents || in.byID[in.orders[0]].Status != topology.IncidentOpen {
		t.Fatalf("%d incidents kept, first %+v", len(in.byID), in.byID[in.orders[0]])
	}
}

func itoa(i int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + i%10)}, b...)
		i /= 10
		if i == 0 {
			return string(b)
		}
	}
}
