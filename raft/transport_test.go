package raft

import (
	"bytes"
	"errors"
	"io"
	"net"
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
