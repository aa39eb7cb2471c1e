package vigil.authz_test

import data.vigil.authz

# A sensor posting telemetry, allowed by flow "sensor-telemetry" unless a
# test changes something.
base := {
	"attributes": {"source": {"principal": "spiffe://city.example/zone/north/device/aq-1"}},
	"vigil": {
		"revision": 7,
		"node": "n1",
		"request": {"method": "POST", "path": "/api/v1/telemetry", "host": "telemetry.city.example"},
		"subject": {
			"kind": "device", "name": "aq-1", "spiffe_id": "spiffe://city.example/zone/north/device/aq-1",
			"zone": "north", "class": "air-quality", "gateway": "gw-1", "labels": {},
			"quarantined": false, "risk": 0, "restrict_at": 50, "attestation_required": true,
			"attestation": {"method": "tpm", "firmware_version": "1.8.3", "acceptable": true, "problem": ""},
		},
		"gateway": {"name": "gw-1", "spiffe_id": "spiffe://city.example/zone/north/gateway/gw-1", "quarantined": false},
		"service": {"name": "telemetry", "zone": "cloud", "protocol": "http", "spiffe_id": "spiffe://city.example/zone/cloud/service/telemetry", "labels": {}},
		"flows": [
			{"name": "firmware", "methods": ["GET"], "paths": [{"value": "/firmware/", "prefix": true, "max_length": 1073741824}], "rate_limit": "", "essential": false},
			{"name": "sensor-telemetry", "methods": ["POST"], "paths": [{"value": "/api/v1/telemetry", "prefix": false, "max_length": 17}], "rate_limit": "10/m", "essential": true},
		],
	},
}

with_vigil(patch) := object.union(base, {"vigil": object.union(base.vigil, patch)})

with_subject(patch) := with_vigil({"subject": object.union(base.vigil.subject, patch)})

with_request(method, path) := with_vigil({"request": {"method": method, "path": path, "host": "telemetry.city.example"}})

test_allowed_by_the_matching_flow if {
	d := authz.decision with input as base
	d.allowed
	d.reason == "allowed by flow \"sensor-telemetry\""
}

test_wrong_method_is_denied if {
	d := authz.decision with input as with_request("GET", "/api/v1/telemetry")
	not d.allowed
	contains(d.reason, "no flow allows GET /api/v1/telemetry")
}

test_wrong_path_is_denied if {
	d := authz.decision with input as with_request("POST", "/api/v1/telemetry/extra")
	not d.allowed
}

test_prefix_path_allows_below_it if {
	d := authz.decision with input as with_request("GET", "/firmware/slc/2.5.0.bin")
	d.allowed
	d.reason == "allowed by flow \"firmware\""
}

test_prefix_path_is_not_a_substring_match if {
	d := authz.decision with input as with_request("GET", "/x/firmware/")
	not d.allowed
}

test_any_method_and_any_path if {
	d := authz.decision with input as with_vigil({
		"request": {"method": "PATCH", "path": "/whatever/x", "host": "telemetry.city.example"},
		"flows": [{"name": "open", "methods": ["*"], "paths": [{"value": "", "prefix": true, "max_length": 1073741824}], "rate_limit": "", "essential": false}],
	})
	d.allowed
	d.reason == "allowed by flow \"open\""
}

test_an_exact_path_is_not_a_prefix if {
	d := authz.decision with input as with_request("POST", "/api/v1/telemetryX")
	not d.allowed
}

test_no_flows_to_the_service if {
	d := authz.decision with input as with_vigil({"flows": []})
	not d.allowed
	contains(d.reason, "no flow allows spiffe://city.example/zone/north/device/aq-1 to reach service telemetry")
}

test_unknown_identity if {
	d := authz.decision with input as with_vigil({"subject": null, "gateway": null, "flows": []})
	not d.allowed
	d.reason == "unknown identity \"spiffe://city.example/zone/north/device/aq-1\""
}

test_unknown_service if {
	d := authz.decision with input as with_vigil({"service": null, "flows": []})
	not d.allowed
	d.reason == "unknown destination service"
}

test_quarantined_subject_is_denied_even_with_a_flow if {
	d := authz.decision with input as with_subject({"quarantined": true, "quarantine": {"reason": "tamper switch", "by": "ops", "since": "2026-01-01T00:00:00Z"}})
	not d.allowed
	d.reason == "spiffe://city.example/zone/north/device/aq-1 is quarantined: tamper switch"
}

