package raft

import (
	"context"
	"errors"
	"sync"

	"github.com/vigil-iot/vigil/topology"
)

// ErrClosed is returned by Subscription.Next after Close.
var ErrClosed = errors.New("subscription closed")

// maxQueuedEvents bounds what a stalled subscriber can hold in memory.
const maxQueuedEvents = 4096

// Event is one committed change, delivered in commit order.
type Event struct {
	// Snapshot is the state right after the change.
	Snapshot *topology.Snapshot
	// Document is true when the topology document was replaced.
	Document bool
	// Subjects lists the subjects whose runtime state changed.
	Subjects []topology.Subject
	// Restored is true when the whole state was replaced from a Raft
	// snapshot (for example when a lagging follower caught up), and when a
	// subscriber fell so far behind that its queue was dropped: either way
	// the consumer must treat Snapshot as entirely new.
	Restored bool
	// Lagged is true on the event that replaces a dropped queue.
	Lagged bool
}

// hub fans committed changes out to subscribers.
type hub struct {
	mu      sync.Mutex
	current *topology.Snapshot
	subs    map[*Subscription]struct{}
	changed chan struct{} // closed and replaced on every publish
}

func newHub(initial *topology.Snapshot) *hub {
	return &hub{current: initial, subs: make(map[*Subscription]struct{}), changed: make(chan struct{})}
}

// publish makes ev.Snapshot current and queues ev for every subscriber.
func (h *hub) publish(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.current = ev.Snapshot
	close(h.changed)
	h.changed = make(chan struct{})
	for s := range h.subs {
		s.push(ev)
	}
}

func (h *hub) snapshot() (*topology.Snapshot, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.current, h.changed
}

// waitFor blocks until the current revision is at least rev.
func (h *hub) waitFor(ctx context.Context, rev topology.Revision) (*topology.Snapshot, error) {
	for {
		snap, changed := h.snapshot()
		if snap.Revision() >= rev {
			return snap, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return snap, ctx.Err()
		}
	}
}

// subscribe registers a subscriber and returns the snapshot its first event
// will follow.
func (h *hub) subscribe() (*Subscription, *topology.Snapshot) {
	s := &Subscription{hub: h, notify: make(chan struct{}, 1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subs[s] = struct{}{}
	return s, h.current
}

// Subscription receives every committed change after it was created.
type Subscription struct {
	hub    *hub
	notify chan struct{}

	mu     sync.Mutex
	queue  []Event
	lagged bool
	closed bool
}

func (s *Subscription) push(ev Event) {
	s.mu.Lock()
	if len(s.queue) >= maxQueuedEvents {
		s.queue = nil
		s.lagged = true
	} else {
		s.queue = append(s.queue, ev)
	}
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Next returns the next change, waiting for one if needed. A subscriber
// that fell more than maxQueuedEvents behind gets one Lagged event with the
// current snapshot instead of what it missed, and never an older snapshot
// after it.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	for {
		s.mu.Lock()
		switch {
		case s.closed:
			s.mu.Unlock()
			return Event{}, ErrClosed
		case s.lagged:
			s.mu.Unlock()
			return s.resync(), nil
		case len(s.queue) > 0:
			ev := s.queue[0]
			s.queue[0] = Event{}
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return ev, nil
		}
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

// resync drops the queue and returns the current snapshot; holding the
// hub's lock keeps a publish from slipping in between.
func (s *Subscription) resync() Event {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queue, s.lagged = nil, false
	return Event{Snapshot: s.hub.current, Document: true, Restored: true, Lagged: true}
}

// Close stops delivery; a blocked Next returns ErrClosed.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	delete(s.hub.subs, s)
	s.hub.mu.Unlock()
	s.mu.Lock()
	s.closed = true
	s.queue = nil
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}
