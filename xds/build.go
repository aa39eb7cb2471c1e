package xds

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"

	"github.com/vigil-iot/vigil/topology"
)

// nodeState is what the server keeps per known node.
type nodeState struct {
	hashes   [len(typeURLs)][sha256.Size]byte
	versions [len(typeURLs)]string
	built    bool
	revision topology.Revision // of the last build
	// quarantined holds the subjects quarantined in the last build.
	quarantined map[topology.Subject]bool
	stop        func() bool // pending debounced rebuild, or nil
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

// buildLocked translates node id at snap and, if any type's content
// changed, sets a new snapshot whose changed types carry snap's revision
// as their version. Callers hold s.mu.
func (s *Server) buildLocked(id string, n *nodeState, snap *topology.Snapshot) {
	res, denyAll, err := s.translate(id, snap)
	switch {
	case err != nil:
		s.log.Error("translation failed, serving deny-all", "node", id, "revision", snap.Revision(), "err", err)
	case denyAll && !s.warned[id]:
		s.warned[id] = true
		s.log.Warn("unknown xds node, serving deny-all", "node", id, "revision", snap.Revision())
	case !denyAll:
		delete(s.warned, id)
	}
	s.status.setDenyAll(id, denyAll)
	version := strconv.FormatUint(uint64(snap.Revision()), 10)
	changed := !n.built
	out := &cachev3.Snapshot{}
	for i, list := range lists(res) {
		h := hashOf(list)
		if !n.built || h != n.hashes[i] {
			n.hashes[i], n.versions[i], changed = h, version, true
		}
		out.Resources[cachev3.GetResponseType(typeURLs[i])] = cachev3.NewResources(n.versions[i], list)
	}
	n.built, n.revision = true, snap.Revision()
	n.quarantined = quarantinedOf(id, snap)
	if !changed {
		return
	}
	// Not Snapshot.Consistent: it misreports route configurations named
	// inside API listeners; Translate and DenyAll validate every resource.
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

// hashOf is a content hash of a resource list (deterministic marshalling;
// Translate sorts lists by name).
func hashOf(list []types.Resource) [sha256.Size]byte {
	h := sha256.New()
	for _, r := range list {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			panic(fmt.Sprintf("xds: marshal %T: %v", r, err))
		}
		h.Write(strconv.AppendInt(nil, int64(len(b)), 10))
		h.Write(b)
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}
