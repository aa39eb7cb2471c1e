package spire

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/vigil-iot/vigil/topology"
)

// Cloud edges. The topology does not list them (an edge's xDS node.id is a
// free DNS label), so the operator declares them in Options.Edges. Each
// declared edge gets an entry for its own identity, and every service with
// backends in its zone gets one more entry, next to its own, that the
// edges' Envoy can fetch: SPIRE hands a workload the entries whose
// selectors it all has, so the service's own entry (whose delegated-only
// selector vigil:service:<name> no process has) cannot serve the edge.
//
//	<Owner>.edge.<zone>.<id>   SPIFFE ID spiffe://<td>/zone/<zone>/edge/<id>
//	<Owner>.fronted.<service>  SPIFFE ID the service's
//
// Both are parented to the zone's edge parent (EdgeParents, default the
// zone's hosts alias HostsID) with EdgeSelectors as selectors.

// EdgeSPIFFEID is a cloud edge's own identity, which it presents to
// Vigil's xDS and ext_authz (the same as xds.EdgeSPIFFEID).
func EdgeSPIFFEID(trustDomain, zone, id string) string {
	return "spiffe://" + trustDomain + "/zone/" + zone + "/edge/" + id
}

// ParseEdge reads an edge declaration, "ZONE/ID": the zone whose services
// the edge fronts (its node.cluster) and its xDS node.id, both DNS labels.
func ParseEdge(s string) (zone, id string, err error) {
	zone, id, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok || !topology.IsName(zone) || !topology.IsName(id) {
		return "", "", fmt.Errorf("edge %q is not ZONE/ID (two lowercase DNS labels, e.g. cloud/edge-1)", s)
	}
	return zone, id, nil
}

// ParseEdgeParent reads "ZONE=PARENT": the parent of the entries of that
// zone's edges, a SPIFFE ID (a node alias the operator maps the edge hosts'
// agents to, or one agent's ID) or a path ("/zone/cloud/edge-hosts") in
// the document's trust domain.
func ParseEdgeParent(s string) (zone, parent string, err error) {
	zone, parent, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok || !topology.IsName(zone) {
		return "", "", fmt.Errorf("edge parent %q is not ZONE=SPIFFE-ID (e.g. cloud=spiffe://city.example/zone/cloud/edge-hosts)", s)
	}
	path := parent
	if !strings.HasPrefix(parent, "/") {
		id, err := spiffeid.FromString(parent)
		if err != nil {
			return "", "", fmt.Errorf("edge parent of zone %s: %q is neither a SPIFFE ID nor a path: %w", zone, parent, err)
		}
		path = id.Path()
	} else if err := spiffeid.ValidatePath(parent); err != nil {
		return "", "", fmt.Errorf("edge parent of zone %s: path %q: %w", zone, parent, err)
	}
	switch {
	case path == "":
		return "", "", fmt.Errorf("edge parent of zone %s: %q has no path", zone, parent)
	case path == "/spire/server":
		// Entries parented to the server are node entries, matched
		// against agents' node selectors: never what an edge wants.
		return "", "", fmt.Errorf("edge parent of zone %s: %q is the SPIRE server; name the edge hosts' node alias or agent", zone, parent)
	}
	return zone, parent, nil
}

// validateEdges checks the edge options; the topology parts (the zone
// exists, the ID names no subject) are checked on each pass instead.
func (o *Options) validateEdges() []error {
	var errs []error
	zones := map[string]bool{}
	for _, e := range o.Edges {
		zone, _, err := ParseEdge(e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		zones[zone] = true
	}
	parents := map[string]bool{}
	for _, p := range o.EdgeParents {
		zone, _, err := ParseEdgeParent(p)
		switch {
		case err != nil:
			errs = append(errs, err)
		case parents[zone]:
			errs = append(errs, fmt.Errorf("edge parent of zone %s given twice", zone))
		case !zones[zone]:
			errs = append(errs, fmt.Errorf("edge parent of zone %s, which has no edge", zone))
		}
		parents[zone] = true
	}
	sels, err := parseSelectors(o.EdgeSelectors)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("edge selectors: %w", err))
	case len(o.Edges) > 0 && len(sels) == 0:
		errs = append(errs, errors.New("cloud edges need edge selectors: the workload selectors of the edge hosts' Envoy, e.g. unix:uid:101"))
	}
	return errs
}

// EdgeSkipped says why a declared edge gets no entries in this topology.
// The reconciler reports it (Result.Skipped, and one warning in the log)
// rather than counting it as a failure: it persists until the operator
// changes the topology or the edge declarations.
type EdgeSkipped struct {
	Edge   string // ZONE/ID
	Reason string
}

