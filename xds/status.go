package xds

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"
)

// ProxyStatus is what the server knows about one proxy node: where it is
// connected from and, per resource type, what it was sent and what it
// accepted or rejected.
type ProxyStatus struct {
	NodeID  string
	Cluster string
	// Proxyless is a gRPC library rather than Envoy.
	Proxyless bool
	// ControlPlane is the Vigil node serving it (Config.NodeID).
	ControlPlane string
	// DenyAll is true when the node is served the deny-all configuration
	// (its ID names no gateway).
	DenyAll   bool
	Connected bool
	// Streams counts its open xDS streams (ADS, or one per type).
	Streams int
	// Peer is the address of its most recently opened stream; Delta says
	// whether that stream is incremental.
	Peer  string
	Delta bool
	// Identity is the SPIFFE ID its client certificate was verified with
	// (empty when the xDS server does not authenticate).
	Identity string `json:",omitempty"`
	// ConnectedSince is when its current connection began;
	// DisconnectedAt when its last stream closed.
	ConnectedSince time.Time
	DisconnectedAt time.Time
	// Types is sorted by type URL.
	Types []TypeStatus
}

// TypeStatus is the state of one resource type of one node.
type TypeStatus struct {
	TypeURL string
	// Sent is the version last sent; Acked the version last accepted.
	Sent    string
	SentAt  time.Time
	Acked   string
	AckedAt time.Time
	// Nack is the last rejection, nil if none.
	Nack *Nack
}

// Nack is a rejected configuration.
type Nack struct {
	Version string
	Message string
	At      time.Time
}

// streamKey names a stream: go-control-plane numbers SotW and delta
// streams with separate counters.
type streamKey struct {
	delta bool
	id    int64
}

// sent is the last response of a type on a stream: when it was sent, and
// whether the proxy has answered it (ACK or NACK) yet.
type sent struct {
	version, nonce string
	at             time.Time
	answered       bool
}

// answer is a proxy's first reply to a response: an ACK or a NACK of
// typeURL, latency after the response was sent (Config.OnAnswer). The
// zero answer is none.
type answer struct {
	typeURL string
	latency time.Duration
	nack    bool
}

type streamRecord struct {
	node     string
	attached bool // its first request arrived and named node
	peer     string
	identity string // the verified SPIFFE ID of its client certificate
	opened   time.Time
	sent     map[string]sent // by type URL
}

type proxyRecord struct {
	status ProxyStatus
	types  map[string]*TypeStatus
}

// tracker records ACKs and NACKs per node and type. Its lock is never held
// while calling out.
type tracker struct {
	now          func() time.Time
	controlPlane string

	mu      sync.Mutex
	streams map[streamKey]*streamRecord
	proxies map[string]*proxyRecord
}

func newTracker(now func() time.Time, controlPlane string) *tracker {
	return &tracker{now: now, controlPlane: controlPlane, streams: map[streamKey]*streamRecord{}, proxies: map[string]*proxyRecord{}}
}

func (t *tracker) open(k streamKey, peer, identity string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams[k] = &streamRecord{peer: peer, identity: identity, opened: t.now(), sent: map[string]sent{}}
}

// identity is stream k's verified SPIFFE ID, its peer address, and
// whether a first request has already named its node.
func (t *tracker) identity(k streamKey) (identity, peer string, attached bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.streams[k]; s != nil {
		return s.identity, s.peer, s.attached
	}
	return "", "", false
}

