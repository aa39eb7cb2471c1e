package xds

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vigil-iot/vigil/topology"
)

// ErrUnknownNode is returned (wrapped) by Translate when the node's ID names
// no gateway of the topology. The server answers such nodes with a deny-all
// configuration instead of another zone's.
var ErrUnknownNode = errors.New("unknown xds node")

// Node is the proxy asking for configuration, as its xDS node names it.
//
//   - An Envoy gateway: ID is the gateway's name; Cluster, when given, must
//     be its zone.
//   - An Envoy cloud edge: ID is the edge's own name (a DNS label that
//     names no gateway, device or service) and Cluster the zone whose
//     services it fronts.
//   - A proxyless gRPC client or server (Proxyless): ID is the gateway or
//     service it runs as.
type Node struct {
	ID      string
	Cluster string
	// Proxyless is a gRPC library rather than Envoy (the server tells by
	// the node's user agent).
	Proxyless bool
	// Peer is the SPIFFE ID of the client certificate the connection was
	// verified with ("" without one). With Options.RequirePeer a node
	// gets its configuration only if Peer is its own identity.
	Peer string
}

// NodeKind is what a node is to Vigil.
type NodeKind string

// Node kinds.
const (
	KindGateway   NodeKind = "gateway"
	KindEdge      NodeKind = "edge"
	KindProxyless NodeKind = "proxyless"
)

func unknownNode(node Node, why string) error {
	return fmt.Errorf("%w %q: %s", ErrUnknownNode, node.ID, why)
}

// Classify says what node is in ix, or why it is unknown (ErrUnknownNode).
func Classify(ix *topology.Index, node Node) (NodeKind, error) {
	if node.Proxyless {
		_, gw := ix.Gateway(node.ID)
		_, svc := ix.Service(node.ID)
		if !gw && !svc {
			return "", unknownNode(node, "no gateway or service of that name")
		}
		return KindProxyless, nil
	}
	if gw, ok := ix.Gateway(node.ID); ok {
		if node.Cluster != "" && node.Cluster != gw.Zone {
			return "", unknownNode(node, fmt.Sprintf("node.cluster %q is not the gateway's zone %q", node.Cluster, gw.Zone))
		}
		return KindGateway, nil
	}
	if _, ok := ix.Zone(node.Cluster); !ok {
		return "", unknownNode(node, "no gateway of that name, and node.cluster names no zone")
	}
	_, dev := ix.Device(node.ID)
	_, svc := ix.Service(node.ID)
	if dev || svc || !topology.IsName(node.ID) {
		return "", unknownNode(node, "a cloud edge's node.id must be a DNS label that names no device or service")
	}
	return KindEdge, nil
}

// ExpectedPeer is the SPIFFE ID that may receive the configuration of node,
// of kind in ix.
func ExpectedPeer(ix *topology.Index, node Node, kind NodeKind) string {
	var sub topology.Subject
	switch {
	case kind == KindEdge:
		return EdgeSPIFFEID(ix.TrustDomain(), node.Cluster, node.ID)
	case kind == KindGateway:
		sub = topology.GatewaySubject(node.ID)
	case kind == KindProxyless:
		if _, ok := ix.Gateway(node.ID); ok {
			sub = topology.GatewaySubject(node.ID)
		} else {
			sub = topology.ServiceSubject(node.ID)
		}
	}
	id, _ := ix.SPIFFEID(sub)
	return id
}

// Defaults of Options.
const (
	// DefaultSDSSocket is where the SPIRE agent's Workload API (which also
	// serves Envoy SDS) listens in SPIRE's Envoy integration examples; the
	// agent's built-in default (/tmp/spire-agent/public/api.sock) is not
	// meant for production. Deployments set Options.SDSSocket.
	DefaultSDSSocket    = "/run/spire/sockets/agent.sock"
	DefaultListenerPort = 8443
	DefaultAuthzTimeout = 250 * time.Millisecond
	// DefaultAuthzEndpoint is the ext_authz address of a Vigil node on the
	// same machine (`vigil dev`); production gateways list real nodes.
	DefaultAuthzEndpoint = "127.0.0.1:9191"
)

