// Package topology owns Vigil's domain model: the vigil/v1 topology document
// (zones, gateways, device classes, devices, services and the flows allowed
// between them), its strict decoding and validation, SPIFFE identities, the
// per-subject runtime state (quarantine, risk, attestation), and the immutable
// Snapshot with its Revision and O(1) lookup indexes that every other part of
// Vigil reads.
//
// It must not import any other package of this module; everything else
// depends on it.
package topology
