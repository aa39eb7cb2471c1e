// Package node is the composition root of one Vigil member: it provisions
// the member's secrets in its data dir, opens the replicated store, serves
// the HTTP API, joins an existing cluster or bootstraps a new one, and
// stops everything together.
//
// It may import every other package of this module except cmd.
package node
