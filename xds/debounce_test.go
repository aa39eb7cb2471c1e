package xds

import (
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
		_, kept := f.srv.nodes[gw]
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
