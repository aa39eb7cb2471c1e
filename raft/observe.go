package raft

import (
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
)

// Observer is told how long the store's work takes, for metrics. Either
// func may be nil. They run on the goroutines doing the work (a writer
// waiting for its commit, raft's FSM goroutine) and must be cheap and safe
// for concurrent use.
type Observer struct {
	// Committed is called on the leader when a command it proposed has
	// been committed by a quorum and applied here, with the time since it
	// was proposed. A command the state machine refused (ErrRejected)
	// counts: it was committed; one that lost the leadership or timed out
	// does not.
	Committed func(time.Duration)
	// Applied is called after the state machine applied one committed log
	// entry, on every member, with the time the entry took to apply.
	Applied func(time.Duration)
}

// SetObserver replaces the store's Observer; the zero Observer stops
// reporting.
func (s *Store) SetObserver(o Observer) {
	s.fsm.observer.Store(&o)
}

var noObserver Observer

func (f *fsm) observed() *Observer {
	if o := f.observer.Load(); o != nil {
		return o
	}
	return &noObserver
}

// committed reports a command proposed at proposed that is now applied.
func (s *Store) committed(proposed time.Time) {
	if c := s.fsm.observed().Committed; c != nil {
		c(time.Since(proposed))
	}
}

// LeaderChanges counts the leaderships this member has seen since it
// started: each time it learns of a leader (an election won by itself or
// another member) that differs from the last one it knew by member or by
// term. Losing contact with a leader and finding it again in the same term
// is no change.
func (s *Store) LeaderChanges() uint64 { return s.leaders.changes.Load() }

// leaderWatch counts leader changes from raft's observations, in the
// filter itself: it is called synchronously and sends nothing on, so
// there is no channel to drain.
type leaderWatch struct {
	changes atomic.Uint64
	mu      sync.Mutex
	id      hraft.ServerID
	term    uint64
	// leading is whether this member leads, and steppedDown when it last
	// stopped leading (unix nanoseconds, 0 if it never has), from raft's
	// state changes.
	leading     atomic.Bool
	steppedDown atomic.Int64
}

// last is the last leader seen, empty before the first.
func (w *leaderWatch) last() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.id)
}

func (w *leaderWatch) observer() *hraft.Observer {
	return hraft.NewObserver(nil, false, func(o *hraft.Observation) bool {
		if st, ok := o.Data.(hraft.RaftState); ok {
			if st == hraft.Leader {
				w.leading.Store(true)
			} else if w.leading.Swap(false) {
				w.steppedDown.Store(time.Now().UnixNano())
			}
			return false
		}
		lo, ok := o.Data.(hraft.LeaderObservation)
		if !ok || lo.LeaderID == "" {
			return false
		}
		term := o.Raft.CurrentTerm() // raft sets the term before the leader
		w.mu.Lock()
		defer w.mu.Unlock()
		if lo.LeaderID != w.id || term != w.term {
			w.id, w.term = lo.LeaderID, term
			w.changes.Add(1)
		}
		return false
	})
}

// lastContact is when this member last heard from a leader: raft's own
// answer (the last message from a leader, for a follower), or when this
// member itself stopped leading, if that is later. A leader that has just
// handed over or stepped down was in touch with its quorum until then,
// though as a follower it has not heard from the next leader yet.
func (s *Store) lastContact() time.Time {
	last := s.raft.LastContact()
	if ns := s.leaders.steppedDown.Load(); ns != 0 {
		if led := time.Unix(0, ns); led.After(last) {
			return led
		}
	}
	return last
}
