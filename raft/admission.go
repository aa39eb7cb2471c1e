package raft

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Handshake limits: how many accepted connections may be proving themselves
// at once, and from where. Connections that have proved the cluster key and
// been handed to raft count against none of them. See "Handshake limits" in
// docs/decisions/0002-raft-peer-auth.md.
const (
	// maxHandshakes bounds the handshakes in progress in the shared pool,
	// which any source may use. Past it a new connection is closed at once,
	// so that unauthenticated clients cannot hold this member's file
	// descriptors or CPU.
	maxHandshakes = 64

	// reservedHandshakes are further slots only for known peers (see
	// knownPeerTTL), so strangers filling the shared pool cannot keep
	// members out. A known peer takes a reserved slot first and falls back
	// to the shared pool.
	reservedHandshakes = 32

	// maxHandshakesPerSource bounds the handshakes in progress from one
	// unknown source, so one address cannot take the shared pool. A source
	// is an IPv4 address or an IPv6 /64, since one host is usually given a
	// whole /64.
	maxHandshakesPerSource = 4

	// maxHandshakesPerPeer is the same bound for a known peer's exact
	// address: a member's transport may dial a few connections at once
	// (heartbeats, appends, pipeline, snapshot; MaxPool is 5).
	maxHandshakesPerPeer = 8

	// knownPeerTTL is how long an address stays known after a connection
	// from or to it last proved the cluster key. A member's connections
	// are pooled and long-lived, so this is generous.
	knownPeerTTL = 24 * time.Hour

	// maxKnownPeers bounds the known addresses. Only key holders get in,
	// so this is far above any real cluster; past it the oldest goes.
	maxKnownPeers = 256

	// strangerPrefixV6 is how many leading bits of an IPv6 address name
	// an unknown source.
	strangerPrefixV6 = 64
)

var (
	errTooManyFromSource = errors.New("too many handshakes in progress from this address")
	errTooManyHandshakes = errors.New("too many handshakes in progress")
)

// admission decides which accepted connections may start a handshake.
type admission struct {
	now func() time.Time

	mu       sync.Mutex
	shared   int                      // handshakes in progress in the shared pool
	reserved int                      // handshakes in progress in the reserved pool
	sources  map[netip.Prefix]int     // handshakes in progress by source; no zero entries
	known    map[netip.Addr]time.Time // peers, with when they last proved the key
}

func newAdmission() *admission {
	return &admission{
		now:     time.Now,
		sources: make(map[netip.Prefix]int),
		known:   make(map[netip.Addr]time.Time),
	}
}

// slot is one admitted handshake, to be released when it ends.
type slot struct {
	source   netip.Prefix
	reserved bool
}

// admit takes a slot for a handshake from ip, or says why not.
func (a *admission) admit(ip netip.Addr) (slot, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	known := a.isKnownLocked(ip)
	s := slot{source: sourceOf(ip, known)}
	limit := maxHandshakesPerSource
	if known {
		limit = maxHandshakesPerPeer
	}
	if a.sources[s.source] >= limit {
		return slot{}, errTooManyFromSource
	}
	switch {
	case known && a.reserved < reservedHandshakes:
		s.reserved = true
		a.reserved++
	case a.shared < maxHandshakes:
		a.shared++
	default:
		return slot{}, errTooManyHandshakes
	}
	a.sources[s.source]++
	return s, nil
}

// release gives back a slot taken by admit.
func (a *admission) release(s slot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s.reserved {
		a.reserved--
	} else {
		a.shared--
	}
	if n := a.sources[s.source] - 1; n > 0 {
		a.sources[s.source] = n
	} else {
		delete(a.sources, s.source)
	}
}

// remember marks ip as a known peer: it has just proved the cluster key.
func (a *admission) remember(ip netip.Addr) {
	if !ip.IsValid() {
		return
	}
	ip = ip.Unmap()
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if _, ok := a.known[ip]; !ok && len(a.known) >= maxKnownPeers {
		a.sweepLocked(now)
	}
	a.known[ip] = now
}

// sweepLocked drops the expired known peers and, if that frees nothing,
// the one seen longest ago.
func (a *admission) sweepLocked(now time.Time) {
	var oldest netip.Addr
	var oldestAt time.Time
	for ip, at := range a.known {
		if now.Sub(at) >= knownPeerTTL {
			delete(a.known, ip)
		} else if !oldest.IsValid() || at.Before(oldestAt) {
			oldest, oldestAt = ip, at
		}
	}
	if len(a.known) >= maxKnownPeers {
		delete(a.known, oldest)
	}
}

func (a *admission) isKnownLocked(ip netip.Addr) bool {
	at, ok := a.known[ip]
	if ok && a.now().Sub(at) >= knownPeerTTL {
		delete(a.known, ip)
		return false
	}
	return ok
}

// sourceOf is the key handshakes from ip are counted under: the exact
// address of a known peer, else the IPv4 address or the IPv6 /64. An address
// that cannot be read (not TCP) makes the zero prefix, one source for all.
func sourceOf(ip netip.Addr, known bool) netip.Prefix {
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	bits := ip.BitLen()
	if !known && ip.Is6() {
		bits = strangerPrefixV6
	}
	p, _ := ip.Prefix(bits)
	return p
}

// addrIP is the IP address of a connection's end, unmapped from IPv6, or
// the zero Addr if it has none.
func addrIP(addr net.Addr) netip.Addr {
	if ta, ok := addr.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if addr == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
