package spire

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

const fwSHA = "a3f1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"

// tpmClass is a class whose subjects onboard with vigil_tpm in mode, with
// the given firmware reference values.
func tpmClass(name, identity, mode string, versions ...string) topology.DeviceClass {
	a := &topology.AttestationPolicy{MaxAge: "24h", SPIRE: mode}
	for _, v := range versions {
		a.Firmware = append(a.Firmware, topology.FirmwareRef{Version: v, SHA256: fwSHA})
	}
	return topology.DeviceClass{Name: name, Identity: identity, Attestation: a}
}

// tpmGateway makes gw-n a gateway of a class "edge-gw" onboarded by TPM
// in mode, with firmware 5.0.0 and 5.1.0.
func tpmGateway(mode string) func(*topology.Document) {
	return func(d *topology.Document) {
		d.DeviceClasses = append(d.DeviceClasses, tpmClass("edge-gw", "", mode, "5.0.0", "5.1.0"))
		d.Gateways[0].Class = "edge-gw"
	}
}

// tpmCameras makes the camera class (identity: agent) onboard by TPM.
func tpmCameras(d *topology.Document) {
	d.DeviceClasses[1] = tpmClass("camera", topology.IdentityAgent, topology.SPIREOnboard, "1.0.0")
}

func both(fs ...func(*topology.Document)) func(*topology.Document) {
	return func(d *topology.Document) {
		for _, f := range fs {
			f(d)
		}
	}
}

// aliasID is the ID of a firmware alias for the reference value
// (version, digest).
func aliasID(kind, name, version, digest string) string {
	sum := sha256.Sum256([]byte(digest + "/" + version))
	return "vigil.agent." + kind + "." + name + ".fw-" + hex.EncodeToString(sum[:8])
}

const (
	tpmAgentGwN  = "spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-n"
	tpmAgentC1   = "spiffe://city.example/spire/agent/vigil_tpm/device/c-1"
	tpmAliasGwN  = "spiffe://city.example/vigil/tpm/gateway/gw-n"
	serverID     = "spiffe://city.example/spire/server"
	cameraC1     = "spiffe://city.example/zone/north/device/c-1"
	bindingHintV = "vigil.agent"
	// akFP and akFP2 are enrollments' fingerprints (the hex SHA-256 of the
	// enrolled keys' DER): the AK, and another enrolled since.
	akFP  = "c0ffee00d15ea5e5aa11bb22cc33dd44ee55ff6600112233445566778899aabb"
	akFP2 = "5ca1ab1e0ddba11aaa11bb22cc33dd44ee55ff6600112233445566778899aabb"
)

func tpmBinding(kind, name, spiffeID, parent string, ttl int32, selectors ...string) Entry {
	if len(selectors) == 0 {
		selectors = []string{"spiffe_id:" + parent}
	}
	return Entry{ID: "vigil.agent." + kind + "." + name + ".tpm", SPIFFEID: spiffeID, ParentID: parent, Selectors: selectors,
		X509TTL: ttl, Hint: bindingHintV}
}

// gwNAlias is gw-n's firmware alias for version (with fwSHA, or digest)
// and the AK of enrollment fp.
func gwNAlias(version, fp string, digest ...string) Entry {
	d := fwSHA
	if len(digest) > 0 {
		d = digest[0]
	}
	return Entry{ID: aliasID("gateway", "gw-n", version, d), SPIFFEID: tpmAliasGwN, ParentID: serverID, Hint: bindingHintV,
		Selectors: normalize([]string{"vigil_tpm:firmware:" + version, "vigil_tpm:firmware-sha256:" + d, "vigil_tpm:kind:gateway",
			"vigil_tpm:subject:gw-n", "vigil_tpm:ak:" + fp[:16]})}
}

// banRecord is a subject's ban record.
func banRecord(kind, name string) Entry {
	return Entry{ID: "vigil.agent." + kind + "." + name + ".banned", SPIFFEID: "spiffe://city.example/vigil/tpm/banned/" + kind + "/" + name,
		ParentID: serverID, Hint: bindingHintV, Selectors: []string{"vigil_tpm:vigil-ban:" + kind + "/" + name}}
}

