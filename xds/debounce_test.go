package xds

import (
	"slices"
	"sync"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/vigil-iot/vigil/topology"
)

// fakeClock holds AfterFunc callbacks until fire runs them.
type fakeClock struct {
	mu      sync.Mutex
	pending []func()
}

func (c *fakeClock) Now() time.Time { return time.Unix(1000, 0) }

func (c *fakeClock) AfterFunc(_ time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := len(c.pending)
	c.pending = append(c.pending, f)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if i >= len(c.pending) { // fired already
			return false
		}
		stopped := c.pending[i] != nil
		c.pending[i] = nil
		return stopped
	}
}

// fire runs the pending callbacks and returns how many there were.
func (c *fakeClock) fire() int {
	c.mu.Lock()
	fs := c.pending
	c.pending = nil
	c.mu.Unlock()
	n := 0
	for _, f := range fs {
		if f != nil {
			f()
			n++
		}
	}
	return n
}

// withoutFlow is the smart-city example without one of gw-north-1's flows,
// at revision rev.
func withoutFlow(t *testing.T, rev topology.Revision) *topology.Snapshot {
	t.Helper()
	doc := smartCityDoc(t)
	doc.Flows = doc.Flows[1:]
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	return topology.NewSnapshot(rev, rev, ix, topology.NewState())
}

func TestServerDebouncesOrdinaryChanges(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	clock := &fakeClock{}
	f.srv.cfg.Clock = clock
	c := connected(t, f)

	// Two document changes in a row: nothing is sent until the debounce
	// ends, then the node is rebuilt once, at the newest revision.
	for _, rev := range []topology.Revision{4, 5} {
		next := withoutFlow(t, rev)
		f.src.p.Store(next)
		f.srv.Update(next, Change{Document: true})
	}
	c.silent()
	if n := clock.fire(); n != 1 {
		t.Fatalf("%d debounced rebuilds pending, want 1 for the one node", n)
	}
	want, err := Translate(f.src.Current(), Node{ID: gw}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The removed flow changes the routes; other types may come first (the
	// cache does not order them), each at the newest revision.
	for {
		r := c.next()
		if r.GetVersionInfo() != "5" {
			t.Fatalf("%s version %q, want 5", r.GetTypeUrl(), r.GetVersionInfo())
		}
		if r.GetTypeUrl() == resourcev3.RouteType {
			sameResources(t, "routes", byName(t, r.GetResources()), want.Routes)
			return
		}
		c.ack(r)
	}
}

func TestServerDropsNodeAfterLastStream(t *testing.T) {
	f := start(t, smartCitySnapshot(t, 3))
	c := f.ads(t, gw)
	c.ask(resourcev3.ListenerType)
	c.next()
	if err := c.stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the node marked disconnected and forgotten", func() bool {
		p, _ := statusOf(f.srv, gw)
		f.srv.mu.Lock()
		_, kept := f.srv.nodes[Node{ID: gw}.key()]
		f.srv.mu.Unlock()
		return !p.Connected && !p.DisconnectedAt.IsZero() && !kept
	})
	// It comes back: it is served again.
	c2 := f.ads(t, gw)
	c2.ask(resourcev3.ListenerType)
	if r := c2.next(); len(r.GetResources()) != 1 {
		t.Fatalf("reconnected node got %d listeners", len(r.GetResources()))
	}
}

// hookedServer is a server with a fake clock, holding a node for each
// gateway of a generated city of n gateways, built at revision 1. Its
// builds pass through a hook once it is set (setHook).
type hookedServer struct {
	*Server
	city  *benchCity
	src   *source
	clock *fakeClock
}

func newHookedServer(t *testing.T, n, workers int) *hookedServer {
	t.Helper()
	c, clock := newBenchCity(t, n), &fakeClock{}
	srv, src := cityServer(t, c, Config{Workers: workers, Clock: clock, Debounce: time.Hour})
	return &hookedServer{Server: srv, city: c, src: src, clock: clock}
}

func (h *hookedServer) setHook(hook func(id string, rev topology.Revision)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.beforeInstall = hook
}

// advance makes revision rev current (quarantining the given subjects) and
// reports it as c.
func (h *hookedServer) advance(rev topology.Revision, c Change, quarantined ...topology.Subject) {
	base := h.city.snapshot(rev)
	updates := map[topology.Subject]*topology.SubjectState{}
	for _, s := range quarantined {
		updates[s] = &topology.SubjectState{Quarantine: &topology.Quarantine{Reason: "test", Since: time.Unix(0, 0)}}
	}
	next := topology.NewSnapshot(rev, rev, base.Index(), base.State().With(updates))
	h.src.p.Store(next)
	h.Update(next, c)
}

// idle waits until no build is under way or queued.
func (h *hookedServer) idle(t *testing.T) {
	t.Helper()
	eventually(t, "the builds to end", func() bool {
		h.pool.mu.Lock()
		defer h.pool.mu.Unlock()
		return h.pool.running == 0
	})
}

// revision is the revision node id was last built at.
func (h *hookedServer) revision(id string) topology.Revision {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nodes[Node{ID: id}.key()].revision
}

