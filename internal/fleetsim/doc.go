// Package fleetsim is Vigil's fleet simulator, the library behind `vigil
// sim` and the traffic `vigil dev` runs: it acts as the gateways of a
// topology. Each simulated device sends what its flows allow, at a steady
// per-class rate below every rate limit, through a member's real
// ext_authz (envoy.service.auth.v3.Authorization/Check, asked as the
// device's gateway Envoy asks) and logs each request on its gateway's
// access log stream (envoy.service.accesslog.v3 StreamAccessLogs on the
// xDS port), as the gateway's Envoy logs it. Devices whose class requires
// attestation enroll simulated TPMs and attest through the API.
//
// On top of the benign fleet it plays named attack scenarios
// (exfiltration, scan, zone-probe, replay, tamper, flood) and measures
// how long the cluster takes to quarantine the attacker on every member,
// which it reports in a Report (stable JSON, `vigil sim --json`).
//
// It talks to members over their public interfaces only (HTTP API, plain
// gRPC for ext_authz and ALS) and imports neither the member (node) nor
// the monitor.
package fleetsim