// request records a request on stream k. nodeID and cluster are those the
// request names (empty when it names none: only the first request must).
// It returns the stream's node, the version the request rejects if it is a
// NACK of what this stream was sent, and, when the request is the proxy's
// first answer to the stream's last response of typeURL, that answer.
func (t *tracker) request(k streamKey, named bool, n Node, typeURL, version, nonce, nackMsg string, nack bool) (node, rejected string, ans answer, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[k]
	if s == nil { // not opened through the callbacks; should not happen
		s = &streamRecord{opened: t.now(), sent: map[string]sent{}}
		t.streams[k] = s
	}
	if !s.attached {
		// The first request names the node (an empty ID is a node too:
		// it is served deny-all).
		s.attached, s.node = true, n.key()
		p := t.proxy(s.node)
		if p.status.Streams == 0 {
			p.status.ConnectedSince = s.opened
		}
		p.status.Streams++
		p.status.Connected = true
		p.status.Peer, p.status.Delta, p.status.Identity = s.peer, k.delta, s.identity
	} else if named && n.key() != s.node {
		// go-control-plane would serve the stream from the other node's
		// cache entry, which this server neither builds nor tracks for it.
		was := nodeOfKey(s.node)
		return s.node, "", answer{}, fmt.Errorf("xds stream opened as node %q (cluster %q) cannot switch to node %q (cluster %q)", was.ID, was.Cluster, n.ID, n.Cluster)
	}
	p := t.proxy(s.node)
	last, ok := s.sent[typeURL]
	if !ok || nonce == "" || nonce != last.nonce {
		return s.node, "", answer{}, nil
	}
	ts := p.typ(typeURL)
	now := t.now()
	if nack {
		ts.Nack = &Nack{Version: last.version, Message: nackMsg, At: now}
		return s.node, last.version, s.answer(typeURL, last, now, true), nil
	}
	// SotW requests repeat the version they accept; delta requests carry
	// none, their nonce says which response they answer.
	if k.delta || version == last.version {
		ts.Acked, ts.AckedAt = last.version, now
		return s.node, "", s.answer(typeURL, last, now, false), nil
	}
	return s.node, "", answer{}, nil
}

// answer marks the stream's last response of typeURL answered and returns
// the answer, or none when it was answered before: a later request
// carrying the same nonce (a SotW proxy changing the names it wants) is no
// answer of its own. Callers hold t.mu.
func (s *streamRecord) answer(typeURL string, last sent, now time.Time, nack bool) answer {
	if last.answered {
		return answer{}
	}
	last.answered = true
	s.sent[typeURL] = last
	return answer{typeURL: typeURL, latency: now.Sub(last.at), nack: nack}
}

func (t *tracker) response(k streamKey, typeURL, version, nonce string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[k]
	if s == nil {
		return
	}
	now := t.now()
	s.sent[typeURL] = sent{version: version, nonce: nonce, at: now}
	ts := t.proxy(s.node).typ(typeURL)
	ts.Sent, ts.SentAt = version, now
}

// closed forgets stream k and returns its node and how many streams that
// node still has open.
func (t *tracker) closed(k streamKey) (node string, remaining int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[k]
	if s == nil {
		return "", 0
	}
	delete(t.streams, k)
	p, ok := t.proxies[s.node]
	if !ok || !s.attached {
		return s.node, 0
	}
	p.status.Streams--
	if p.status.Streams == 0 {
		p.status.Connected = false
		p.status.DisconnectedAt = t.now()
		if p.status.DenyAll {
			// Any client may name any node; the records of names that are
			// no gateway must not pile up.
			delete(t.proxies, s.node)
		}
	}
	return s.node, p.status.Streams
}

func (t *tracker) streamsOf(node string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.proxies[node]; ok {
		return p.status.Streams
	}
	return 0
}

func (t *tracker) setDenyAll(node string, denyAll bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.proxy(node).status.DenyAll = denyAll
}

// proxy returns node's record, creating it. Callers hold t.mu.
func (t *tracker) proxy(node string) *proxyRecord {
	p := t.proxies[node]
	if p == nil {
		n := nodeOfKey(node)
		p = &proxyRecord{status: ProxyStatus{NodeID: n.ID, Cluster: n.Cluster, Proxyless: n.Proxyless, ControlPlane: t.controlPlane}, types: map[string]*TypeStatus{}}
		t.proxies[node] = p
	}
	return p
}

func (p *proxyRecord) typ(typeURL string) *TypeStatus {
	ts := p.types[typeURL]
	if ts == nil {
		ts = &TypeStatus{TypeURL: typeURL}
		p.types[typeURL] = ts
	}
	return ts
}

// list returns a copy of every node's status, sorted by node ID.
func (t *tracker) list() []ProxyStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ProxyStatus, 0, len(t.proxies))
	for _, p := range t.proxies {
		st := p.status
		st.Types = make([]TypeStatus, 0, len(p.types))
		for _, ts := range p.types {
			c := *ts
			if c.Nack != nil {
				n := *c.Nack
				c.Nack = &n
			}
			st.Types = append(st.Types, c)
		}
		slices.SortFunc(st.Types, func(a, b TypeStatus) int { return cmp.Compare(a.TypeURL, b.TypeURL) })
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int {
		return cmp.Or(cmp.Compare(a.NodeID, b.NodeID), cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(btoi(a.Proxyless), btoi(b.Proxyless)))
	})
	return out
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
