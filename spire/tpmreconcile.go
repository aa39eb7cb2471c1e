package spire

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"github.com/vigil-iot/vigil/topology"
)

// A subject onboarded by TPM (a gateway, or a device of an "identity:
// agent" class, whose class sets attestation.spire) joins SPIRE through the
// vigil_tpm node attestor: its agent's ID is TPMAgentID, known in advance,
// so unlike a join-token binding the reconciler creates its entries itself
// from the document (DesiredTPM) and keeps them with Diff. They carry the
// binding hint, so that bindingSubject reads their subject back, and end
// in a suffix no join-token binding has (those end in 8 hex digits):
//
//   - "<Owner>.agent.<kind>.<name>.tpm", the binding: the subject's SPIFFE
//     ID, parented to TPMAgentID (attestation.spire: onboard) or to
//     TPMNodeAliasID (required);
//   - "<Owner>.agent.<kind>.<name>.fw-<16 hex>" (required only), one
//     firmware alias per reference value of the class: the node alias
//     TPMNodeAliasID, held by the subject's agent while its node selectors
//     name that (verified) firmware.
//
// See docs/decisions/0011-spire-tpm-node-attestor.md §6.

// Suffixes of the entry IDs of TPM-onboarded subjects.
const (
	tpmBindingSuffix     = "tpm"
	firmwareAliasPrefix  = "fw-"
	firmwareAliasHexSize = 16
)

// onboardsByTPM reports whether s joins SPIRE through vigil_tpm: s may run
// an agent of its own, and its class sets attestation.spire.
func onboardsByTPM(ix *topology.Index, s topology.Subject) bool {
	return bindable(ix, s) == nil && ix.ClassOf(s).SPIRETPM()
}

// tpmBindingID is the ID of s's TPM binding.
func (o *Options) tpmBindingID(s topology.Subject) string { return o.bindingID(s, tpmBindingSuffix) }

// firmwareAliasID is the ID of s's firmware alias for version: the first
// 16 hex digits of its SHA-256 (a version is free text; an entry ID is not).
func (o *Options) firmwareAliasID(s topology.Subject, version string) string {
	sum := sha256.Sum256([]byte(version))
	return o.bindingID(s, firmwareAliasPrefix+hex.EncodeToString(sum[:])[:firmwareAliasHexSize])
}

// tpmEntry reports whether id, an entry ID with the binding hint, is one of
// a TPM-onboarded subject's entries (its binding or a firmware alias)
// rather than a join-token binding. Any "fw-" suffix counts, so that an
// alias Vigil no longer wants is deleted whatever its shape.
func (o *Options) tpmEntry(id string) bool {
	if _, ok := o.bindingSubject(id); !ok {
		return false
	}
	last := id[strings.LastIndexByte(id, '.')+1:]
	return last == tpmBindingSuffix || strings.HasPrefix(last, firmwareAliasPrefix)
}

// firmwareAlias reports whether id is a firmware alias's.
func (o *Options) firmwareAlias(id string) bool {
	return o.tpmEntry(id) && strings.HasPrefix(id[strings.LastIndexByte(id, '.')+1:], firmwareAliasPrefix)
}

// splitTPM separates the TPM-onboarded subjects' entries from the
// join-token bindings, among entries with the binding hint.
func (o *Options) splitTPM(entries []Entry) (tokens, tpm []Entry) {
	for _, e := range entries {
		if o.tpmEntry(e.ID) {
			tpm = append(tpm, e)
		} else {
			tokens = append(tokens, e)
		}
	}
	return tokens, tpm
}

// tpmAgentSubject reads the subject back from an agent ID TPMAgentID made
// in trustDomain; ok is false for any other ID (another trust domain,
// another attestor).
func tpmAgentSubject(trustDomain, agentID string) (topology.Subject, bool) {
	rest, ok := strings.CutPrefix(agentID, "spiffe://"+trustDomain+"/spire/agent/"+TPMAttestor+"/")
	if !ok {
		return topology.Subject{}, false
	}
	kind, name, ok := strings.Cut(rest, "/")
	if !ok || !topology.IsName(name) {
		return topology.Subject{}, false
	}
	switch kind {
	case "gateway":
		return topology.GatewaySubject(name), true
	case "device":
		return topology.DeviceSubject(name), true
	}
	return topology.Subject{}, false
}

