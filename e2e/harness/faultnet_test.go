package harness_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/e2e/harness"
)

// quiet is how long a test waits to be sure bytes do not arrive.
const quiet = 200 * time.Millisecond

// target is a TCP server whose accepted connections the test takes, one
// per dial, in order.
type target struct {
	addr  string
	conns chan net.Conn
	close func() // idempotent; also run at cleanup
}

func newTarget(t *testing.T) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{addr: ln.Addr().String(), conns: make(chan net.Conn, 16)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tg.conns <- c
		}
	}()
	tg.close = sync.OnceFunc(func() {
		ln.Close()
		wg.Wait()
		close(tg.conns)
		for c := range tg.conns {
			c.Close()
		}
	})
	t.Cleanup(tg.close)
	return tg
}

// names identifies a dialer by its local port, which the test registers
// right after dialling; identify waits (bounded) for that.
type names struct {
	mu     sync.Mutex
	byPort map[int]string
}

func (n *names) set(c net.Conn, name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byPort == nil {
		n.byPort = make(map[int]string)
	}
	n.byPort[c.LocalAddr().(*net.TCPAddr).Port] = name
}

func (n *names) identify(remote net.Addr) string {
	port := remote.(*net.TCPAddr).Port
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		n.mu.Lock()
		name, ok := n.byPort[port]
		n.mu.Unlock()
		if ok {
			return name
		}
	}
	return harness.ClientEndpoint
}

// dial connects as name (unnamed when nm is nil) to a proxy in front of tg
// and returns both ends: the dialer's and the target's.
func dial(t *testing.T, proxy string, tg *target, nm *names, name string) (dialer, server net.Conn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxy, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if nm != nil {
		nm.set(c, name)
	}
	select {
	case s := <-tg.conns:
		t.Cleanup(func() { s.Close() })
		return c, s
	case <-time.After(3 * time.Second):
		t.Fatalf("the proxy at %s did not connect to its target", proxy)
		return nil, nil
	}
}

func send(t *testing.T, c net.Conn, data string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, data); err != nil {
		t.Fatalf("write %q: %v", data, err)
	}
}

// expect reads exactly want from c within 2s.
func expect(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	got := make([]byte, len(want))
	if n, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read %q: got %q, %v", want, got[:n], err)
	}
	if string(got) != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// expectNothing checks that nothing arrives on c for a while.
func expectNothing(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quiet))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	var ne net.Error
	if n > 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want nothing for %v, read %q, %v", quiet, buf[:n], err)
	}
}

// eventually polls cond for up to 2s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 2s for %s", what)
		}
	}
}

func newFaultNet(t *testing.T) *harness.FaultNet {
	f := harness.NewFaultNet()
	t.Cleanup(func() { f.Close() })
	return f
}

func proxy(t *testing.T, f *harness.FaultNet, to, target string) string {
	t.Helper()
	addr, err := f.Proxy(to, target)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestFaultNetRelaysAndCounts(t *testing.T) {
	f, tg, nm := newFaultNet(t), newTarget(t), &names{}
	f.SetIdentify(nm.identify)
	p := proxy(t, f, "b", tg.addr)
	a, b := dial(t, p, tg, nm, "a")
	send(t, a, "ping")
	expect(t, b, "ping")
	send(t, b, "pong!")
	expect(t, a, "pong!")

	ab, ba := harness.Pair{From: "a", To: "b"}, harness.Pair{From: "b", To: "a"}
	eventually(t, "the stats to count 4 bytes a->b and 5 b->a", func() bool {
		st := f.Stats()
		return st.Pairs[ab].Relayed == 4 && st.Pairs[ba].Relayed == 5
	})
	st := f.Stats()
	if st.Accepted != 1 || st.Pairs[ab].Accepted != 1 || st.Pairs[ba].Accepted != 0 || st.Relayed != 9 || st.Discarded != 0 {
		t.Errorf("stats %+v: want 1 connection a->b, 9 bytes relayed, none discarded", st)
	}

	// A half-close passes through, and the other direction goes on.
	if err := a.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the dialer's half-close the target read %d, %v; want EOF", n, err)
	}
	send(t, b, "still")
	expect(t, a, "still")
	b.Close()
	a.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := a.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the target closed, the dialer read %d, %v; want EOF", n, err)
	}
}