// tpmState builds a subject's runtime state: quarantined or not, its
// latest attestation (nil: none) and its enrollment's fingerprint ("":
// none).
func tpmState(quarantined bool, att *topology.Attestation, fp string) *topology.SubjectState {
	st := &topology.SubjectState{Attestation: att}
	if quarantined {
		st.Quarantine = &topology.Quarantine{Reason: "test", By: "test", Since: time.Unix(1, 0)}
	}
	if fp != "" {
		st.Enrollment = &topology.Enrollment{TPMAK: "(a PEM)", Fingerprint: fp, By: "test", At: time.Unix(1, 0)}
	}
	return st
}

// passedAt is a passed attestation of firmware 5.0.0 verified at t, for a
// day.
func passedAt(t time.Time) *topology.Attestation {
	return &topology.Attestation{Status: topology.AttestationPassed, Method: topology.AttestTPM2Quote, FirmwareVersion: "5.0.0",
		FirmwareSHA256: fwSHA, VerifiedAt: t, ExpiresAt: t.Add(24 * time.Hour)}
}

func TestDesiredTPM(t *testing.T) {
	gw, cam := topology.GatewaySubject("gw-n"), topology.DeviceSubject("c-1")
	sortByID := func(es ...Entry) []Entry {
		slices.SortFunc(es, func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })
		return es
	}
	enrolled := map[topology.Subject]*topology.SubjectState{gw: tpmState(false, nil, akFP), cam: tpmState(false, nil, akFP2)}
	tests := []struct {
		name   string
		mutate func(*topology.Document)
		states map[topology.Subject]*topology.SubjectState
		opts   func(*Options)
		want   []Entry
	}{
		{name: "no class onboards by TPM: nothing", states: enrolled},
		{name: "onboard: the binding is parented to the agent",
			mutate: tpmGateway(topology.SPIREOnboard), states: enrolled,
			want: []Entry{tpmBinding("gateway", "gw-n", gwN, tpmAgentGwN, 900)}},
		{name: "required: the binding is parented to the node alias, one firmware alias per reference value, naming the enrolled AK",
			mutate: tpmGateway(topology.SPIRERequired), states: enrolled,
			want: sortByID(tpmBinding("gateway", "gw-n", gwN, tpmAliasGwN, 900),
				gwNAlias("5.0.0", akFP), gwNAlias("5.1.0", akFP))},
		{name: "required, AK enrolled again: the aliases name the new one",
			mutate: tpmGateway(topology.SPIRERequired),
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(false, passedAt(now), akFP2)},
			want: sortByID(tpmBinding("gateway", "gw-n", gwN, tpmAliasGwN, 900),
				gwNAlias("5.0.0", akFP2), gwNAlias("5.1.0", akFP2))},
		{name: "required, no AK enrolled: the binding, no alias (no agent can attest)",
			mutate: tpmGateway(topology.SPIRERequired),
			want:   []Entry{tpmBinding("gateway", "gw-n", gwN, tpmAliasGwN, 900)}},
		{name: "a version listed with two digests has an alias for each",
			mutate: both(tpmGateway(topology.SPIRERequired), func(d *topology.Document) {
				c := &d.DeviceClasses[len(d.DeviceClasses)-1]
				c.Attestation.Firmware = append(c.Attestation.Firmware,
					topology.FirmwareRef{Version: "5.0.0", SHA256: "b" + fwSHA[1:]})
			}),
			states: enrolled,
			want: sortByID(tpmBinding("gateway", "gw-n", gwN, tpmAliasGwN, 900),
				gwNAlias("5.0.0", akFP), gwNAlias("5.1.0", akFP), gwNAlias("5.0.0", akFP, "b"+fwSHA[1:]))},
		{name: "a reference value listed twice has one alias",
			mutate: both(tpmGateway(topology.SPIRERequired), func(d *topology.Document) {
				c := &d.DeviceClasses[len(d.DeviceClasses)-1]
				c.Attestation.Firmware = append(c.Attestation.Firmware, topology.FirmwareRef{Version: "5.0.0", SHA256: fwSHA})
			}),
			states: enrolled,
			want: sortByID(tpmBinding("gateway", "gw-n", gwN, tpmAliasGwN, 900),
				gwNAlias("5.0.0", akFP), gwNAlias("5.1.0", akFP))},
		{name: "agent devices of a TPM class: the device's TTL and agent selectors",
			mutate: tpmCameras, states: enrolled,
			opts: func(o *Options) { o.DeviceAgentSelectors = []string{"unix:uid:7"} },
			want: []Entry{tpmBinding("device", "c-1", cameraC1, tpmAgentC1, 300, "unix:uid:7")}},
		{name: "a quarantined subject wants its ban record, and none of its other TPM entries",
			mutate: both(tpmGateway(topology.SPIRERequired), tpmCameras),
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(true, nil, akFP)},
			want:   []Entry{tpmBinding("device", "c-1", cameraC1, tpmAgentC1, 300), banRecord("gateway", "gw-n")}},
		{name: "a quarantined subject that does not onboard by TPM has no ban record",
			mutate: tpmCameras,
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(true, nil, akFP), cam: tpmState(true, nil, "")},
			want:   []Entry{banRecord("device", "c-1")}},
		{name: "a gateway's selectors label applies",
			mutate: both(tpmGateway(topology.SPIREOnboard), func(d *topology.Document) {
				d.Gateways[0].Labels = topology.Labels{SelectorsLabel: "unix:uid:101"}
			}),
			states: enrolled,
			want:   []Entry{tpmBinding("gateway", "gw-n", gwN, tpmAgentGwN, 900, "unix:uid:101")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := DefaultOptions()
			if tt.opts != nil {
				tt.opts(&opts)
			}
			if err := opts.Validate(); err != nil {
				t.Fatal(err)
			}
			snap := snapshotWith(t, tt.mutate, tt.states)
			got, errs := DesiredTPM(snap, opts)
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DesiredTPM:\n got %+v\nwant %+v", got, tt.want)
			}
			// They are bindings to the reconciler, and TPM entries among
			// them; never a subject's entry, nor in Desired, nor a
			// join-token binding.
			for _, e := range got {
				if _, ok := opts.bindingSubject(e.ID); !ok || !opts.tpmEntry(e.ID) {
					t.Errorf("%s: bindingSubject %v, tpmEntry %v", e.ID, ok, opts.tpmEntry(e.ID))
				}
				if _, ok := opts.subjectOf(e.ID); ok || opts.owns(e.ID) {
					t.Errorf("%s is read as a subject's entry", e.ID)
				}
			}
			if a := planBindings(snap, &opts, got, nil, now); a.Len() != 0 || len(a.Errors) != 0 {
				t.Errorf("planBindings on DesiredTPM's entries: %+v, want nothing", a)
			}
			desired, _ := Desired(snap, opts)
			for _, e := range desired {
				if opts.tpmEntry(e.ID) {
					t.Errorf("Desired has %s", e.ID)
				}
			}
		})
	}
}

