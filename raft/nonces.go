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
type usedNonces struct {
	used  map[string]time.Time
	queue []nonceUse // from head on
	head  int
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
		n.queue[n.head] = nonceUse{}
		n.head++
	}
	if n.head > 1024 && n.head > len(n.queue)/2 {
		n.queue = append([]nonceUse(nil), n.queue[n.head:]...)
		n.head = 0
	}
}

// image is the queue, for snapshots; restore rebuilds from it.
func (n *usedNonces) image() []nonceUse { return append([]nonceUse(nil), n.queue[n.head:]...) }

func restoreNonces(img []nonceUse) *usedNonces {
	n := newUsedNonces()
	for _, u := range img {
		n.used[u.Nonce] = u.Expires
		n.queue = append(n.queue, u)
	}
	return n
}