// TestFaultNetCutOneWay: Cut(a, b) discards what a sends b whoever dialled,
// lets b's bytes through, and Heal restores the same connections (the lost
// bytes stay lost).
func TestFaultNetCutOneWay(t *testing.T) {
	f, nm := newFaultNet(t), &names{}
	f.SetIdentify(nm.identify)
	tgA, tgB := newTarget(t), newTarget(t)
	pa, pb := proxy(t, f, "a", tgA.addr), proxy(t, f, "b", tgB.addr)
	a1, b1 := dial(t, pb, tgB, nm, "a") // a dialled b
	b2, a2 := dial(t, pa, tgA, nm, "b") // b dialled a

	f.Cut("a", "b")
	send(t, a1, "lost1")
	send(t, a2, "lost2")
	send(t, b1, "b1->a")
	send(t, b2, "b2->a")
	expect(t, a1, "b1->a")
	expect(t, a2, "b2->a")
	expectNothing(t, b1)
	expectNothing(t, b2)
	eventually(t, "10 bytes a->b discarded", func() bool {
		return f.Stats().Pairs[harness.Pair{From: "a", To: "b"}].Discarded == 10
	})

	// A new connection toward the cut is still accepted and connected.
	a3, b3 := dial(t, pb, tgB, nm, "a")
	send(t, a3, "lost3")
	expectNothing(t, b3)

	f.Heal("a", "b")
	send(t, a1, "found1")
	send(t, a2, "found2")
	send(t, a3, "found3")
	expect(t, b1, "found1")
	expect(t, b2, "found2")
	expect(t, b3, "found3")
	a4, b4 := dial(t, pb, tgB, nm, "a")
	send(t, a4, "new")
	expect(t, b4, "new")
}

// TestFaultNetRulePrecedence: an exact pair beats from->*, which beats
// *->to; the default source name is "client"; Isolate with no others cuts
// both ways from everyone, and HealAll undoes every rule.
func TestFaultNetRulePrecedence(t *testing.T) {
	f, tg := newFaultNet(t), newTarget(t)
	p := proxy(t, f, "b", tg.addr)
	c, b := dial(t, p, tg, nil, "") // no identify: "client"

	f.Cut(harness.AnyEndpoint, "b")
	send(t, c, "x")
	expectNothing(t, b)
	f.Delay(harness.ClientEndpoint, harness.AnyEndpoint, 0) // more specific: passes
	send(t, c, "y")
	expect(t, b, "y")
	f.Cut(harness.ClientEndpoint, "b") // the exact pair: cut again
	send(t, c, "z")
	expectNothing(t, b)
	f.Heal(harness.ClientEndpoint, "b")
	send(t, c, "w")
	expect(t, b, "w")

	f.HealAll()
	f.Isolate("b")
	send(t, c, "q")
	send(t, b, "r")
	expectNothing(t, b)
	expectNothing(t, c)
	f.HealAll()
	send(t, c, "s")
	send(t, b, "t")
	expect(t, b, "s")
	expect(t, c, "t")
	eventually(t, "1 connection client->b and 3 bytes discarded", func() bool {
		st := f.Stats().Pairs[harness.Pair{From: harness.ClientEndpoint, To: "b"}]
		return st.Accepted == 1 && st.Discarded == 3
	})
}

