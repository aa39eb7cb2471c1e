package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// ClientEndpoint is the name of a connection's source that the identify
// function (see SetIdentify) cannot place, such as a test's own API client.
const ClientEndpoint = "client"

// AnyEndpoint, as either end of a rule, matches every endpoint,
// ClientEndpoint included.
const AnyEndpoint = "*"

const (
	// faultChunk is the most a relay reads at once: the unit that Drop
	// discards and Delay holds back.
	faultChunk = 32 << 10
	// faultQueue bounds the bytes held back per connection and direction;
	// beyond it the relay stops reading, so a delayed sender feels
	// backpressure instead of growing the test's memory.
	faultQueue = 8 << 20
	// faultDial bounds a relay's connect to its target.
	faultDial = 5 * time.Second
)

// Pair is a direction of traffic: bytes From sends To.
type Pair struct{ From, To string }

func (p Pair) String() string { return p.From + "->" + p.To }

// PairStats counts one direction's traffic.
type PairStats struct {
	// Accepted is how many connections From dialled to To's proxies.
	Accepted int64
	// Relayed and Discarded are the bytes From→To delivered and thrown
	// away (by Cut or Drop).
	Relayed, Discarded int64
	// Held is the bytes From→To read and not yet delivered: those a Delay
	// holds back, or on their way.
	Held int64
}

// FaultStats is a snapshot of a FaultNet's traffic: totals, and per
// direction.
type FaultStats struct {
	Accepted, Relayed, Discarded, Held int64
	Pairs                              map[Pair]PairStats
}

type faultKind int

const (
	faultCut faultKind = iota + 1
	faultDelay
	faultDrop
)

type faultRule struct {
	kind  faultKind
	delay time.Duration
	p     float64
}

// FaultNet relays TCP connections to members through proxies whose faults a
// test sets per directed pair of endpoints.
//
// Each relayed connection has a dialer side, whose name the identify
// function gives when the connection is accepted, and a listener side,
// named by the proxy's to. Rules apply by the direction bytes travel, not by
// who dialled: Cut("n1", "n2") discards what n1 sends on connections n1
// dialled to n2 and on those n2 dialled to n1, which makes one-way
// partitions possible. Rules are looked up for every chunk read, so they
// take effect on established connections at once; the application sees
// whatever a real network would make of the lost bytes (TLS streams break
// and get re-dialled). A connection toward a cut endpoint is still accepted
// and connected, as over a blackholed link. A cut discards bytes, not the
// end of a stream: a close still reaches the other side, so that
// connections an application gives up on do not linger half-open.
//
// The most specific rule for a direction applies: the exact pair, then
// from→AnyEndpoint, then AnyEndpoint→to, then AnyEndpoint→AnyEndpoint. Every goroutine and every byte held
// is bounded, and Close stops them all.
type FaultNet struct {
	ctx    context.Context // ends with Close; bounds relays' dials
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	listeners []net.Listener
	relays    map[*relay]struct{}
	identify  func(net.Addr) string
	accepted  int64
	pairs     map[Pair]*pairCounters

	rulesMu sync.RWMutex
	rules   map[Pair]faultRule
}

type pairCounters struct{ accepted, relayed, discarded, held atomic.Int64 }

// NewFaultNet returns a FaultNet with no proxies and no faults.
func NewFaultNet() *FaultNet {
	ctx, cancel := context.WithCancel(context.Background())
	return &FaultNet{ctx: ctx, cancel: cancel, relays: make(map[*relay]struct{}),
		pairs: make(map[Pair]*pairCounters), rules: make(map[Pair]faultRule)}
}