func (e *EdgeSkipped) Error() string { return "cloud edge " + e.Edge + " skipped: " + e.Reason }

// edgeEntryID and frontedEntryID name the entries of cloud edges.
func (o *Options) edgeEntryID(zone, id string) string { return o.Owner + ".edge." + zone + "." + id }
func (o *Options) frontedEntryID(service string) string {
	return o.Owner + ".fronted." + service
}

// isEdgeEntryID reports whether id has the shape of an edge or fronted
// entry of Owner's.
func (o *Options) isEdgeEntryID(id string) bool {
	if rest, ok := strings.CutPrefix(id, o.Owner+".edge."); ok {
		zone, name, ok := strings.Cut(rest, ".")
		return ok && topology.IsName(zone) && topology.IsName(name)
	}
	if rest, ok := strings.CutPrefix(id, o.Owner+".fronted."); ok {
		return topology.IsName(rest)
	}
	return false
}

// owns reports whether id is the ID of an entry Vigil keeps under hint
// Owner: a device's, a service's, an edge's or a fronted service's.
func (o *Options) owns(id string) bool {
	_, ok := o.subjectOf(id)
	return ok || o.isEdgeEntryID(id)
}

// edgeParent is the parent of zone's edge entries in trust domain td.
func (o *Options) edgeParent(td, zone string) (string, error) {
	for _, p := range o.EdgeParents {
		z, parent, err := ParseEdgeParent(p)
		if err != nil || z != zone {
			continue
		}
		if strings.HasPrefix(parent, "/") {
			return "spiffe://" + td + parent, nil
		}
		if id, _ := spiffeid.FromString(parent); id.TrustDomain().Name() != td {
			return "", fmt.Errorf("its parent %s is not in the trust domain %s", parent, td)
		}
		return parent, nil
	}
	return HostsID(td, zone), nil
}

// desiredEdges computes the entries of the declared cloud edges: one per
// edge whose zone exists and whose ID names no gateway, device or service
// (the others are skipped, with an *EdgeSkipped each), and one per service
// with backends in a zone that has such an edge. ownSelectors are the
// selectors of the services' own entries (absent if they have none).
func desiredEdges(snap *topology.Snapshot, o *Options, ownSelectors map[string][]string) ([]Entry, []error) {
	if len(o.Edges) == 0 {
		return nil, nil
	}
	ix := snap.Index()
	td := ix.TrustDomain()
	sels, err := parseSelectors(o.EdgeSelectors)
	if err != nil || len(sels) == 0 {
		return nil, []error{fmt.Errorf("cloud edges: no valid edge selectors (%v)", err)}
	}
	var out []Entry
	var errs []error
	parents := map[string]string{} // zone → parent, of zones with an edge
	edges := slices.Clone(o.Edges)
	for i := range edges {
		edges[i] = strings.TrimSpace(edges[i])
	}
	slices.Sort(edges)
	for _, spec := range slices.Compact(edges) {
		zone, id, err := ParseEdge(spec)
		if err != nil {
			errs = append(errs, err) // Validate reports it first
			continue
		}
		skip := func(why string, args ...any) {
			errs = append(errs, &EdgeSkipped{Edge: zone + "/" + id, Reason: fmt.Sprintf(why, args...)})
		}
		_, gw := ix.Gateway(id)
		_, dev := ix.Device(id)
		_, svc := ix.Service(id)
		if _, ok := ix.Zone(zone); !ok {
			skip("the topology has no zone %q", zone)
			continue
		}
		if gw || dev || svc {
			skip("its ID %q names a gateway, device or service of the topology", id)
			continue
		}
		parent, err := o.edgeParent(td, zone)
		if err != nil {
			skip("%v", err)
			continue
		}
		parents[zone] = parent
		out = append(out, Entry{ID: o.edgeEntryID(zone, id), SPIFFEID: EdgeSPIFFEID(td, zone, id), ParentID: parent,
			Selectors: sels, X509TTL: seconds(o.EdgeTTL), Hint: o.Owner})
	}
	for zone, parent := range parents {
		for _, svc := range ix.ServicesIn(zone) {
			if len(svc.Backends) == 0 {
				continue
			}
			if own, ok := ownSelectors[svc.Name]; ok && parent == HostsID(td, zone) && slices.Equal(own, sels) {
				// The service's own entry already serves the edges' Envoy;
				// a second one like it is one SPIRE refuses to create.
				continue
			}
			id, _ := ix.SPIFFEID(topology.ServiceSubject(svc.Name))
			out = append(out, Entry{ID: o.frontedEntryID(svc.Name), SPIFFEID: id, ParentID: parent,
				Selectors: sels, X509TTL: seconds(o.ServiceTTL), Hint: o.Owner})
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })
	return out, errs
}
