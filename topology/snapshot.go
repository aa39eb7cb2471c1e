package topology

// Revision identifies a committed change. Revisions increase with every
// change to the document or to runtime state and are the same on every
// replica (the store uses its replicated log index).
type Revision uint64

// Snapshot is an immutable view of the topology and runtime state at one
// revision. Readers take a *Snapshot and may keep it as long as they like.
type Snapshot struct {
	revision    Revision
	docRevision Revision
	index       *Index
	state       *State
	local       uint64
}

// NewSnapshot assembles a snapshot. docRevision is the revision at which the
// document in index was applied (zero if none was).
func NewSnapshot(revision, docRevision Revision, index *Index, state *State) *Snapshot {
	return &Snapshot{revision: revision, docRevision: docRevision, index: index, state: state}
}

// WithLocal is s with state replaced by one that holds changes this member
// made on its own, not yet committed (a quarantine taken while cut off
// from its cluster), as local generation gen (at least 1). It has s's
// revision: those changes belong to no revision until committed.
func (s *Snapshot) WithLocal(gen uint64, state *State) *Snapshot {
	return &Snapshot{revision: s.revision, docRevision: s.docRevision, index: s.index, state: state, local: gen}
}

// Local is the generation of this member's uncommitted changes the
// snapshot holds (see WithLocal); zero for a committed state.
func (s *Snapshot) Local() uint64 { return s.local }

// Newer reports whether s comes after o: a later revision, or the same one
// with later local changes.
func (s *Snapshot) Newer(o *Snapshot) bool {
	return s.revision > o.revision || s.revision == o.revision && s.local > o.local
}

// EmptySnapshot is the state of a store before anything was committed.
func EmptySnapshot() *Snapshot { return NewSnapshot(0, 0, EmptyIndex(), NewState()) }

// Revision is the last change this snapshot reflects.
func (s *Snapshot) Revision() Revision { return s.revision }

// DocumentRevision is the revision at which the current document was
// applied; zero if none has been.
func (s *Snapshot) DocumentRevision() Revision { return s.docRevision }

// HasDocument reports whether a document has been applied.
func (s *Snapshot) HasDocument() bool { return s.docRevision != 0 }

// Index is the validated, indexed document.
func (s *Snapshot) Index() *Index { return s.index }

// State is the runtime state of every subject.
func (s *Snapshot) State() *State { return s.state }

// SubjectState is the runtime state of one subject, or nil.
func (s *Snapshot) SubjectState(sub Subject) *SubjectState { return s.state.Get(sub) }

// Quarantined reports whether sub is quarantined. A device behind a
// quarantined gateway is not itself quarantined; callers that route through
// gateways check both.
func (s *Snapshot) Quarantined(sub Subject) bool {
	st := s.state.Get(sub)
	return st != nil && st.Quarantine != nil
}
