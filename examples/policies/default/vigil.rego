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
package vigil.authz

v := input.vigil

default decision := {"allowed": false, "reason": "no flow allows this request"}

decision := {"allowed": false, "reason": reason} if {
	reason := denial
} else := {"allowed": true, "reason": sprintf("allowed by flow %q", [flow])} if {
	flow := allowing_flow
}

# denial is the first reason, in this order, to refuse the request.
denial := sprintf("unknown identity %q", [object.get(input.attributes.source, "principal", "")]) if {
	v.subject == null
} else := "unknown destination service" if {
	v.service == null
} else := sprintf("%s is quarantined: %s", [v.subject.spiffe_id, v.subject.quarantine.reason]) if {
	v.subject.quarantined
} else := sprintf("gateway %s is quarantined", [v.gateway.name]) if {
	v.gateway.quarantined
} else := sprintf("%s has no attestation; its class requires one", [v.subject.spiffe_id]) if {
	v.subject.attestation_required
	v.subject.attestation == null
} else := sprintf("attestation of %s is not acceptable: %s", [v.subject.spiffe_id, v.subject.attestation.problem]) if {
	v.subject.attestation_required
	not v.subject.attestation.acceptable
} else := sprintf("no flow allows %s to reach service %s", [v.subject.spiffe_id, v.service.name]) if {
	count(v.flows) == 0
} else := sprintf("no flow allows %s %s from %s to service %s", [v.request.method, v.request.path, v.subject.spiffe_id, v.service.name]) if {
	not allowing_flow
}

# allowing_flow is the first flow, in document order, that allows the request.
allowing_flow := matching[0] if {
	matching := [f.name | some f in v.flows; allows(f)]
	count(matching) > 0
}

allows(f) if {
	method_allowed(f)
	path_allowed(f)
}

method_allowed(f) if count(f.methods) == 0

method_allowed(f) if v.request.method in f.methods

path_allowed(f) if count(f.paths) == 0

path_allowed(f) if {
	some p in f.paths
	not p.prefix
	p.value == v.request.path
}

path_allowed(f) if {
	some p in f.paths
	p.prefix
	startswith(v.request.path, p.value)
}