// TestFaultNetDelay: a delayed direction delivers at least d late and in
// order, also across a change of rule; the other direction is not held.
func TestFaultNetDelay(t *testing.T) {
	const d = 300 * time.Millisecond
	f, tg, nm := newFaultNet(t), newTarget(t), &names{}
	f.SetIdentify(nm.identify)
	p := proxy(t, f, "b", tg.addr)
	a, b := dial(t, p, tg, nm, "a")

	f.Delay("a", "b", d)
	start := time.Now()
	for _, s := range []string{"1", "2", "3"} {
		send(t, a, s)
	}
	// Rules apply as the proxy reads: heal once it has read (and holds)
	// all three. What follows is due at once but must not overtake.
	eventually(t, "the proxy to hold 3 bytes", func() bool { return f.Stats().Held == 3 })
	f.HealAll()
	send(t, a, "4")
	expect(t, b, "1234")
	if took := time.Since(start); took < d {
		t.Errorf("delayed bytes arrived after %v, want >= %v", took, d)
	}
	eventually(t, "4 bytes relayed, none held", func() bool {
		st := f.Stats()
		return st.Held == 0 && st.Relayed == 4
	})

	f.Delay("a", "b", d)
	start = time.Now()
	send(t, b, "back")
	expect(t, a, "back")
	t.Logf("b->a with a->b delayed by %v took %v", d, time.Since(start))
}

// TestFaultNetDelayIsBounded: a delayed direction holds at most a bounded
// amount, then the sender is held back.
func TestFaultNetDelayIsBounded(t *testing.T) {
	f, tg, nm := newFaultNet(t), newTarget(t), &names{}
	f.SetIdentify(nm.identify)
	p := proxy(t, f, "b", tg.addr)
	a, _ := dial(t, p, tg, nm, "a")
	f.Delay("a", "b", time.Hour)
	a.SetWriteDeadline(time.Now().Add(time.Second))
	big := make([]byte, 64<<20)
	n, err := a.Write(big)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || n >= len(big) {
		t.Fatalf("writing 64 MiB into an hour's delay: wrote %d, %v; want a timeout with most of it unwritten", n, err)
	}
	t.Logf("wrote %d MiB before backpressure", n>>20)
	start := time.Now()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close with a full delay queue took %v", took)
	}
}

func TestFaultNetDrop(t *testing.T) {
	f, tg, nm := newFaultNet(t), newTarget(t), &names{}
	f.SetIdentify(nm.identify)
	p := proxy(t, f, "b", tg.addr)
	a, b := dial(t, p, tg, nm, "a")
	f.Drop("a", "b", 1)
	send(t, a, "gone")
	expectNothing(t, b)
	f.Drop("a", "b", 0)
	send(t, a, "kept")
	expect(t, b, "kept")
	st := f.Stats().Pairs[harness.Pair{From: "a", To: "b"}]
	if st.Discarded != 4 {
		t.Errorf("a->b: %+v, want 4 bytes discarded", st)
	}
}

// TestFaultNetReset: Reset ends the connections between two endpoints,
// whichever dialled, with an RST at both ends, and leaves others alone.
func TestFaultNetReset(t *testing.T) {
	f, nm := newFaultNet(t), &names{}
	f.SetIdentify(nm.identify)
	tgA, tgB := newTarget(t), newTarget(t)
	pa, pb := proxy(t, f, "a", tgA.addr), proxy(t, f, "b", tgB.addr)
	a1, b1 := dial(t, pb, tgB, nm, "a")
	b2, a2 := dial(t, pa, tgA, nm, "b")
	c3, b3 := dial(t, pb, tgB, nm, "c")
	send(t, a1, "up")
	expect(t, b1, "up")

	f.Reset("b", "a")
	for _, c := range []net.Conn{a1, b1, b2, a2} {
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(make([]byte, 1))
		var ne net.Error
		if n != 0 || err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%v->%v after Reset: read %d, %v; want an error at once", c.LocalAddr(), c.RemoteAddr(), n, err)
		}
		if runtime.GOOS == "linux" && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after Reset: %v, want a connection reset", err)
		}
	}
	send(t, c3, "other")
	expect(t, b3, "other")
	a4, b4 := dial(t, pb, tgB, nm, "a")
	send(t, a4, "again")
	expect(t, b4, "again")
}

