package console

import (
	"errors"
	"sync"
	"testing"
	"time"
)

func TestFilterMatch(t *testing.T) {
	dev := Decision{Subject: "d-1", Kind: "device", Gateway: "gw-1", Service: "telemetry", Allowed: true}
	devDenied := dev
	devDenied.Allowed = false
	gw := Decision{Subject: "gw-1", Kind: "gateway", Service: "telemetry", Allowed: true}
	svc := Decision{Subject: "lighting", Kind: "service", Service: "d-1", Allowed: true}
	// A subject outside the topology: its SPIFFE ID, no kind.
	stranger := Decision{Subject: "d-1", Gateway: "gw-1", Allowed: false}

	for _, tc := range []struct {
		name string
		f    Filter
		d    Decision
		want bool
	}{
		{"empty filter, allowed", Filter{}, dev, true},
		{"empty filter, denied", Filter{}, devDenied, true},
		{"empty filter, no kind", Filter{}, stranger, true},
		{"device matches its device", Filter{Device: "d-1"}, dev, true},
		{"device does not match another device", Filter{Device: "d-2"}, dev, false},
		{"device does not match a gateway of that name", Filter{Device: "gw-1"}, gw, false},
		{"device does not match a service of that name", Filter{Device: "lighting"}, svc, false},
		{"device does not match a subject without kind", Filter{Device: "d-1"}, stranger, false},
		{"device does not match a service called like it", Filter{Device: "d-1"}, svc, false},
		{"gateway matches a device behind it", Filter{Gateway: "gw-1"}, dev, true},
		{"gateway does not match another gateway", Filter{Gateway: "gw-2"}, dev, false},
		{"gateway does not match an empty gateway", Filter{Gateway: "gw-1"}, gw, false},
		{"service matches", Filter{Service: "telemetry"}, dev, true},
		{"service does not match", Filter{Service: "firmware"}, dev, false},
		{"allow matches allowed", Filter{Result: "allow"}, dev, true},
		{"allow does not match denied", Filter{Result: "allow"}, devDenied, false},
		{"deny matches denied", Filter{Result: "deny"}, devDenied, true},
		{"deny does not match allowed", Filter{Result: "deny"}, dev, false},
		{"combined, all match", Filter{Device: "d-1", Gateway: "gw-1", Service: "telemetry", Result: "allow"}, dev, true},
		{"combined, result differs", Filter{Device: "d-1", Gateway: "gw-1", Service: "telemetry", Result: "deny"}, dev, false},
		{"combined, service differs", Filter{Device: "d-1", Gateway: "gw-1", Service: "firmware"}, dev, false},
		{"combined, gateway differs", Filter{Device: "d-1", Gateway: "gw-2", Service: "telemetry"}, dev, false},
		{"combined, denied device", Filter{Device: "d-1", Result: "deny"}, devDenied, true},
	} {
		if got := tc.f.Match(&tc.d); got != tc.want {
			t.Errorf("%s: Match(%+v) with %+v = %v, want %v", tc.name, tc.d, tc.f, got, tc.want)
		}
	}
}

func TestPublishWithoutSubscribers(t *testing.T) {
	var h Hub
	if h.Active() || h.Subscribers() != 0 {
		t.Fatal("a new hub is active")
	}
	h.Publish(&Decision{Subject: "d-1", Kind: "device"}) // must not panic or block
	s, err := h.Subscribe(Filter{}, 4)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Active() || h.Subscribers() != 1 {
		t.Fatal("a hub with a subscriber is not active")
	}
	s.Close()
	if h.Active() || h.Subscribers() != 0 {
		t.Fatal("the hub stays active after its last subscriber closed")
	}
	h.Publish(&Decision{Subject: "d-1", Kind: "device"})
	if len(s.C()) != 0 {
		t.Fatal("a closed subscription got a decision")
	}
}