func TestDesiredTPMBadLabel(t *testing.T) {
	snap, opts := fixture(t, both(tpmGateway(topology.SPIREOnboard), func(d *topology.Document) {
		d.Gateways[0].Labels = topology.Labels{SelectorsLabel: "nocolon"}
	}), nil)
	got, errs := DesiredTPM(snap, opts)
	if len(got) != 0 || len(errs) != 1 {
		t.Errorf("DesiredTPM with a bad selectors label: %+v, %v; want no entry and one error", got, errs)
	}
}

func TestTPMEntryIDs(t *testing.T) {
	o := DefaultOptions()
	gw := topology.GatewaySubject("gw-n")
	fw := topology.FirmwareRef{Version: "5.0.0", SHA256: fwSHA}
	for id, want := range map[string]bool{
		o.tpmBindingID(gw):                      true,
		o.firmwareAliasID(gw, fw):               true,
		o.banRecordID(gw):                       true,
		"vigil.agent.gateway.gw-n.fw-whatever":  true, // an alias of another shape: Diff deletes it
		o.bindingID(gw, "0a1b2c3d"):             false,
		"vigil.agent.gateway.gw-n.n1":           false,
		"vigil.agent.service.telemetry.tpm":     false, // not a binding at all
		"vigil.agent.service.telemetry.banned":  false,
		"vigil.gateway.gw-n.tpm":                false,
		"vigil.gateway.gw-n.banned":             false,
		"other.agent.gateway.gw-n.tpm":          false,
		"other.agent.gateway.gw-n.banned":       false,
		"vigil.agent.gateway.gw-n.tpm.trailing": false,
		"vigil.agent.gateway.gw-n.bannedx":      false,
	} {
		if got := o.tpmEntry(id); got != want {
			t.Errorf("tpmEntry(%q) = %v, want %v", id, got, want)
		}
	}
	if id := o.firmwareAliasID(gw, fw); id != aliasID("gateway", "gw-n", "5.0.0", fwSHA) || len(id) != len("vigil.agent.gateway.gw-n.fw-")+16 {
		t.Errorf("firmwareAliasID = %q", id)
	}
	if o.firmwareAliasID(gw, fw) == o.firmwareAliasID(gw, topology.FirmwareRef{Version: "5.0.0", SHA256: "b" + fwSHA[1:]}) {
		t.Error("two digests of a version have the same alias ID")
	}
	if s, ok := o.bindingSubject(o.firmwareAliasID(gw, topology.FirmwareRef{Version: "a version with spaces/and.dots", SHA256: fwSHA})); !ok || s != gw {
		t.Errorf("a firmware alias's ID does not read back: %v %v", s, ok)
	}
	if s, ok := o.bindingSubject(o.banRecordID(gw)); !ok || s != gw || o.banRecordID(gw) != "vigil.agent.gateway.gw-n.banned" {
		t.Errorf("a ban record's ID %q does not read back: %v %v", o.banRecordID(gw), s, ok)
	}
	if !o.firmwareAlias(o.firmwareAliasID(gw, fw)) || o.firmwareAlias(o.tpmBindingID(gw)) || o.firmwareAlias(o.banRecordID(gw)) {
		t.Error("firmwareAlias")
	}
	if !o.banRecord(o.banRecordID(gw)) || o.banRecord(o.tpmBindingID(gw)) || o.banRecord(o.firmwareAliasID(gw, fw)) || o.banRecord("vigil.gateway.gw-n.banned") {
		t.Error("banRecord")
	}
	if got := TPMBanRecordID("city.example", gw); got != "spiffe://city.example/vigil/tpm/banned/gateway/gw-n" {
		t.Errorf("TPMBanRecordID = %q", got)
	}

	for id, want := range map[string]topology.Subject{
		tpmAgentGwN: gw,
		tpmAgentC1:  topology.DeviceSubject("c-1"),
		TPMAgentID("city.example", topology.DeviceSubject("x")): topology.DeviceSubject("x"),
	} {
		if s, ok := tpmAgentSubject("city.example", id); !ok || s != want {
			t.Errorf("tpmAgentSubject(%q) = %v, %v; want %v", id, s, ok, want)
		}
	}
	for _, id := range []string{
		"spiffe://other.example/spire/agent/vigil_tpm/gateway/gw-n",
		"spiffe://city.example/spire/agent/join_token/gateway/gw-n",
		"spiffe://city.example/spire/agent/vigil_tpm/service/telemetry",
		"spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-n/x",
		"spiffe://city.example/spire/agent/vigil_tpm/gateway/",
		agentA,
	} {
		if s, ok := tpmAgentSubject("city.example", id); ok {
			t.Errorf("tpmAgentSubject(%q) = %v, want none", id, s)
		}
	}
}