// TestFaultNetCloseLeavesNoGoroutines: Close ends every relay, even one
// whose chunks wait in a delay, and every goroutine the FaultNet started.
func TestFaultNetCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		f, tg, nm := harness.NewFaultNet(), newTarget(t), &names{}
		defer tg.close()
		defer f.Close()
		f.SetIdentify(nm.identify)
		p := proxy(t, f, "b", tg.addr)
		var dialers []net.Conn
		for i := range 4 {
			a, b := dial(t, p, tg, nm, "a"+strconv.Itoa(i))
			send(t, a, "hi")
			expect(t, b, "hi")
			dialers = append(dialers, a)
		}
		f.Delay("a0", "b", time.Hour)
		send(t, dialers[0], "held")
		f.Cut("b", "a1")
		// Wait for the proxy to have read "held": a socket closed with
		// unread bytes ends with an RST, not the FIN checked below.
		eventually(t, "4 connections, 8 bytes relayed and 4 held", func() bool {
			st := f.Stats()
			return st.Accepted == 4 && st.Relayed == 8 && st.Held == 4
		})

		start := time.Now()
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("Close took %v", took)
		}
		for _, a := range dialers {
			a.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := io.ReadAll(a); err != nil {
				t.Errorf("after Close, a dialer's read ended with %v, want EOF", err)
			}
		}
		if _, err := f.Proxy("b", tg.addr); err == nil {
			t.Error("Proxy after Close: want an error")
		}
		if held := f.Stats().Held; held != 0 {
			t.Errorf("after Close %d bytes are still counted as held", held)
		}
		if err := f.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}()
	settle := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(settle) {
		time.Sleep(10 * time.Millisecond)
	}
	if now := runtime.NumGoroutine(); now > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after Close:\n%s", before, now, buf[:runtime.Stack(buf, true)])
	}
}

func TestPIDIdentifier(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("PIDIdentifier needs Linux's /proc")
	}
	self := map[string]int{"self": os.Getpid()}
	id := harness.PIDIdentifier(func() map[string]int { return self })
	for _, network := range []string{"127.0.0.1", "[::1]"} {
		ln, err := net.Listen("tcp", network+":0")
		if err != nil {
			if network == "[::1]" {
				t.Logf("no IPv6 loopback here: %v", err)
				continue
			}
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := id(s.RemoteAddr()); got != "self" {
			t.Errorf("%s: a connection this process dialled is from %q, want self", network, got)
		}
		if got := harness.PIDIdentifier(func() map[string]int { return nil })(s.RemoteAddr()); got != harness.ClientEndpoint {
			t.Errorf("%s: with no processes, a connection is from %q, want client", network, got)
		}
		other := map[string]int{"parent": os.Getppid()}
		if got := harness.PIDIdentifier(func() map[string]int { return other })(s.RemoteAddr()); got != harness.ClientEndpoint {
			t.Errorf("%s: with only another process, a connection is from %q, want client", network, got)
		}
	}
	if got := id(&net.UnixAddr{Name: "x", Net: "unix"}); got != harness.ClientEndpoint {
		t.Errorf("a unix address is from %q, want client", got)
	}
}

// TestPIDIdentifierNamesAChild: a connection a child process dials is
// named after the child, not after the test process that accepted it.
func TestPIDIdentifierNamesAChild(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("PIDIdentifier needs Linux's /proc")
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash to dial from a child process")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	// The child dials, then waits (bounded) for its connection to end.
	cmd := exec.Command(bash, "-c", "exec 3<>/dev/tcp/127.0.0.1/"+port+" && read -t 5 -u 3 line; exit 0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("the child did not connect: %v (%s)", err, out.String())
	}
	defer s.Close()
	pids := map[string]int{"self": os.Getpid(), "child": cmd.Process.Pid}
	if got := harness.PIDIdentifier(func() map[string]int { return pids })(s.RemoteAddr()); got != "child" {
		t.Errorf("the child's connection is from %q, want child", got)
	}

	// The same through a proxy whose sources are named by PID.
	f, tg := newFaultNet(t), newTarget(t)
	f.SetIdentify(harness.PIDIdentifier(func() map[string]int { return pids }))
	p := proxy(t, f, "b", tg.addr)
	c, b := dial(t, p, tg, nil, "")
	f.Cut("self", "b")
	send(t, c, "x")
	expectNothing(t, b)
	eventually(t, "1 connection self->b and 1 byte discarded", func() bool {
		st := f.Stats().Pairs[harness.Pair{From: "self", To: "b"}]
		return st.Accepted == 1 && st.Discarded == 1
	})
}