// Proxy listens on a new 127.0.0.1 port and relays every accepted
// connection to target; to names the destination (a member ID such as
// "n2"). It returns the proxy's address.
func (f *FaultNet) Proxy(to, target string) (string, error) {
	// Not a port FreeAddr gave a member that has not bound it yet.
	ln, err := listenLoopback()
	if err != nil {
		return "", fmt.Errorf("fault proxy for %s: %w", to, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		ln.Close()
		return "", errors.New("fault proxy: the FaultNet is closed")
	}
	f.listeners = append(f.listeners, ln)
	f.wg.Add(1)
	go f.acceptLoop(ln, to, target)
	return ln.Addr().String(), nil
}

// SetIdentify sets how the proxies name the source of an accepted
// connection (by default every source is ClientEndpoint). It is called once per
// connection, before the relay dials the target.
func (f *FaultNet) SetIdentify(identify func(remote net.Addr) string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.identify = identify
}

// Cut discards every byte from sends to.
func (f *FaultNet) Cut(from, to string) { f.set(from, to, faultRule{kind: faultCut}) }

// Delay delivers each chunk from sends to d after it was read, in order.
// Chunks already held keep their time when the rule changes.
func (f *FaultNet) Delay(from, to string, d time.Duration) {
	f.set(from, to, faultRule{kind: faultDelay, delay: d})
}

// Drop discards each chunk from sends to with probability p (0 to 1).
func (f *FaultNet) Drop(from, to string, p float64) {
	f.set(from, to, faultRule{kind: faultDrop, p: p})
}

// Isolate cuts name off from each of others, both ways; with no others,
// from every endpoint (AnyEndpoint).
func (f *FaultNet) Isolate(name string, others ...string) {
	if len(others) == 0 {
		others = []string{AnyEndpoint}
	}
	for _, o := range others {
		f.Cut(name, o)
		f.Cut(o, name)
	}
}

// Heal removes the rule for from→to (the exact pair, wildcards included).
func (f *FaultNet) Heal(from, to string) {
	f.rulesMu.Lock()
	defer f.rulesMu.Unlock()
	delete(f.rules, Pair{from, to})
}

// HealAll removes every rule.
func (f *FaultNet) HealAll() {
	f.rulesMu.Lock()
	defer f.rulesMu.Unlock()
	clear(f.rules)
}

// Reset closes every open connection between from and to, whichever of
// them dialled, with an RST to both ends (as when a middlebox or a rebooted
// peer resets it). It is not a standing rule: new connections go through.
func (f *FaultNet) Reset(from, to string) {
	f.mu.Lock()
	var hit []*relay
	for r := range f.relays {
		if r.src == "" { // not yet identified; not yet carrying data
			continue
		}
		if match(from, r.src) && match(to, r.dst) || match(from, r.dst) && match(to, r.src) {
			hit = append(hit, r)
		}
	}
	f.mu.Unlock()
	for _, r := range hit {
		r.close(true)
	}
}

// Stats returns the traffic so far.
func (f *FaultNet) Stats() FaultStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := FaultStats{Accepted: f.accepted, Pairs: make(map[Pair]PairStats, len(f.pairs))}
	for p, c := range f.pairs {
		ps := PairStats{Accepted: c.accepted.Load(), Relayed: c.relayed.Load(), Discarded: c.discarded.Load(), Held: c.held.Load()}
		st.Pairs[p] = ps
		st.Relayed += ps.Relayed
		st.Discarded += ps.Discarded
		st.Held += ps.Held
	}
	return st
}

// Close closes every proxy and every relayed connection, and waits for the
// relays' goroutines to end.
func (f *FaultNet) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	lns := f.listeners
	relays := make([]*relay, 0, len(f.relays))
	for r := range f.relays {
		relays = append(relays, r)
	}
	f.mu.Unlock()
	f.cancel()
	var errs []error
	for _, ln := range lns {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, r := range relays {
		r.close(false)
	}
	f.wg.Wait()
	return errors.Join(errs...)
}

// String lists the standing rules, for a failure report.
func (f *FaultNet) String() string {
	f.rulesMu.RLock()
	defer f.rulesMu.RUnlock()
	if len(f.rules) == 0 {
		return "no faults"
	}
	var out []string
	for p, r := range f.rules {
		switch r.kind {
		case faultCut:
			out = append(out, fmt.Sprintf("cut %s", p))
		case faultDelay:
			out = append(out, fmt.Sprintf("delay %s %v", p, r.delay))
		case faultDrop:
			out = append(out, fmt.Sprintf("drop %s %g", p, r.p))
		}
	}
	sort.Strings(out)
	return fmt.Sprint(out)
}