func TestTPMSelectorValues(t *testing.T) {
	snap := snapshotWith(t, both(tpmGateway(topology.SPIRERequired), tpmCameras), nil)
	ix := snap.Index()
	got, ok := TPMSelectorValues(ix, topology.GatewaySubject("gw-n"), passedAt(now), akFP)
	want := []string{"ak:" + akFP[:16], "class:edge-gw", "firmware-sha256:" + fwSHA, "firmware:5.0.0", "kind:gateway", "subject:gw-n", "zone:north"}
	if !ok || !slices.Equal(got, want) {
		t.Errorf("TPMSelectorValues(gw-n) = %q, %v; want %q", got, ok, want)
	}
	if !slices.IsSorted(got) {
		t.Errorf("not sorted: %q", got)
	}
	// An alias's selectors are a subset of those of an agent that
	// attested with its reference value and the enrolled AK.
	alias := gwNAlias("5.0.0", akFP)
	for _, sel := range alias.Selectors {
		if !slices.Contains(got, strings.TrimPrefix(sel, TPMAttestor+":")) {
			t.Errorf("the alias's selector %s is not among the agent's %q", sel, got)
		}
	}
	if _, ok := TPMSelectorValues(ix, topology.GatewaySubject("nope"), passedAt(now), akFP); ok {
		t.Error("TPMSelectorValues of a subject not in the document")
	}
	if got := TPMAKSelectorValue(akFP); got != "c0ffee00d15ea5e5" {
		t.Errorf("TPMAKSelectorValue = %q", got)
	}
}