test_quarantined_gateway_denies_its_devices if {
	d := authz.decision with input as with_vigil({"gateway": {"name": "gw-1", "spiffe_id": "x", "quarantined": true}})
	not d.allowed
	d.reason == "gateway gw-1 is quarantined"
}

test_missing_attestation if {
	d := authz.decision with input as with_subject({"attestation": null})
	not d.allowed
	contains(d.reason, "has no attestation")
}

test_stale_attestation if {
	d := authz.decision with input as with_subject({"attestation": {"acceptable": false, "problem": "it is 30h0m0s old; class air-quality allows 12h0m0s"}})
	not d.allowed
	contains(d.reason, "it is 30h0m0s old")
}

test_attestation_not_required if {
	d := authz.decision with input as with_subject({"attestation_required": false, "attestation": null})
	d.allowed
}

test_quarantine_wins_over_every_other_reason if {
	d := authz.decision with input as with_vigil({
		"subject": object.union(base.vigil.subject, {"quarantined": true, "quarantine": {"reason": "r"}, "attestation": null}),
		"flows": [],
	})
	contains(d.reason, "is quarantined")
}

# Risk: at restrict_at and above only essential flows allow.

test_risk_below_restrict_at_allows_every_flow if {
	d := authz.decision with input as object.union(with_request("GET", "/firmware/a.bin"), {"vigil": {"subject": object.union(base.vigil.subject, {"risk": 49})}})
	d.allowed
	d.reason == "allowed by flow \"firmware\""
}

test_restricted_subject_keeps_its_essential_flows if {
	d := authz.decision with input as with_subject({"risk": 50})
	d.allowed
	d.reason == "allowed by flow \"sensor-telemetry\""
}

test_restricted_subject_loses_the_other_flows if {
	d := authz.decision with input as object.union(with_request("GET", "/firmware/a.bin"), {"vigil": {"subject": object.union(base.vigil.subject, {"risk": 63})}})
	not d.allowed
	d.reason == "spiffe://city.example/zone/north/device/aq-1 is restricted by risk 63 (restrictAt 50): only essential flows are allowed"
}

test_restrict_at_is_the_subjects_own if {
	d := authz.decision with input as object.union(with_request("GET", "/firmware/a.bin"), {"vigil": {"subject": object.union(base.vigil.subject, {"risk": 63, "restrict_at": 64})}})
	d.allowed
}

test_the_first_essential_flow_allows_a_restricted_subject if {
	d := authz.decision with input as with_vigil({
		"subject": object.union(base.vigil.subject, {"risk": 90}),
		"flows": [
			{"name": "any-post", "methods": ["POST"], "paths": [{"value": "", "prefix": true, "max_length": 1073741824}], "rate_limit": "", "essential": false},
			{"name": "telemetry-only", "methods": ["POST"], "paths": [{"value": "/api/v1/telemetry", "prefix": false, "max_length": 17}], "rate_limit": "", "essential": true},
		],
	})
	d.allowed
	d.reason == "allowed by flow \"telemetry-only\""
}

test_a_restricted_request_no_flow_allows_is_denied_as_such if {
	d := authz.decision with input as object.union(with_request("DELETE", "/api/v1/telemetry"), {"vigil": {"subject": object.union(base.vigil.subject, {"risk": 70})}})
	not d.allowed
	contains(d.reason, "no flow allows DELETE /api/v1/telemetry")
}

test_quarantine_and_attestation_come_before_restriction if {
	q := authz.decision with input as with_subject({"risk": 99, "quarantined": true, "quarantine": {"reason": "r"}})
	contains(q.reason, "is quarantined: r")
	a := authz.decision with input as object.union(with_request("GET", "/firmware/a.bin"), {"vigil": {"subject": object.union(base.vigil.subject, {"risk": 99, "attestation": null})}})
	contains(a.reason, "has no attestation")
	e := authz.decision with input as with_subject({"risk": 99, "attestation": null})
	not e.allowed
	contains(e.reason, "has no attestation")
}

test_an_input_without_restrict_at_restricts_nothing if {
	unset := json.remove(object.union(with_request("GET", "/firmware/a.bin"), {"vigil": {"subject": {"risk": 100}}}), ["vigil/subject/restrict_at"])
	not unset.vigil.subject.restrict_at
	d := authz.decision with input as unset
	d.allowed
}
