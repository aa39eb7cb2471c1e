package raft

import "time"

// usedNonces remembers the attestation nonces that evidence has answered,
// until they expire, so that a nonce is used once across the cluster: the
// evidence may be verified by any member, but the result is recorded only
// through the log, and every replica refuses a nonce it has seen.
//
// Expiry is decided by the times in the log entries (the proposer's
// clock), never the replica's own, so replicas forget the same nonces at
// the same entry. Entries arrive in roughly increasing expiry; the queue is
// trimmed from its front, so a nonce whose expiry is out of order is kept
// a little longer, never forgotten early.
//
// Early by the proposer's clock, though: a member whose clock is ahead
// makes every replica forget nonces that the other members' clocks still
// accept. forgotten is the latest expiry of a nonce forgotten so far, and
// a nonce that expires no later is refused (forgot): it may have been used
// and forgotten. So a nonce is used once whatever the members' clocks;
// what a clock far ahead costs is that the others' nonces are refused
// until their clocks catch up (they fail closed).
type usedNonces struct {
	used      map[string]time.Time
	queue     []nonceUse // from head on
	head      int
	forgotten time.Time
}

type nonceUse struct {
	Nonce   string    `json:"nonce"`
	Expires time.Time `json:"expires"`
}

func newUsedNonces() *usedNonces { return &usedNonces{used: map[string]time.Time{}} }

// use records nonce until expires, then forgets the nonces that expired
// before now (the entry's time).
func (n *usedNonces) use(nonce string, expires, now time.Time) {
	n.used[nonce] = expires
	n.queue = append(n.queue, nonceUse{nonce, expires})
	for n.head < len(n.queue) && n.queue[n.head].Expires.Before(now) {
		u := n.queue[n.head]
		if n.used[u.Nonce].Equal(u.Expires) {
			delete(n.used, u.Nonce)
		}
		if u.Expires.After(n.forgotten) {
			n.forgotten = u.Expires
		}
		n.queue[n.head] = nonceUse{}
		n.head++
	}
	if n.head > 1024 && n.head > len(n.queue)/2 {
		n.queue = append([]nonceUse(nil), n.queue[n.head:]...)
		n.head = 0
	}
}

// forgot reports whether a nonce that expires at expires may have been
// used and forgotten already.
func (n *usedNonces) forgot(expires time.Time) bool { return !expires.After(n.forgotten) }

// image is the queue, for snapshots; restore rebuilds from it and
// forgotten.
func (n *usedNonces) image() []nonceUse { return append([]nonceUse(nil), n.queue[n.head:]...) }

func restoreNonces(img []nonceUse, forgotten time.Time) *usedNonces {
	n := newUsedNonces()
	n.forgotten = forgotten
	for _, u := range img {
		n.used[u.Nonce] = u.Expires
		n.queue = append(n.queue, u)
	}
	return n
}
