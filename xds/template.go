package xds

import (
	"bytes"
	"strings"
	"sync"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Thousands of gateways get listeners and clusters that differ only in
// the gateway's own SPIFFE ID, which appears once in each, as the name of
// the SDS secret the gateway presents. A shape is such a resource with
// that name left open: it is built, marshalled and validated once, and a
// gateway's resource is the shape's encoding with the gateway's ID
// spliced in.
//
// Splicing gives exactly what marshalling the gateway's own resource
// gives. A deterministic encoding orders fields by number, and map entries
// by key (the open field is no key), never by a string's value; the only
// bytes that depend on the value are the value itself and the lengths of
// the messages around it, which a splice writes anew. Each shape checks
// this when it is made, against a marshalled build with a second name of
// another length, and falls back to building every instance when it does
// not hold (the name appears more than once, or inside a string rather
// than as a whole field).
//
// Validation carries over too: the open field is an SdsSecretConfig's
// name, whose one rule is "at least one rune"; an instance is spliced only
// for a non-empty, valid UTF-8 name. (Translate validates every resource
// it builds, and the tests compare the two paths over many topologies.)

// part is what one resource of a gateway is made of (listenerIn,
// clusterIn, authzIn, endpointsIn): enough to build the resource alone,
// and a comparable struct, so that it keys memos.
type part interface {
	build(opts Options) proto.Message
	// selfID is the gateway's SPIFFE ID in the resource, "" when the
	// resource does not name it; withSelfID is the same part with another.
	selfID() string
	withSelfID(string) part
}

// Sentinels stand for the open name while a shape is made. Their lengths
// differ (so the check sees the lengths rewritten) and neither can be a
// SPIFFE ID.
const (
	sentinelA = "vigil-shape-self-1f6e0b9c"
	sentinelB = "vigil-shape-self-check-with-another-length-70d2a4e8"
)

// shape is a resource with its gateway's name left open, or (fixed) a
// resource that names no gateway, or (broken) one that must be built for
// each gateway.
type shape struct {
	fixed    *encoded
	broken   bool
	name     string
	fullName protoreflect.FullName
	// levels lead from the resource down to the open field: each holds the
	// bytes of its message before the length of the next level's field
	// (ending with that field's tag) and after its value.
	levels []shapeLevel
}

type shapeLevel struct{ before, after []byte }

// shapes memoizes the shapes of one server's gateways, by their part with
// the name left out. There are few: per trust domain, one listener per
// zone, one authz cluster, one cluster per service and one load assignment
// per service.
type shapes struct {
	opts Options

	mu sync.Mutex
	m  map[part]*shape
}

// maxShapes bounds the memo; past it, it starts over (topology documents
// come and go, and each may bring new services and zones).
const maxShapes = 4096

func newShapes(opts Options) *shapes { return &shapes{opts: opts, m: map[part]*shape{}} }

// encode is p's resource, encoded and validated: spliced from its shape, or
// built when its shape cannot be spliced.
func (s *shapes) encode(p part) (*encoded, error) {
	self := p.selfID()
	key := p.withSelfID("")
	s.mu.Lock()
	sh := s.m[key]
	s.mu.Unlock()
	if sh == nil {
		var err error
		if sh, err = makeShape(key, s.opts); err != nil {
			return nil, err
		}
		s.mu.Lock()
		if len(s.m) >= maxShapes {
			clear(s.m)
		}
		s.m[key] = sh
		s.mu.Unlock()
	}
	switch {
	case sh.fixed != nil:
		return sh.fixed, nil
	case sh.broken || self == "" || !utf8.ValidString(self):
		return encode(p.build(s.opts))
	}
	return sh.instance(self), nil
}

// sdsNameField is the one field a shape leaves open.
const sdsNameField protoreflect.FullName = "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig.name"

// makeShape builds key's resource (key.selfID() is "") with each sentinel
// as the gateway's name: when both encodings are equal the resource does
// not depend on the name (fixed); otherwise the name must be the value of
// exactly one SdsSecretConfig name and splicing must reproduce the
// second build, or the shape is broken and every instance is built.
func makeShape(key part, opts Options) (*shape, error) {
	ma, mb := key.withSelfID(sentinelA).build(opts), key.withSelfID(sentinelB).build(opts)
	a, err := encode(ma)
	if err != nil {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(mb)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(a.bytes(), b) {
		return &shape{fixed: a}, nil
	}
	sh := &shape{name: a.name, fullName: ma.ProtoReflect().Descriptor().FullName()}
	var ok bool
	if sh.levels, ok = openField(a.bytes(), sentinelA); !ok || strings.Contains(a.name, sentinelA) || name(mb) != a.name {
		return &shape{broken: true}, nil
	}
	if fields := stringFieldsHolding(ma.ProtoReflect(), sentinelA, nil); len(fields) != 1 || fields[0] != sdsNameField {
		return &shape{broken: true}, nil
	}
	if !bytes.Equal(sh.instance(sentinelB).bytes(), b) {
		return &shape{broken: true}, nil
	}
	return sh, nil
}

// stringFieldsHolding appends to out the string fields of m, at any depth
// and inside packed Anys, whose value is v.
func stringFieldsHolding(m protoreflect.Message, v string, out []protoreflect.FullName) []protoreflect.FullName {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return append(out, "unreadable Any "+protoreflect.FullName(a.GetTypeUrl()))
		}
		return stringFieldsHolding(inner.ProtoReflect(), v, out)
	}
	check := func(fd protoreflect.FieldDescriptor, x protoreflect.Value) {
		switch {
		case fd.Kind() == protoreflect.StringKind && x.String() == v:
			out = append(out, fd.FullName())
		case fd.Message() != nil:
			out = stringFieldsHolding(x.Message(), v, out)
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, x protoreflect.Value) bool {
		switch {
		case fd.IsList():
			for i := range x.List().Len() {
				check(fd, x.List().Get(i))
			}
		case fd.IsMap():
			x.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if k.String() == v {
					out = append(out, fd.FullName()+" (key)")
				}
				check(fd.MapValue(), mv)
				return true
			})
		default:
			check(fd, x)
		}
		return true
	})
	return out
}