func TestSubscriberGetsMatchingDecisionsOnly(t *testing.T) {
	var h Hub
	s, err := h.Subscribe(Filter{Device: "d-1", Result: "deny"}, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	all, err := h.Subscribe(Filter{}, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	in := []Decision{
		{ID: "1", Subject: "d-1", Kind: "device", Allowed: false},
		{ID: "2", Subject: "d-1", Kind: "device", Allowed: true},
		{ID: "3", Subject: "d-2", Kind: "device", Allowed: false},
		{ID: "4", Subject: "d-1", Kind: "gateway", Allowed: false},
		{ID: "5", Subject: "d-1", Kind: "device", Allowed: false, Reason: "no flow"},
	}
	for i := range in {
		h.Publish(&in[i])
	}
	// Publish copies: changing the caller's value later changes nothing.
	in[0].Reason = "changed"
	var got []string
	for len(s.C()) > 0 {
		d := <-s.C()
		got = append(got, d.ID)
		if d.ID == "1" && d.Reason != "" {
			t.Errorf("the queued decision shares memory with the published one")
		}
	}
	if len(got) != 2 || got[0] != "1" || got[1] != "5" {
		t.Fatalf("filtered subscriber got %v, want [1 5]", got)
	}
	if s.Matched() != 2 || s.Dropped() != 0 {
		t.Fatalf("matched %d dropped %d, want 2 and 0", s.Matched(), s.Dropped())
	}
	if len(all.C()) != len(in) || all.Matched() != uint64(len(in)) {
		t.Fatalf("unfiltered subscriber has %d queued, %d matched; want %d", len(all.C()), all.Matched(), len(in))
	}
}

func TestFullQueueDropsAndCounts(t *testing.T) {
	var h Hub
	s, err := h.Subscribe(Filter{Result: "allow"}, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 10 {
		h.Publish(&Decision{Subject: "d-1", Kind: "device", Allowed: true, ID: string(rune('a' + i))})
		h.Publish(&Decision{Subject: "d-1", Kind: "device", Allowed: false}) // not matched, not counted
	}
	if s.Matched() != 10 || s.Dropped() != 7 || len(s.C()) != 3 {
		t.Fatalf("matched %d dropped %d queued %d, want 10, 7, 3", s.Matched(), s.Dropped(), len(s.C()))
	}
	// The oldest are kept; the newest were dropped.
	for _, want := range []string{"a", "b", "c"} {
		if d := <-s.C(); d.ID != want {
			t.Fatalf("queued %q, want %q", d.ID, want)
		}
	}
	// Room again: the next one is delivered.
	h.Publish(&Decision{Allowed: true, ID: "k"})
	if d := <-s.C(); d.ID != "k" || s.Dropped() != 7 || s.Matched() != 11 {
		t.Fatalf("after draining: got %q, matched %d dropped %d", d.ID, s.Matched(), s.Dropped())
	}
	// A zero or negative buffer gets the default size.
	d, err := h.Subscribe(Filter{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if cap(d.c) != 1024 {
		t.Fatalf("default queue %d, want 1024", cap(d.c))
	}
}

func TestCloseRemovesOnlyThatSubscriber(t *testing.T) {
	var h Hub
	a, _ := h.Subscribe(Filter{}, 4)
	b, _ := h.Subscribe(Filter{}, 4)
	c, _ := h.Subscribe(Filter{}, 4)
	b.Close()
	b.Close() // twice is harmless
	if h.Subscribers() != 2 {
		t.Fatalf("%d subscribers after closing one of three", h.Subscribers())
	}
	h.Publish(&Decision{ID: "x"})
	if len(a.C()) != 1 || len(b.C()) != 0 || len(c.C()) != 1 {
		t.Fatalf("queued a=%d b=%d c=%d, want 1 0 1", len(a.C()), len(b.C()), len(c.C()))
	}
	a.Close()
	if !h.Active() {
		t.Fatal("inactive with one subscriber left")
	}
	c.Close()
	if h.Active() || h.Subscribers() != 0 {
		t.Fatal("active after the last subscriber closed")
	}
	// Decisions queued before Close can still be drained.
	if d := <-c.C(); d.ID != "x" {
		t.Fatalf("drained %q", d.ID)
	}
}

func TestMaxSubscribers(t *testing.T) {
	var h Hub
	subs := make([]*Subscription, 0, MaxSubscribers)
	for range MaxSubscribers {
		s, err := h.Subscribe(Filter{}, 1)
		if err != nil {
			t.Fatalf("subscriber %d: %v", len(subs)+1, err)
		}
		subs = append(subs, s)
	}
	if _, err := h.Subscribe(Filter{}, 1); !errors.Is(err, ErrTooMany) {
		t.Fatalf("subscriber %d: err %v, want ErrTooMany", MaxSubscribers+1, err)
	}
	if ErrTooMany.Error() == "" {
		t.Fatal("ErrTooMany has no message")
	}
	subs[10].Close()
	s, err := h.Subscribe(Filter{}, 1)
	if err != nil {
		t.Fatalf("after closing one: %v", err)
	}
	s.Close()
	for _, s := range subs {
		s.Close()
	}
	if h.Subscribers() != 0 {
		t.Fatalf("%d subscribers left", h.Subscribers())
	}
}

// TestConcurrentPublishSubscribeClose is meant for -race: publishers never
// block, subscribers come and go, and every one ends removed.
func TestConcurrentPublishSubscribeClose(t *testing.T) {
	var h Hub
	stop := make(chan struct{})
	var pubs sync.WaitGroup
	for p := range 4 {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			d := &Decision{Subject: "d-1", Kind: "device", Allowed: p%2 == 0}
			for {
				select {
				case <-stop:
					return
				default:
				}
				h.Publish(d)
				_ = h.Active()
			}
		}()
	}
	var subs sync.WaitGroup
	for g := range 8 {
		subs.Add(1)
		go func() {
			defer subs.Done()
			for i := range 50 {
				f := Filter{}
				if i%2 == 0 {
					f.Result = "allow"
				}
				s, err := h.Subscribe(f, 8)
				if err != nil {
					t.Errorf("subscriber goroutine %d: %v", g, err)
					return
				}
				for range 4 {
					select {
					case <-s.C():
					case <-time.After(time.Second):
					}
				}
				_ = s.Matched() + s.Dropped()
				s.Close()
			}
		}()
	}
	subs.Wait()
	close(stop)
	pubs.Wait()
	if h.Subscribers() != 0 || h.Active() {
		t.Fatalf("%d subscribers left", h.Subscribers())
	}
}

var benchDecision = Decision{At: time.Unix(1700000000, 0), ID: "0192f1a0-7c3e", Subject: "d-0000042", Kind: "device",
	Zone: "z-001", Gateway: "gw-00007", Service: "telemetry", Method: "POST", Path: "/api/v1/telemetry", Allowed: true,
	Flow: "sensor-telemetry"}

// BenchmarkPublish: what the authorizer's hot path pays for the console.
// With no subscriber and with a subscriber whose filter does not match,
// Publish must not allocate.
func BenchmarkPublish(b *testing.B) {
	b.Run("no-subscriber", func(b *testing.B) {
		var h Hub
		d := benchDecision
		b.ReportAllocs()
		for b.Loop() {
			h.Publish(&d)
		}
	})
	b.Run("no-subscriber-after-close", func(b *testing.B) {
		var h Hub
		s, _ := h.Subscribe(Filter{}, 1)
		s.Close()
		d := benchDecision
		b.ReportAllocs()
		for b.Loop() {
			h.Publish(&d)
		}
	})
	b.Run("filter-does-not-match", func(b *testing.B) {
		var h Hub
		s, err := h.Subscribe(Filter{Device: "d-0000043"}, 1024)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		d := benchDecision
		b.ReportAllocs()
		for b.Loop() {
			h.Publish(&d)
		}
		if s.Matched() != 0 {
			b.Fatal("matched")
		}
	})
	b.Run("match-drained", func(b *testing.B) {
		var h Hub
		s, err := h.Subscribe(Filter{Device: "d-0000042"}, 1024)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		d := benchDecision
		b.ReportAllocs()
		for b.Loop() {
			h.Publish(&d)
			<-s.c
		}
		if s.Dropped() != 0 {
			b.Fatal("dropped")
		}
	})
}

// TestPublishDoesNotAllocate keeps the benchmark's promise in the tests.
func TestPublishDoesNotAllocate(t *testing.T) {
	d := benchDecision
	var none Hub
	if n := testing.AllocsPerRun(1000, func() { none.Publish(&d) }); n != 0 {
		t.Errorf("no subscriber: %v allocs per Publish", n)
	}
	var miss Hub
	s, _ := miss.Subscribe(Filter{Device: "other"}, 8)
	defer s.Close()
	if n := testing.AllocsPerRun(1000, func() { miss.Publish(&d) }); n != 0 {
		t.Errorf("filter not matching: %v allocs per Publish", n)
	}
	var hit Hub
	m, _ := hit.Subscribe(Filter{}, 8)
	defer m.Close()
	if n := testing.AllocsPerRun(1000, func() { hit.Publish(&d); <-m.c }); n != 0 {
		t.Errorf("matching, drained: %v allocs per Publish", n)
	}
}
