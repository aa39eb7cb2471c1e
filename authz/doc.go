// Package authz is Envoy's external authorizer: the
// envoy.service.auth.v3.Authorization/Check gRPC server, the OPA engine
// that decides with Rego policy from verified identity, topology and
// runtime state, the per-device rate limiter, and the hash-chained decision
// log.
//
// Translation is pure and separate from the gRPC wiring: a CheckRequest
// becomes policy input (input.go), a policy result becomes a CheckResponse
// (response.go). It imports topology, OPA and go-control-plane's protos,
// never raft, api or node; the node hands it snapshots.
package authz
