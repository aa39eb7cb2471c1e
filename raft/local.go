package raft

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Local quarantines.
//
// A member cut off from its cluster's quorum cannot commit anything, yet an
// operator in its zone may need to contain a device there and then
// (`vigil device quarantine --local`). Such a quarantine is held by this
// member alone, over the committed state: its authorizer and its xDS
// server enforce it at once, and it is written to the data dir so that it
// survives a restart. When the member is in contact with a leader again
// the node proposes it, once: each carries an ID that goes into the log as
// the operation's nonce, and every replica refuses a nonce it has seen, so
// however often the proposal is retried (a timeout, a lost answer) it is
// applied once. It is dropped from the overlay when this member's own
// replica has applied it.
//
// The overlay only adds quarantines; a subject the committed state already
// quarantines keeps the committed quarantine.

// localFile is the pending local quarantines, in the data dir.
const localFile = "local-quarantines.json"

// LocalQuarantineTTL is how long the cluster remembers a local quarantine's
// ID once applied, and so how long after it was taken a member may still
// propose it.
const LocalQuarantineTTL = 30 * 24 * time.Hour

// maxLocal bounds the pending local quarantines of one member.
const maxLocal = 10000

// LocalQuarantine is a quarantine this member took while it could not
// commit one, waiting to be proposed to the cluster.
type LocalQuarantine struct {
	// ID is 64 hex digits, the proposal's nonce.
	ID         string              `json:"id"`
	Subject    topology.Subject    `json:"subject"`
	Quarantine topology.Quarantine `json:"quarantine"`
}

// Op is the state operation that proposes q.
func (q LocalQuarantine) Op() StateOp {
	qq := q.Quarantine
	return StateOp{Subject: q.Subject, Op: OpQuarantine, Quarantine: &qq, Nonce: q.ID,
		NonceExpires: q.Quarantine.Since.Add(LocalQuarantineTTL)}
}

// localOverlay is the fsm's pending local quarantines; fsm.mu guards it.
type localOverlay struct {
	path    string // "" keeps them in memory only (tests)
	gen     uint64 // bumped on every change
	pending []LocalQuarantine
}

// view is base with the pending local quarantines over it, but for those
// the cluster has committed (their IDs are among the used nonces): the
// committed state speaks for them, a release included. Once there has
// been a local quarantine the view keeps its generation, so that a view
// without it still comes after one with it (Snapshot.Newer).
func (o *localOverlay) view(base *topology.Snapshot, committed map[string]time.Time) *topology.Snapshot {
	if o.gen == 0 {
		return base
	}
	updates := make(map[topology.Subject]*topology.SubjectState, len(o.pending))
	for _, q := range o.pending {
		if _, done := committed[q.ID]; done {
			continue
		}
		if !base.Index().Exists(q.Subject) {
			continue // gone from the topology: nothing to enforce
		}
		prev := base.SubjectState(q.Subject)
		if prev != nil && prev.Quarantine != nil {
			continue // the committed quarantine stands
		}
		var next topology.SubjectState
		if prev != nil {
			next = *prev
		}
		qq := q.Quarantine
		next.Quarantine = &qq
		updates[q.Subject] = &next
	}
	return base.WithLocal(o.gen, base.State().With(updates))
}

