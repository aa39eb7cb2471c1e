package xds

import (
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
)

// encoded is one resource as the server serves it: its name, its digest
// (digestOf) and its deterministic encoding, carried as the unknown fields
// of an empty message. go-control-plane marshals every resource of every
// response it sends (cachev3.MarshalResource, once per stream); for this
// message that is a copy of the bytes, so a resource is encoded once, when
// it is built, however many streams receive it. The bytes are what
// marshalling the resource itself gives: a response carries exactly the
// same Any.
type encoded struct {
	name   string
	digest [sha256.Size]byte
	wire   *emptypb.Empty
}

// newEncoded wraps b, the deterministic encoding of a message of type
// fullName named name. b must not change afterwards.
func newEncoded(name string, fullName protoreflect.FullName, b []byte) *encoded {
	w := &emptypb.Empty{}
	w.ProtoReflect().SetUnknown(b)
	return &encoded{name: name, digest: digestBytes(fullName, b), wire: w}
}

// bytes is the resource's deterministic encoding; callers must not change
// it.
func (e *encoded) bytes() []byte { return e.wire.ProtoReflect().GetUnknown() }

// encode marshals m once and validates it like validateDeep (a message
// byte-identical to one accepted before is accepted at once).
func encode(m proto.Message) (*encoded, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	e := newEncoded(name(m), m.ProtoReflect().Descriptor().FullName(), b)
	if !validMessages.has("", e.digest[:]) {
		if err := validateTree(m); err != nil {
			return nil, err
		}
		validMessages.add("", e.digest[:])
	}
	return e, nil
}

// encodeAll encodes a translation's lists (in Resources order).
func encodeAll(r *Resources) (out [len(typeURLs)][]*encoded, err error) {
	for i, list := range lists(r) {
		for _, m := range list {
			e, err := encode(m)
			if err != nil {
				return out, fmt.Errorf("%T %q: %w", m, name(m), err)
			}
			out[i] = append(out[i], e)
		}
	}
	return out, nil
}

// hashEncoded is a list's content hash, as hashOf computes it for the
// resources themselves.
func hashEncoded(list []*encoded) [sha256.Size]byte {
	h := sha256.New()
	for _, e := range list {
		h.Write(e.digest[:])
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// nodeSnapshot is a node's installed build as go-control-plane's cache
// serves it (cachev3.ResourceSnapshot): per type its version and
// resources. A type that did not change keeps its group from the node's
// previous snapshot.
type nodeSnapshot struct {
	versions [len(typeURLs)]string
	groups   [len(typeURLs)]*group
}

var _ cachev3.ResourceSnapshot = (*nodeSnapshot)(nil)

// typeIndex is typeURL's index in typeURLs, or -1 for a type the server
// does not serve.
func typeIndex(typeURL string) int {
	switch typeURL {
	case resourcev3.ListenerType:
		return 0
	case resourcev3.RouteType:
		return 1
	case resourcev3.ClusterType:
		return 2
	case resourcev3.EndpointType:
		return 3
	}
	return -1
}

func (s *nodeSnapshot) GetVersion(typeURL string) string {
	if i := typeIndex(typeURL); i >= 0 {
		return s.versions[i]
	}
	return ""
}

func (s *nodeSnapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	if i := typeIndex(typeURL); i >= 0 {
		return s.groups[i].withTTL()
	}
	return nil
}

func (s *nodeSnapshot) GetResources(typeURL string) map[string]types.Resource {
	if i := typeIndex(typeURL); i >= 0 {
		return s.groups[i].plain()
	}
	return nil
}

// ConstructVersionMap computes the per-resource versions delta xDS sends:
// cachev3.HashResource of each encoding, as go-control-plane's own
// snapshots do.
func (s *nodeSnapshot) ConstructVersionMap() error {
	for _, g := range s.groups {
		g.versionMap()
	}
	return nil
}

func (s *nodeSnapshot) GetVersionMap(typeURL string) map[string]string {
	if i := typeIndex(typeURL); i >= 0 {
		return s.groups[i].versionMap()
	}
	return nil
}

// group is one type's resources of a node, with the maps go-control-plane
// reads them through, each made when first asked for (responses read
// withTTL; only wildcard subscriptions read plain, and only delta streams
// the versions). go-control-plane only reads them.
type group struct {
	list []*encoded

	ttlOnce, plainOnce, versionsOnce sync.Once
	ttl                              map[string]types.ResourceWithTTL
	res                              map[string]types.Resource
	versions                         map[string]string
}

func newGroup(list []*encoded) *group { return &group{list: list} }

func (g *group) withTTL() map[string]types.ResourceWithTTL {
	g.ttlOnce.Do(func() {
		g.ttl = make(map[string]types.ResourceWithTTL, len(g.list))
		for _, e := range g.list {
			g.ttl[e.name] = types.ResourceWithTTL{Resource: e.wire}
		}
	})
	return g.ttl
}

func (g *group) plain() map[string]types.Resource {
	g.plainOnce.Do(func() {
		g.res = make(map[string]types.Resource, len(g.list))
		for _, e := range g.list {
			g.res[e.name] = e.wire
		}
	})
	return g.res
}

func (g *group) versionMap() map[string]string {
	g.versionsOnce.Do(func() {
		g.versions = make(map[string]string, len(g.list))
		for _, e := range g.list {
			g.versions[e.name] = cachev3.HashResource(e.bytes())
		}
	})
	return g.versions
}
