// Package raft is Vigil's replicated store: typed, versioned log commands, a
// deterministic state machine over topology.Snapshot, snapshots, a bolt log
// store, an authenticated TCP transport, membership, and change
// subscriptions for in-process consumers.
//
// It imports topology and hashicorp/raft (as hraft) and nothing else of this
// module. Callers above it (the HTTP API, the node) forward writes to the
// leader; this package reports ErrNotLeader with the leader's identity.
package raft