// Options are the deployment facts the topology does not hold.
type Options struct {
	// AuthzEndpoints are the Vigil ext_authz addresses (host:port).
	AuthzEndpoints []string
	// AuthzTLS makes the gateway call ext_authz over mTLS with its own SVID,
	// accepting only Vigil node identities (spiffe://<td>/vigil/node/...).
	AuthzTLS bool
	// RequirePeer serves a node only to the holder of its identity
	// (Node.Peer): a gateway's SVID, an edge's, or for proxyless nodes the
	// gateway's or service's. Any other node is unknown (deny-all).
	RequirePeer bool
	// SDSSocket is the SPIRE agent's unix socket serving SDS.
	SDSSocket string
	// ListenerPort is the device-facing port.
	ListenerPort uint32
	// AuthzTimeout bounds each ext_authz Check.
	AuthzTimeout time.Duration
	// MaxConnectionDuration bounds a downstream connection's life at
	// gateways and edges; keep it at most the device SVID TTL, so that a
	// revoked device cannot keep an old connection.
	MaxConnectionDuration time.Duration
}

// DefaultOptions returns the options Translate uses for zero fields.
func DefaultOptions() Options {
	return Options{
		AuthzEndpoints: []string{DefaultAuthzEndpoint},
		SDSSocket:      DefaultSDSSocket,
		ListenerPort:   DefaultListenerPort,
		AuthzTimeout:   DefaultAuthzTimeout,

		MaxConnectionDuration: DefaultMaxConnectionDuration,
	}
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if len(o.AuthzEndpoints) == 0 {
		o.AuthzEndpoints = d.AuthzEndpoints
	}
	o.SDSSocket = cmp.Or(o.SDSSocket, d.SDSSocket)
	o.ListenerPort = cmp.Or(o.ListenerPort, d.ListenerPort)
	o.AuthzTimeout = cmp.Or(o.AuthzTimeout, d.AuthzTimeout)
	o.MaxConnectionDuration = cmp.Or(o.MaxConnectionDuration, d.MaxConnectionDuration)
	return o
}

// Validate reports options Translate cannot use.
func (o Options) Validate() error {
	var errs []error
	for _, e := range o.AuthzEndpoints {
		if _, _, err := splitHostPort(e); err != nil {
			errs = append(errs, fmt.Errorf("authz endpoint: %w", err))
		}
	}
	if o.ListenerPort > 65535 {
		errs = append(errs, fmt.Errorf("listener port %d out of range", o.ListenerPort))
	}
	if o.MaxConnectionDuration < 0 {
		errs = append(errs, fmt.Errorf("max connection duration %v is negative", o.MaxConnectionDuration))
	}
	if o.AuthzTimeout < 0 {
		errs = append(errs, fmt.Errorf("authz timeout %v is negative", o.AuthzTimeout))
	}
	return errors.Join(errs...)
}

// Resources is one node's configuration, each list sorted by name.
type Resources struct {
	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
	Endpoints []types.Resource
}

// Translate builds the configuration of node from snap. It is pure: the same
// snapshot, node and options give byte-identical resources.
func Translate(snap *topology.Snapshot, node Node, opts Options) (*Resources, error) {
	opts = opts.withDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("xds options: %w", err)
	}
	kind, err := admitted(snap, node, opts)
	if err != nil {
		return nil, err
	}
	var res *Resources
	// known holds resources validated already.
	var known map[types.Resource]bool
	switch kind {
	case KindGateway:
		p, err := planGateway(snap, node.ID)
		if err != nil {
			return nil, err
		}
		routes, _, err := sharedGatewayRoutes(snap.Index(), p) // validated
		if err != nil {
			return nil, fmt.Errorf("xds node %q: route configuration: %w", node.ID, err)
		}
		known = map[types.Resource]bool{routes: true}
		res = &Resources{
			Listeners: []types.Resource{gatewayListener(p.listenerIn(), opts)},
			Routes:    []types.Resource{routes},
			Clusters:  gatewayClusters(p, opts),
			Endpoints: gatewayEndpoints(p),
		}
	case KindEdge:
		res = translateEdge(planEdge(snap, node), opts)
	case KindProxyless:
		if res, err = translateProxyless(snap, node); err != nil {
			return nil, err
		}
	}
	for _, list := range lists(res) {
		slices.SortFunc(list, func(a, b types.Resource) int { return cmp.Compare(name(a), name(b)) })
		for _, r := range list {
			if _, ok := known[r]; ok {
				continue
			}
			if _, err := validateDigest(r); err != nil {
				return nil, fmt.Errorf("xds node %q: %T %q: %w", node.ID, r, name(r), err)
			}
		}
	}
	return res, nil
}

// admitted is Classify, and with opts.RequirePeer the check that the node
// holds its own identity.
func admitted(snap *topology.Snapshot, node Node, opts Options) (NodeKind, error) {
	kind, err := Classify(snap.Index(), node)
	if err != nil {
		return "", err
	}
	if want := ExpectedPeer(snap.Index(), node, kind); opts.RequirePeer && (want == "" || node.Peer != want) {
		return "", unknownNode(node, fmt.Sprintf("its connection's identity %q is not the node's %q", node.Peer, want))
	}
	return kind, nil
}

