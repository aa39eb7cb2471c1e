package node

import (
	"encoding/json"
	"time"

	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/monitor"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/xds"
)

// The monitor's inputs: every decision of this member's authorizer, the
// access logs its xDS port receives, attestation failures and replays, and
// signals (api). Each is turned into a monitor.Event here, on the caller's
// goroutine, and queued without blocking.

// decision is the authorizer's Observer: it runs on the Check's goroutine
// after the answer is decided, so it only copies fields.
func (m *monitorPart) decision(o *authz.Observation) {
	ev := monitor.Event{Kind: monitor.EventDecision, At: o.At.UnixNano(), SubKind: o.Subject.Kind, Subject: o.Subject.Name,
		Gateway: o.Gateway, Service: o.Service, Method: o.Method, Path: o.Path, Allowed: o.Allowed, Bytes: o.Bytes,
		Zone: o.SubjectZone, Caller: o.Caller, Forwarded: o.Forwarded, Name: o.Principal}
	if ev.Service == "" {
		ev.Service = o.Host
	}
	ev.CrossZone = o.ServiceZone != "" && o.SubjectZone != "" && o.ServiceZone != o.SubjectZone
	switch o.Cause {
	case authz.CauseNone:
	case authz.CauseUnknownIdentity, authz.CauseForwardRefused:
		// An identity this gateway may not use: a rogue device joining,
		// or a gateway speaking for devices that are not its own.
		if o.Gateway == "" {
			return // nobody to attribute it to
		}
		m.observe(monitor.Event{Kind: monitor.EventUnknownIdentity, At: ev.At, SubKind: topology.KindGateway,
			Subject: o.Gateway, Name: o.Principal, Detail: o.Reason, Caller: o.Caller, Forwarded: o.Forwarded})
		return
	case authz.CauseMalformed:
		return
	case authz.CauseStale:
		// This member was cut off too long to trust its replica: the
		// device did nothing, so nothing counts against it.
		return
	default:
		ev.Cause = o.Cause.String()
	}
	if ev.SubKind != topology.KindDevice && ev.SubKind != topology.KindGateway {
		return
	}
	m.observe(ev)
}

// accessEntry is the access-log handler (gRPC ALS on the xDS port).
func (m *monitorPart) accessEntry(e *xds.AccessEntry) {
	snap := m.n.store.Current()
	ix := snap.Index()
	id := e.PeerURI
	if e.Forwarded != "" {
		id = e.Forwarded
	}
	sub, known := ix.BySPIFFEID(id)
	path := e.Path
	if len(path) > maxRecordedPath {
		path = path[:maxRecordedPath] + "…[cut]"
	}
	line, _ := json.Marshal(accessRecord{Time: e.At.UTC(), Node: e.Node, Peer: e.PeerURI, Forwarded: e.Forwarded,
		Authority: e.Authority, Method: e.Method, Path: path, Status: e.Status, RequestBytes: e.RequestBytes, DeclaredBytes: e.DeclaredBytes,
		ResponseBytes: e.ResponseBytes, DurationMS: e.Duration.Milliseconds(), Upstream: e.Upstream, DecisionID: e.DecisionID})
	m.access.add(line)
	if e.Forwarded != "" {
		// A cloud edge's entry for a request the device's gateway logged
		// too: kept for evidence, judged once, from the gateway's.
		return
	}
	// The entry is the gateway's word about its own peer: a device behind
	// it, or itself. Naming another gateway's device is naming an
	// identity it may not present.
	if known && sub.Kind == topology.KindDevice {
		if d, ok := ix.Device(sub.Name); !ok || d.Gateway != e.Node {
			known = false
		}
	} else if known && sub.Kind == topology.KindGateway && sub.Name != e.Node {
		known = false
	}
	if !known || sub.Kind != topology.KindDevice && sub.Kind != topology.KindGateway {
		if id != "" {
			if _, isGW := ix.Gateway(e.Node); isGW {
				m.observe(monitor.Event{Kind: monitor.EventUnknownIdentity, At: e.At.UnixNano(), SubKind: topology.KindGateway,
					Subject: e.Node, Name: id, Detail: "in the gateway's access log"})
			}
		}
		return
	}
	ev := monitor.Event{Kind: monitor.EventAccess, At: e.At.UnixNano(), SubKind: sub.Kind, Subject: sub.Name,
		Method: e.Method, Path: e.Path, Status: e.Status, Bytes: int64(min(max(e.RequestBytes, e.DeclaredBytes), 1<<62)),
		RespBytes: int64(min(e.ResponseBytes, 1<<62)), Allowed: e.Status > 0 && e.Status < 400}
	zone, _ := ix.ZoneOf(sub)
	if svc, ok := ix.ServiceByHost(hostOnly(e.Authority)); ok {
		ev.Service = svc.Name
		ev.CrossZone = svc.Zone != zone
	} else {
		ev.Service = hostOnly(e.Authority)
	}
	// The gateway's Envoy answers some requests itself, before any Check:
	// a route's local rate limit (429), the catch-all for destinations no
	// route covers and RBAC (403). Their access-log entries carry no
	// decision of the authorizer, and they are the requests a device makes
	// where it should not: judge them as the denied attempts they are. A
	// 403 that the authorizer decided was judged as its decision already.
	if e.DecisionID == "" && (e.Status == 429 || e.Status == 403) {
		ev.Kind, ev.Allowed, ev.Cause = monitor.EventDecision, false, monitor.CauseNoFlow
		if e.Status == 429 {
			ev.Cause = monitor.CauseRateLimited
		}
	}
	m.observe(ev)
}

