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
	// Severity and At, for a monitor finding: how bad it was and when it
	// was seen (Score is its contribution now, after decay).
	Severity string    `json:"severity,omitempty"`
	At       time.Time `json:"at,omitzero"`
	// Finding is the finding's ID.
	Finding string `json:"finding,omitempty"`
}

// Risk is a subject's current risk score, 0 (none) to 100.
type Risk struct {
	Score     int       `json:"score"`
	Signals   []Signal  `json:"signals,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Attestation is the last verified firmware attestation of a subject:
// what Vigil's verifier concluded from the evidence.
type Attestation struct {
	// Status is "passed" or "failed" (failed evidence denies the device);
	// empty in states written before it existed, which only held passes.
	Status string `json:"status,omitempty"`
	// Method is the evidence format (tpm2-quote, dice, eat).
	Method          string    `json:"method"`
	FirmwareVersion string    `json:"firmwareVersion"`
	FirmwareSHA256  string    `json:"firmwareSha256,omitempty"`
	VerifiedAt      time.Time `json:"verifiedAt"`
	ExpiresAt       time.Time `json:"expiresAt"`
	// Verifier is the member that verified the evidence.
	Verifier string `json:"verifier,omitempty"`
	// EvidenceDigest is the hex SHA-256 of the evidence as submitted.
	EvidenceDigest string `json:"evidenceDigest,omitempty"`
	// Reasons explain a failure.
	Reasons []string `json:"reasons,omitempty"`
	// Clock is the TPM's reset and restart counts in the accepted quote;
	// a later quote may not go back from them.
	Clock *TPMClock `json:"clock,omitempty"`
}

// Failed reports whether the attestation is a failure.
func (a *Attestation) Failed() bool { return a != nil && a.Status == AttestationFailed }

// Attestation statuses.
const (
	AttestationPassed = "passed"
	AttestationFailed = "failed"
)

// TPMClock is a TPM's reset and restart counts.
type TPMClock struct {
	ResetCount   uint32 `json:"resetCount"`
	RestartCount uint32 `json:"restartCount"`
}

// Enrollment is a device's enrolled attestation keys (PKIX public keys in
// PEM), who enrolled them and when. Re-enrolling replaces it.
type Enrollment struct {
	TPMAK  string `json:"tpmAk,omitempty"`
	EATKey string `json:"eatKey,omitempty"`
	// Fingerprint is the hex SHA-256 of the enrolled keys' DER, for
	// operators to compare.
	Fingerprint string    `json:"fingerprint"`
	By          string    `json:"by"`
	At          time.Time `json:"at"`
	// Method is how the keys were vouched for: empty when an operator gave
	// them (POST /v1/devices/{name}/enroll), EnrollEKCredential when the
	// TPM AK was proven resident in a TPM whose EK certificate chains to
	// the class's ekRoots (docs/attestation-ek.md).
	Method string `json:"method,omitempty"`
	// EKCertFingerprint, with EnrollEKCredential, is the hex SHA-256 of
	// the DER of that EK certificate.
	EKCertFingerprint string `json:"ekCertFingerprint,omitempty"`
}

// EnrollEKCredential is Enrollment.Method for an AK enrolled by EK
// certificate and TPM credential activation.
const EnrollEKCredential = "ek-credential"

// SubjectState is the runtime state of one device or gateway. A nil field
// means "none". Values are immutable once stored.
type SubjectState struct {
	Quarantine  *Quarantine  `json:"quarantine,omitempty"`
	Risk        *Risk        `json:"risk,omitempty"`
	Attestation *Attestation `json:"attestation,omitempty"`
	Enrollment  *Enrollment  `json:"enrollment,omitempty"`
}

// IsZero reports whether the state holds nothing.
func (s *SubjectState) IsZero() bool {
	return s == nil || s.Quarantine == nil && s.Risk == nil && s.Attestation == nil && s.Enrollment == nil
}

// State is a two-level hash trie: 256 nodes of 256 leaf maps. At a million
// subjects a leaf holds about 15 entries, so a write copies two arrays of
// 256 pointers and one small map.
const fanout = 256

var stateSeed = maphash.MakeSeed()

type stateNode struct {
	leaves [fanout]map[Subject]*SubjectState
}

// State maps subjects to their runtime state. It is immutable: With and
// Retain return a new State that shares everything they did not change.
type State struct {
	nodes [fanout]*stateNode
	count int
}

// NewState returns an empty state.
func NewState() *State { return &State{} }

func slot(s Subject) (node, leaf int) {
	h := maphash.String(stateSeed, s.Name) + uint64(s.Kind)*0x9e3779b97f4a7c15
	return int(h >> 56), int(h>>48) & (fanout - 1)
}

// Get returns the state of s, or nil.
func (st *State) Get(s Subject) *SubjectState {
	n, l := slot(s)
	if st.nodes[n] == nil {
		return nil
	}
	return st.nodes[n].leaves[l][s]
}

// Len is the number of subjects with state.
func (st *State) Len() int { return st.count }

// Range calls fn for every subject with state, in no particular order,
// until fn returns false.
func (st *State) Range(fn func(Subject, *SubjectState) bool) {
	for _, n := range st.nodes {
		if n == nil {
			continue
		}
		for _, leaf := range n.leaves {
			for k, v := range leaf {
				if !fn(k, v) {
					return
				}
			}
		}
	}
}

// With returns a state where each subject in updates has the given state; a
// zero state removes the subject.
func (st *State) With(updates map[Subject]*SubjectState) *State {
	next := &State{nodes: st.nodes, count: st.count}
	type key struct{ n, l int }
	copiedNodes := make(map[int]bool)
	copiedLeaves := make(map[key]bool)
	for s, v := range updates {
		n, l := slot(s)
		if !copiedNodes[n] {
			fresh := &stateNode{}
			if old := st.nodes[n]; old != nil {
				*fresh = *old
			}
			next.nodes[n] = fresh
			copiedNodes[n] = true
		}
		leaves := &next.nodes[n].leaves
		if !copiedLeaves[key{n, l}] {
			old := leaves[l]
			fresh := make(map[Subject]*SubjectState, len(old)+1)
			for k, val := range old {
				fresh[k] = val
			}
			leaves[l] = fresh
			copiedLeaves[key{n, l}] = true
		}
		_, had := leaves[l][s]
		if v.IsZero() {
			if had {
				delete(leaves[l], s)
				next.count--
			}
			continue
		}
		if !had {
			next.count++
		}
		leaves[l][s] = v
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