// name is a resource's xDS name.
func name(r types.Resource) string {
	switch r := r.(type) {
	case interface{ GetClusterName() string }: // ClusterLoadAssignment
		return r.GetClusterName()
	case interface{ GetName() string }:
		return r.GetName()
	}
	return ""
}

// gatewayPlan is what a gateway's configuration is made of, decided once
// from the index and shared by the per-feature builders.
type gatewayPlan struct {
	trustDomain string
	gateway     *topology.Gateway
	spiffeID    string
	// services the gateway's devices may reach, sorted by name.
	services []*serviceFlows
	// quarantined holds the SPIFFE IDs of this gateway's quarantined
	// devices, sorted; gatewayQuarantined cuts off the whole gateway.
	quarantined        []string
	gatewayQuarantined bool
}

// serviceFlows is a reachable service and the flows that reach it.
type serviceFlows struct {
	svc      *topology.Service
	spiffeID string
	grants   []*grant // in document order
}

// grant is a flow from some of this gateway's devices to a service.
type grant struct {
	rule    *topology.Rule
	service string
	// classes holds the classes of this gateway's devices the flow applies
	// to, with their default rates.
	classes map[string]topology.Rate
}

func planGateway(snap *topology.Snapshot, id string) (*gatewayPlan, error) {
	ix := snap.Index()
	gw, ok := ix.Gateway(id)
	if !ok {
		return nil, fmt.Errorf("%w %q: no gateway of that name", ErrUnknownNode, id)
	}
	p := &gatewayPlan{
		trustDomain:        ix.TrustDomain(),
		gateway:            gw,
		spiffeID:           topology.SPIFFEID(ix.TrustDomain(), gw.Zone, topology.GatewaySubject(gw.Name)),
		gatewayQuarantined: snap.Quarantined(topology.GatewaySubject(gw.Name)),
	}
	type key struct {
		rule    *topology.Rule
		service string
	}
	grants := make(map[key]*grant)
	targets := make(map[*topology.Rule][]string) // per rule, not per device
	for _, d := range ix.DevicesOf(gw.Name) {
		sub := topology.DeviceSubject(d.Name)
		if snap.Quarantined(sub) {
			p.quarantined = append(p.quarantined, topology.SPIFFEID(p.trustDomain, gw.Zone, sub))
		}
		class, _ := ix.Class(d.Class)
		for _, r := range ix.RulesFrom(sub) {
			// Flows to devices (service → device commands) are not
			// served by the gateway's device-facing listener.
			// tcp services are left out too: this listener speaks HTTP.
			ts, ok := targets[r]
			if !ok {
				ts = targetServices(ix, r)
				targets[r] = ts
			}
			for _, svc := range ts {
				k := key{r, svc}
				g := grants[k]
				if g == nil {
					g = &grant{rule: r, service: svc, classes: map[string]topology.Rate{}}
					grants[k] = g
				}
				g.classes[d.Class] = class.Rate
			}
		}
	}
	bySvc := make(map[string]*serviceFlows)
	for _, g := range grants {
		sf := bySvc[g.service]
		if sf == nil {
			svc, _ := ix.Service(g.service)
			sf = &serviceFlows{svc: svc, spiffeID: topology.SPIFFEID(p.trustDomain, svc.Zone, topology.ServiceSubject(svc.Name))}
			bySvc[g.service] = sf
			p.services = append(p.services, sf)
		}
		sf.grants = append(sf.grants, g)
	}
	slices.SortFunc(p.services, func(a, b *serviceFlows) int { return cmp.Compare(a.svc.Name, b.svc.Name) })
	for _, sf := range p.services {
		slices.SortFunc(sf.grants, func(a, b *grant) int { return cmp.Compare(a.rule.Position, b.rule.Position) })
	}
	slices.Sort(p.quarantined)
	return p, nil
}

