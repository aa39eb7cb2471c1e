// Package vigil is the root of the Vigil module. It holds no code: the
// control plane lives in its packages (topology, raft, api, node) and the
// binary in cmd/vigil. Tests here keep the dependency rule of
// docs/architecture.md true.
package vigil