// maxRecordedPath bounds a path in the access log file, as the decision
// log bounds its fields.
const maxRecordedPath = 1024

// accessRecord is one line of the member's access log file.
type accessRecord struct {
	Time          time.Time `json:"time"`
	Node          string    `json:"node"`
	Peer          string    `json:"peer,omitempty"`
	Forwarded     string    `json:"forwarded,omitempty"`
	Authority     string    `json:"authority,omitempty"`
	Method        string    `json:"method,omitempty"`
	Path          string    `json:"path,omitempty"`
	Status        int       `json:"status"`
	RequestBytes  uint64    `json:"request_bytes"`
	DeclaredBytes uint64    `json:"declared_bytes,omitempty"`
	ResponseBytes uint64    `json:"response_bytes"`
	DurationMS    int64     `json:"duration_ms"`
	Upstream      string    `json:"upstream,omitempty"`
	DecisionID    string    `json:"decision_id,omitempty"`
}

func hostOnly(authority string) string {
	for i := len(authority) - 1; i >= 0; i-- {
		switch authority[i] {
		case ':':
			return authority[:i]
		case ']':
			return authority
		}
	}
	return authority
}

// attestationFailed and replayed are the attestor's hooks.
func (m *monitorPart) attestationFailed(device, format, reasons string, at time.Time) {
	m.observe(monitor.Event{Kind: monitor.EventAttestation, At: at.UnixNano(), SubKind: topology.KindDevice, Subject: device,
		Name: format, Detail: reasons})
}

func (m *monitorPart) replayed(device, format, digest string, at time.Time) {
	m.observe(monitor.Event{Kind: monitor.EventReplay, At: at.UnixNano(), SubKind: topology.KindDevice, Subject: device,
		Name: format, Detail: "evidence " + digest})
}

// observer is the authorizer's Observer: the decision metrics, and the
// monitor's once it exists (it starts after the authorizer).
func (n *Node) observer() func(*authz.Observation) {
	d, hub, id := n.decisions, n.hub, n.cfg.ID
	if n.cfg.Monitor.Off {
		return func(o *authz.Observation) {
			d.observe(o)
			if hub.Active() {
				hub.Publish(consoleDecision(o, id))
			}
		}
	}
	return func(o *authz.Observation) {
		d.observe(o)
		if hub.Active() {
			hub.Publish(consoleDecision(o, id))
		}
		if m := n.monitor; m != nil {
			m.decision(o)
		}
	}
}
