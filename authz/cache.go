package authz

import (
	"hash/maphash"
	"strings"
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
	mu    sync.Mutex
	m     map[cacheKey]Result
	bytes int // what the entries hold, as entryBytes counts it
}

// The cache holds at most 16 × 8192 results and 16 × 2 MiB; a full shard
// is emptied rather than tracked for recency. Counting bytes matters
// because a key holds the request's path and host: entries alone would let
// long paths take memory without bound.
const (
	maxCachedPerShard      = 8192
	maxCachedBytesPerShard = 2 << 20
	// entryOverhead is what an entry costs besides its strings: the map
	// slot, the key's pointers and the result's fields.
	entryOverhead = 256
)

// entryBytes is the memory an entry holds.
func entryBytes(k *cacheKey, r *Result) int {
	n := entryOverhead + len(k.principal) + len(k.forwarded) + len(k.service) + len(k.method) +
		len(k.path) + len(k.host) + len(k.attProblem) + len(r.Reason) + len(r.Body)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	for _, h := range r.ResponseHeadersToAdd {
		n += len(h.Key) + len(h.Value)
	}
	for _, h := range r.RequestHeadersToRemove {
		n += len(h)
	}
	return n
}

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
			c.shards[i].bytes = 0
			c.shards[i].mu.Unlock()
		}
	}
	s := c.shard(&k)
	s.mu.Lock()
	r, ok := s.m[k]
	s.mu.Unlock()
	return r, ok
}

// put remembers r for k. The key's strings are copied: they are usually
// parts of the request, whose other parts must not stay alive with them.
func (c *decisionCache) put(k cacheKey, r Result) {
	k.principal, k.forwarded = strings.Clone(k.principal), strings.Clone(k.forwarded)
	k.service, k.method = strings.Clone(k.service), strings.Clone(k.method)
	k.path, k.host = strings.Clone(k.path), strings.Clone(k.host)
	n := entryBytes(&k, &r)
	if n > maxCachedBytesPerShard/64 {
		return // one entry may not take a large part of a shard
	}
	s := c.shard(&k)
	s.mu.Lock()
	if _, ok := s.m[k]; !ok {
		if len(s.m) >= maxCachedPerShard || s.bytes+n > maxCachedBytesPerShard {
			clear(s.m)
			s.bytes = 0
		}
		s.bytes += n
	}
	s.m[k] = r
	s.mu.Unlock()
}
