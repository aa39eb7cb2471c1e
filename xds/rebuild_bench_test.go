package xds

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// benchCity is the city vigil-load's xds subcommand serves: gateways
// gateways, 2 devices each, 100 gateways per zone. Its two snapshots
// differ by one path of the sensor-telemetry flow, which changes the
// routes of every gateway with a sensor (affected).
type benchCity struct {
	snaps    [2]*topology.Snapshot
	gateways []string
	affected []string
}

func newBenchCity(b testing.TB, gateways int) *benchCity {
	b.Helper()
	zones := (gateways + 99) / 100
	spec := topologytest.Spec{Zones: zones, GatewaysPerZone: gateways / zones, Devices: 2 * gateways, NoAttestation: true}
	c := &benchCity{}
	var sensors []string
	for i := range c.snaps {
		doc := topologytest.Generate(spec)
		for j := range doc.Flows {
			if f := &doc.Flows[j]; f.Name == "sensor-telemetry" {
				sensors = f.From.Classes
				if i == 1 {
					f.HTTP.Paths = append(f.HTTP.Paths, "/api/v2/telemetry")
				}
			}
		}
		ix, err := topology.NewIndex(doc)
		if err != nil {
			b.Fatal(err)
		}
		rev := topology.Revision(i + 1)
		c.snaps[i] = topology.NewSnapshot(rev, rev, ix, topology.NewState())
	}
	ix := c.snaps[0].Index()
	for _, g := range ix.Gateways() {
		c.gateways = append(c.gateways, g.Name)
		if slices.ContainsFunc(ix.DevicesOf(g.Name), func(d *topology.Device) bool { return slices.Contains(sensors, d.Class) }) {
			c.affected = append(c.affected, g.Name)
		}
	}
	return c
}

// snapshot returns the city at revision rev (alternating between the two
// documents, so that every revision changes the affected routes).
func (c *benchCity) snapshot(rev topology.Revision) *topology.Snapshot {
	s := c.snaps[rev%2]
	return topology.NewSnapshot(rev, rev, s.Index(), s.State())
}

// cityServer is a server configured by cfg (its source and logger set
// here) whose nodes are every gateway of c, built at revision 1 as if each
// had just connected.
func cityServer(tb testing.TB, c *benchCity, cfg Config) (*Server, *source) {
	tb.Helper()
	src := &source{}
	src.p.Store(c.snapshot(1))
	cfg.Source, cfg.Logger = src, slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := NewServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Close)
	for _, id := range c.gateways {
		srv.ensure(Node{ID: id}.key())
	}
	return srv, src
}

// waitRoutes waits until the cache holds routes at rev or later for every
// node of ids and returns how long each took from start (polled every
// 200µs).
func waitRoutes(b *testing.B, srv *Server, ids []string, rev topology.Revision, start time.Time) []time.Duration {
	b.Helper()
	pending := slices.Clone(ids)
	out := make([]time.Duration, 0, len(ids))
	deadline := start.Add(time.Minute)
	for len(pending) > 0 {
		now := time.Now()
		rest := pending[:0]
		for _, id := range pending {
			s, err := srv.cache.GetSnapshot(Node{ID: id}.key())
			if err != nil {
				b.Fatal(err)
			}
			if v, _ := strconv.ParseUint(s.GetVersion(resourcev3.RouteType), 10, 64); v >= uint64(rev) {
				out = append(out, now.Sub(start))
			} else {
				rest = append(rest, id)
			}
		}
		pending = rest
		if now.After(deadline) {
			b.Fatalf("%d nodes without routes at revision %d after a minute", len(pending), rev)
		}
		time.Sleep(200 * time.Microsecond)
	}
	return out
}

// BenchmarkDocumentChange is a document change that changes the routes
// of most of N connected gateways, from Update until every affected node's
// new snapshot is in the cache (the debounce is 1ns). p50-ms and p99-ms are
// the per-node delays. There are no streams: the cost of answering watches
// is not included (vigil-load xds measures it end to end).
func BenchmarkDocumentChange(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("gateways=%d", n), func(b *testing.B) {
			c := newBenchCity(b, n)
			srv, src := cityServer(b, c, Config{Debounce: time.Nanosecond})
			documentChanges(b, c, srv, src, func(rev topology.Revision, start time.Time) []time.Duration {
				return waitRoutes(b, srv, c.affected, rev, start)
			})
		})
	}
}

// documentChanges runs b's loop: each round changes the document, and
// done waits until every affected node has the new revision and returns
// how long each took. It reports their p50 and p99, and cpu-ms: the CPU
// time of the whole process per round (server, and clients when they run
// in it), which varies less than times on a shared machine.
func documentChanges(b *testing.B, c *benchCity, srv *Server, src *source, done func(topology.Revision, time.Time) []time.Duration) {
	var all []time.Duration
	rev := topology.Revision(1)
	cpu0 := processCPU(b)
	for b.Loop() {
		rev++
		next := c.snapshot(rev)
		src.p.Store(next)
		start := time.Now()
		srv.Update(next, Change{Document: true})
		all = append(all, done(rev, start)...)
	}
	cpu := processCPU(b) - cpu0
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2])/1e6, "p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100])/1e6, "p99-ms")
	b.ReportMetric(float64(cpu)/1e6/float64(b.N), "cpu-ms")
}

// processCPU is the user and system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkQuarantineDuringDocumentChange quarantines (or releases) a
// device right after a document change has queued every node for a
// rebuild: urgent-ms is how long the device's gateway waited for its
// routes (p50 over the rounds), bulk-ms how long the whole rebuild took.
func BenchmarkQuarantineDuringDocumentChange(b *testing.B) {
	c := newBenchCity(b, 5000)
	clock := &fakeClock{}
	srv, src := cityServer(b, c, Config{Debounce: time.Hour, Clock: clock})
	gw := c.affected[len(c.affected)/2]
	dev := topology.DeviceSubject(c.snaps[0].Index().DevicesOf(gw)[0].Name)
	var urgent, bulk []time.Duration
	state := c.snaps[0].State()
	rev := topology.Revision(1)
	for round := 1; b.Loop(); round++ {
		rev++
		doc := topology.NewSnapshot(rev, rev, c.snaps[(round+1)%2].Index(), state) // not revision 1's
		src.p.Store(doc)
		start := time.Now()
		srv.Update(doc, Change{Document: true})
		clock.fire() // every node queued
		rev++
		q := &topology.SubjectState{Quarantine: &topology.Quarantine{Reason: "bench"}}
		if state.Get(dev) != nil {
			q = &topology.SubjectState{} // release
		}
		state = state.With(map[topology.Subject]*topology.SubjectState{dev: q})
		next := topology.NewSnapshot(rev, rev-1, doc.Index(), state)
		src.p.Store(next)
		qstart := time.Now()
		srv.Update(next, Change{Subjects: []topology.Subject{dev}})
		urgent = append(urgent, slices.Max(waitRoutes(b, srv, []string{gw}, rev, qstart)))
		bulk = append(bulk, slices.Max(waitRoutes(b, srv, c.affected, rev-1, start)))
	}
	slices.Sort(urgent)
	slices.Sort(bulk)
	b.ReportMetric(float64(urgent[len(urgent)/2])/1e6, "urgent-ms")
	b.ReportMetric(float64(bulk[len(bulk)/2])/1e6, "bulk-ms")
}
