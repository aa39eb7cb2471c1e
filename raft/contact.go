package raft

import (
	"fmt"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/topology"
)

// Contact is what this member knows of its link to the cluster's quorum:
// whether it leads, and otherwise when it last heard from a leader.
type Contact struct {
	// Leader is true while this member leads. A leader that loses its
	// quorum steps down within raft's leader lease, so leading means it
	// has heard from a quorum within that lease.
	Leader bool
	// LeaderID is the leader this member follows, empty while it knows
	// none (an election, or a partition).
	LeaderID string
	// Last is when this member last heard from a leader (now, for a
	// leader); zero if it never has since it started.
	Last time.Time
	// LastLeader is the last leader this member knew (itself included).
	LastLeader string
	// Term is the raft term this member is in.
	Term uint64
}

// Contact reports this member's link to the quorum, now.
func (s *Store) Contact() Contact {
	c := Contact{Term: s.raft.CurrentTerm(), LastLeader: s.leaders.last()}
	if s.raft.State() == hraft.Leader {
		c.Leader, c.LeaderID, c.Last = true, s.cfg.ID, time.Now()
		return c
	}
	c.LeaderID, _ = s.Leader()
	c.Last = s.lastContact()
	return c
}

// LastContact is when this member last heard from a leader: now for a
// leader, zero if never. It is cheap enough to call for every decision.
func (s *Store) LastContact() time.Time {
	if s.raft.State() == hraft.Leader {
		return time.Now()
	}
	return s.lastContact()
}

// PartitionError is the answer to a write on a member cut off from the
// cluster's quorum: the write was not proposed. It says how long the member
// has been cut off and what it still enforces.
type PartitionError struct {
	Member     string
	For        time.Duration // time since the last contact with a leader
	LastLeader string        // the last leader this member knew, if any
	Term       uint64
	Revision   topology.Revision // the revision this member keeps enforcing
}

func (e *PartitionError) Error() string {
	last := "no leader since it started"
	if e.LastLeader != "" {
		last = "last leader " + e.LastLeader
	}
	return fmt.Sprintf("member %s is cut off from the cluster's quorum: no leader heard for %s (%s, term %d); "+
		"writes are refused until the partition heals; this member keeps enforcing revision %d",
		e.Member, e.For.Round(100*time.Millisecond), last, e.Term, e.Revision)
}
