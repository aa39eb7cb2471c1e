package topology

import (
	"hash/maphash"
	"time"
)

// Quarantine cuts a subject off everywhere until it is released.
type Quarantine struct {
	Reason string    `json:"reason"`
	By     string    `json:"by"`
	Since  time.Time `json:"since"`
}

// Signal is one observation that contributed to a risk score.
type Signal struct {
	Name   string `json:"name"`
	Score  int    `json:"score"`
	Detail string `json:"detail,omitempty"`
}

// Risk is a subject's current risk score, 0 (none) to 100.
type Risk struct {
	Score     int       `json:"score"`
	Signals   []Signal  `json:"signals,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Attestation is the last verified firmware attestation of a subject.
type Attestation struct {
	Method          string    `json:"method"`
	FirmwareVersion string    `json:"firmwareVersion"`
	FirmwareSHA256  string    `json:"firmwareSha256,omitempty"`
	VerifiedAt      time.Time `json:"verifiedAt"`
	ExpiresAt       time.Time `json:"expiresAt"`
}

// SubjectState is the runtime state of one device or gateway. A nil field
// means "none". Values are immutable once stored.
type SubjectState struct {
	Quarantine  *Quarantine  `json:"quarantine,omitempty"`
	Risk        *Risk        `json:"risk,omitempty"`
	Attestation *Attestation `json:"attestation,omitempty"`
}

// IsZero reports whether the state holds nothing.
func (s *SubjectState) IsZero() bool {
	return s == nil || s.Quarantine == nil && s.Risk == nil && s.Attestation == nil
}

const stateShards = 1024

var stateSeed = maphash.MakeSeed()

// State maps subjects to their runtime state. It is immutable: With and
// Retain return a new State that shares every shard they did not change, so
// one write to a million-subject state copies about a thousand entries.
type State struct {
	shards [stateShards]map[Subject]*SubjectState
	count  int
}

// NewState returns an empty state.
func NewState() *State { return &State{} }

func shardOf(s Subject) int {
	// Reduce in uint64: converting a hash with its top bit set to int first
	// gives a negative shard index.
	return int((maphash.String(stateSeed, s.Name) + uint64(s.Kind)) % stateShards)
}

// Get returns the state of s, or nil.
func (st *State) Get(s Subject) *SubjectState { return st.shards[shardOf(s)][s] }

// Len is the number of subjects with state.
func (st *State) Len() int { return st.count }

// Range calls fn for every subject with state, in no particular order,
// until fn returns false.
func (st *State) Range(fn func(Subject, *SubjectState) bool) {
	for _, shard := range st.shards {
		for k, v := range shard {
			if !fn(k, v) {
				return
			}
		}
	}
}

// With returns a state where each subject in updates has the given state; a
// zero state removes the subject.
func (st *State) With(updates map[Subject]*SubjectState) *State {
	next := &State{shards: st.shards, count: st.count}
	copied := make(map[int]bool)
	for s, v := range updates {
		i := shardOf(s)
		if !copied[i] {
			old := st.shards[i]
			fresh := make(map[Subject]*SubjectState, len(old)+1)
			for k, val := range old {
				fresh[k] = val
			}
			next.shards[i] = fresh
			copied[i] = true
		}
		_, had := next.shards[i][s]
		if v.IsZero() {
			if had {
				delete(next.shards[i], s)
				next.count--
			}
			continue
		}
		if !had {
			next.count++
		}
		next.shards[i][s] = v
	}
	return next
}

// Retain returns a state that keeps only the subjects for which keep is true.
func (st *State) Retain(keep func(Subject) bool) *State {
	drop := make(map[Subject]*SubjectState)
	st.Range(func(s Subject, _ *SubjectState) bool {
		if !keep(s) {
			drop[s] = nil
		}
		return true
	})
	if len(drop) == 0 {
		return st
	}
	return st.With(drop)
}