// instance is the shape's resource with name self.
func (sh *shape) instance(self string) *encoded {
	// lens[k] is the length of level k's content; lens[len(levels)] the
	// name's.
	lens := make([]int, len(sh.levels)+1)
	lens[len(sh.levels)] = len(self)
	for k := len(sh.levels) - 1; k >= 0; k-- {
		l := sh.levels[k]
		lens[k] = len(l.before) + protowire.SizeVarint(uint64(lens[k+1])) + lens[k+1] + len(l.after)
	}
	b := make([]byte, 0, lens[0])
	for k, l := range sh.levels {
		b = append(b, l.before...)
		b = protowire.AppendVarint(b, uint64(lens[k+1]))
	}
	b = append(b, self...)
	for k := len(sh.levels) - 1; k >= 0; k-- {
		b = append(b, sh.levels[k].after...)
	}
	return newEncoded(sh.name, sh.fullName, b)
}

// openField finds the levels that lead from message b to the one
// length-delimited field whose value is exactly sentinel, the only
// occurrence of sentinel in b.
func openField(b []byte, sentinel string) ([]shapeLevel, bool) {
	at := bytes.Index(b, []byte(sentinel))
	if at < 0 || bytes.Contains(b[at+1:], []byte(sentinel)) {
		return nil, false
	}
	end := at + len(sentinel)
	var levels []shapeLevel
	lo, hi := 0, len(b) // the message being walked
	for {
		pos, descended := lo, false
		for pos < hi && !descended {
			num, typ, n := protowire.ConsumeTag(b[pos:hi])
			if n < 0 {
				return nil, false
			}
			tagEnd := pos + n
			if typ != protowire.BytesType {
				m := protowire.ConsumeFieldValue(num, typ, b[tagEnd:hi])
				if m < 0 {
					return nil, false
				}
				pos = tagEnd + m
				continue
			}
			v, m := protowire.ConsumeBytes(b[tagEnd:hi])
			if m < 0 {
				return nil, false
			}
			valEnd := tagEnd + m
			valStart := valEnd - len(v)
			if valStart <= at && end <= valEnd {
				levels = append(levels, shapeLevel{before: b[lo:tagEnd], after: b[valEnd:hi]})
				if valStart == at && valEnd == end {
					return levels, true
				}
				lo, hi, descended = valStart, valEnd, true
				continue
			}
			if at < valEnd && valStart < end { // straddles the field: not a whole value
				return nil, false
			}
			pos = valEnd
		}
		if !descended {
			return nil, false
		}
	}
}