// routesVersion is the version of node id's routes in the cache.
func (h *hookedServer) routesVersion(t *testing.T, id string) string {
	t.Helper()
	s, err := h.cache.GetSnapshot(Node{ID: id}.key())
	if err != nil {
		t.Fatal(err)
	}
	return s.GetVersion(resourcev3.RouteType)
}

// within receives from ch, failing after wait.
func within[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// blockFirst returns a hook that blocks the first build it sees until
// release is called and reports that build's node on blocked, and the
// order in which the builds reached it.
func blockFirst() (hook func(string, topology.Revision), blocked <-chan string, release func(), order func() []string) {
	var mu sync.Mutex
	var seen []string
	ch, unblock := make(chan string, 1), make(chan struct{})
	var once sync.Once
	hook = func(id string, _ topology.Revision) {
		mu.Lock()
		seen = append(seen, id)
		first := len(seen) == 1
		mu.Unlock()
		if first {
			ch <- id
			<-unblock
		}
	}
	order = func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
	return hook, ch, func() { once.Do(func() { close(unblock) }) }, order
}

func TestServerDropsAnOlderBuildThatEndsLast(t *testing.T) {
	h := newHookedServer(t, 1, 2)
	id := h.city.gateways[0]
	dev := topology.DeviceSubject(h.city.snaps[0].Index().DevicesOf(id)[0].Name)
	// The build of revision 2 (not urgent) is held on one worker until
	// revision 3 (a quarantine, urgent) has been built and installed by
	// the other.
	hold, unblock := make(chan struct{}), make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(unblock) }) }
	defer release()
	h.setHook(func(_ string, rev topology.Revision) {
		if rev == 2 {
			close(hold)
			<-unblock
		}
	})
	h.advance(2, Change{Document: true})
	h.clock.fire()
	within(t, "the build of revision 2", hold)
	h.advance(3, Change{Subjects: []topology.Subject{dev}}, dev)
	eventually(t, "the quarantine built", func() bool { return h.revision(id) == 3 })
	release()
	h.idle(t)
	if rev, v := h.revision(id), h.routesVersion(t, id); rev != 3 || v != "3" {
		t.Fatalf("node at revision %d with routes version %q after an older build ended, want 3 and 3", rev, v)
	}
}

func TestServerBuildsUrgentNodesFirst(t *testing.T) {
	h := newHookedServer(t, 20, 1)
	hook, blocked, release, order := blockFirst()
	h.setHook(hook)
	defer release()
	// A document change queues every node; the one worker holds the first.
	h.advance(2, Change{Document: true})
	if n := h.clock.fire(); n != 1 {
		t.Fatalf("%d debounce timers, want 1", n)
	}
	first := within(t, "the first build", blocked)
	urgent := h.city.gateways[0]
	if urgent == first {
		urgent = h.city.gateways[1]
	}
	dev := topology.DeviceSubject(h.city.snaps[0].Index().DevicesOf(urgent)[0].Name)
	h.advance(3, Change{Subjects: []topology.Subject{dev}}, dev)
	release()
	eventually(t, "every node rebuilt", func() bool {
		for _, id := range h.city.gateways {
			if h.revision(id) < 2 {
				return false
			}
		}
		return true
	})
	got := order()
	if len(got) < 2 || got[1] != urgent {
		t.Fatalf("builds ran in the order %v; the quarantined %s should come right after the held %s", got, urgent, first)
	}
	if len(got) != len(h.city.gateways) {
		t.Errorf("%d builds for %d nodes: a node was built twice", len(got), len(h.city.gateways))
	}
	if v := h.routesVersion(t, urgent); v != "3" {
		t.Errorf("quarantined node's routes at version %q, want 3", v)
	}
}

func TestServerCloseCancelsPendingWork(t *testing.T) {
	h := newHookedServer(t, 10, 1)
	hook, blocked, release, order := blockFirst()
	h.setHook(hook)
	defer release()
	h.advance(2, Change{Document: true})
	h.clock.fire()
	first := within(t, "the first build", blocked)
	// More work: queued urgently, and waiting for the debounce.
	h.advance(3, Change{Subjects: []topology.Subject{topology.GatewaySubject(first)}, Urgent: true})
	h.advance(4, Change{Document: true})
	closed := make(chan struct{})
	go func() { h.Close(); close(closed) }()
	eventually(t, "the server closing", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.closed
	})
	select {
	case <-closed:
		t.Fatal("Close returned while a build was under way")
	default:
	}
	release()
	within(t, "Close to return", closed)
	if n := h.clock.fire(); n != 0 {
		t.Errorf("%d debounce timers still pending after Close", n)
	}
	if got := order(); len(got) != 1 {
		t.Errorf("builds after Close: %v", got[1:])
	}
	for _, id := range h.city.gateways {
		if rev := h.revision(id); rev != 1 {
			t.Errorf("%s installed revision %d after Close", id, rev)
		}
	}
	h.advance(5, Change{Document: true, Urgent: true})
	if got := order(); len(got) != 1 {
		t.Errorf("Update after Close built %v", got[1:])
	}
}
