package authz

import (
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Decision is one authorization decision as the decision log records it.
type Decision struct {
	ID       string            `json:"decision_id"`
	Time     time.Time         `json:"time"`
	Node     string            `json:"node"`
	Revision topology.Revision `json:"revision"`
	Subject  string            `json:"subject,omitempty"` // SPIFFE ID of the device or service decided for
	Gateway  string            `json:"gateway,omitempty"` // gateway that spoke for the device, if any
	Caller   string            `json:"caller,omitempty"`  // SPIFFE ID of the proxy that asked (with Config.RequireCaller)
	Source   string            `json:"source,omitempty"`  // network address of the proxy that asked
	Service  string            `json:"service,omitempty"` // destination service name
	// Attestation is the evidence digest of the subject's attestation the
	// decision relied on (when its class requires one).
	Attestation string `json:"attestation,omitempty"`
	// Risk is the subject's risk score when the decision was made (0 to
	// 100; left out when 0).
	Risk       int    `json:"risk,omitempty"`
	Method     string `json:"method,omitempty"`
	Path       string `json:"path,omitempty"`
	Allowed    bool   `json:"allowed"`
	HTTPStatus int    `json:"http_status"`
	Reason     string `json:"reason"`
	PolicyHash string `json:"policy_hash"`
	LatencyUS  int64  `json:"latency_us"`
	// StaleMS is how long the deciding member had been cut off from its
	// cluster's quorum, in milliseconds: the decision was made from a
	// replica that may be that much behind. Left out while in contact.
	StaleMS int64 `json:"stale_ms,omitempty"`
}

// Result is what a policy decided, in the result forms of the OPA-Envoy
// plugin: a bare boolean, or an object with these keys.
type Result struct {
	Allowed bool
	// Reason explains the decision; Vigil's policy sets it, and it is
	// "denied by policy" / "allowed by policy" when a policy does not.
	Reason string
	// HTTPStatus is the status of a denied response (default 403).
	HTTPStatus int
	// Body replaces the JSON body of a denied response.
	Body string
	// Headers are added to the upstream request when allowed, and to the
	// denied response otherwise.
	Headers []Header
	// ResponseHeadersToAdd are added to the downstream response when allowed.
	ResponseHeadersToAdd []Header
	// RequestHeadersToRemove are removed from the upstream request when allowed.
	RequestHeadersToRemove []string
}

// Header is one header a policy asks to set.
type Header struct {
	Key, Value string
}

// Request is what Vigil reads from a CheckRequest before resolving it
// against the topology.
type Request struct {
	// Principal is the URI SAN of the peer certificate Envoy verified
	// (attributes.source.principal); empty when there was none.
	Principal string
	// Forwarded is the URI from x-forwarded-client-cert, set when a gateway
	// speaks for a device; empty otherwise.
	Forwarded string
	// Service is the vigil.service context extension; empty if not set.
	Service string
	Host    string // request authority, without a port
	Method  string
	Path    string // path without query or fragment
}
