// Package spire is Vigil's adapter to a SPIRE server: it computes, from a
// topology snapshot, the registration entries every device, gateway and
// service needs, and those of the cloud edges the operator declares
// (Desired), keeps the server's entries equal to them
// (Reconciler), binds gateways' and devices' own SPIRE agents to their
// identities through one-time join tokens (Onboard) or, for those whose
// class sets attestation.spire, through the vigil_tpm node attestor
// (DesiredTPM, decision 0011), and takes identities away on quarantine (no
// entry for a quarantined device; a quarantined gateway's agent is
// banned).
//
// It talks to the server's admin API (entry, agent and bundle) over the
// server's unix socket, and only ever changes entries it created itself,
// which it recognises by their hint and the prefix of their entry ID.
//
// It imports topology, spire-api-sdk and go-spiffe, and nothing else of
// this module.
package spire
