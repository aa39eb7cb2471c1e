package api

import (
	"sync"
	"time"
)

// warnLimiter writes a warning about unauthenticated requests at most once
// a second per kind, with the count of those it held back: anyone who can
// reach the API can send them, and one line each would let them grow the
// member's log as fast as they can send.
type warnLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

// allow reports whether a warning of kind may be written now, and how many
// of that kind were held back since the last one written.
func (l *warnLimiter) allow(kind string, now time.Time) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.held = map[string]time.Time{}, map[string]int{}
	}
	if now.Sub(l.last[kind]) < time.Second {
		l.held[kind]++
		return false, 0
	}
	held = l.held[kind]
	l.last[kind], l.held[kind] = now, 0
	return true, held
}