// save writes the pending list durably (write, sync, rename).
func (o *localOverlay) save() error {
	if o.path == "" {
		return nil
	}
	data, err := json.Marshal(o.pending)
	if err != nil {
		return err
	}
	tmp := o.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, o.path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// load reads the pending list a previous run left.
func (o *localOverlay) load() error {
	data, err := os.ReadFile(o.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var pending []LocalQuarantine
	if err := json.Unmarshal(data, &pending); err != nil {
		return fmt.Errorf("%s: %w", o.path, err)
	}
	if len(pending) > maxLocal {
		return fmt.Errorf("%s: %d local quarantines, more than the %d a member keeps", o.path, len(pending), maxLocal)
	}
	for _, q := range pending {
		if len(q.ID) != 64 || q.Quarantine.Since.IsZero() || strings.TrimSpace(q.Quarantine.Reason) == "" ||
			q.Subject.Kind != topology.KindDevice && q.Subject.Kind != topology.KindGateway {
			return fmt.Errorf("%s: a local quarantine of %s is malformed", o.path, q.Subject)
		}
	}
	o.pending = pending
	if len(pending) > 0 {
		o.gen = 1
	}
	return nil
}

// openLocal loads the pending local quarantines kept in dir.
func (f *fsm) openLocal(dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.local.path = filepath.Join(dir, localFile)
	return f.local.load()
}

// publish makes ev's snapshot the committed state and hands it, with the
// local quarantines over it, to the hub. Callers hold f.mu.
func (f *fsm) publish(ev Event) {
	f.base.Store(ev.Snapshot)
	ev.Snapshot = f.local.view(ev.Snapshot, f.nonces.used)
	f.hub.publish(ev)
}

// republish publishes the committed state again after the local
// quarantines of subjects changed. Callers hold f.mu.
func (f *fsm) republish(subjects []topology.Subject) {
	f.local.gen++
	f.hub.publish(Event{Snapshot: f.local.view(f.base.Load(), f.nonces.used), Subjects: subjects})
}

// QuarantineLocal quarantines sub on this member alone, at once, whether
// or not it can reach the cluster, and keeps the quarantine to propose it
// when it can (see LocalPending and ResolveLocal). It is refused for a
// subject the topology does not hold and for one already quarantined.
func (s *Store) QuarantineLocal(sub topology.Subject, q topology.Quarantine) (LocalQuarantine, error) {
	if sub.Kind != topology.KindDevice && sub.Kind != topology.KindGateway {
		return LocalQuarantine{}, fmt.Errorf("%w: only devices and gateways are quarantined", ErrRejected)
	}
	if strings.TrimSpace(q.Reason) == "" || q.Since.IsZero() {
		return LocalQuarantine{}, fmt.Errorf("%w: a quarantine needs a reason and a time", ErrRejected)
	}
	id := make([]byte, 32)
	rand.Read(id)
	lq := LocalQuarantine{ID: hex.EncodeToString(id), Subject: sub, Quarantine: q}
	f := s.fsm
	f.mu.Lock()
	defer f.mu.Unlock()
	view := f.local.view(f.base.Load(), f.nonces.used)
	if !view.Index().Exists(sub) {
		return LocalQuarantine{}, fmt.Errorf("%w: unknown %s", ErrRejected, sub)
	}
	if view.Quarantined(sub) {
		return LocalQuarantine{}, fmt.Errorf("%w: %s is already quarantined", ErrRejected, sub)
	}
	if len(f.local.pending) >= maxLocal {
		return LocalQuarantine{}, fmt.Errorf("%w: %d local quarantines are waiting for the cluster already", ErrRejected, maxLocal)
	}
	f.local.pending = append(f.local.pending, lq)
	if err := f.local.save(); err != nil {
		f.local.pending = f.local.pending[:len(f.local.pending)-1]
		return LocalQuarantine{}, fmt.Errorf("raft: keep the local quarantine: %w", err)
	}
	f.republish([]topology.Subject{sub})
	return lq, nil
}

// LocalPending lists the local quarantines not yet applied by this
// member's replica, oldest first.
func (s *Store) LocalPending() []LocalQuarantine {
	s.fsm.mu.Lock()
	defer s.fsm.mu.Unlock()
	return slices.Clone(s.fsm.local.pending)
}

// LocalApplied reports whether this member's replica has applied the local
// quarantine id: the cluster has committed it (the nonce is remembered).
func (s *Store) LocalApplied(id string) bool {
	s.fsm.mu.Lock()
	defer s.fsm.mu.Unlock()
	_, used := s.fsm.nonces.used[id]
	return used
}

// ResolveLocal drops the local quarantine id: committed (LocalApplied), or
// refused by the cluster for good (its subject is gone).
func (s *Store) ResolveLocal(id string) error {
	f := s.fsm
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.local.pending, func(q LocalQuarantine) bool { return q.ID == id })
	if i < 0 {
		return nil
	}
	q := f.local.pending[i]
	f.local.pending = slices.Delete(slices.Clone(f.local.pending), i, i+1)
	if err := f.local.save(); err != nil {
		f.local.pending = slices.Insert(f.local.pending, i, q)
		return fmt.Errorf("raft: forget the local quarantine: %w", err)
	}
	f.republish([]topology.Subject{q.Subject})
	return nil
}
