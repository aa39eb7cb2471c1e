package api

import (
	"sync"
	"time"
)

// WarnLimiter lets a warning that a stranger can cause (an unauthenticated
// request, an attestation refused) be written at most once a second per
// kind, with the count of those it held back: one line each would let
// anyone who can send them grow the member's log as fast as they send. The
// zero value is ready to use.
type WarnLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

// Allow reports whether a warning of kind may be written now, and how many
// of that kind were held back since the last one written.
func (l *WarnLimiter) Allow(kind string, now time.Time) (ok bool, held int) {
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