func (f *FaultNet) set(from, to string, r faultRule) {
	f.rulesMu.Lock()
	defer f.rulesMu.Unlock()
	f.rules[Pair{from, to}] = r
}

// rule is the most specific rule for from→to, if any.
func (f *FaultNet) rule(from, to string) (faultRule, bool) {
	f.rulesMu.RLock()
	defer f.rulesMu.RUnlock()
	if len(f.rules) == 0 {
		return faultRule{}, false
	}
	for _, p := range [...]Pair{{from, to}, {from, AnyEndpoint}, {AnyEndpoint, to}, {AnyEndpoint, AnyEndpoint}} {
		if r, ok := f.rules[p]; ok {
			return r, true
		}
	}
	return faultRule{}, false
}

func match(pattern, name string) bool { return pattern == AnyEndpoint || pattern == name }

// counters returns (creating) the counters of from→to; f.mu is held.
func (f *FaultNet) counters(from, to string) *pairCounters {
	p := Pair{from, to}
	c := f.pairs[p]
	if c == nil {
		c = &pairCounters{}
		f.pairs[p] = c
	}
	return c
}

func (f *FaultNet) acceptLoop(ln net.Listener, to, target string) {
	defer f.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || f.ctx.Err() != nil {
				return
			}
			// Out of file descriptors or the like: wait, bounded by Close.
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		r := &relay{f: f, dst: to, dialer: conn.(*net.TCPConn), done: make(chan struct{}),
			queues: [2]*chunkQueue{newChunkQueue(), newChunkQueue()}}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			conn.Close()
			return
		}
		f.relays[r] = struct{}{}
		f.accepted++
		f.wg.Add(1)
		f.mu.Unlock()
		go r.start(target)
	}
}

// relay is one accepted connection and the one it dialled to the target.
type relay struct {
	f        *FaultNet
	src, dst string // the dialer's name (set under f.mu once identified) and the proxy's to

	dialer   *net.TCPConn // accepted from src
	mu       sync.Mutex
	target   *net.TCPConn     // dialled to dst's target; nil until connected
	counters [2]*pairCounters // of src→dst and dst→src, set with target

	ended     atomic.Int32 // directions that finished cleanly
	done      chan struct{}
	closeOnce sync.Once
	queues    [2]*chunkQueue // dialer→target, target→dialer
}

// start identifies the source, connects to target and starts both
// directions; it runs on its own goroutine, counted in f.wg.
func (r *relay) start(target string) {
	f := r.f
	defer f.wg.Done()
	f.mu.Lock()
	identify := f.identify
	f.mu.Unlock()
	src := ClientEndpoint
	if identify != nil {
		if name := identify(r.dialer.RemoteAddr()); name != "" {
			src = name
		}
	}
	f.mu.Lock()
	r.src = src
	f.counters(src, r.dst).accepted.Add(1)
	up, down := f.counters(src, r.dst), f.counters(r.dst, src)
	f.mu.Unlock()

	d := net.Dialer{Timeout: faultDial}
	conn, err := d.DialContext(f.ctx, "tcp", target)
	if err != nil {
		// As close as an accepted connection gets to "connection refused".
		r.close(true)
		return
	}
	r.mu.Lock()
	select {
	case <-r.done: // closed (Reset, Close) while dialling
		r.mu.Unlock()
		conn.Close()
		return
	default:
	}
	r.target = conn.(*net.TCPConn)
	r.counters = [2]*pairCounters{up, down}
	r.mu.Unlock()
	f.wg.Add(4)
	go r.read(r.dialer, r.queues[0], src, r.dst, up)
	go r.write(r.target, r.queues[0], up)
	go r.read(r.target, r.queues[1], r.dst, src, down)
	go r.write(r.dialer, r.queues[1], down)
}

