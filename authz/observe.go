package authz

import (
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vigil-iot/vigil/topology"
)

// Observation is one Check decision as the monitor sees it (Config.Observer).
// Every decision is observed, allowed or denied, including unknown
// identities, refused forwarded identities, rate limits and malformed
// requests. Strings are shared with the request and the topology, never
// copied for the observer; one that keeps Path for long may want to clone
// it (a request's path, up to MaxPathBytes).
type Observation struct {
	// At is when the Check began.
	At time.Time
	// Subject is the device, gateway or service the decision was about:
	// for a device a gateway spoke for, the device; for a refused
	// forwarded identity or a malformed request, whoever presented the
	// principal. Its Kind is zero when the identity is not one of the
	// topology.
	Subject topology.Subject
	// Principal is the SPIFFE ID decided for (the decision log's subject),
	// also when it is unknown; empty when none was presented or read.
	Principal string
	// Gateway is the gateway the request came through: the device's, the
	// gateway that presented the principal, or else (with
	// Config.RequireCaller) the gateway whose proxy asked; empty if none.
	Gateway string
	// Service and ServiceZone are the destination, empty when unknown.
	Service, ServiceZone string
	// SubjectZone is the Subject's zone in the topology, empty when unknown.
	SubjectZone string
	// Flow is the flow that allowed the request; empty on a deny.
	Flow string
	// Method, Path (without query) and Host (without port) are the
	// request's, as far as it could be read.
	Method, Path, Host string
	Allowed            bool
	// Cause is why the request was denied; CauseNone when it was allowed.
	Cause Cause
	// Reason is the decision's reason, as logged.
	Reason string
	// Bytes is the request's size: attributes.request.http.size when Envoy
	// knows it, else the length of the body it sent (often 0: Vigil's
	// configurations send no body).
	Bytes int64
	// DecisionID is the decision's ID (x-vigil-decision-id).
	DecisionID string
	// Caller is the verified SPIFFE ID of the proxy that asked (with
	// Config.RequireCaller, i.e. proxy TLS); empty without. Only it is
	// authenticated: a principal is what the caller says.
	Caller string
	// Forwarded is set when the subject came in x-forwarded-client-cert
	// (a cloud edge's Check for a request its gateway already asked about).
	Forwarded bool
}

// Cause is why a Check was denied, in a form a detector can count.
type Cause uint8

// The causes of a deny. Those that Vigil's default policy gives are derived
// from what the policy reads, in the policy's order, not from its reason
// text; a custom policy's deny that none of them explains is CauseOther.
const (
	CauseNone            Cause = iota // allowed
	CauseUnknownIdentity              // no principal, or one the topology does not know
	CauseForwardRefused               // a forwarded (XFCC) identity that does not check out
	CauseQuarantined                  // the subject, or the gateway it came through, is quarantined
	CauseAttestation                  // the subject's class requires an attestation it does not hold
	CauseNoFlow                       // no flow allows the request
	CauseUnknownService               // the destination is not a service of the topology
	CauseRateLimited                  // a flow's or the class's rate limit
	CauseRestricted                   // the subject's risk restricts it to essential flows
	CauseMalformed                    // the request could not be read
	CauseOther                        // anything else: member not ready, policy error or a custom policy's reason
	CauseStale                        // the member has been cut off from its quorum past --max-staleness: essential flows only
)

var causeNames = [...]string{
	CauseNone:            "none",
	CauseUnknownIdentity: "unknown-identity",
	CauseForwardRefused:  "forward-refused",
	CauseQuarantined:     "quarantined",
	CauseAttestation:     "attestation",
	CauseNoFlow:          "no-flow",
	CauseUnknownService:  "unknown-service",
	CauseRateLimited:     "rate-limited",
	CauseRestricted:      "restricted",
	CauseMalformed:       "malformed",
	CauseOther:           "other",
	CauseStale:           "stale",
}

// NumCauses is how many causes there are, for tables indexed by Cause.
const NumCauses = Cause(len(causeNames))

