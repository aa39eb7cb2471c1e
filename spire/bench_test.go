package spire

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/spire/spiretest"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

var benchParallel = flag.Int("in-flight", 1, "batches in flight in BenchmarkReconcileRealServer (Config.Parallel)")

// BenchmarkReconcileRealServer times full passes against the real
// spire-server (sqlite3 datastore) on this machine, 100 devices per gateway: the first pass creating
// every entry, a pass that finds nothing to do, and the targeted pass of a
// quarantine. Run with -benchtime=1x; entries/s is the first pass's rate.
// VIGIL_SPIRE_POSTGRES (see spiretest) puts the server on PostgreSQL.
//
//	go test ./spire -run '^$' -bench ReconcileRealServer -benchtime=1x [-args -in-flight 4]
func BenchmarkReconcileRealServer(b *testing.B) {
	if _, err := spiretest.Binaries(); err != nil {
		b.Skipf("real SPIRE is not available: %v", err)
	}
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("devices=%d/parallel=%d", n, *benchParallel), func(b *testing.B) {
			// 100 devices per gateway, the ratio of docs/architecture.md's
			// targets (1,000,000 devices, 10,000 gateways). The server's
			// cost per created entry grows with the entries under the
			// same parent (its similar-entry lookup).
			doc := topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: max(1, n/1000), Devices: n, NoAttestation: true})
			ix, err := topology.NewIndex(doc)
			if err != nil {
				b.Fatal(err)
			}
			snap := topology.NewSnapshot(2, 1, ix, topology.NewState())
			q := topology.DeviceSubject("d-0000042")
			quarantined := topology.NewSnapshot(3, 1, ix, topology.NewState().With(map[topology.Subject]*topology.SubjectState{
				q: {Quarantine: &topology.Quarantine{Reason: "bench"}}}))
			var first, noop, quarantine time.Duration
			for range b.N {
				b.StopTimer()
				srv, err := spiretest.StartServer("", cityTD)
				if err != nil {
					b.Fatal(err)
				}
				cl, err := Dial(srv.Socket)
				if err != nil {
					b.Fatal(err)
				}
				var leader atomic.Bool
				leader.Store(true)
				r, err := NewReconciler(Config{Client: cl, Options: DefaultOptions(), IsLeader: leader.Load,
					Parallel: *benchParallel, Logger: slog.New(slog.DiscardHandler)})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				b.StartTimer()
				start := time.Now()
				res, err := r.Reconcile(ctx, snap)
				first += time.Since(start)
				b.StopTimer()
				if err != nil || res.Created != n+4 || res.Failed != 0 {
					b.Fatalf("first pass: %+v, %v", res, err)
				}
				start = time.Now()
				if res, err = r.Reconcile(ctx, snap); err != nil || res.Created+res.Updated+res.Deleted != 0 {
					b.Fatalf("second pass: %+v, %v", res, err)
				}
				noop += time.Since(start)
				start = time.Now()
				if res, err = r.reconcileSubjects(ctx, quarantined, []topology.Subject{q}); err != nil || res.Deleted != 1 {
					b.Fatalf("quarantine: %+v, %v", res, err)
				}
				quarantine += time.Since(start)
				cl.Close()
				srv.Close()
			}
			b.ReportMetric(float64(n+4)*float64(b.N)/first.Seconds(), "entries/s")
			b.ReportMetric(first.Seconds()/float64(b.N), "s/first-pass")
			b.ReportMetric(noop.Seconds()/float64(b.N), "s/noop-pass")
			b.ReportMetric(float64(quarantine.Microseconds())/1000/float64(b.N), "ms/quarantine")
		})
	}
}
