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

// TPMBanRecordID is the SPIFFE ID of s's ban record: the entry Vigil keeps
// while it holds s's agent banned (s quarantined), so that the reconciler
// tells its own bans, which a release lifts, from an operator's, which it
// leaves alone (see DesiredTPM).
func TPMBanRecordID(trustDomain string, s topology.Subject) string {
	return "spiffe://" + trustDomain + "/vigil/tpm/banned/" + s.Kind.String() + "/" + s.Name
}

// ServerID is the SPIRE server's own ID, the parent of node aliases.
func ServerID(trustDomain string) string { return "spiffe://" + trustDomain + "/spire/server" }

// TPMAKPrefixSize is how many hex digits of the enrollment's fingerprint
// the "ak:" selector carries.
const TPMAKPrefixSize = 16

// TPMAKSelectorValue is the value of the "ak:" node selector for an
// enrollment whose Fingerprint is fingerprint (the hex SHA-256 of the
// enrolled keys' DER): its first TPMAKPrefixSize hex digits. It is empty
// when fingerprint is.
func TPMAKSelectorValue(fingerprint string) string {
	return fingerprint[:min(len(fingerprint), TPMAKPrefixSize)]
}

// TPMSelectorValues are the node selectors of s's agent once Vigil verified
// the attestation att (passed) with the AK of the enrollment whose
// Fingerprint is enrollmentFingerprint, without their type (SPIRE adds
// "vigil_tpm:"), sorted:
//
//   - subject:<name>, kind:<kind>, zone:<zone>, class:<class>;
//   - firmware:<version> and firmware-sha256:<digest>, the reference value
//     the verified firmware matched;
//   - ak:<the first 16 hex digits of enrollmentFingerprint>, so that an
//     agent attested with an AK since replaced is told apart (the
//     reconciler evicts it, and the firmware aliases of a required class
//     name the current one).
//
// ok is false when s is not in the document.
func TPMSelectorValues(ix *topology.Index, s topology.Subject, att *topology.Attestation, enrollmentFingerprint string) ([]string, bool) {
	zone, ok := ix.ZoneOf(s)
	if !ok {
		return nil, false
	}
	v := []string{"subject:" + s.Name, "kind:" + s.Kind.String(), "zone:" + zone}
	if att != nil {
		v = append(v, "firmware:"+att.FirmwareVersion)
		if att.FirmwareSHA256 != "" {
			v = append(v, "firmware-sha256:"+att.FirmwareSHA256)
		}
	}
	if ak := TPMAKSelectorValue(enrollmentFingerprint); ak != "" {
		v = append(v, "ak:"+ak)
	}
	if c := ix.ClassOf(s); c != nil {
		v = append(v, "class:"+c.Name)
	}
	slices.Sort(v)
	return v, true
}

// TPMSelector is one vigil_tpm node selector, type included, as entries
// carry it: TPMSelector("firmware", "2.5.0") is "vigil_tpm:firmware:2.5.0".
func TPMSelector(key, value string) string { return TPMAttestor + ":" + key + ":" + value }
