# Vigil's default authorization policy.
#
# Default deny: a request is allowed only when a flow of the topology allows
# it and nothing about its subject says otherwise. Vigil resolves
# input.vigil from the verified SPIFFE identity, the topology and the
# runtime state at one revision (see authz/resolve.go for its shape);
# input.attributes is Envoy's CheckRequest, as the OPA-Envoy plugin gives it.
#
# The query is data.vigil.authz.decision; the result is an OPA-Envoy result
# object with Vigil's "reason". Per-device rate limits are applied by Vigil
# after an allow (token buckets kept in Go).
#
# Written for speed: this runs for every request of a city. It reads
# input.vigil directly (no intermediate rules), tries the common allow
# first, and looks for the reason of a deny, in a fixed order, only then.
package vigil.authz

default decision := {"allowed": false, "reason": "no flow allows this request"}

# The common case first: nothing is wrong with the subject and a flow
# allows the request. Then a subject whose risk restricts it (risk at or
# above its class's restrictAt), which only its essential flows may allow.
# Only when both fail are the reasons looked for, in order. The risk
# comparisons are written out rather than made a rule: evaluating a rule
# (and "not") costs more here than the comparison. An input without
# restrict_at (written before it existed) restricts nothing.
decision := {"allowed": true, "reason": sprintf("allowed by flow %q", [allowing[0]])} if {
	input.vigil.subject.quarantined == false
	not gateway_quarantined
	attestation_ok
	input.vigil.subject.risk < object.get(input.vigil.subject, "restrict_at", 101) # not restricted
	count(allowing) > 0
} else := {"allowed": true, "reason": sprintf("allowed by flow %q", [essential_allowing[0]])} if {
	input.vigil.subject.risk >= input.vigil.subject.restrict_at # restricted
	input.vigil.subject.quarantined == false
	not gateway_quarantined
	attestation_ok
	count(essential_allowing) > 0
} else := {"allowed": false, "reason": denial}

gateway_quarantined if input.vigil.gateway.quarantined == true

attestation_ok if input.vigil.subject.attestation_required == false

attestation_ok if input.vigil.subject.attestation.acceptable == true

# denial is the first reason, in this order, to refuse the request. A
# restricted subject is told so only when a flow that is not essential
# would have allowed the request; a request no flow allows at all is
# denied as such, restricted or not.
denial := sprintf("unknown identity %q", [object.get(input.attributes.source, "principal", "")]) if {
	input.vigil.subject == null
} else := "unknown destination service" if {
	input.vigil.service == null
} else := sprintf("%s is quarantined: %s", [input.vigil.subject.spiffe_id, input.vigil.subject.quarantine.reason]) if {
	input.vigil.subject.quarantined
} else := sprintf("gateway %s is quarantined", [input.vigil.gateway.name]) if {
	input.vigil.gateway.quarantined
} else := sprintf("%s has no attestation; its class requires one", [input.vigil.subject.spiffe_id]) if {
	input.vigil.subject.attestation_required
	input.vigil.subject.attestation == null
} else := sprintf("attestation of %s is not acceptable: %s", [input.vigil.subject.spiffe_id, input.vigil.subject.attestation.problem]) if {
	input.vigil.subject.attestation_required
	input.vigil.subject.attestation.acceptable == false
} else := sprintf("%s is restricted by risk %d (restrictAt %d): only essential flows are allowed", [input.vigil.subject.spiffe_id, input.vigil.subject.risk, input.vigil.subject.restrict_at]) if {
	input.vigil.subject.risk >= input.vigil.subject.restrict_at
	count(allowing) > 0
} else := sprintf("no flow allows %s to reach service %s", [input.vigil.subject.spiffe_id, input.vigil.service.name]) if {
	count(input.vigil.flows) == 0
} else := sprintf("no flow allows %s %s from %s to service %s", [input.vigil.request.method, input.vigil.request.path, input.vigil.subject.spiffe_id, input.vigil.service.name]) if {
	count(allowing) == 0
}

# allowing lists, in document order, the flows that allow the request.
# One conjunction per flow, without function calls, for speed: Vigil gives
# each flow's methods ("*" for any) and its paths as prefixes with a longest
# length (an exact path is a prefix as long as itself; any path is "").
allowing := [f.name |
	some f in input.vigil.flows
	some m in f.methods
	{"*", input.vigil.request.method}[m]
	some p in f.paths
	startswith(input.vigil.request.path, p.value)
	count(input.vigil.request.path) <= p.max_length
]

# essential_allowing is allowing, of the flows marked essential only.
essential_allowing := [f.name |
	some f in input.vigil.flows
	f.essential == true
	some m in f.methods
	{"*", input.vigil.request.method}[m]
	some p in f.paths
	startswith(input.vigil.request.path, p.value)
	count(input.vigil.request.path) <= p.max_length
]
