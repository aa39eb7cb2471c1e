// Package api is Vigil's HTTP JSON admin API and the typed Go client that
// the CLI uses. Reads are served from the local replica and say which
// revision they reflect; writes at a follower are forwarded to the leader.
// Every /v1 endpoint requires a bearer token.
//
// It sits at the edge: it imports topology and raft, never cmd or node.
package api