// String is the cause's name: "none", "unknown-identity", "forward-refused",
// "quarantined", "attestation", "no-flow", "unknown-service",
// "rate-limited", "restricted", "malformed", "other" or "stale".
func (c Cause) String() string {
	if int(c) < len(causeNames) {
		return causeNames[c]
	}
	return "other"
}

// observations recycles Observations: the observer copies what it keeps,
// so one is reused as soon as the observer returns.
var observations = sync.Pool{New: func() any { return new(Observation) }}

// checkFacts is what decide found out about one request, for observe.
type checkFacts struct {
	snap *topology.Snapshot // the replica decided at; nil if none
	r    Request            // as far as it was read
	// resolved is set when the request was resolved against the topology
	// (its forwarded identity, if any, checked out); then known, sub, gw
	// and svc are the resolution's.
	resolved, known bool
	sub             topology.Subject
	gw              *topology.Gateway
	svc             *topology.Service
	cause           Cause
	flow            *topology.Rule // the allowing flow, on an allow
}

// observe hands the decision d, with what decide found out, to the
// observer.
func (s *Server) observe(req *authv3.CheckRequest, d *Decision, at time.Time, f *checkFacts) {
	o := observations.Get().(*Observation)
	*o = Observation{
		At: at, Principal: d.Subject, Method: f.r.Method, Path: f.r.Path, Host: f.r.Host,
		Allowed: d.Allowed, Cause: f.cause, Reason: d.Reason, DecisionID: d.ID, Bytes: requestBytes(req),
		Caller: d.Caller, Forwarded: f.r.Forwarded != "",
	}
	if f.flow != nil && d.Allowed {
		o.Flow = f.flow.Name
	}
	svc := f.svc
	switch {
	case f.resolved:
		// The subject (the device a gateway spoke for, if any), its
		// gateway and the destination are known.
		if f.known {
			o.Subject = f.sub
			if f.sub.Kind == topology.KindDevice && f.gw != nil {
				o.SubjectZone = f.gw.Zone
			} else {
				o.SubjectZone, _ = f.snap.Index().ZoneOf(f.sub)
			}
		}
		if f.gw != nil {
			o.Gateway = f.gw.Name
		}
	case f.snap != nil && f.snap.HasDocument() && f.r.Principal != "":
		// Refused before or while resolving (a malformed request, a
		// forwarded identity that does not check out): who presented the
		// principal, and where the request was going.
		ix := f.snap.Index()
		if sub, ok := ix.BySPIFFEID(f.r.Principal); ok {
			o.Subject = sub
			o.SubjectZone, _ = ix.ZoneOf(sub)
			switch sub.Kind {
			case topology.KindDevice:
				if dev, ok := ix.Device(sub.Name); ok {
					o.Gateway = dev.Gateway
				}
			case topology.KindGateway:
				o.Gateway = sub.Name
			}
		}
		if f.r.Service != "" {
			svc, _ = ix.Service(f.r.Service)
		} else if f.r.Host != "" {
			svc, _ = ix.ServiceByHost(f.r.Host)
		}
	}
	if svc != nil {
		o.Service, o.ServiceZone = svc.Name, svc.Zone
	}
	if o.Gateway == "" && d.Caller != "" && f.snap != nil && f.snap.HasDocument() {
		// An identity the topology does not place behind a gateway (an
		// unknown one, say), asked about by a gateway's proxy over proxy
		// TLS: it came through that gateway.
		if sub, ok := f.snap.Index().BySPIFFEID(d.Caller); ok && sub.Kind == topology.KindGateway {
			o.Gateway = sub.Name
		}
	}
	s.cfg.Observer(o)
	*o = Observation{}
	observations.Put(o)
}

// requestBytes is the size of the request Envoy asked about: its size
// when known (Envoy sends -1 when it is not), else the body's length.
func requestBytes(req *authv3.CheckRequest) int64 {
	h := req.GetAttributes().GetRequest().GetHttp()
	if n := h.GetSize(); n > 0 {
		return n
	}
	if n := len(h.GetBody()); n > 0 {
		return int64(n)
	}
	return int64(len(h.GetRawBody()))
}
