package xds

import (
	"crypto/sha256"
	"errors"
	"maps"
	"strconv"

	"github.com/vigil-iot/vigil/topology"
)

// nodeState is what the server keeps per known node; Server.mu guards it.
type nodeState struct {
	// The installed build: per-type content hashes and versions, the
	// revision it was made at, and the subjects it quarantines.
	hashes      [len(typeURLs)][sha256.Size]byte
	versions    [len(typeURLs)]string
	built       bool
	revision    topology.Revision
	local       uint64 // the build's snapshot's local generation
	quarantined map[topology.Subject]bool
	// snapshot is what the cache serves the node; parts are the gateway
	// parts it was built from, which its next build reuses.
	snapshot *nodeSnapshot
	parts    *gatewayParts

	// queued is the pool queue the node waits in for a rebuild; ticket
	// names its latest job, so that a job superseded by a later one (moved
	// to the urgent queue, or its node forgotten) does nothing.
	queued queue
	ticket uint64
}

// queue is where a node waits for a rebuild, in increasing urgency.
type queue uint8

const (
	notQueued queue = iota
	normalQueue
	urgentQueue
)

// build is a node's translation at one snapshot, made without the server's
// lock, encoded, and the content hash of each of its types.
type build struct {
	snap    *topology.Snapshot
	lists   [len(typeURLs)][]*encoded
	parts   *gatewayParts
	denyAll bool
	err     error
	hashes  [len(typeURLs)][sha256.Size]byte
}

// translate is Translate, or DenyAll for an unknown node or a failed
// translation (fail closed).
// A proxyless node's deny-all is nothing at all: no listener to resolve,
// so its calls fail.
func (s *Server) translate(key string, snap *topology.Snapshot) (res *Resources, denyAll bool, err error) {
	node := nodeOfKey(key)
	res, err = Translate(snap, node, s.cfg.Options)
	if err == nil {
		return res, false, nil
	}
	deny := s.denyAll
	if node.Proxyless {
		deny = &Resources{}
	}
	if errors.Is(err, ErrUnknownNode) {
		return deny, true, nil
	}
	return deny, true, err
}

// prepare translates node id at snap (encodeNode; prev are the parts of
// its previous build) and hashes the result. It is the costly part of a
// build and runs without s.mu, in parallel with others.
func (s *Server) prepare(id string, snap *topology.Snapshot, prev *gatewayParts) *build {
	b := &build{snap: snap}
	b.lists, b.parts, b.denyAll, b.err = s.encodeNode(nodeOfKey(id), snap, prev)
	for i, list := range b.lists {
		b.hashes[i] = hashEncoded(list)
	}
	return b
}

// installLocked makes b node id's configuration unless the node holds a
// build of the same or a newer snapshot (builds run in parallel and may end
// out of order), the node was forgotten, or the server closed. A type whose
// content changed takes b's revision as its version; a snapshot is set only
// if some type changed. Callers hold s.mu.
func (s *Server) installLocked(id string, n *nodeState, b *build) {
	rev := b.snap.Revision()
	if s.closed || s.nodes[id] != n || n.built && !(rev > n.revision || rev == n.revision && b.snap.Local() > n.local) {
		return
	}
	switch {
	case b.err != nil:
		s.log.Error("translation failed, serving deny-all", nodeAttrs(id, "revision", rev, "err", b.err)...)
	case b.denyAll && !s.warned[id]:
		s.warned[id] = true
		s.log.Warn("unknown xds node, serving deny-all", nodeAttrs(id, "revision", rev)...)
	case !b.denyAll:
		delete(s.warned, id)
	}
	s.status.setDenyAll(id, b.denyAll)
	version := strconv.FormatUint(uint64(rev), 10)
	if g := b.snap.Local(); g > 0 {
		// Local changes over rev (a quarantine taken while this member
		// was cut off): a version of their own, so the ACK names them.
		version += "-local" + strconv.FormatUint(g, 10)
	}
	changed := !n.built
	out := &nodeSnapshot{}
	for i, list := range b.lists {
		if !n.built || b.hashes[i] != n.hashes[i] {
			n.hashes[i], n.versions[i], changed = b.hashes[i], version, true
			out.groups[i] = newGroup(list)
		} else {
			out.groups[i] = n.snapshot.groups[i] // the same content
		}
		out.versions[i] = n.versions[i]
	}
	n.built, n.revision, n.local, n.parts = true, rev, b.snap.Local(), b.parts
	n.quarantined = quarantinedOf(id, b.snap)
	if !changed {
		return
	}
	n.snapshot = out
	// Not Snapshot.Consistent: it misreports route configurations named
	// inside API listeners; Translate and DenyAll validate every resource.
	// SetSnapshot only hands responses to buffered channels; it is called
	// under s.mu so that snapshots of a node are set in revision order.
	if err := s.cache.SetSnapshot(s.ctx, id, out); err != nil {
		s.log.Error("set xds snapshot", nodeAttrs(id, "err", err)...)
	}
}

// scopeOf says whose quarantine changes node key's configuration at snap:
// a gateway's own and its devices' (gateway is its name), or everyone's
// (wide: a cloud edge or a gRPC service admits callers from every zone).
func scopeOf(key string, snap *topology.Snapshot) (gateway string, wide bool) {
	node := nodeOfKey(key)
	switch kind, err := Classify(snap.Index(), node); {
	case err != nil:
		return "", false
	case kind == KindEdge:
		return "", true
	case kind == KindProxyless:
		if _, ok := snap.Index().Gateway(node.ID); !ok {
			return "", true // a service
		}
	}
	return node.ID, false
}

// quarantinedOf lists the quarantined subjects in node key's scope.
func quarantinedOf(key string, snap *topology.Snapshot) map[topology.Subject]bool {
	out := map[topology.Subject]bool{}
	id, wide := scopeOf(key, snap)
	if wide {
		snap.State().Range(func(sub topology.Subject, st *topology.SubjectState) bool {
			if st.Quarantine != nil && snap.Index().Exists(sub) {
				out[sub] = true
			}
			return true
		})
		return out
	}
	if id == "" {
		return out
	}
	if sub := topology.GatewaySubject(id); snap.Quarantined(sub) {
		out[sub] = true
	}
	for _, d := range snap.Index().DevicesOf(id) {
		if sub := topology.DeviceSubject(d.Name); snap.Quarantined(sub) {
			out[sub] = true
		}
	}
	return out
}

// quarantineChanged reports whether the subjects quarantined in snap
// differ from those of the node's last build.
func (n *nodeState) quarantineChanged(id string, snap *topology.Snapshot) bool {
	return !maps.Equal(quarantinedOf(id, snap), n.quarantined)
}

// quarantineFlipped reports whether a subject's quarantine began or ended
// since the node was last built: such a change is pushed at once.
func (n *nodeState) quarantineFlipped(key string, snap *topology.Snapshot, subjects []topology.Subject) bool {
	id, wide := scopeOf(key, snap)
	for _, sub := range subjects {
		mine := wide || id != "" && sub == topology.GatewaySubject(id)
		if d, ok := snap.Index().Device(sub.Name); ok && sub.Kind == topology.KindDevice && !wide {
			mine = id != "" && d.Gateway == id
		}
		if mine && snap.Quarantined(sub) != n.quarantined[sub] {
			return true
		}
	}
	return false
}
