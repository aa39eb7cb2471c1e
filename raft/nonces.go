package raft

import (
	"container/heap"
	"time"
)

// usedNonces remembers the nonces used so far (attestation evidence's, and
// local quarantines' IDs) until they expire, so that a nonce is used once
// across the cluster: the evidence may be verified by any member, but the
// result is recorded only through the log, and every replica refuses a
// nonce it has seen.
//
// Expiry is decided by the times in the log entries (the proposer's
// clock), never the replica's own, so replicas forget the same nonces at
// the same entry. They are kept in a heap by expiry (then nonce, so that
// every replica forgets in the same order): an attestation's nonce lives a
// minute, a local quarantine's ID 30 days, and a queue trimmed from its
// front would keep every later nonce as long as the longest before it.
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
	queue     nonceHeap
	forgotten time.Time
}

type nonceUse struct {
	Nonce   string    `json:"nonce"`
	Expires time.Time `json:"expires"`
}

// nonceHeap is a min-heap of nonces by expiry, then nonce.
type nonceHeap []nonceUse

func (h nonceHeap) Len() int { return len(h) }
func (h nonceHeap) Less(i, j int) bool {
	if !h[i].Expires.Equal(h[j].Expires) {
		return h[i].Expires.Before(h[j].Expires)
	}
	return h[i].Nonce < h[j].Nonce
}
func (h nonceHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *nonceHeap) Push(x any)   { *h = append(*h, x.(nonceUse)) }
func (h *nonceHeap) Pop() any {
	old := *h
	u := old[len(old)-1]
	*h = old[:len(old)-1]
	return u
}

func newUsedNonces() *usedNonces { return &usedNonces{used: map[string]time.Time{}} }

// use records nonce until expires, then forgets the nonces that expired
// before now (the entry's time).
func (n *usedNonces) use(nonce string, expires, now time.Time) {
	n.used[nonce] = expires
	heap.Push(&n.queue, nonceUse{nonce, expires})
	for len(n.queue) > 0 && n.queue[0].Expires.Before(now) {
		u := heap.Pop(&n.queue).(nonceUse)
		if n.used[u.Nonce].Equal(u.Expires) {
			delete(n.used, u.Nonce)
		}
		if u.Expires.After(n.forgotten) {
			n.forgotten = u.Expires
		}
	}
}

// forgot reports whether a nonce that expires at expires may have been
// used and forgotten already.
func (n *usedNonces) forgot(expires time.Time) bool { return !expires.After(n.forgotten) }

// image is the nonces remembered, for snapshots; restore rebuilds from it
// and forgotten.
func (n *usedNonces) image() []nonceUse { return append([]nonceUse(nil), n.queue...) }

func restoreNonces(img []nonceUse, forgotten time.Time) *usedNonces {
	n := newUsedNonces()
	n.forgotten = forgotten
	for _, u := range img {
		n.used[u.Nonce] = u.Expires
		n.queue = append(n.queue, u)
	}
	heap.Init(&n.queue)
	return n
}
