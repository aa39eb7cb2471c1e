package authz

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits on what one request can make a member hold, decide on or write.
// The decision log's writer and its verifier read the same constants, so
// the writer never produces a line the verifier cannot read.
const (
	// MaxCheckRequestBytes bounds one ext_authz CheckRequest on the wire.
	// Envoy sends the request's headers (60 KiB at most by default,
	// max_request_headers_kb) and no body unless with_request_body is set,
	// which Vigil's configurations never do.
	MaxCheckRequestBytes = 256 << 10

	// MaxPathBytes bounds the path Vigil decides on: a longer one is
	// denied as malformed before it is cached or recorded in full. No flow
	// path is anywhere near it.
	MaxPathBytes = 8 << 10

	// MaxHostBytes bounds a request authority (a DNS name is at most 253).
	MaxHostBytes = 1024
)

// The most bytes of each decision field that the log records; a longer
// value is cut at a character boundary and marked with its full length
// (see clip). JSON escapes a byte to at most 6 bytes ("\u0000"), which
// MaxLogLine allows for.
const (
	maxLoggedPath    = 1024
	maxLoggedID      = 2048 // SPIFFE IDs: subject, caller (SPIFFE's own limit)
	maxLoggedName    = 256  // gateway, service, node, method, decision ID, policy hash
	maxLoggedReason  = 2048
	maxLoggedSource  = 64 // a peer's host:port
	loggedStringsCap = maxLoggedPath + 2*maxLoggedID + 7*maxLoggedName + maxLoggedReason + maxLoggedSource
)

// MaxLogLine is the longest line the decision log writes. The verifier
// parses lines up to this length and checks longer ones (written by older
// versions) by their chain fields alone.
const MaxLogLine = 6*loggedStringsCap + 4<<10

// clip returns s if it has at most limit bytes, and otherwise its first
// bytes, cut at a character boundary, followed by a marker with the full
// length: "…[cut: 3000000 bytes]". The result never shares memory with s
// (a long s is usually a request's, which must not stay alive in a queue).
func clip(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	n := max(limit-40, 0) // room for the marker
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	var b strings.Builder
	b.Grow(limit)
	b.WriteString(s[:n])
	b.WriteString("…[cut: ")
	b.WriteString(strconv.Itoa(len(s)))
	b.WriteString(" bytes]")
	return b.String()
}

// clipForLog bounds every string of d for the decision log.
func (d *Decision) clipForLog() {
	d.ID = clip(d.ID, maxLoggedName)
	d.Node = clip(d.Node, maxLoggedName)
	d.Subject = clip(d.Subject, maxLoggedID)
	d.Gateway = clip(d.Gateway, maxLoggedName)
	d.Caller = clip(d.Caller, maxLoggedID)
	d.Source = clip(d.Source, maxLoggedSource)
	d.Service = clip(d.Service, maxLoggedName)
	d.Method = clip(d.Method, maxLoggedName)
	d.Path = clip(d.Path, maxLoggedPath)
	d.Reason = clip(d.Reason, maxLoggedReason)
	d.PolicyHash = clip(d.PolicyHash, maxLoggedName)
	d.Attestation = clip(d.Attestation, maxLoggedName)
}
