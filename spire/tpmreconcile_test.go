package spire

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"slices"
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

func aliasID(kind, name, version string) string {
	sum := sha256.Sum256([]byte(version))
	return "vigil.agent." + kind + "." + name + ".fw-" + hex.EncodeToString(sum[:8])
}

const (
	tpmAgentGwN  = "spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-n"
	tpmAgentC1   = "spiffe://city.example/spire/agent/vigil_tpm/device/c-1"
	tpmAliasGwN  = "spiffe://city.example/vigil/tpm/gateway/gw-n"
	serverID     = "spiffe://city.example/spire/server"
	cameraC1     = "spiffe://city.example/zone/north/device/c-1"
	bindingHintV = "vigil.agent"
)

func tpmBinding(kind, name, spiffeID, parent string, ttl int32, selectors ...string) Entry {
	if len(selectors) == 0 {
		selectors = []string{"spiffe_id:" + parent}
	}
	return Entry{ID: "vigil.agent." + kind + "." + name + ".tpm", SPIFFEID: spiffeID, ParentID: parent, Selectors: selectors,
		X509TTL: ttl, Hint: bindingHintV}
}

func gwNAlias(version string) Entry {
	return Entry{ID: aliasID("gateway", "gw-n", version), SPIFFEID: tpmAliasGwN, ParentID: serverID, Hint: bindingHintV,
		Selectors: []string{"vigil_tpm:firmware:" + version, "vigil_tpm:kind:gateway", "vigil_tpm:subject:gw-n"}}
}

