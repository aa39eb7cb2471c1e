package spire

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"time"

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
//     firmware alias per reference value of the class (version and
//     digest): the node alias TPMNodeAliasID, held by the subject's agent
//     while its node selectors name that (verified) firmware and the
//     subject's currently enrolled AK;
//   - "<Owner>.agent.<kind>.<name>.banned", the ban record, while the
//     subject is quarantined: Vigil's note that the subject's agent is
//     banned by Vigil, so that a release evicts it (SPIRE cannot lift a
//     ban) while a ban an operator made with spire-server agent ban, which
//     leaves no record, is left alone. Its SPIFFE ID is TPMBanRecordID,
//     its parent ServerID, and its one selector is one no attestor
//     produces: it aliases no agent and gives nothing.
//
// See docs/decisions/0011-spire-tpm-node-attestor.md §6.

// Suffixes of the entry IDs of TPM-onboarded subjects.
const (
	tpmBindingSuffix     = "tpm"
	banRecordSuffix      = "banned"
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

// banRecordID is the ID of s's ban record.
func (o *Options) banRecordID(s topology.Subject) string { return o.bindingID(s, banRecordSuffix) }

// firmwareAliasID is the ID of s's firmware alias for the reference value
// fw: the first 16 hex digits of the SHA-256 of its digest and version (a
// version is free text; an entry ID is not). The digest comes first: it
// is 64 hex digits, so the two cannot run into each other.
func (o *Options) firmwareAliasID(s topology.Subject, fw topology.FirmwareRef) string {
	sum := sha256.Sum256([]byte(fw.SHA256 + "/" + fw.Version))
	return o.bindingID(s, firmwareAliasPrefix+hex.EncodeToString(sum[:])[:firmwareAliasHexSize])
}

// tpmKind is the last part of id when id, an entry ID with the binding
// hint, is one of a TPM-onboarded subject's entries (its binding, a
// firmware alias or its ban record) rather than a join-token binding. Any
// "fw-" suffix counts, so that an alias Vigil no longer wants is deleted
// whatever its shape.
func (o *Options) tpmKind(id string) (string, bool) {
	if _, ok := o.bindingSubject(id); !ok {
		return "", false
	}
	last := id[strings.LastIndexByte(id, '.')+1:]
	return last, last == tpmBindingSuffix || last == banRecordSuffix || strings.HasPrefix(last, firmwareAliasPrefix)
}

// tpmEntry reports whether id is one of a TPM-onboarded subject's entries.
func (o *Options) tpmEntry(id string) bool { _, ok := o.tpmKind(id); return ok }

// firmwareAlias reports whether id is a firmware alias's.
func (o *Options) firmwareAlias(id string) bool {
	k, ok := o.tpmKind(id)
	return ok && strings.HasPrefix(k, firmwareAliasPrefix)
}

// banRecord reports whether id is a ban record's.
func (o *Options) banRecord(id string) bool {
	k, ok := o.tpmKind(id)
	return ok && k == banRecordSuffix
}

// banRecords are the subjects that have a ban record among entries (the
// TPM entries the server holds).
func (o *Options) banRecords(entries []Entry) map[topology.Subject]bool {
	out := make(map[topology.Subject]bool)
	for _, e := range entries {
		if o.banRecord(e.ID) {
			s, _ := o.bindingSubject(e.ID)
			out[s] = true
		}
	}
	return out
}

// usesTPM reports whether some class of the document sets
// attestation.spire. Only then does the reconciler touch the agents
// attested by vigil_tpm: their IDs carry no owner, and a cluster that
// does not use vigil_tpm leaves alone those of another cluster sharing
// the SPIRE server (only one of them may use it, see Options.Owner).
func usesTPM(ix *topology.Index) bool {
	return slices.ContainsFunc(ix.Document().DeviceClasses, func(dc topology.DeviceClass) bool {
		c, _ := ix.Class(dc.Name)
		return c.SPIRETPM()
	})
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
// quarantined, its binding and, with attestation.spire: required and an
// enrolled AK, one firmware alias per reference value of its class. A
// quarantined subject wants only its ban record: its binding goes, and its
// agent is banned (planTPMAgents). A subject whose SelectorsLabel does not
// parse gets no entry and an error.
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
// them: none unless it onboards by TPM, and only its ban record while it
// is quarantined.
func desiredTPMFor(snap *topology.Snapshot, s topology.Subject, o *Options) ([]Entry, error) {
	ix := snap.Index()
	if !onboardsByTPM(ix, s) {
		return nil, nil
	}
	td := ix.TrustDomain()
	if snap.Quarantined(s) {
		return []Entry{{ID: o.banRecordID(s), SPIFFEID: TPMBanRecordID(td, s), ParentID: ServerID(td), Hint: o.bindingHint(),
			Selectors: []string{TPMSelector("vigil-ban", s.Kind.String()+"/"+s.Name)}}}, nil
	}
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
	// The aliases name the enrolled AK: an agent attested with an AK
	// since replaced loses the subject's identities at once (and is
	// evicted). With no AK enrolled no agent can attest: no alias.
	ak := TPMAKSelectorValue(enrolledFingerprint(snap, s))
	if ak == "" {
		return out, nil
	}
	alias := TPMNodeAliasID(td, s)
	for _, fw := range c.Attestation.Firmware {
		id := o.firmwareAliasID(s, fw)
		if slices.ContainsFunc(out, func(e Entry) bool { return e.ID == id }) {
			continue // the same reference value twice
		}
		out = append(out, Entry{ID: id, SPIFFEID: alias, ParentID: ServerID(td), Hint: o.bindingHint(),
			Selectors: normalize([]string{TPMSelector("kind", s.Kind.String()), TPMSelector("subject", s.Name),
				TPMSelector("firmware", fw.Version), TPMSelector("firmware-sha256", fw.SHA256), TPMSelector("ak", ak)})})
	}
	return out, nil
}

// enrolledFingerprint is the Fingerprint of s's enrollment ("" without
// one).
func enrolledFingerprint(snap *topology.Snapshot, s topology.Subject) string {
	if st := snap.SubjectState(s); st != nil && st.Enrollment != nil {
		return st.Enrollment.Fingerprint
	}
	return ""
}

// planTPMAgents decides what to do with the agents attested by vigil_tpm
// (agents may hold others: they are left alone, as are those of another
// trust domain than the document's). banned are the subjects that have a
// ban record (Vigil's own ban, see DesiredTPM), among the entries the
// server holds; now is the reconciler's clock.
//   - a banned agent is evicted only when its subject is not quarantined
//     and has a ban record: Vigil banned it, and SPIRE cannot lift a ban,
//     so the agent, which exited when banned, attests afresh when
//     restarted (no token needed). A ban without a record is an
//     operator's (spire-server agent ban) and stays, whatever becomes of
//     the subject; so does Vigil's own if its record is lost (fail
//     closed). The record is deleted by the same pass's Diff, after the
//     eviction: should the eviction fail, the pass stops and the record
//     stays for the next one;
//   - an agent whose subject left the topology, or no longer onboards by
//     TPM, is evicted (its entries go through DesiredTPM's Diff);
//   - a quarantined subject's agent is banned (the attestor also refuses a
//     quarantined subject, so it could not attest again anyway); its ban
//     record is created by the same pass's Diff;
//   - an attested agent is evicted, which forces a reattestation now
//     rather than when the agent's SVID expires, when its subject's latest
//     attestation failed, has expired (its class's maxAge: SPIRE does not
//     re-attest on Vigil's clock), or is missing, or when the agent's
//     "ak:" selector is not that of the subject's current enrollment (the
//     AK was enrolled again: an agent attested with the old one must go).
//     A refused reattestation leaves SPIRE's record, its old selectors and
//     the agent's SVID as they were. It is evicted whatever the time of
//     the failure: SPIRE does not say when an agent last attested, and
//     need not. Every attestation through vigil_tpm records its result
//     before SPIRE sees it, with the enrolled AK's fingerprint in its
//     selectors, so while one of these holds no agent has attested since;
//     once evicted, the agent either attests again, which records a fresh
//     "passed" with the current AK (or "failed", and leaves no agent), or
//     exits. Either way the next plan has nothing to do: the plan
//     converges. At worst a pass working from a snapshot older than a
//     pass evicts a freshly reattested agent, which attests once more.
func planTPMAgents(snap *topology.Snapshot, agents []Agent, banned map[topology.Subject]bool, now time.Time) agentActions {
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
		case ag.Banned:
			if banned[s] && !(onboardsByTPM(ix, s) && snap.Quarantined(s)) {
				a.Evict = append(a.Evict, ag.ID)
			}
		case !onboardsByTPM(ix, s):
			a.Evict = append(a.Evict, ag.ID)
		case snap.Quarantined(s):
			a.Ban = append(a.Ban, ag.ID)
		case !attestationCurrent(snap, s, now), !akCurrent(snap, s, ag):
			a.Evict = append(a.Evict, ag.ID)
		}
	}
	return a
}

