package authz

import (
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/vigil-iot/vigil/topology"
)

// decisionCache remembers policy results by everything the policy read.
// It is used only for Vigil's default policy, which reads nothing but
// input.vigil and the principal; a custom policy may read any header, so
// its results are never cached. The key leaves out the revision: a state
// change that does not alter what the policy reads (another device's
// quarantine) keeps the entry, and one that does (this device's) changes
// the key. Runtime state values are immutable and a new document is a new
// index, so the key holds them by identity.
type decisionCache struct {
	shards [16]cacheShard
	seed   maphash.Seed
	// index is the document the entries were made for; a new one empties
	// the cache, so that no entry keeps an old document alive.
	index atomic.Pointer[topology.Index]
}

type cacheShard struct {
	mu sync.Mutex
	m  map[cacheKey]Result
}

// maxCachedPerShard bounds the cache at about 16 × 8192 results; a full
// shard is emptied rather than tracked for recency.
const maxCachedPerShard = 8192

func newDecisionCache() *decisionCache {
	c := &decisionCache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[cacheKey]Result)
	}
	return c
}

func (c *decisionCache) shard(k *cacheKey) *cacheShard {
	return &c.shards[maphash.String(c.seed, k.principal+k.path)%16]
}

func (c *decisionCache) get(k cacheKey) (Result, bool) {
	if old := c.index.Load(); old != k.index && c.index.CompareAndSwap(old, k.index) {
		for i := range c.shards {
			c.shards[i].mu.Lock()
			clear(c.shards[i].m)
			c.shards[i].mu.Unlock()
		}
	}
	s := c.shard(&k)
	s.mu.Lock()
	r, ok := s.m[k]
	s.mu.Unlock()
	return r, ok
}

func (c *decisionCache) put(k cacheKey, r Result) {
	s := c.shard(&k)
	s.mu.Lock()
	if len(s.m) >= maxCachedPerShard {
		clear(s.m)
	}
	s.m[k] = r
	s.mu.Unlock()
}
