package spire

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

const (
	// SelectorType is the custom selector type of the entries a gateway
	// fetches for its devices through the agent's Delegated Identity API:
	// a device's entry has the one selector "vigil:device:<name>".
	SelectorType = "vigil"
	// SelectorsLabel, on a gateway, a device of an "identity: agent" class
	// or a service, replaces the workload selectors of its entry:
	// comma-separated "type:value" pairs, e.g. "unix:uid:101" or
	// "k8s:ns:telemetry,k8s:sa:telemetry".
	SelectorsLabel = "spire.vigil.io/selectors"
	// DefaultOwner marks the entries Vigil creates (their hint, and the
	// first part of their entry ID).
	DefaultOwner = "vigil"
	// MaxTokenTTL bounds a join token's life; a binding whose agent has not
	// attested by then is removed.
	MaxTokenTTL = 24 * time.Hour
)

// Entry is a registration entry as Vigil manages it: the fields it sets,
// with selectors as sorted "type:value" strings so that two entries compare
// with Same.
type Entry struct {
	ID        string   `json:"id"`
	SPIFFEID  string   `json:"spiffeId"`
	ParentID  string   `json:"parentId"`
	Selectors []string `json:"selectors"`
	// X509TTL is the X509-SVID lifetime in seconds; 0 is the server's
	// default.
	X509TTL int32  `json:"x509SvidTtl,omitempty"`
	Hint    string `json:"hint,omitempty"`
	// CreatedAt is when the server created the entry (Unix seconds); it is
	// read, never written, and not compared.
	CreatedAt int64 `json:"createdAt,omitempty"`
}

// Same reports whether e and o set the same values (CreatedAt aside).
func (e *Entry) Same(o *Entry) bool {
	return e.ID == o.ID && e.SPIFFEID == o.SPIFFEID && e.ParentID == o.ParentID &&
		e.X509TTL == o.X509TTL && e.Hint == o.Hint && slices.Equal(e.Selectors, o.Selectors)
}

// Options shape the entries Vigil wants.
type Options struct {
	// Owner marks Vigil's entries: subjects' entries have hint Owner and ID
	// "<Owner>.<kind>.<name>", cloud edges' "<Owner>.edge.<zone>.<id>" and
	// "<Owner>.fronted.<service>"; agent bindings have hint "<Owner>.agent"
	// and ID "<Owner>.agent.<kind>.<name>.<random>" (".tpm", ".fw-<16 hex>"
	// and ".banned" for subjects onboarded by vigil_tpm, see DesiredTPM).
	// Two Vigil clusters sharing one SPIRE server need different owners.
	// At most one of them may use vigil_tpm (have a class that sets
	// attestation.spire): its agents' IDs carry no owner, and a cluster
	// that uses it manages every vigil_tpm agent of its trust domain,
	// evicting those it does not know; two clusters that both use
	// vigil_tpm must not share a SPIRE server. A cluster that does not
	// use it leaves vigil_tpm agents alone. Default "vigil".
	Owner string
	// X509-SVID lifetimes. A quarantined device's last SVID stays valid up
	// to DeviceTTL (ext_authz and the gateways' RBAC deny it at once).
	// EdgeTTL is a cloud edge's own SVID's; the SVIDs of the services it
	// fronts live ServiceTTL.
	DeviceTTL, GatewayTTL, ServiceTTL, EdgeTTL time.Duration
	// GatewaySelectors are the workload selectors, on the gateway's own
	// agent, of the processes that hold the gateway's identity (its Envoy
	// and its device bridge), e.g. "unix:uid:101". Empty: no workload gets
	// the gateway's SVID; the binding only aliases the agent. A gateway's
	// SelectorsLabel overrides them.
	GatewaySelectors []string
	// DeviceAgentSelectors are the same for devices of "identity: agent"
	// classes, on the device's own agent.
	DeviceAgentSelectors []string
	// Edges declares the cloud edges' Envoys, "ZONE/ID" (node.cluster and
	// node.id): each gets an entry for its own SVID, and the services with
	// backends in its zone an entry it can fetch (see edge.go). An edge
	// whose zone is not in the topology, or whose ID names a gateway,
	// device or service, is skipped with a warning.
	Edges []string
	// EdgeSelectors are the workload selectors of the Envoy process on the
	// edge hosts, e.g. "unix:uid:101"; required with Edges.
	EdgeSelectors []string
	// EdgeParents, "ZONE=PARENT", parent a zone's edge entries to a node
	// alias or agent ID of the edge hosts (a SPIFFE ID, or a path in the
	// document's trust domain). Default: the zone's hosts alias (HostsID),
	// which service entries use too.
	EdgeParents []string
}

