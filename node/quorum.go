package node

import (
	"time"

	"github.com/vigil-iot/vigil/raft"
)

// DefaultMaxStaleness is how long a member cut off from the quorum keeps
// allowing every flow its last-known state allows; past it only essential
// flows are allowed (--max-staleness).
const DefaultMaxStaleness = 30 * time.Minute

// quorum tells whether this member is cut off from its cluster's quorum.
//
// A follower hears from its leader every few tens of milliseconds; one that
// has heard nothing for cutOffAfter (three election timeouts, at least
// 1.5 s) is counted as cut off. That is longer than an election usually
// takes here (0.6–1.4 s after a leader stalls; a split vote can take 2 s),
// so a member waiting out an election keeps holding writes for the new
// leader rather than refusing them, and short enough that a write on a
// member cut off by a partition is answered within 2 s instead of waiting
// out the write deadline.
//
// While cut off the member keeps deciding from its replica: every decision
// records how stale it is (Decision.StaleMS) and, past maxStaleness, only
// essential flows are allowed.
type quorum struct {
	store        *raft.Store
	started      time.Time
	cutOffAfter  time.Duration
	maxStaleness time.Duration // 0: never restrict
	// diskFullFor, when set, is how long the data dir has been full: a
	// member that cannot append what the cluster commits is as stale as
	// one that cannot hear it.
	diskFullFor func(time.Time) time.Duration
}

func newQuorum(store *raft.Store, electionTimeout, maxStaleness time.Duration) *quorum {
	if electionTimeout <= 0 {
		electionTimeout = 500 * time.Millisecond
	}
	// A member that restarted counts from its last contact before the
	// restart, not from its start: its replica is that old.
	started := time.Now()
	if lc := store.Resumed().LastContact; !lc.IsZero() && lc.Before(started) {
		started = lc
	}
	return &quorum{store: store, started: started, cutOffAfter: max(1500*time.Millisecond, 3*electionTimeout),
		maxStaleness: maxStaleness}
}

// staleness is how long this member's replica may have been behind: the
// time since it last heard from a leader once it counts as cut off, or
// since its data dir filled (it can then append nothing), whichever is
// longer; zero otherwise.
func (q *quorum) staleness() time.Duration {
	now := time.Now()
	var stale time.Duration
	if age := q.contactAge(now); age > q.cutOffAfter {
		stale = age
	}
	if q.diskFullFor != nil {
		stale = max(stale, q.diskFullFor(now))
	}
	return stale
}

// contactAge is how long ago this member last heard from a leader (zero
// while it leads), counted from its last contact before a restart, or
// its start, when it has not heard from one since.
func (q *quorum) contactAge(now time.Time) time.Duration {
	last := q.store.LastContact()
	if last.IsZero() {
		last = q.started
	}
	return max(now.Sub(last), 0)
}

// partitioned is nil while the member is in contact with the quorum, and
// otherwise the error a write on it gets.
func (q *quorum) partitioned() error {
	age := q.contactAge(time.Now())
	if age <= q.cutOffAfter {
		return nil
	}
	c := q.store.Contact()
	return &raft.PartitionError{Member: q.store.ID(), For: age, LastLeader: c.LastLeader, Term: c.Term,
		Revision: q.store.Current().Revision()}
}

// status is the "quorum" part of GET /v1/node.
func (q *quorum) status() map[string]any {
	c := q.store.Contact()
	out := map[string]any{
		"contact":      q.contactAge(time.Now()) <= q.cutOffAfter,
		"leader":       c.LeaderID,
		"lastLeader":   c.LastLeader,
		"term":         c.Term,
		"cutOffAfter":  q.cutOffAfter.String(),
		"maxStaleness": q.maxStaleness.String(),
	}
	if pending := q.store.LocalPending(); len(pending) > 0 {
		// Quarantines taken here while cut off, not yet committed.
		out["localPending"] = len(pending)
	}
	if !c.Last.IsZero() {
		out["lastContact"] = c.Last.UTC()
	}
	if stale := q.staleness(); stale > 0 { // cut off, or its data dir full
		out["stale"] = true
		out["staleFor"] = stale.Round(time.Millisecond).String()
		out["restricted"] = q.maxStaleness > 0 && stale > q.maxStaleness
	}
	return out
}
