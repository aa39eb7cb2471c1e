package authz

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// limiter keeps one token bucket per device (the class's rate, across all
// of its flows) and one per device and flow (the flow's rate). Buckets live
// on this member only: a device whose requests reach several members gets
// each member's budget, which bounds it all the same.
type limiter struct {
	shards [64]limiterShard
	seed   maphash.Seed
}

type limiterShard struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter() *limiter {
	l := &limiter{seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].buckets = make(map[string]*bucket)
	}
	return l
}

// allow takes one token from key's bucket for rate r; a zero rate is no
// limit. A bucket starts full, holding r.N tokens, and refills at r.N per
// r.Per.
func (l *limiter) allow(key string, r topology.Rate, now time.Time) bool {
	if r.IsZero() {
		return true
	}
	s := &l.shards[maphash.String(l.seed, key)%uint64(len(l.shards))]
	s.mu.Lock()
	defer s.mu.Unlock()
	capacity := float64(r.N)
	b, ok := s.buckets[key]
	if !ok {
		b = &bucket{tokens: capacity, last: now}
		s.buckets[key] = b
	}
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = min(capacity, b.tokens+elapsed.Seconds()*r.PerSecond())
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep forgets buckets untouched for longer than idle: they would be full
// again, which is what a new bucket is.
func (l *limiter) sweep(now time.Time, idle time.Duration) int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for k, b := range s.buckets {
			if now.Sub(b.last) > idle {
				delete(s.buckets, k)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// run sweeps every minute until ctx ends.
func (l *limiter) run(ctx context.Context, idle time.Duration) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			l.sweep(now, idle)
		}
	}
}

// admit applies the device's class rate and the rate of the flow that
// allowed the request. It returns a reason when the request is over budget.
func (l *limiter) admit(d *topology.Device, c *topology.Class, flow *topology.Rule, now time.Time) string {
	if d == nil {
		return ""
	}
	if flow != nil && !l.allow("flow\x00"+flow.Name+"\x00"+d.Name, flow.Rate, now) {
		return "rate limit of flow " + flow.Name + " (" + flow.Rate.String() + ") exceeded by " + d.Name
	}
	if c != nil && !l.allow("device\x00"+d.Name, c.Rate, now) {
		return "rate limit of class " + c.Name + " (" + c.Rate.String() + ") exceeded by " + d.Name
	}
	return ""
}
