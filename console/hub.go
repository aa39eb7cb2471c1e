// Package console is the operator's web console: the files it is made of,
// embedded in the binary and served at /ui/, and the hub that fans this
// member's decisions out to live streams (server-sent events).
//
// It imports nothing of Vigil's: the node turns each authorizer
// Observation into a Decision, and the API serves the streams.
package console

import (
	"sync"
	"sync/atomic"
	"time"
)

// Decision is one ext_authz decision as the console shows it. It names the
// device, gateway and service, so it is served only to authenticated
// operators, never to /metrics.
type Decision struct {
	At time.Time `json:"at"`
	ID string    `json:"id,omitempty"`
	// Member is the member that decided.
	Member string `json:"member,omitempty"`
	// Subject is the device, gateway or service decided for; its SPIFFE
	// ID when it is not one of the topology (Kind empty).
	Subject string `json:"subject"`
	Kind    string `json:"kind,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	Service string `json:"service,omitempty"`
	Method  string `json:"method,omitempty"`
	Path    string `json:"path,omitempty"`
	Allowed bool   `json:"allowed"`
	// Cause is why a deny was given (quarantined, no-flow, ...).
	Cause  string `json:"cause,omitempty"`
	Reason string `json:"reason,omitempty"`
	Flow   string `json:"flow,omitempty"`
}

// Filter selects decisions; an empty field matches every value.
type Filter struct {
	Device, Gateway, Service string
	// Result is "allow", "deny" or "" (both).
	Result string
}

// Match reports whether d passes the filter.
func (f *Filter) Match(d *Decision) bool {
	switch f.Result {
	case "allow":
		if !d.Allowed {
			return false
		}
	case "deny":
		if d.Allowed {
			return false
		}
	}
	return (f.Device == "" || d.Kind == "device" && d.Subject == f.Device) &&
		(f.Gateway == "" || d.Gateway == f.Gateway) &&
		(f.Service == "" || d.Service == f.Service)
}

// Hub fans decisions out to subscribers. Publishing never blocks: a
// subscriber whose queue is full loses the decision, and counts it. With no
// subscriber, Active is false and the node does not build Decisions at all.
type Hub struct {
	mu   sync.Mutex
	subs atomic.Pointer[[]*Subscription] // copy on write
}

// MaxSubscribers bounds the live streams of one member.
const MaxSubscribers = 64

// Active reports whether anyone is subscribed.
func (h *Hub) Active() bool {
	s := h.subs.Load()
	return s != nil && len(*s) > 0
}

// Publish hands d to every subscriber whose filter matches.
func (h *Hub) Publish(d *Decision) {
	subs := h.subs.Load()
	if subs == nil {
		return
	}
	for _, s := range *subs {
		if !s.filter.Match(d) {
			continue
		}
		s.matched.Add(1)
		select {
		case s.c <- *d:
		default:
			s.dropped.Add(1)
		}
	}
}

// Subscribe starts a subscription with a queue of size buf. It fails with
// ErrTooMany past MaxSubscribers.
func (h *Hub) Subscribe(f Filter, buf int) (*Subscription, error) {
	if buf <= 0 {
		buf = 1024
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var cur []*Subscription
	if p := h.subs.Load(); p != nil {
		cur = *p
	}
	if len(cur) >= MaxSubscribers {
		return nil, ErrTooMany
	}
	s := &Subscription{hub: h, filter: f, c: make(chan Decision, buf)}
	next := append(append(make([]*Subscription, 0, len(cur)+1), cur...), s)
	h.subs.Store(&next)
	return s, nil
}

// Subscribers counts the live subscriptions.
func (h *Hub) Subscribers() int {
	if p := h.subs.Load(); p != nil {
		return len(*p)
	}
	return 0
}

func (h *Hub) remove(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.subs.Load()
	if p == nil {
		return
	}
	next := make([]*Subscription, 0, len(*p))
	for _, o := range *p {
		if o != s {
			next = append(next, o)
		}
	}
	h.subs.Store(&next)
}

type errTooMany struct{}

func (errTooMany) Error() string {
	return "this member already serves its maximum of live decision streams; close one and retry"
}

// ErrTooMany is returned by Subscribe past MaxSubscribers.
var ErrTooMany error = errTooMany{}

// Subscription is one live stream's queue.
type Subscription struct {
	hub              *Hub
	filter           Filter
	c                chan Decision
	matched, dropped atomic.Uint64
	once             sync.Once
}

// C delivers the matching decisions.
func (s *Subscription) C() <-chan Decision { return s.c }

// Matched counts the decisions that matched the filter; Dropped those of
// them the queue had no room for.
func (s *Subscription) Matched() uint64 { return s.matched.Load() }
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription; decisions still queued can be drained.
func (s *Subscription) Close() { s.once.Do(func() { s.hub.remove(s) }) }
