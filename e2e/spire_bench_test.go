package e2e_test

import (
	"context"
	"encoding/json"
	"flag"
	"slices"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

var benchDevices = flag.Int("devices", 10_000, "devices in BenchmarkSPIREQuarantine's topology")

// BenchmarkSPIREQuarantine measures, on a 3-member cluster driving the real
// spire-server, the time from applying a document to every device's entry
// being on the server, and from a quarantine sent to the leader's API to
// the device's entry being gone from the server (p50, p99, max).
//
//	go test ./e2e -run '^$' -bench SPIREQuarantine -benchtime=1x -devices 10000
func BenchmarkSPIREQuarantine(b *testing.B) {
	srv := spireServer(b)
	b.Log(harness.Hardware())
	c := harness.Start(b, harness.Options{Binary: vigilBin, Members: 3, Args: []string{"--spire-socket", srv.Socket}})
	sc, err := spire.Dial(srv.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer sc.Close()
	ctx := context.Background()
	// 100 devices per gateway, as in docs/architecture.md's targets.
	doc := topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: max(1, *benchDevices/1000), Devices: *benchDevices, NoAttestation: true})
	leader, err := c.Leader()
	if err != nil {
		b.Fatal(err)
	}
	cl := c.Client(leader)
	data, err := json.Marshal(doc)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if _, err := cl.ApplyTopology(ctx, data); err != nil {
		b.Fatal(err)
	}
	want := *benchDevices + 4
	for {
		list, err := sc.ListEntries(ctx, "vigil", "")
		if err != nil {
			b.Fatal(err)
		}
		if len(list) == want {
			break
		}
		if time.Since(start) > 30*time.Minute {
			b.Fatalf("%d of %d entries after 30 minutes", len(list), want)
		}
		time.Sleep(time.Second)
	}
	apply := time.Since(start)
	b.Logf("%d devices: document applied to every entry on the server in %v (%.0f entries/s)", *benchDevices, apply.Round(time.Millisecond), float64(want)/apply.Seconds())

	var lat []time.Duration
	for i := range b.N * 30 {
		name := topologytest.DeviceName(i * 7 % *benchDevices)
		start := time.Now()
		if _, err := cl.Quarantine(ctx, topology.KindDevice, name, "bench"); err != nil {
			b.Fatal(err)
		}
		for {
			if _, found, err := sc.GetEntry(ctx, "vigil.device."+name); err != nil {
				b.Fatal(err)
			} else if !found {
				break
			}
			if time.Since(start) > time.Minute {
				b.Fatalf("entry of quarantined %s still there after a minute", name)
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	p := func(q float64) time.Duration {
		return lat[min(len(lat)-1, int(q*float64(len(lat))))].Round(100 * time.Microsecond)
	}
	b.Logf("quarantine sent to the leader -> entry gone from the SPIRE server, %d trials: p50 %v, p99 %v, max %v", len(lat), p(0.5), p(0.99), lat[len(lat)-1])
	b.ReportMetric(float64(p(0.5).Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(p(0.99).Microseconds())/1000, "ms-p99")
	b.ReportMetric(float64(want)/apply.Seconds(), "entries/s")
}
