package raft

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
)

// Confirmed leadership.
//
// IsLeader is raft's own view, and a leader's view can be stale: a leader
// stalled (SIGSTOP, a long GC or VM pause, a frozen disk) keeps believing
// it leads when it resumes, until its next lease check or the next answer
// from a follower tells it otherwise, while the others may have elected a
// new leader meanwhile. Its raft writes cannot commit, so they are safe;
// what it does outside raft because it leads (the SPIRE server's entries,
// join tokens) is not. Such actions ask VerifiedLeader right before they
// act.
//
// VerifiedLeader is true only after a round of heartbeats (raft's
// VerifyLeader) in which a quorum still followed this member, and for a
// short while after: a follower that answered that round cannot vote for
// another candidate until its heartbeat timeout has run from the answer,
// and every quorum that could elect one includes such a follower, so no
// other member can lead before the round's start plus the heartbeat
// timeout. The confirmation is kept for half the shorter of the heartbeat
// and election timeouts, measured from the start of the round, which
// leaves the other half as margin for scheduling and clock rates. A member
// stopped for longer than that finds its confirmation expired when it
// resumes (the monotonic clock runs on while a process is stopped), and a
// new round fails at once: the followers answer with a newer term.
//
// What no check can exclude is a stall between the check and the action
// itself (the action would need a fencing token its receiver checks, and
// the SPIRE server has none); callers keep that window to one call.

// leadership is a Store's confirmed leadership (VerifiedLeader).
type leadership struct {
	mu sync.Mutex
	// term and until: this member was confirmed as the leader of term,
	// and may act as such until until.
	term  uint64
	until time.Time
	// round is the verification under way, nil when none is.
	round *verifyRound
	// rounds counts the verification rounds; refused the asks that raft's
	// own view (IsLeader) would have allowed but that no round confirmed in
	// time.
	rounds, refused atomic.Uint64
}

type verifyRound struct {
	term  uint64
	until time.Time // start + confirmFor: the result is useless after
	done  chan struct{}
	ok    bool // set before done is closed
}

// confirmFor is how long a confirmation lasts, from the start of its round.
func (s *Store) confirmFor() time.Duration {
	return min(s.cfg.HeartbeatTimeout, s.cfg.ElectionTimeout) / 2
}

// VerifiedLeader reports whether this member leads and a quorum of the
// cluster confirmed it within the last confirmFor (half the shorter of the
// heartbeat and election timeouts, 250 ms by default). When the last
// confirmation is older, it runs a round of heartbeats and waits for it,
// at most until that round's confirmation would expire or ctx ends; a
// member that is not confirmed in time is not the leader. Concurrent
// callers share one round, so a caller may ask before each action: it
// costs a round at most every confirmFor.
func (s *Store) VerifiedLeader(ctx context.Context) bool {
	if s.raft.State() != hraft.Leader {
		return false
	}
	term := s.raft.CurrentTerm()
	l := &s.lead
	now := time.Now()
	l.mu.Lock()
	if l.term == term && now.Before(l.until) {
		l.mu.Unlock()
		return true
	}
	r := l.round
	if r == nil || r.term != term || !now.Before(r.until) {
		r = s.startRound(term, now)
	}
	l.mu.Unlock()
	wait := time.NewTimer(time.Until(r.until))
	defer wait.Stop()
	ok := false
	select {
	case <-r.done:
		ok = r.ok && time.Now().Before(r.until) && s.raft.State() == hraft.Leader
	case <-wait.C:
	case <-ctx.Done():
	}
	if !ok {
		l.refused.Add(1)
	}
	return ok
}

// startRound starts a verification round; l.mu is held.
func (s *Store) startRound(term uint64, start time.Time) *verifyRound {
	l := &s.lead
	r := &verifyRound{term: term, until: start.Add(s.confirmFor()), done: make(chan struct{})}
	l.round = r
	l.rounds.Add(1)
	go func() {
		// The future resolves when a quorum answers, when a follower
		// answers with a newer term, or when this member steps down
		// (its lease expired, or raft shut down); never later.
		err := s.raft.VerifyLeader().Error()
		r.ok = err == nil && s.raft.CurrentTerm() == term
		l.mu.Lock()
		if r.ok && (l.term != term || r.until.After(l.until)) {
			l.term, l.until = term, r.until
		}
		if l.round == r {
			l.round = nil
		}
		l.mu.Unlock()
		close(r.done)
	}()
	return r
}

// LeadershipChecks counts VerifiedLeader's rounds of heartbeats since the
// member started, and the asks it refused although raft still said this
// member leads (a deposed or cut-off leader's, or a round too slow).
func (s *Store) LeadershipChecks() (rounds, refused uint64) {
	return s.lead.rounds.Load(), s.lead.refused.Load()
}
