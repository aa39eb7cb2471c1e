# An OPA-Envoy plugin policy: it reads input.attributes and input.parsed_path
# as the plugin gives them, and one value Vigil adds (input.vigil).
package envoy.authz

default allow := {"allowed": false, "http_status": 403}

allow := {
	"allowed": true,
	"headers": {"x-device-zone": input.vigil.subject.zone, "x-checked-by": "opa-envoy-style-policy"},
	"response_headers_to_add": {"x-frame-options": "DENY"},
	"request_headers_to_remove": ["x-debug"],
} if {
	input.attributes.request.http.method == "GET"
	input.parsed_path == ["status"]
}

allow := {
	"allowed": false,
	"http_status": 418,
	"headers": {"x-reason": "no-deletes"},
	"body": "deletes are not allowed here",
} if {
	input.attributes.request.http.method == "DELETE"
}