// snapshotWith is the fixture's snapshot with runtime states.
func snapshotWith(t *testing.T, mutate func(*topology.Document), states map[topology.Subject]*topology.SubjectState) *topology.Snapshot {
	t.Helper()
	doc := testDoc()
	if mutate != nil {
		mutate(doc)
	}
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	return topology.NewSnapshot(7, 5, ix, topology.NewState().With(states))
}

func TestPlanTPMAgents(t *testing.T) {
	gw, cam := topology.GatewaySubject("gw-n"), topology.DeviceSubject("c-1")
	failedAtt := &topology.Attestation{Status: topology.AttestationFailed, Method: topology.AttestTPM2Quote, VerifiedAt: now.Add(-time.Minute),
		ExpiresAt: now.Add(time.Hour), FirmwareVersion: "6.6.6", Reasons: []string{"firmware 6.6.6 is not a reference value"}}
	fresh := passedAt(now.Add(-time.Hour))
	expired := passedAt(now.Add(-25 * time.Hour))
	passed := tpmState(false, fresh, akFP)
	quarantined := tpmState(true, fresh, akFP)
	// agent is an attested agent whose selectors name the AK of fp.
	agent := func(id string, banned bool, fp string) Agent {
		a := Agent{ID: id, AttestationType: TPMAttestor, Banned: banned, CanReattest: true}
		if fp != "" {
			a.Selectors = []string{"vigil_tpm:ak:" + fp[:16], "vigil_tpm:firmware:5.0.0", "vigil_tpm:kind:x"}
		}
		return a
	}
	tpm := both(tpmGateway(topology.SPIRERequired), tpmCameras)
	removeGwN := both(tpm, func(d *topology.Document) {
		d.Gateways = d.Gateways[1:]
		d.Devices = d.Devices[1:2]
	})
	healthy := map[topology.Subject]*topology.SubjectState{gw: passed, cam: passed}
	record := map[topology.Subject]bool{gw: true}
	tests := []struct {
		name   string
		mutate func(*topology.Document)
		states map[topology.Subject]*topology.SubjectState
		agents []Agent
		// records are the subjects with a ban record.
		records map[topology.Subject]bool
		want    agentActions
	}{
		{name: "attested, nothing wrong: nothing to do", mutate: tpm, states: healthy,
			agents: []Agent{agent(tpmAgentGwN, false, akFP), agent(tpmAgentC1, false, akFP)}},
		{name: "quarantined: banned", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: quarantined, cam: passed},
			agents: []Agent{agent(tpmAgentGwN, false, akFP), agent(tpmAgentC1, false, akFP)},
			want:   agentActions{Ban: []string{tpmAgentGwN}}},
		{name: "quarantined, already banned by Vigil: nothing more", mutate: tpm,
			states:  map[topology.Subject]*topology.SubjectState{gw: quarantined},
			agents:  []Agent{agent(tpmAgentGwN, true, akFP)},
			records: record},
		{name: "quarantined, banned by an operator: nothing more", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: quarantined},
			agents: []Agent{agent(tpmAgentGwN, true, akFP)}},
		{name: "quarantined after a failure: banned, not evicted", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(true, failedAtt, akFP)},
			agents: []Agent{agent(tpmAgentGwN, false, akFP)},
			want:   agentActions{Ban: []string{tpmAgentGwN}}},
		{name: "released, banned by Vigil (its record): evicted, to attest afresh", mutate: tpm, states: healthy,
			agents:  []Agent{agent(tpmAgentGwN, true, akFP)},
			records: record,
			want:    agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "released, banned by an operator (no record): left banned", mutate: tpm, states: healthy,
			agents: []Agent{agent(tpmAgentGwN, true, akFP)}},
		{name: "banned by an operator, never quarantined, whatever its attestation: left banned", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(false, failedAtt, akFP2), cam: tpmState(false, expired, akFP)},
			agents: []Agent{agent(tpmAgentGwN, true, akFP), agent(tpmAgentC1, true, "")}},
		{name: "another subject's record lifts no ban", mutate: tpm, states: healthy,
			agents:  []Agent{agent(tpmAgentC1, true, akFP)},
			records: record},
		{name: "latest attestation failed: evicted, to reattest now", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: passed, cam: tpmState(false, failedAtt, akFP)},
			agents: []Agent{agent(tpmAgentGwN, false, akFP), agent(tpmAgentC1, false, akFP)},
			want:   agentActions{Evict: []string{tpmAgentC1}}},
		{name: "latest attestation expired (maxAge): evicted, to reattest now", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(false, expired, akFP), cam: passed},
			agents: []Agent{agent(tpmAgentGwN, false, akFP), agent(tpmAgentC1, false, akFP)},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "an attestation that expires right now is still current", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(false, passedAt(now.Add(-24*time.Hour)), akFP)},
			agents: []Agent{agent(tpmAgentGwN, false, akFP)}},
		{name: "no attestation recorded: evicted", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(false, nil, akFP)},
			agents: []Agent{agent(tpmAgentGwN, false, akFP)},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "AK enrolled again: the agent attested with the old one is evicted", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(false, fresh, akFP2), cam: passed},
			agents: []Agent{agent(tpmAgentGwN, false, akFP), agent(tpmAgentC1, false, akFP)},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "an agent without an ak selector is evicted", mutate: tpm, states: healthy,
			agents: []Agent{agent(tpmAgentGwN, false, "")},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "no enrollment: evicted", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: tpmState(false, fresh, "")},
			agents: []Agent{agent(tpmAgentGwN, false, ""), agent(tpmAgentC1, false, "")},
			want:   agentActions{Evict: []string{tpmAgentGwN, tpmAgentC1}}},
		{name: "gateway removed from the topology: evicted", mutate: removeGwN,
			agents: []Agent{agent(tpmAgentGwN, false, akFP)},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "removed while banned by Vigil: evicted too", mutate: removeGwN,
			agents:  []Agent{agent(tpmAgentGwN, true, akFP)},
			records: record,
			want:    agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "removed while banned by an operator: left banned", mutate: removeGwN,
			agents: []Agent{agent(tpmAgentGwN, true, akFP)}},
		{name: "class no longer onboards by TPM: evicted", mutate: tpmCameras, states: healthy,
			agents: []Agent{agent(tpmAgentGwN, false, akFP), agent(tpmAgentC1, false, akFP)},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "device class no longer runs agents: evicted", mutate: both(tpm, func(d *topology.Document) {
			d.DeviceClasses[1] = topology.DeviceClass{Name: "camera"}
		}), states: healthy,
			agents: []Agent{agent(tpmAgentC1, false, akFP)},
			want:   agentActions{Evict: []string{tpmAgentC1}}},
		{name: "other trust domains, attestors and shapes are left alone", mutate: tpm,
			agents: []Agent{
				agent("spiffe://other.example/spire/agent/vigil_tpm/gateway/gw-n", false, ""),
				agent("spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-n/extra", false, ""),
				{ID: tpmAgentGwN, AttestationType: "x509pop"},
				{ID: agentA, AttestationType: "join_token"},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := snapshotWith(t, tt.mutate, tt.states)
			if got := planTPMAgents(snap, tt.agents, tt.records, now); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("planTPMAgents:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestPlanBindingsSwitchToTPM: when a class switches to TPM, the join-token
// bindings of its subjects are deleted and their agents evicted; TPM
// entries are not join-token bindings.
func TestPlanBindingsSwitchToTPM(t *testing.T) {
	bound := gatewayBinding("gw-n", gwN, agentA)
	camera := Entry{ID: "vigil.agent.device.c-1.0a1b2c3d", SPIFFEID: cameraC1, ParentID: agentB,
		Selectors: []string{"spiffe_id:" + agentB}, X509TTL: 300, Hint: "vigil.agent"}
	attested := map[string]*Agent{agentA: {ID: agentA}, agentB: {ID: agentB}}
	tpmEntries := []Entry{tpmBinding("gateway", "gw-n", gwN, tpmAliasGwN, 900), gwNAlias("5.0.0", akFP), banRecord("gateway", "gw-n")}

	snap, opts := fixture(t, both(tpmGateway(topology.SPIRERequired), tpmCameras), nil)
	got := planBindings(snap, &opts, append([]Entry{bound, camera}, tpmEntries...), attested, now)
	want := agentActions{Delete: []string{bound.ID, camera.ID}, Evict: []string{agentA, agentB}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("switched to TPM:\n got %+v\nwant %+v", got, want)
	}
	// Not attested yet (the token unused): the binding goes all the same.
	if got := planBindings(snap, &opts, []Entry{bound}, nil, now); !reflect.DeepEqual(got, agentActions{Delete: []string{bound.ID}}) {
		t.Errorf("switched to TPM, token unused: %+v", got)
	}
	// Quarantined and switched: the banned token agent is evicted (its
	// token is spent; it cannot come back).
	qsnap, _ := fixture(t, tpmGateway(topology.SPIREOnboard), nil, topology.GatewaySubject("gw-n"))
	if got := planBindings(qsnap, &opts, []Entry{bound}, map[string]*Agent{agentA: {ID: agentA, Banned: true}}, now); !reflect.DeepEqual(got,
		agentActions{Delete: []string{bound.ID}, Evict: []string{agentA}}) {
		t.Errorf("quarantined and switched to TPM: %+v", got)
	}
	// Without the switch the TPM entries are still nobody's join-token
	// bindings.
	plain, popts := fixture(t, nil, nil)
	if got := planBindings(plain, &popts, tpmEntries, nil, now); got.Len() != 0 || len(got.Errors) != 0 {
		t.Errorf("planBindings on TPM entries: %+v, want nothing", got)
	}
}

func TestOnboardRefusesTPMSubjects(t *testing.T) {
	snap, opts := fixture(t, both(tpmGateway(topology.SPIRERequired), tpmCameras), nil)
	// The refusal comes before any call to the server.
	r, err := NewReconciler(Config{Client: &Client{}, Options: opts, IsLeader: func() bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	for s, msg := range map[topology.Subject]string{
		topology.GatewaySubject("gw-n"): "gateway gw-n onboards with vigil_tpm (class edge-gw, attestation.spire: required); join tokens are for gateways without a TPM",
		topology.DeviceSubject("c-1"):   "device c-1 onboards with vigil_tpm (class camera, attestation.spire: onboard); join tokens are for devices without a TPM",
	} {
		_, err := r.Onboard(context.Background(), snap, s, 0)
		if !errors.Is(err, ErrTPMOnboarded) || err.Error() != msg {
			t.Errorf("Onboard(%s): %v, want %q (ErrTPMOnboarded)", s, err, msg)
		}
		if errors.Is(err, ErrNoAgent) || errors.Is(err, ErrQuarantined) {
			t.Errorf("Onboard(%s): %v matches another error", s, err)
		}
	}
}
