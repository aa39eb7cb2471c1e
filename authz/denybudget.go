package authz

import (
	"hash/maphash"
	"net"
	"sync"
	"time"
)

// Deny storms. Every allowed decision is written to the log as its own
// entry (allows are bounded by the flows' rate limits). Denies are not: a
// caller that sends nothing but bad requests could otherwise make the log
// write as fast as the member can answer. So each asker, the verified
// proxy (caller) or, without proxy TLS, the peer's IP address, has a
// budget of individually logged denies (a token bucket); past it, its
// denies are folded into one aggregate entry per asker and second, with
// their count, the time span, and the last one's subject, status and
// reason. Aggregates are chained like every other line, so the audit trail
// stays complete in number if not in detail. The monitor sees every
// decision whatever the log does.

// aggregateEntry is a line that stands for Count denies of one asker.
type aggregateEntry struct {
	Seq         uint64    `json:"seq"`
	Prev        string    `json:"prev"`
	Aggregate   string    `json:"aggregate"` // "denies"
	Time        time.Time `json:"time"`      // the first deny folded in
	Until       time.Time `json:"until"`     // the last
	Node        string    `json:"node"`
	Caller      string    `json:"caller,omitempty"`
	Source      string    `json:"source,omitempty"`
	Count       uint64    `json:"count"`
	LastSubject string    `json:"last_subject,omitempty"`
	LastStatus  int       `json:"last_http_status"`
	LastReason  string    `json:"last_reason"`
}

// DenyBudget is how many denies of one asker the log records one by one:
// Burst at once, then PerSecond.
type DenyBudget struct {
	PerSecond float64
	Burst     float64
}

// DefaultDenyBudget logs 1,000 denies of an asker at once and 100/s after.
var DefaultDenyBudget = DenyBudget{PerSecond: 100, Burst: 1000}

const (
	denyShards = 16
	// maxDenyAskers bounds the askers tracked per shard; past it, new
	// askers share one overflow budget.
	maxDenyAskers = 1024
	overflowAsker = "\x00overflow"
	// denyIdle is how long an asker with a full bucket is remembered.
	denyIdle = time.Minute
)

type denyBudget struct {
	b      DenyBudget
	seed   maphash.Seed
	shards [denyShards]denyShard
}

type denyShard struct {
	mu sync.Mutex
	m  map[string]*denyAsker
}

type denyAsker struct {
	tokens float64
	last   time.Time
	agg    *aggregateEntry // denies folded since the last flush
}

func newDenyBudget(b DenyBudget) *denyBudget {
	db := &denyBudget{b: b, seed: maphash.MakeSeed()}
	for i := range db.shards {
		db.shards[i].m = make(map[string]*denyAsker)
	}
	return db
}

// askerOf is who a deny is charged to.
func askerOf(d *Decision) string {
	if d.Caller != "" {
		return d.Caller
	}
	if host, _, err := net.SplitHostPort(d.Source); err == nil {
		return host
	}
	return d.Source
}

// admit reports whether d is within its asker's budget; if not, d is
// folded into the asker's aggregate, and admit returns false.
func (db *denyBudget) admit(d *Decision) bool {
	key := askerOf(d)
	s := &db.shards[maphash.String(db.seed, key)%denyShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.m[key]
	if !ok {
		if len(s.m) >= maxDenyAskers {
			key = overflowAsker
			a = s.m[key]
		}
		if a == nil {
			a = &denyAsker{tokens: db.b.Burst, last: d.Time}
			s.m[key] = a
		}
	}
	if el := d.Time.Sub(a.last); el > 0 {
		a.tokens = min(db.b.Burst, a.tokens+el.Seconds()*db.b.PerSecond)
		a.last = d.Time
	}
	if a.tokens >= 1 {
		a.tokens--
		return true
	}
	if a.agg == nil {
		a.agg = &aggregateEntry{Aggregate: "denies", Time: d.Time, Node: d.Node}
		if key != overflowAsker {
			a.agg.Caller, a.agg.Source = d.Caller, d.Source
		}
	}
	g := a.agg
	g.Count++
	if d.Time.After(g.Until) {
		g.Until = d.Time
	}
	g.LastSubject, g.LastStatus, g.LastReason = d.Subject, d.HTTPStatus, d.Reason
	return false
}

// take returns the aggregates folded since the last call and forgets
// askers that have been idle for long with a full budget.
func (db *denyBudget) take(now time.Time) []*aggregateEntry {
	var out []*aggregateEntry
	for i := range db.shards {
		s := &db.shards[i]
		s.mu.Lock()
		for k, a := range s.m {
			if a.agg != nil {
				out = append(out, a.agg)
				a.agg = nil
			} else if now.Sub(a.last) > denyIdle {
				delete(s.m, k)
			}
		}
		s.mu.Unlock()
	}
	return out
}