// DefaultOptions are short-lived SVIDs: 5 minutes for devices, 15 for
// gateways and cloud edges, an hour for services.
func DefaultOptions() Options {
	return Options{Owner: DefaultOwner, DeviceTTL: 5 * time.Minute, GatewayTTL: 15 * time.Minute, ServiceTTL: time.Hour,
		EdgeTTL: 15 * time.Minute}
}

// Validate checks the options and fills in defaults for zero values.
func (o *Options) Validate() error {
	d := DefaultOptions()
	o.Owner = cmp.Or(o.Owner, d.Owner)
	var errs []error
	if !topology.IsName(o.Owner) {
		errs = append(errs, fmt.Errorf("owner %q must be a lowercase DNS label (a-z, 0-9, '-')", o.Owner))
	}
	for _, t := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"device", &o.DeviceTTL, d.DeviceTTL}, {"gateway", &o.GatewayTTL, d.GatewayTTL}, {"service", &o.ServiceTTL, d.ServiceTTL}, {"edge", &o.EdgeTTL, d.EdgeTTL}} {
		switch {
		case *t.v == 0:
			*t.v = t.def
		case *t.v < time.Second || *t.v > math.MaxInt32*time.Second:
			errs = append(errs, fmt.Errorf("%s SVID TTL %v must be at least 1s", t.name, *t.v))
		}
	}
	for name, sels := range map[string][]string{"gateway": o.GatewaySelectors, "device agent": o.DeviceAgentSelectors} {
		if _, err := parseSelectors(sels); err != nil {
			errs = append(errs, fmt.Errorf("%s selectors: %w", name, err))
		}
	}
	errs = append(errs, o.validateEdges()...)
	return errors.Join(errs...)
}

func seconds(d time.Duration) int32 { return int32(d / time.Second) }

// EntryID is the ID of the entry Vigil keeps for a device or service.
func (o *Options) EntryID(s topology.Subject) string {
	return o.Owner + "." + s.Kind.String() + "." + s.Name
}

func (o *Options) bindingHint() string { return o.Owner + ".agent" }

// subjectOf reads the subject back from an entry ID of Owner's, for the
// kinds Vigil keeps entries of; ok is false for any other ID.
func (o *Options) subjectOf(id string) (topology.Subject, bool) {
	rest, ok := strings.CutPrefix(id, o.Owner+".")
	if !ok {
		return topology.Subject{}, false
	}
	kind, name, ok := strings.Cut(rest, ".")
	if !ok || !topology.IsName(name) || kind != "device" && kind != "service" {
		return topology.Subject{}, false
	}
	k, _ := topology.ParseKind(kind)
	return topology.Subject{Kind: k, Name: name}, true
}

// HostsID is the node alias that a zone's service hosts' agents map to;
// every service entry of the zone is parented to it. Operators map their
// hosts' agents to it with a node entry of their own (see
// docs/decisions/0005-spire-entries.md).
func HostsID(trustDomain, zone string) string {
	return "spiffe://" + trustDomain + "/zone/" + zone + "/hosts"
}

// JoinTokenAgentID is the SPIFFE ID an agent attested with token gets.
func JoinTokenAgentID(trustDomain, token string) string {
	return "spiffe://" + trustDomain + "/spire/agent/join_token/" + token
}

// DeviceSelector is the selector a gateway presents for a device.
func DeviceSelector(device string) string { return SelectorType + ":device:" + device }

