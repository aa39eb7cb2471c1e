// Package e2e holds Vigil's multi-process end-to-end tests: they build the
// vigil binary, run clusters of real `vigil serve` processes on loopback,
// and drive them through the CLI and the typed API client. The reusable
// parts (building, starting and killing members, generating documents) live
// in package harness.
//
// It is its own Go module and imports the main module only through its
// public packages.
package e2e
