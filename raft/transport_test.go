package raft

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

func layer(t *testing.T, key []byte) *secureLayer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := newSecureLayer(ln, ln.Addr(), key, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func key(b byte) []byte { return bytes.Repeat([]byte{b}, MinClusterKeyLen) }

func TestPeersWithTheClusterKeyConnect(t *testing.T) {
	server, client := layer(t, key(1)), layer(t, key(1))
	got := make(chan []byte, 1)
	go func() {
		c, err := server.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		got <- buf
	}()
	c, err := client.Dial(hraft.ServerAddress(server.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	select {
	case b := <-got:
		if string(b) != "hello" {
			t.Fatalf("server read %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server never accepted")
	}
}

func TestPeerWithAnotherKeyIsRefused(t *testing.T) {
	server, client := layer(t, key(1)), layer(t, key(2))
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := server.Accept(); err == nil {
			accepted <- c
		}
	}()
	_, err := client.Dial(hraft.ServerAddress(server.Addr().String()), time.Second)
	if !errors.Is(err, ErrPeerAuth) {
		t.Fatalf("dial err = %v, want ErrPeerAuth", err)
	}
	select {
	case <-accepted:
		t.Fatal("server accepted a peer with the wrong key")
	case <-time.After(300 * time.Millisecond):
	}
}

func TestPlaintextClientGetsNothing(t *testing.T) {
	server := layer(t, key(1))
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := server.Accept(); err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", server.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// What a raft RPC looks like on a plain transport: a type byte, then msgpack.
	c.Write([]byte{0, 0x81, 0xa4, 'T', 'e', 'r', 'm', 1})
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 64)
	n, _ := c.Read(b)
	if n > 0 && b[0] != 0x15 { // a TLS alert is all it may get back
		t.Fatalf("plaintext client read %d bytes that are not a TLS alert", n)
	}
	select {
	case <-accepted:
		t.Fatal("server handed a plaintext connection to raft")
	case <-time.After(200 * time.Millisecond):
	}
}

func TestShortClusterKeyIsRefused(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	if _, err := newSecureLayer(ln, ln.Addr(), []byte("short"), quietLogger()); err == nil {
		t.Fatal("a 5-byte cluster key was accepted")
	}
}

// TestTCPClusterReplicates runs two members over the real TCP transport.
func TestTCPClusterReplicates(t *testing.T) {
	open := func(id string, boot bool) *Store {
		s, err := Open(Config{
			ID: id, DataDir: t.TempDir(), BindAddr: "127.0.0.1:0", ClusterKey: key(9), Bootstrap: boot,
			Logger: quietLogger(), RaftLogLevel: "off",
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a := open("a", true)
	b := open("b", false)
	ctx := ctxT(t)
	if err := a.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.AddVoter(ctx, Member{ID: "b", RaftAddr: b.Addr()}); err != nil {
		t.Fatal(err)
	}
	rev, err := a.ReplaceDocument(ctx, mustIndex(t, testDoc(3)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.WaitFor(ctx, rev); err != nil {
		t.Fatalf("b did not replicate: %v", err)
	}
}

// TestAFloodOfIdleConnectionsDoesNotSilenceTheMember: connections that
// never handshake are capped, and once they go, peers connect again.
func TestAFloodOfIdleConnectionsDoesNotSilenceTheMember(t *testing.T) {
	server, client := layer(t, key(1)), layer(t, key(1))
	go func() {
		for {
			c, err := server.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var idle []net.Conn
	for range maxHandshakes + 36 {
		c, err := net.Dial("tcp", server.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	for _, c := range idle {
		c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := client.Dial(hraft.ServerAddress(server.Addr().String()), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a peer with the key still cannot connect after the flood: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAnUnreachableMemberIsNotAddedAsAVoter(t *testing.T) {
	s, err := Open(Config{ID: "a", DataDir: t.TempDir(), BindAddr: "127.0.0.1:0", ClusterKey: key(9), Bootstrap: true,
		Logger: quietLogger(), RaftLogLevel: "off"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	// A port nobody listens on, and a member holding another key.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	other := layer(t, key(7))
	for _, addr := range []string{dead, other.Addr().String()} {
		if err := s.AddVoter(ctx, Member{ID: "ghost", RaftAddr: addr}); !errors.Is(err, ErrRejected) {
			t.Fatalf("AddVoter(%s) = %v, want ErrRejected", addr, err)
		}
	}
	st, err := s.Status()
	if err != nil || len(st.Members) != 1 || !s.IsLeader() {
		t.Fatalf("configuration %+v (err %v), leader %v: want the lone member still leading", st.Members, err, s.IsLeader())
	}
}

// needLoopbackAliases skips a test on systems where 127.0.0.2 and up are
// not local addresses (Linux routes all of 127/8 to lo; macOS does not).
func needLoopbackAliases(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot use 127.0.0.2 as a source address here: %v", err)
	}
	ln.Close()
}

// dialFrom connects to addr from the loopback address local and runs the
// dialing side of the handshake with key, as a member's Dial does.
func dialFrom(local, addr string, key []byte) (net.Conn, error) {
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if err := proveAndVerify(conn, key, true); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// drain accepts and closes what the layer hands to raft until it closes.
func drain(l *secureLayer) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// flood attacks addr as a client without the key would: from each of the
// loopback addresses sources it keeps perSource connections open that send
// nothing, dialling again whenever the server closes one. The channel it
// returns is closed once the server has refused a connection (closed it at
// once), so the flood holds all it can. The flood stops when the test ends.
func flood(t *testing.T, addr string, sources []string, perSource int) <-chan struct{} {
	t.Helper()
	full := make(chan struct{})
	var fullOnce sync.Once
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, src := range sources {
		d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		for range perSource {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 512)
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := d.Dial("tcp", addr)
					if err != nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					start := time.Now()
					for {
						c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
						_, err = c.Read(buf)
						if ne, ok := err.(net.Error); ok && ne.Timeout() {
							select {
							case <-stop:
							default:
								continue // still held open: keep holding it
							}
						}
						break
					}
					c.Close()
					if time.Since(start) < 100*time.Millisecond && err != nil {
						fullOnce.Do(func() { close(full) })
						time.Sleep(50 * time.Millisecond) // refused: try again a little later
					}
				}
			}()
		}
	}
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
	})
	select {
	case <-full:
	case <-time.After(10 * time.Second):
		t.Fatal("the flood never filled the handshake slots")
	}
	return full
}

// loopbacks is 127.0.0.from, 127.0.0.from+1, ..., n addresses.
func loopbacks(from, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("127.0.0.%d", from+i))
	}
	return out
}

// connectWithin dials from local until it authenticates or within runs out.
func connectWithin(t *testing.T, local, addr string, key []byte, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := dialFrom(local, addr, key)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a peer with the key at %s could not connect within %v: %v", local, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHandshakeFloodFromOneAddressDoesNotKeepPeersOut: one address holding
// more idle connections than there are handshake slots gets only its own
// share, and a peer from another address still connects at once.
func TestHandshakeFloodFromOneAddressDoesNotKeepPeersOut(t *testing.T) {
	needLoopbackAliases(t)
	server := layer(t, key(1))
	drain(server)
	flood(t, server.Addr().String(), []string{"127.0.0.1"}, maxHandshakes+36)
	// Well within helloTimeout (1 s), so that the peer cannot simply take a
	// slot the server frees by closing an idle connection.
	connectWithin(t, "127.0.0.2", server.Addr().String(), key(1), 500*time.Millisecond)
}

// TestHandshakeKnownPeerGetsThroughAFloodFromManyAddresses: strangers from
// enough addresses to fill every shared slot do not keep out a peer whose
// address proved the key before.
func TestHandshakeKnownPeerGetsThroughAFloodFromManyAddresses(t *testing.T) {
	needLoopbackAliases(t)
	server := layer(t, key(1))
	drain(server)
	addr := server.Addr().String()
	connectWithin(t, "127.0.0.2", addr, key(1), 5*time.Second) // before the flood

	// Two idle connections from each of maxHandshakes addresses: under any
	// per-address limit, and twice the shared slots.
	flood(t, addr, loopbacks(3, maxHandshakes), 2)
	for i := range 3 {
		c, err := dialFrom("127.0.0.2", addr, key(1))
		if err != nil {
			t.Fatalf("dial %d: a known peer was kept out by strangers: %v", i, err)
		}
		c.Close()
	}
}

// TestHandshakeIdleStrangersAreClosedSoon: a connection that does not
// complete its handshake loses its slot within a couple of seconds, not
// the 5 s that let a few dozen idle clients starve a member.
func TestHandshakeIdleStrangersAreClosedSoon(t *testing.T) {
	server := layer(t, key(1))
	drain(server)
	addr := server.Addr().String()
	const within = 3 * time.Second // handshakeTimeout (2 s) and slack
	closedAfter := func(t *testing.T, c net.Conn, start time.Time) time.Duration {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 64)); err == nil {
			t.Fatal("the server sent data to a client that did not prove the key")
		}
		return time.Since(start)
	}
	t.Run("sends nothing", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if d := closedAfter(t, c, start); d > within {
			t.Fatalf("a connection that sent nothing was held %v, want at most %v", d, within)
		}
	})
	t.Run("finishes TLS but sends no proof", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := c.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		if d := closedAfter(t, c, start); d > within {
			t.Fatalf("a connection that sent no proof was held %v, want at most %v", d, within)
		}
	})
}

// TestHandshakeAuthenticatedConnectionsTakeNoSlots: connections that proved
// the key count against no limit, even while raft has not taken them yet.
func TestHandshakeAuthenticatedConnectionsTakeNoSlots(t *testing.T) {
	needLoopbackAliases(t)
	server := layer(t, key(1)) // nobody calls Accept
	addr := server.Addr().String()
	for i := range maxHandshakes + 8 {
		c, err := dialFrom("127.0.0.2", addr, key(1))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
	}
}

// TestHandshakeDialedPeerBecomesKnown: a peer this member dialled and
// authenticated may use the reserved slots when it connects back.
func TestHandshakeDialedPeerBecomesKnown(t *testing.T) {
	server, client := layer(t, key(1)), layer(t, key(1))
	drain(server)
	c, err := client.Dial(hraft.ServerAddress(server.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	client.admit.mu.Lock()
	defer client.admit.mu.Unlock()
	if !client.admit.isKnownLocked(addrIP(server.Addr())) {
		t.Fatal("the dialled peer's address is not known")
	}
}

// TestHandshakeAdmissionLimits: per-source limits, the shared pool, the
// reserved pool for known peers, and release.
func TestHandshakeAdmissionLimits(t *testing.T) {
	a := newAdmission()
	stranger := netip.MustParseAddr("192.0.2.1")
	var slots []slot
	for range maxHandshakesPerSource {
		s, err := a.admit(stranger)
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, s)
	}
	if _, err := a.admit(stranger); !errors.Is(err, errTooManyFromSource) {
		t.Fatalf("admit past the per-source limit = %v", err)
	}
	// IPv6 strangers are counted per /64.
	for i := range maxHandshakesPerSource {
		s, err := a.admit(netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, s)
	}
	if _, err := a.admit(netip.MustParseAddr("2001:db8::ffff")); !errors.Is(err, errTooManyFromSource) {
		t.Fatalf("admit past the per-/64 limit = %v", err)
	}
	// Fill the shared pool from other addresses.
	for i := 0; a.shared < maxHandshakes; i++ {
		s, err := a.admit(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, s)
	}
	if _, err := a.admit(netip.MustParseAddr("203.0.113.9")); !errors.Is(err, errTooManyHandshakes) {
		t.Fatalf("admit with the shared pool full = %v", err)
	}
	// A known peer gets reserved slots, up to its own per-source limit.
	peer := netip.MustParseAddr("203.0.113.1")
	a.remember(peer)
	for range maxHandshakesPerPeer {
		s, err := a.admit(peer)
		if err != nil || !s.reserved {
			t.Fatalf("known peer: slot %+v, err %v", s, err)
		}
		slots = append(slots, s)
	}
	if _, err := a.admit(peer); !errors.Is(err, errTooManyFromSource) {
		t.Fatalf("admit past the per-peer limit = %v", err)
	}
	for _, s := range slots {
		a.release(s)
	}
	if a.shared != 0 || a.reserved != 0 || len(a.sources) != 0 {
		t.Fatalf("after release: shared %d, reserved %d, sources %v", a.shared, a.reserved, a.sources)
	}
}

// TestHandshakeKnownPeersAreBoundedAndExpire: the known-peer map never
// grows past maxKnownPeers, and a peer is forgotten after knownPeerTTL.
func TestHandshakeKnownPeersAreBoundedAndExpire(t *testing.T) {
	a := newAdmission()
	now := time.Unix(1_000_000, 0)
	a.now = func() time.Time { return now }
	ten := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}) }
	first := ten(0)
	for i := range maxKnownPeers + 50 {
		now = now.Add(time.Second)
		a.remember(ten(i))
		if len(a.known) > maxKnownPeers {
			t.Fatalf("%d known peers, want at most %d", len(a.known), maxKnownPeers)
		}
	}
	a.mu.Lock()
	firstKnown := a.isKnownLocked(first)
	a.mu.Unlock()
	if firstKnown {
		t.Fatal("the peer seen longest ago was not the one dropped")
	}
	last := ten(maxKnownPeers + 49)
	now = now.Add(knownPeerTTL)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.isKnownLocked(last) {
		t.Fatal("a peer was still known after knownPeerTTL")
	}
	if _, ok := a.known[last]; ok {
		t.Fatal("an expired peer was not swept")
	}
}