// targetServices lists the services the rule's "to" side selects, as the
// index has them (a zone in the selector narrows the services).
func targetServices(ix *topology.Index, r *topology.Rule) []string {
	names := r.To.Services
	if r.To.Service != "" {
		names = append([]string{r.To.Service}, names...)
	}
	var out []string
	for _, n := range names {
		svc, _ := ix.Service(n)
		if svc.Protocol != topology.ProtocolTCP && slices.Contains(ix.RulesTo(topology.ServiceSubject(n)), r) && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// splitHostPort splits an endpoint and reports whether its host is an IP.
func splitHostPort(e string) (host string, port uint32, err error) {
	h, p, err := net.SplitHostPort(e)
	if err != nil {
		return "", 0, fmt.Errorf("endpoint %q must be host:port", e)
	}
	var n uint32
	if _, err := fmt.Sscanf(p, "%d", &n); err != nil || n == 0 || n > 65535 || fmt.Sprint(n) != p {
		return "", 0, fmt.Errorf("endpoint %q has an invalid port", e)
	}
	if h == "" {
		return "", 0, fmt.Errorf("endpoint %q has no host", e)
	}
	return h, n, nil
}

// mustAny packs m deterministically (map fields in key order) so that the
// same input gives byte-identical output. Marshalling a generated message
// cannot fail; a failure is a programming error.
func mustAny(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("xds: marshal %T: %v", m, err))
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
}

// validateDeep runs the generated Validate of m and of every message packed
// in an Any below it (Validate itself does not look inside an Any). A
// message byte-identical to one it accepted before is accepted at once:
// most resources are the same across revisions, and many across nodes.
func validateDeep(m proto.Message) error {
	_, err := validateDigest(m)
	return err
}

// validateDigest is validateDeep that also returns m's digestOf.
func validateDigest(m proto.Message) ([sha256.Size]byte, error) {
	digest, err := digestOf(m)
	if err != nil || validMessages.has("", digest[:]) {
		return digest, err
	}
	if err := validateTree(m); err != nil {
		return digest, err
	}
	validMessages.add("", digest[:])
	return digest, nil
}

// digestOf is the SHA-256 of m's type and deterministic encoding.
func digestOf(m proto.Message) ([sha256.Size]byte, error) {
	buf := digestBufs.Get().(*[]byte)
	defer digestBufs.Put(buf)
	b, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend((*buf)[:0], m)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	*buf = b
	return digestBytes(m.ProtoReflect().Descriptor().FullName(), b), nil
}

// digestBytes is digestOf a message of type fullName whose deterministic
// encoding is b.
func digestBytes(fullName protoreflect.FullName, b []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(fullName))
	h.Write([]byte{0})
	h.Write(b)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// digestBufs holds digestOf's encoding buffers: each is garbage the moment
// it is hashed.
var digestBufs = sync.Pool{New: func() any { return new([]byte) }}

// validateTree is validateDeep without the memo of whole messages.
func validateTree(m proto.Message) error {
	if v, ok := m.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return err
		}
	}
	var err error
	var walk func(protoreflect.Message) bool
	check := func(v protoreflect.Value) bool {
		msg := v.Message()
		if a, ok := msg.Interface().(*anypb.Any); ok {
			if validAnys.has(a.GetTypeUrl(), a.GetValue()) {
				return true
			}
			inner, uerr := a.UnmarshalNew()
			if uerr == nil {
				uerr = validateTree(inner)
			}
			if uerr != nil {
				err = fmt.Errorf("%s: %w", a.GetTypeUrl(), uerr)
				return false
			}
			validAnys.add(a.GetTypeUrl(), a.GetValue())
			return true
		}
		return walk(msg)
	}
	walk = func(msg protoreflect.Message) bool {
		ok := true
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := 0; ok && i < v.List().Len(); i++ {
					ok = check(v.List().Get(i))
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					ok = check(mv)
					return ok
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				ok = check(v)
			}
			return ok
		})
		return ok
	}
	walk(m.ProtoReflect())
	return err
}

// validAnys remembers the packed messages validateTree accepted, and
// validMessages the digests of the messages validateDeep accepted: most
// are byte-identical across nodes and revisions (filters, per-route
// settings, a gateway's TLS contexts), and unpacking and validating them
// again was most of the cost of a translation. Each starts over past
// 64 MiB.
var validAnys, validMessages memo

// memo is a set of (type, bytes) pairs.
type memo struct {
	mu     sync.Mutex
	byType map[string]map[string]struct{} // type → value
	size   int
}

func (m *memo) has(typ string, value []byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.byType[typ][string(value)]
	return ok
}

func (m *memo) add(typ string, value []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.byType == nil || m.size > 64<<20 {
		m.byType, m.size = map[string]map[string]struct{}{}, 0
	}
	values := m.byType[typ]
	if values == nil {
		values = map[string]struct{}{}
		m.byType[typ] = values
	}
	if _, ok := values[string(value)]; !ok {
		values[string(value)] = struct{}{}
		m.size += len(value) + 64 // roughly, with the map's overhead
	}
}