func TestDesiredTPM(t *testing.T) {
	sortByID := func(es ...Entry) []Entry {
		slices.SortFunc(es, func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })
		return es
	}
	tests := []struct {
		name        string
		mutate      func(*topology.Document)
		quarantined []topology.Subject
		opts        func(*Options)
		want        []Entry
	}{
		{name: "no class onboards by TPM: nothing"},
		{name: "onboard: the binding is parented to the agent",
			mutate: tpmGateway(topology.SPIREOnboard),
			want:   []Entry{tpmBinding("gateway", "gw-n", gwN, tpmAgentGwN, 900)}},
		{name: "required: the binding is parented to the node alias, one firmware alias per reference value",
			mutate: tpmGateway(topology.SPIRERequired),
			want: sortByID(tpmBinding("gateway", "gw-n", gwN, tpmAliasGwN, 900),
				gwNAlias("5.0.0"), gwNAlias("5.1.0"))},
		{name: "a version listed twice (two digests) has one alias",
			mutate: both(tpmGateway(topology.SPIRERequired), func(d *topology.Document) {
				c := &d.DeviceClasses[len(d.DeviceClasses)-1]
				c.Attestation.Firmware = append(c.Attestation.Firmware,
					topology.FirmwareRef{Version: "5.0.0", SHA256: "b" + fwSHA[1:]})
			}),
			want: sortByID(tpmBinding("gateway", "gw-n", gwN, tpmAliasGwN, 900),
				gwNAlias("5.0.0"), gwNAlias("5.1.0"))},
		{name: "agent devices of a TPM class: the device's TTL and agent selectors",
			mutate: tpmCameras,
			opts:   func(o *Options) { o.DeviceAgentSelectors = []string{"unix:uid:7"} },
			want:   []Entry{tpmBinding("device", "c-1", cameraC1, tpmAgentC1, 300, "unix:uid:7")}},
		{name: "a quarantined subject wants none of its TPM entries",
			mutate:      both(tpmGateway(topology.SPIRERequired), tpmCameras),
			quarantined: []topology.Subject{topology.GatewaySubject("gw-n")},
			want:        []Entry{tpmBinding("device", "c-1", cameraC1, tpmAgentC1, 300)}},
		{name: "a gateway's selectors label applies",
			mutate: both(tpmGateway(topology.SPIREOnboard), func(d *topology.Document) {
				d.Gateways[0].Labels = topology.Labels{SelectorsLabel: "unix:uid:101"}
			}),
			want: []Entry{tpmBinding("gateway", "gw-n", gwN, tpmAgentGwN, 900, "unix:uid:101")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, opts := fixture(t, tt.mutate, tt.opts, tt.quarantined...)
			got, errs := DesiredTPM(snap, opts)
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DesiredTPM:\n got %+v\nwant %+v", got, tt.want)
			}
			// They are bindings to the reconciler, and TPM entries among
			// them; never a subject's entry, nor in Desired.
			for _, e := range got {
				if _, ok := opts.bindingSubject(e.ID); !ok || !opts.tpmEntry(e.ID) {
					t.Errorf("%s: bindingSubject %v, tpmEntry %v", e.ID, ok, opts.tpmEntry(e.ID))
				}
				if _, ok := opts.subjectOf(e.ID); ok || opts.owns(e.ID) {
					t.Errorf("%s is read as a subject's entry", e.ID)
				}
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
	for id, want := range map[string]bool{
		o.tpmBindingID(gw):                      true,
		o.firmwareAliasID(gw, "5.0.0"):          true,
		"vigil.agent.gateway.gw-n.fw-whatever":  true, // an alias of another shape: Diff deletes it
		o.bindingID(gw, "0a1b2c3d"):             false,
		"vigil.agent.gateway.gw-n.n1":           false,
		"vigil.agent.service.telemetry.tpm":     false, // not a binding at all
		"vigil.gateway.gw-n.tpm":                false,
		"other.agent.gateway.gw-n.tpm":          false,
		"vigil.agent.gateway.gw-n.tpm.trailing": false,
	} {
		if got := o.tpmEntry(id); got != want {
			t.Errorf("tpmEntry(%q) = %v, want %v", id, got, want)
		}
	}
	if id := o.firmwareAliasID(gw, "5.0.0"); id != aliasID("gateway", "gw-n", "5.0.0") || len(id) != len("vigil.agent.gateway.gw-n.fw-")+16 {
		t.Errorf("firmwareAliasID = %q", id)
	}
	if s, ok := o.bindingSubject(o.firmwareAliasID(gw, "a version with spaces/and.dots")); !ok || s != gw {
		t.Errorf("a firmware alias's ID does not read back: %v %v", s, ok)
	}
	if !o.firmwareAlias(o.firmwareAliasID(gw, "1")) || o.firmwareAlias(o.tpmBindingID(gw)) {
		t.Error("firmwareAlias")
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
	quarantined := &topology.SubjectState{Quarantine: &topology.Quarantine{Reason: "test", By: "test", Since: time.Unix(1, 0)}}
	failed := &topology.SubjectState{Attestation: &topology.Attestation{Status: topology.AttestationFailed, Method: topology.AttestTPM2Quote,
		FirmwareVersion: "6.6.6", Reasons: []string{"firmware 6.6.6 is not a reference value"}}}
	passed := &topology.SubjectState{Attestation: &topology.Attestation{Status: topology.AttestationPassed, Method: topology.AttestTPM2Quote,
		FirmwareVersion: "5.0.0"}}
	failedAndQuarantined := &topology.SubjectState{Quarantine: quarantined.Quarantine, Attestation: failed.Attestation}
	agent := func(id string, banned bool) Agent {
		return Agent{ID: id, AttestationType: TPMAttestor, Banned: banned, CanReattest: true}
	}
	tpm := both(tpmGateway(topology.SPIRERequired), tpmCameras)
	tests := []struct {
		name   string
		mutate func(*topology.Document)
		states map[topology.Subject]*topology.SubjectState
		agents []Agent
		want   agentActions
	}{
		{name: "attested, nothing wrong: nothing to do", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: passed},
			agents: []Agent{agent(tpmAgentGwN, false), agent(tpmAgentC1, false)}},
		{name: "quarantined: banned", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: quarantined},
			agents: []Agent{agent(tpmAgentGwN, false), agent(tpmAgentC1, false)},
			want:   agentActions{Ban: []string{tpmAgentGwN}}},
		{name: "quarantined, already banned: nothing more", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: quarantined},
			agents: []Agent{agent(tpmAgentGwN, true)}},
		{name: "quarantined after a failure: banned, not evicted", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{gw: failedAndQuarantined},
			agents: []Agent{agent(tpmAgentGwN, false)},
			want:   agentActions{Ban: []string{tpmAgentGwN}}},
		{name: "released, agent banned: evicted, to attest afresh", mutate: tpm,
			agents: []Agent{agent(tpmAgentGwN, true)},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "latest attestation failed: evicted, to reattest now", mutate: tpm,
			states: map[topology.Subject]*topology.SubjectState{cam: failed},
			agents: []Agent{agent(tpmAgentGwN, false), agent(tpmAgentC1, false)},
			want:   agentActions{Evict: []string{tpmAgentC1}}},
		{name: "gateway removed from the topology: evicted", mutate: both(tpm, func(d *topology.Document) {
			d.Gateways = d.Gateways[1:]
			d.Devices = d.Devices[1:2]
		}),
			agents: []Agent{agent(tpmAgentGwN, false)},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "removed while banned: evicted too", mutate: both(tpm, func(d *topology.Document) {
			d.Gateways = d.Gateways[1:]
			d.Devices = d.Devices[1:2]
		}),
			states: map[topology.Subject]*topology.SubjectState{gw: quarantined},
			agents: []Agent{agent(tpmAgentGwN, true)},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "class no longer onboards by TPM: evicted", mutate: tpmCameras,
			agents: []Agent{agent(tpmAgentGwN, false), agent(tpmAgentC1, false)},
			want:   agentActions{Evict: []string{tpmAgentGwN}}},
		{name: "device class no longer runs agents: evicted", mutate: both(tpm, func(d *topology.Document) {
			d.DeviceClasses[1] = topology.DeviceClass{Name: "camera"}
		}),
			agents: []Agent{agent(tpmAgentC1, false)},
			want:   agentActions{Evict: []string{tpmAgentC1}}},
		{name: "other trust domains, attestors and shapes are left alone",
			agents: []Agent{
				agent("spiffe://other.example/spire/agent/vigil_tpm/gateway/gw-n", false),
				agent("spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-n/extra", false),
				{ID: tpmAgentGwN, AttestationType: "x509pop"},
				{ID: agentA, AttestationType: "join_token"},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := snapshotWith(t, tt.mutate, tt.states)
			if got := planTPMAgents(snap, tt.agents); !reflect.DeepEqual(got, tt.want) {
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
	tpmEntries := []Entry{tpmBinding("gateway", "gw-n", gwN, tpmAliasGwN, 900), gwNAlias("5.0.0")}

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
