package xds

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/vigil-iot/vigil/topology"
)

// The server serves what Translate returns, but builds it from memos (see
// docs/decisions/0010-xds-push-shares-encodings.md):
//
//   - a gateway's route configuration, shared by every gateway with the
//     same grants (routeMemo);
//   - its listener and clusters, spliced from shapes that leave only the
//     gateway's own SPIFFE ID open (shapes), and its load assignments,
//     which are the same for every gateway;
//   - and, for a rebuild, the parts of the node's previous build whose
//     inputs did not change (a flow change touches only routes).
//
// Every resource is encoded (marshalled) once, when it is built; every
// stream that receives it, and every node whose resource is equal, shares
// that encoding. TestServerBuildsAreTranslate compares the two paths byte
// for byte.

// Parts of a gateway: see part.
func (in listenerIn) build(opts Options) proto.Message { return gatewayListener(in, opts) }
func (in listenerIn) selfID() string                   { return in.self }
func (in listenerIn) withSelfID(s string) part {
	in.self = s
	return in
}

func (in clusterIn) build(Options) proto.Message { return serviceClusterOf(in) }
func (in clusterIn) selfID() string              { return in.self }
func (in clusterIn) withSelfID(s string) part {
	in.self = s
	return in
}

// authzIn is everything a gateway's ext_authz cluster is made of besides
// the options.
type authzIn struct{ trustDomain, self string }

func (in authzIn) build(opts Options) proto.Message {
	return authzCluster(in.trustDomain, in.self, opts)
}
func (in authzIn) selfID() string { return in.self }
func (in authzIn) withSelfID(s string) part {
	in.self = s
	return in
}

func (in endpointsIn) build(Options) proto.Message { return endpointsOf(in) }
func (endpointsIn) selfID() string                 { return "" }
func (in endpointsIn) withSelfID(string) part      { return in }

// gatewayParts are the parts of a gateway's build and their resources,
// by kind (typed, so that looking one up neither allocates nor compares
// interfaces).
type gatewayParts struct {
	listener  builtPart[listenerIn]
	authz     builtPart[authzIn]
	clusters  []builtPart[clusterIn]
	endpoints []builtPart[endpointsIn]
}

// builtPart is one part of a build and its resource.
type builtPart[P comparable] struct {
	in  P
	enc *encoded
}

// reuse is prev's resource of part in, or nil.
func reuse[P comparable](prev []builtPart[P], in P) *encoded {
	for _, bp := range prev {
		if bp.in == in {
			return bp.enc
		}
	}
	return nil
}

// encodePart is prev's resource of in when there is one, else in's from
// its shape.
func encodePart[P interface {
	comparable
	part
}](s *shapes, prev []builtPart[P], in P) (builtPart[P], error) {
	e := reuse(prev, in)
	if e == nil {
		var err error
		if e, err = s.encode(in); err != nil {
			return builtPart[P]{}, fmt.Errorf("%T: %w", in, err)
		}
	}
	return builtPart[P]{in, e}, nil
}

// encodeNode is node's configuration at snap as the server serves it:
// Translate's resources (DenyAll's for an unknown node or a failed
// translation), encoded. prev are the parts of the node's previous build;
// parts those of this one (gateways only, else nil).
func (s *Server) encodeNode(node Node, snap *topology.Snapshot, prev *gatewayParts) (lists [len(typeURLs)][]*encoded, parts *gatewayParts, denyAll bool, err error) {
	kind, err := admitted(snap, node, s.opts)
	switch {
	case err == nil && kind == KindGateway:
		lists, parts, err = s.encodeGateway(snap, node, prev)
	case err == nil:
		var res *Resources
		if res, err = Translate(snap, node, s.cfg.Options); err == nil {
			lists, err = encodeAll(res)
		}
	}
	if err == nil {
		return lists, parts, false, nil
	}
	deny := s.denyAllEnc
	if node.Proxyless {
		deny = [len(typeURLs)][]*encoded{}
	}
	if errors.Is(err, ErrUnknownNode) {
		err = nil
	}
	return deny, nil, true, err
}

// encodeGateway is encodeNode of a gateway node admitted at snap.
func (s *Server) encodeGateway(snap *topology.Snapshot, node Node, prev *gatewayParts) (lists [len(typeURLs)][]*encoded, parts *gatewayParts, err error) {
	p, err := planGateway(snap, node.ID)
	if err != nil {
		return lists, nil, err
	}
	_, routes, err := sharedGatewayRoutes(snap.Index(), p)
	if err != nil {
		return lists, nil, fmt.Errorf("xds node %q: route configuration: %w", node.ID, err)
	}
	if prev == nil {
		prev = &gatewayParts{}
	}
	parts = &gatewayParts{clusters: make([]builtPart[clusterIn], 0, len(p.services))}
	if parts.listener, err = encodePart(s.shapes, []builtPart[listenerIn]{prev.listener}, p.listenerIn()); err != nil {
		return lists, nil, fmt.Errorf("xds node %q: %w", node.ID, err)
	}
	if parts.authz, err = encodePart(s.shapes, []builtPart[authzIn]{prev.authz}, authzIn{trustDomain: p.trustDomain, self: p.spiffeID}); err != nil {
		return lists, nil, fmt.Errorf("xds node %q: %w", node.ID, err)
	}
	lists[0], lists[1], lists[2] = []*encoded{parts.listener.enc}, []*encoded{routes}, []*encoded{parts.authz.enc}
	for _, sf := range p.services {
		c, err := encodePart(s.shapes, prev.clusters, p.clusterIn(sf))
		if err != nil {
			return lists, nil, fmt.Errorf("xds node %q: %w", node.ID, err)
		}
		parts.clusters = append(parts.clusters, c)
		lists[2] = append(lists[2], c.enc)
		if usesEDS(sf.svc) {
			e, err := encodePart(s.shapes, prev.endpoints, p.endpointsIn(sf))
			if err != nil {
				return lists, nil, fmt.Errorf("xds node %q: %w", node.ID, err)
			}
			parts.endpoints = append(parts.endpoints, e)
			lists[3] = append(lists[3], e.enc)
		}
	}
	for _, list := range lists {
		slices.SortFunc(list, func(a, b *encoded) int { return cmp.Compare(a.name, b.name) })
	}
	return lists, parts, nil
}
