package monitor

import (
	"slices"

	"github.com/vigil-iot/vigil/topology"
)

// Ring assigns each subject an owner among the cluster's members by
// rendezvous (highest random weight) hashing: every member computes the
// same owner from the same member list, and a member joining or leaving
// moves only the subjects it gains or had.
type Ring struct {
	members []string
	seeds   []uint64
}

// NewRing is a ring over the given member IDs (order does not matter).
func NewRing(members []string) *Ring {
	m := slices.Clone(members)
	slices.Sort(m)
	m = slices.Compact(m)
	r := &Ring{members: m, seeds: make([]uint64, len(m))}
	for i, id := range m {
		r.seeds[i] = hashString(id)
	}
	return r
}

// Members lists the ring's members, sorted.
func (r *Ring) Members() []string { return r.members }

// Owner is the member that owns s; "" on an empty ring.
func (r *Ring) Owner(s topology.Subject) string {
	if len(r.members) == 0 {
		return ""
	}
	h := subjectHash(s)
	best, bestW := 0, uint64(0)
	for i, seed := range r.seeds {
		if w := mix(h ^ seed); i == 0 || w > bestW {
			best, bestW = i, w
		}
	}
	return r.members[best]
}

func subjectHash(s topology.Subject) uint64 {
	return hashString(s.Name) ^ uint64(s.Kind)*0x9e3779b97f4a7c15
}

// Equal reports whether both rings have the same members.
func (r *Ring) Equal(o *Ring) bool { return o != nil && slices.Equal(r.members, o.members) }
