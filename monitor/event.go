package monitor

import (
	"strings"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// EventKind says what an Event reports.
type EventKind uint8

// Event kinds.
const (
	// EventDecision is one ext_authz decision.
	EventDecision EventKind = iota + 1
	// EventAccess is one Envoy access-log entry (gRPC ALS).
	EventAccess
	// EventAttestation is a failed attestation.
	EventAttestation
	// EventReplay is evidence refused because its nonce was used before.
	EventReplay
	// EventSignal is a gateway's signal about a device (tamper, reboot, …).
	EventSignal
	// EventUnknownIdentity is an identity this topology does not know, or
	// may not use there, seen at a gateway; Subject is the gateway.
	EventUnknownIdentity
	maxEventKind
)

var kindNames = [...]string{"", "decision", "access", "attestation", "replay", "signal", "unknown-identity"}

func (k EventKind) String() string {
	if k < maxEventKind {
		return kindNames[k]
	}
	return "unknown"
}

// Deny causes an Event carries (Event.Cause), as the authorizer reports
// them.
const (
	CauseNoFlow         = "no-flow"
	CauseUnknownService = "unknown-service"
	CauseRateLimited    = "rate-limited"
	CauseRestricted     = "restricted"
	CauseQuarantined    = "quarantined"
	CauseAttestation    = "attestation"
	CauseOther          = "other"
)

// Event is one compact observation about one device or gateway. It is
// what members forward to a subject's owner, so it holds no pointers into
// a member's state and every string is bounded (Clip).
type Event struct {
	Kind    EventKind     `json:"k"`
	At      int64         `json:"t"` // unix nanoseconds
	SubKind topology.Kind `json:"sk"`
	Subject string        `json:"s"`
	// Class is the device's class, Zone its zone (resolved by the member
	// that saw the event).
	Class string `json:"cl,omitempty"`
	Zone  string `json:"z,omitempty"`
	// Gateway is the gateway the request came through.
	Gateway string `json:"g,omitempty"`
	// Service is the destination service, or the request's host when it
	// names none.
	Service string `json:"v,omitempty"`
	Method  string `json:"m,omitempty"`
	Path    string `json:"p,omitempty"`
	Allowed bool   `json:"a,omitempty"`
	Cause   string `json:"c,omitempty"`
	// CrossZone: the destination is in another zone than the subject's.
	CrossZone bool `json:"x,omitempty"`
	// Bytes is the request's size, RespBytes the response's (access logs).
	Bytes     int64 `json:"b,omitempty"`
	RespBytes int64 `json:"rb,omitempty"`
	Status    int   `json:"st,omitempty"`
	// Name is the signal's name, the unknown identity, or the evidence
	// format; Detail says more (a failure's reason).
	Name   string `json:"n,omitempty"`
	Detail string `json:"d,omitempty"`
	// Caller is the verified identity of the proxy that reported the
	// event (proxy TLS), used to attribute it; Forwarded marks a cloud
	// edge's decision about a request its gateway already reported.
	Caller    string `json:"cl2,omitempty"`
	Forwarded bool   `json:"fw,omitempty"`
}

// Subj is the event's subject.
func (e *Event) Subj() topology.Subject { return topology.Subject{Kind: e.SubKind, Name: e.Subject} }

// Time is the event's time.
func (e *Event) Time() time.Time { return time.Unix(0, e.At) }

// Bounds on what an event carries.
const (
	maxField  = 256
	maxDetail = 512
)

// Clip bounds every string of the event, in place, so that one event
// cannot carry an unbounded request into the monitor's memory or a
// forwarded batch.
func (e *Event) Clip() {
	for _, s := range []*string{&e.Subject, &e.Class, &e.Zone, &e.Gateway, &e.Service, &e.Method, &e.Path, &e.Cause, &e.Name, &e.Caller} {
		*s = clip(*s, maxField)
	}
	e.Detail = clip(e.Detail, maxDetail)
	if e.Bytes < 0 {
		e.Bytes = 0
	}
	if e.RespBytes < 0 {
		e.RespBytes = 0
	}
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && s[len(s)-1]&0xc0 == 0x80 { // do not end inside a UTF-8 sequence
		s = s[:len(s)-1]
	}
	if len(s) > 0 && s[len(s)-1] >= 0xc0 {
		s = s[:len(s)-1]
	}
	return s
}

// destination is what "never seen before" is about: the service, method
// and the first two segments of the path (so that /api/v1/readings/81 and
// /api/v1/readings/82 are one destination).
func destination(e *Event) string {
	p := e.Path
	if q := strings.IndexAny(p, "?#"); q >= 0 {
		p = p[:q]
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 {
			n++
			if n == 2 {
				p = p[:i]
				break
			}
		}
	}
	return e.Service + " " + e.Method + " " + p
}