// DesiredTPM computes the entries that the subjects onboarded by vigil_tpm
// want (see above), sorted by ID: for each such subject that is not
// quarantined, its binding and, with attestation.spire: required, one
// firmware alias per reference value of its class. A quarantined subject
// wants none: its binding goes, and its agent is banned (planTPMAgents).
// A subject whose SelectorsLabel does not parse gets no entry and an
// error.
func DesiredTPM(snap *topology.Snapshot, opts Options) ([]Entry, []error) {
	ix := snap.Index()
	var out []Entry
	var errs []error
	add := func(s topology.Subject) {
		es, err := desiredTPMFor(snap, s, &opts)
		if err != nil {
			errs = append(errs, err)
		}
		out = append(out, es...)
	}
	for _, g := range ix.Gateways() {
		add(topology.GatewaySubject(g.Name))
	}
	// Devices only when some class onboards its devices by TPM: the
	// common case is none, and there may be a million devices.
	if slices.ContainsFunc(ix.Document().DeviceClasses, func(dc topology.DeviceClass) bool {
		c, _ := ix.Class(dc.Name)
		return c.SPIRETPM() && c.OwnAgent()
	}) {
		for _, d := range ix.Devices() {
			add(topology.DeviceSubject(d.Name))
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })
	return out, errs
}

// desiredTPMFor is the entries one subject wants as DesiredTPM computes
// them: none unless it onboards by TPM and is not quarantined.
func desiredTPMFor(snap *topology.Snapshot, s topology.Subject, o *Options) ([]Entry, error) {
	ix := snap.Index()
	if !onboardsByTPM(ix, s) || snap.Quarantined(s) {
		return nil, nil
	}
	td := ix.TrustDomain()
	c := ix.ClassOf(s)
	required := c.Attestation.SPIRE == topology.SPIRERequired
	parent := TPMAgentID(td, s)
	if required {
		parent = TPMNodeAliasID(td, s)
	}
	b, err := bindingFor(ix, s, o.tpmBindingID(s), parent, o)
	if err != nil {
		return nil, err
	}
	out := []Entry{b}
	if !required {
		return out, nil
	}
	alias := TPMNodeAliasID(td, s)
	for _, fw := range c.Attestation.Firmware {
		id := o.firmwareAliasID(s, fw.Version)
		if slices.ContainsFunc(out, func(e Entry) bool { return e.ID == id }) {
			continue // the same version twice (two digests)
		}
		out = append(out, Entry{ID: id, SPIFFEID: alias, ParentID: ServerID(td), Hint: o.bindingHint(),
			Selectors: normalize([]string{TPMSelector("kind", s.Kind.String()), TPMSelector("subject", s.Name), TPMSelector("firmware", fw.Version)})})
	}
	return out, nil
}

// planTPMAgents decides what to do with the agents attested by vigil_tpm
// (agents may hold others: they are left alone, as are those of another
// trust domain than the document's):
//   - an agent whose subject left the topology, or no longer onboards by
//     TPM, is evicted (its entries go through DesiredTPM's Diff);
//   - a quarantined subject's agent is banned (the attestor also refuses a
//     quarantined subject, so it could not attest again anyway);
//   - once the subject is released, its banned agent is evicted: SPIRE
//     cannot lift a ban, and the agent, which exited when banned, attests
//     afresh when restarted (no token needed);
//   - an agent whose subject's latest attestation failed is evicted, which
//     forces a reattestation now rather than when the agent's SVID
//     expires (a refused reattestation leaves SPIRE's record, its old
//     selectors and the agent's SVID as they were). It is evicted whatever
//     the time of the failure: SPIRE does not say when an agent last
//     attested, and need not. Every attestation through vigil_tpm records
//     its result before SPIRE sees it, so while the latest result is a
//     failure no agent has attested since; once evicted, the agent either
//     attests again, which records "passed" (or "failed", and leaves no
//     agent), or exits. Either way the next plan has nothing to do: the
//     plan converges. At worst a pass working from a snapshot older than
//     a pass evicts a freshly reattested agent, which attests once more.
func planTPMAgents(snap *topology.Snapshot, agents []Agent) agentActions {
	ix := snap.Index()
	td := ix.TrustDomain()
	var a agentActions
	for i := range agents {
		ag := &agents[i]
		s, ok := tpmAgentSubject(td, ag.ID)
		if !ok || ag.AttestationType != TPMAttestor {
			continue
		}
		switch {
		case !onboardsByTPM(ix, s):
			a.Evict = append(a.Evict, ag.ID)
		case snap.Quarantined(s):
			if !ag.Banned {
				a.Ban = append(a.Ban, ag.ID)
			}
		case ag.Banned:
			a.Evict = append(a.Evict, ag.ID)
		case lastAttestationFailed(snap, s):
			a.Evict = append(a.Evict, ag.ID)
		}
	}
	return a
}

func lastAttestationFailed(snap *topology.Snapshot, s topology.Subject) bool {
	st := snap.SubjectState(s)
	return st != nil && st.Attestation.Failed()
}

// add appends b's actions to a's.
func (a *agentActions) add(b agentActions) {
	a.Update = append(a.Update, b.Update...)
	a.Delete = append(a.Delete, b.Delete...)
	a.Ban = append(a.Ban, b.Ban...)
	a.Evict = append(a.Evict, b.Evict...)
	a.Errors = append(a.Errors, b.Errors...)
}
