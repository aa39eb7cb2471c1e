package xds

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"strconv"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

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
	quarantined map[topology.Subject]bool

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
// lock, and the content hash of each of its types.
type build struct {
	snap    *topology.Snapshot
	res     *Resources
	denyAll bool
	err     error
	hashes  [len(typeURLs)][sha256.Size]byte
}

// translate is Translate, or DenyAll for an unknown node or a failed
// translation (fail closed).
func (s *Server) translate(id string, snap *topology.Snapshot) (res *Resources, denyAll bool, err error) {
	res, err = Translate(snap, Node{ID: id}, s.cfg.Options)
	if err == nil {
		return res, false, nil
	}
	if errors.Is(err, ErrUnknownNode) {
		return s.denyAll, true, nil
	}
	return s.denyAll, true, err
}

// prepare translates node id at snap and hashes the result. It is the
// costly part of a build and runs without s.mu, in parallel with others.
func (s *Server) prepare(id string, snap *topology.Snapshot) *build {
	b := &build{snap: snap}
	b.res, b.denyAll, b.err = s.translate(id, snap)
	if b.res.hashes != nil {
		b.hashes = *b.res.hashes
		return b
	}
	for i, list := range lists(b.res) {
		b.hashes[i] = hashOf(list)
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
	if s.closed || s.nodes[id] != n || n.built && rev <= n.revision {
		return
	}
	switch {
	case b.err != nil:
		s.log.Error("translation failed, serving deny-all", "node", id, "revision", rev, "err", b.err)
	case b.denyAll && !s.warned[id]:
		s.warned[id] = true
		s.log.Warn("unknown xds node, serving deny-all", "node", id, "revision", rev)
	case !b.denyAll:
		delete(s.warned, id)
	}
	s.status.setDenyAll(id, b.denyAll)
	version := strconv.FormatUint(uint64(rev), 10)
	changed := !n.built
	out := &cachev3.Snapshot{}
	for i, list := range lists(b.res) {
		if !n.built || b.hashes[i] != n.hashes[i] {
			n.hashes[i], n.versions[i], changed = b.hashes[i], version, true
		}
		out.Resources[cachev3.GetResponseType(typeURLs[i])] = cachev3.NewResources(n.versions[i], list)
	}
	n.built, n.revision = true, rev
	n.quarantined = quarantinedOf(id, b.snap)
	if !changed {
		return
	}
	// Not Snapshot.Consistent: it misreports route configurations named
	// inside API listeners; Translate and DenyAll validate every resource.
	// SetSnapshot only hands responses to buffered channels; it is called
	// under s.mu so that snapshots of a node are set in revision order.
	if err := s.cache.SetSnapshot(s.ctx, id, out); err != nil {
		s.log.Error("set xds snapshot", "node", id, "err", err)
	}
}

// quarantinedOf lists gateway id and those of its devices that are
// quarantined in snap.
func quarantinedOf(id string, snap *topology.Snapshot) map[topology.Subject]bool {
	out := map[topology.Subject]bool{}
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
func (n *nodeState) quarantineFlipped(id string, snap *topology.Snapshot, subjects []topology.Subject) bool {
	for _, sub := range subjects {
		mine := sub == topology.GatewaySubject(id)
		if d, ok := snap.Index().Device(sub.Name); ok && sub.Kind == topology.KindDevice {
			mine = d.Gateway == id
		}
		if mine && snap.Quarantined(sub) != n.quarantined[sub] {
			return true
		}
	}
	return false
}

// hashOf is the content hash of a resource list (Translate sorts lists by
// name): the SHA-256 of its resources' digestOf, as Translate computes it.
func hashOf(list []types.Resource) [sha256.Size]byte {
	h := sha256.New()
	for _, r := range list {
		digest, err := digestOf(r)
		if err != nil {
			panic(fmt.Sprintf("xds: marshal %T: %v", r, err))
		}
		h.Write(digest[:])
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}