// Desired computes the entries a snapshot wants for its devices, services
// and the declared cloud edges (Options.Edges), sorted by ID. Devices of
// "identity: agent" classes and gateways get their identity through an
// agent binding instead (see Onboard), and quarantined devices get none. A
// subject whose SelectorsLabel does not parse gets no entry and an error;
// an edge that cannot be served in this topology gets none and an
// *EdgeSkipped error.
func Desired(snap *topology.Snapshot, opts Options) ([]Entry, []error) {
	ix := snap.Index()
	out := make([]Entry, 0, ix.NumDevices()+ix.NumServices())
	var errs []error
	own := map[string][]string{} // services' own selectors
	add := func(s topology.Subject) {
		e, ok, err := desiredFor(snap, s, &opts)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			out = append(out, e)
			if s.Kind == topology.KindService {
				own[s.Name] = e.Selectors
			}
		}
	}
	for _, d := range ix.Devices() {
		add(topology.DeviceSubject(d.Name))
	}
	for _, s := range ix.Services() {
		add(topology.ServiceSubject(s.Name))
	}
	if snap.HasDocument() {
		edges, edgeErrs := desiredEdges(snap, &opts, own)
		out, errs = append(out, edges...), append(errs, edgeErrs...)
	}
	slices.SortFunc(out, func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })
	return out, errs
}

// desiredFor is the entry one device or service wants, if any.
func desiredFor(snap *topology.Snapshot, s topology.Subject, o *Options) (Entry, bool, error) {
	ix := snap.Index()
	td := ix.TrustDomain()
	id, ok := ix.SPIFFEID(s)
	if !ok {
		return Entry{}, false, nil
	}
	e := Entry{ID: o.EntryID(s), SPIFFEID: id, Hint: o.Owner}
	switch s.Kind {
	case topology.KindDevice:
		d, _ := ix.Device(s.Name)
		if c, _ := ix.Class(d.Class); c.OwnAgent() || snap.Quarantined(s) {
			return Entry{}, false, nil
		}
		e.ParentID, _ = ix.SPIFFEID(topology.GatewaySubject(d.Gateway))
		e.Selectors = []string{DeviceSelector(s.Name)}
		e.X509TTL = seconds(o.DeviceTTL)
	case topology.KindService:
		svc, _ := ix.Service(s.Name)
		sels, err := labelSelectors(svc.Labels, []string{SelectorType + ":service:" + s.Name})
		if err != nil {
			return Entry{}, false, fmt.Errorf("service %s: label %s: %w", s.Name, SelectorsLabel, err)
		}
		e.ParentID, e.Selectors, e.X509TTL = HostsID(td, svc.Zone), sels, seconds(o.ServiceTTL)
	default:
		return Entry{}, false, nil
	}
	return e, true, nil
}

// labelSelectors reads SelectorsLabel, or returns def when it is absent.
func labelSelectors(l topology.Labels, def []string) ([]string, error) {
	v, ok := l[SelectorsLabel]
	if !ok {
		return normalize(def), nil
	}
	sels, err := parseSelectors(strings.Split(v, ","))
	if err == nil && len(sels) == 0 {
		err = errors.New("lists no selector")
	}
	return sels, err
}

// parseSelectors checks "type:value" selectors and returns them sorted and
// without repeats.
func parseSelectors(in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, s := range in {
		s = strings.TrimSpace(s)
		typ, value, ok := strings.Cut(s, ":")
		if !ok || typ == "" || value == "" {
			return nil, fmt.Errorf("selector %q is not \"type:value\"", s)
		}
		out = append(out, s)
	}
	return normalize(out), nil
}

func normalize(sels []string) []string {
	out := slices.Clone(sels)
	slices.Sort(out)
	return slices.Compact(out)
}

// Changes turn the entries a server holds into the desired ones.
type Changes struct {
	Create []Entry
	Update []Entry
	Delete []string // entry IDs
}

// Len is the number of entries the changes touch.
func (c *Changes) Len() int { return len(c.Create) + len(c.Update) + len(c.Delete) }

// Diff compares desired entries with the existing entries Vigil owns
// (matched by ID): what is missing is created, what differs is updated,
// and what no longer is desired is deleted. Both lists may come in any
// order; the changes are sorted by ID.
func Diff(desired, existing []Entry) Changes {
	have := make(map[string]*Entry, len(existing))
	for i := range existing {
		have[existing[i].ID] = &existing[i]
	}
	var c Changes
	for i := range desired {
		d := &desired[i]
		e, ok := have[d.ID]
		switch {
		case !ok:
			c.Create = append(c.Create, *d)
		case !d.Same(e):
			c.Update = append(c.Update, *d)
		}
		delete(have, d.ID)
	}
	for id := range have {
		c.Delete = append(c.Delete, id)
	}
	byID := func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) }
	slices.SortFunc(c.Create, byID)
	slices.SortFunc(c.Update, byID)
	slices.Sort(c.Delete)
	return c
}
