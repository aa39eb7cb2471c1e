package spire

import (
	"slices"

	"github.com/vigil-iot/vigil/topology"
)

// TPMAttestor is the name of Vigil's TPM node attestor (decision 0011):
// SPIRE's NodeAttestor plugin blocks in server.conf and agent.conf must
// both carry it, for SPIRE prefixes every node selector with the plugin's
// configured name and the agents' IDs live under /spire/agent/<name>/.
const TPMAttestor = "vigil_tpm"

// TPMAgentID is the SPIFFE ID of s's agent attested by vigil_tpm. It is
// deterministic, so a re-attestation or a reinstalled agent keeps it and a
// ban sticks to it; it carries the kind, for a gateway and a device may
// share a name.
func TPMAgentID(trustDomain string, s topology.Subject) string {
	return "spiffe://" + trustDomain + "/spire/agent/" + TPMAttestor + "/" + s.Kind.String() + "/" + s.Name
}

// TPMNodeAliasID is the node alias that s's agent holds while its verified
// firmware is one of its class's reference values (attestation.spire:
// required): its firmware aliases have this SPIFFE ID, and its binding is
// parented to it.
func TPMNodeAliasID(trustDomain string, s topology.Subject) string {
	return "spiffe://" + trustDomain + "/vigil/tpm/" + s.Kind.String() + "/" + s.Name
}

// ServerID is the SPIRE server's own ID, the parent of node aliases.
func ServerID(trustDomain string) string { return "spiffe://" + trustDomain + "/spire/server" }

// TPMSelectorValues are the node selectors of s's agent once Vigil verified
// firmware version on its TPM, without their type (SPIRE adds
// "vigil_tpm:"), sorted. ok is false when s is not in the document.
func TPMSelectorValues(ix *topology.Index, s topology.Subject, firmware string) ([]string, bool) {
	zone, ok := ix.ZoneOf(s)
	if !ok {
		return nil, false
	}
	v := []string{"subject:" + s.Name, "kind:" + s.Kind.String(), "zone:" + zone, "firmware:" + firmware}
	if c := ix.ClassOf(s); c != nil {
		v = append(v, "class:"+c.Name)
	}
	slices.Sort(v)
	return v, true
}

// TPMSelector is one vigil_tpm node selector, type included, as entries
// carry it: TPMSelector("firmware", "2.5.0") is "vigil_tpm:firmware:2.5.0".
func TPMSelector(key, value string) string { return TPMAttestor + ":" + key + ":" + value }
