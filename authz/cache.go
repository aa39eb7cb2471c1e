package authz

import (
	"crypto/sha256"
	"sync"
)

// decisionCache remembers policy results by everything the policy read.
// It is used only for Vigil's default policy, which reads nothing but
// input.vigil and the principal; a custom policy may read any header, so
// its results are never cached. The key leaves out the revision: a state
// change that does not alter what the policy reads (another device's
// quarantine) keeps the entry, and one that does (this device's) changes
// the key.
type decisionCache struct {
	shards [16]cacheShard
}

type cacheShard struct {
	mu sync.Mutex
	m  map[[32]byte]Result
}

// maxCachedPerShard bounds the cache at about 16 × 8192 results; a full
// shard is emptied rather than tracked for recency.
const maxCachedPerShard = 8192

func newDecisionCache() *decisionCache {
	c := &decisionCache{}
	for i := range c.shards {
		c.shards[i].m = make(map[[32]byte]Result)
	}
	return c
}

func decisionKey(policyHash, principal, context string) [32]byte {
	h := sha256.New()
	h.Write([]byte(policyHash))
	h.Write([]byte{0})
	h.Write([]byte(principal))
	h.Write([]byte{0})
	h.Write([]byte(context))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (c *decisionCache) get(k [32]byte) (Result, bool) {
	s := &c.shards[k[0]%16]
	s.mu.Lock()
	r, ok := s.m[k]
	s.mu.Unlock()
	return r, ok
}

func (c *decisionCache) put(k [32]byte, r Result) {
	s := &c.shards[k[0]%16]
	s.mu.Lock()
	if len(s.m) >= maxCachedPerShard {
		clear(s.m)
	}
	s.m[k] = r
	s.mu.Unlock()
}
