// Package monitor is Vigil's continuous monitoring: it turns what members
// see (ext_authz decisions, Envoy access logs, attestation results and
// replays, gateway signals) into findings and a risk score per device or
// gateway.
//
// Each subject has one owner among the members (Ring, rendezvous hashing
// over the Raft members); every member forwards a subject's events to its
// owner, whose Engine keeps the subject's baselines and runs the detectors
// on all of its traffic. An Engine is pure: it reads events and returns
// findings and risk. Baselines are per class (peer group, useful at once)
// and per device (after Config.Warmup windows), bounded to a few hundred
// bytes per subject, and checkpointed (Save/Load) so that they survive
// restarts. Publishing risk, quarantining and opening incidents happen in
// node/, which wires the engine to the store, and alerts leave through
// monitor/siem.
package monitor