// attestationCurrent reports whether s's latest attestation passed and
// has not expired at now.
func attestationCurrent(snap *topology.Snapshot, s topology.Subject, now time.Time) bool {
	st := snap.SubjectState(s)
	return st != nil && st.Attestation != nil && !st.Attestation.Failed() && !st.Attestation.ExpiresAt.Before(now)
}

// akCurrent reports whether ag attested with the AK enrolled for s now:
// its "ak:" selector is the enrollment's. An agent without one (none is
// enrolled, or it attested before Vigil gave the selector) is not.
func akCurrent(snap *topology.Snapshot, s topology.Subject, ag *Agent) bool {
	want := TPMAKSelectorValue(enrolledFingerprint(snap, s))
	return want != "" && agentAK(ag) == want
}

// agentAK is the value of ag's "vigil_tpm:ak:" node selector ("" without
// one).
func agentAK(ag *Agent) string {
	prefix := TPMSelector("ak", "")
	for _, sel := range ag.Selectors {
		if v, ok := strings.CutPrefix(sel, prefix); ok {
			return v
		}
	}
	return ""
}

// add appends b's actions to a's.
func (a *agentActions) add(b agentActions) {
	a.Update = append(a.Update, b.Update...)
	a.Delete = append(a.Delete, b.Delete...)
	a.Ban = append(a.Ban, b.Ban...)
	a.Evict = append(a.Evict, b.Evict...)
	a.Errors = append(a.Errors, b.Errors...)
}