// read moves what from sends to into q, applying the rule for from→to to
// each chunk.
func (r *relay) read(src net.Conn, q *chunkQueue, from, to string, c *pairCounters) {
	defer r.f.wg.Done()
	buf := make([]byte, faultChunk)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			at := time.Now()
			rule, ok := r.f.rule(from, to)
			switch {
			case ok && rule.kind == faultCut,
				ok && rule.kind == faultDrop && rand.Float64() < rule.p:
				c.discarded.Add(int64(n))
			default:
				if ok && rule.kind == faultDelay {
					at = at.Add(rule.delay)
				}
				c.held.Add(int64(n))
				if !q.push(chunk{data: append([]byte(nil), buf[:n]...), at: at}) {
					c.held.Add(-int64(n))
					return
				}
			}
		}
		if errors.Is(err, io.EOF) {
			q.push(chunk{eof: true, at: time.Now()})
			return
		}
		if err != nil {
			// A reset, or the relay is closing: end both sides abruptly.
			r.close(true)
			return
		}
	}
}

// write delivers q's chunks to dst, each at its time, and passes the end
// of the stream on as a half-close.
func (r *relay) write(dst *net.TCPConn, q *chunkQueue, c *pairCounters) {
	defer r.f.wg.Done()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		ch, ok := q.pop()
		if !ok {
			return
		}
		if wait := time.Until(ch.at); wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			select {
			case <-timer.C:
			case <-r.done:
				c.held.Add(-int64(len(ch.data)))
				return
			}
		}
		if ch.eof {
			dst.CloseWrite()
			if r.ended.Add(1) == 2 {
				r.close(false)
			}
			return
		}
		n, err := dst.Write(ch.data)
		c.relayed.Add(int64(n))
		c.held.Add(-int64(len(ch.data)))
		q.done(len(ch.data))
		if err != nil {
			r.close(true)
			return
		}
	}
}

// close ends the relay: with rst, both ends get an RST instead of a FIN.
func (r *relay) close(rst bool) {
	r.closeOnce.Do(func() {
		// Under r.mu, so that start either sees done or leaves target for
		// this to close.
		r.mu.Lock()
		close(r.done)
		conns := []*net.TCPConn{r.dialer, r.target}
		counters := r.counters
		r.mu.Unlock()
		for _, c := range conns {
			if c == nil {
				continue
			}
			if rst {
				c.SetLinger(0)
			}
			c.Close()
		}
		for i, q := range r.queues {
			if dropped := q.close(); counters[i] != nil {
				counters[i].held.Add(-int64(dropped))
			}
		}
		r.f.mu.Lock()
		delete(r.f.relays, r)
		r.f.mu.Unlock()
	})
}

// chunk is a piece of one direction's stream, or its end, due at a time.
type chunk struct {
	data []byte
	eof  bool
	at   time.Time
}

// chunkQueue is one direction's FIFO between its reader and its writer,
// holding at most faultQueue bytes (or a single larger chunk).
type chunkQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []chunk
	bytes  int // queued or being written
	closed bool
}

func newChunkQueue() *chunkQueue {
	q := &chunkQueue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// push appends c, waiting while the queue is full; false once closed.
func (q *chunkQueue) push(c chunk) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed && q.bytes > 0 && q.bytes+len(c.data) > faultQueue {
		q.cond.Wait()
	}
	if q.closed {
		return false
	}
	q.items = append(q.items, c)
	q.bytes += len(c.data)
	q.cond.Broadcast()
	return true
}

// pop takes the oldest chunk, waiting for one; false once closed. The
// chunk's bytes count against the bound until done.
func (q *chunkQueue) pop() (chunk, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed && len(q.items) == 0 {
		q.cond.Wait()
	}
	if q.closed {
		return chunk{}, false
	}
	c := q.items[0]
	q.items[0] = chunk{}
	q.items = q.items[1:]
	return c, true
}

// done releases n bytes a pop handed out.
func (q *chunkQueue) done(n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.bytes -= n
	q.cond.Broadcast()
}

// close wakes and ends both users, and returns how many queued bytes it
// dropped.
func (q *chunkQueue) close() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	dropped := 0
	for _, c := range q.items {
		dropped += len(c.data)
	}
	q.closed = true
	q.items = nil
	q.cond.Broadcast()
	return dropped
}
