package monitor

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// BenchmarkObserve is the engine's cost per event: decisions and access
// entries of 10,000 devices in four classes, in time order.
func BenchmarkObserve(b *testing.B) {
	e := New(Config{Member: "m1"})
	const devices = 10_000
	names := make([]string, devices)
	for i := range names {
		names[i] = fmt.Sprintf("dev-%06d", i)
	}
	evs := make([]Event, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	at := t0.UnixNano()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % len(evs)
		if k == 0 {
			b.StopTimer()
			for j := range evs {
				d := rng.IntN(devices)
				at += int64(time.Millisecond)
				kind := EventDecision
				if j%2 == 1 {
					kind = EventAccess
				}
				evs[j] = Event{Kind: kind, At: at, SubKind: topology.KindDevice, Subject: names[d], Class: fmt.Sprintf("c%d", d%4),
					Service: "telemetry", Method: "POST", Path: "/api/v1/telemetry", Allowed: true, Bytes: 200, RespBytes: 40, Status: 200}
			}
			b.StartTimer()
		}
		e.Observe(&evs[k])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkMemoryPerDevice reports the engine's heap per subject it
// judges, with every device's baseline warm, at 100,000 and 1,000,000
// devices.
func BenchmarkMemoryPerDevice(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for range b.N {
				names := make([]string, n)
				for i := range names {
					names[i] = fmt.Sprintf("dev-%07d", i) // the topology holds these strings anyway
				}
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				e := New(Config{Member: "m1"})
				ev := Event{Kind: EventDecision, SubKind: topology.KindDevice, Service: "telemetry", Method: "POST",
					Path: "/api/v1/telemetry", Allowed: true, Bytes: 200}
				classes := []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"}
				for w := range 3 { // three windows: every device has a baseline
					for i := range n {
						ev.Subject, ev.Class = names[i], classes[i%8]
						ev.At = t0.Add(time.Duration(w) * 10 * time.Second).UnixNano()
						e.Observe(&ev)
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				if e.Stats().Subjects != n {
					b.Fatalf("%d subjects", e.Stats().Subjects)
				}
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "bytes/device")
				runtime.KeepAlive(e)
				runtime.KeepAlive(names)
			}
		})
	}
}

var benignDay = flag.Int("benign-day", 0, "devices for TestBenignDay (0 skips it); run with -timeout 0")

// TestBenignDay plays a day of a benign fleet, time compressed (events
// carry simulated times): devices of six classes with their own rates
// and sizes, a diurnal swing of ±50% in rate, Poisson arrivals, sizes with
// noise, and devices that reboot. It reports the findings per 1,000
// devices and the devices whose risk reached 80 (the default
// quarantineAt): the target is none.
//
//	go test ./monitor/ -run TestBenignDay -benign-day 100000 -timeout 0 -v
func TestBenignDay(t *testing.T) {
	n := *benignDay
	if n == 0 {
		t.Skip("-benign-day N not given")
	}
	type class struct {
		name     string
		every    time.Duration // mean interval between requests
		size     float64       // mean request bytes
		resp     float64
		services []string
	}
	classes := []class{
		{"streetlight", 60 * time.Second, 200, 40, []string{"telemetry"}},
		{"air-sensor", 30 * time.Second, 350, 40, []string{"telemetry"}},
		{"parking", 120 * time.Second, 150, 40, []string{"telemetry", "parking-api"}},
		{"traffic-camera", 10 * time.Second, 48_000, 100, []string{"video", "telemetry"}},
		{"meter", 300 * time.Second, 500, 60, []string{"billing"}},
		{"signal", 20 * time.Second, 120, 400, []string{"traffic-control", "telemetry"}},
	}
	e := New(Config{Member: "m1"})
	rng := rand.New(rand.NewPCG(7, 7))
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	const day = 24 * time.Hour
	type dev struct {
		name string
		c    int
		next time.Duration
	}
	devs := make([]dev, n)
	for i := range devs {
		c := i % len(classes)
		devs[i] = dev{name: fmt.Sprintf("d-%07d", i), c: c, next: time.Duration(rng.Float64() * float64(classes[c].every))}
	}
	var events, findings int
	byDetector := map[string]int{}
	wall := time.Now()
	for now := time.Duration(0); now < day; now += time.Second {
		diurnal := 1 + 0.5*math.Sin(2*math.Pi*float64(now)/float64(day))
		for i := range devs {
			d := &devs[i]
			for d.next <= now {
				c := classes[d.c]
				at := start.Add(d.next)
				svc := c.services[rng.IntN(len(c.services))]
				size := int64(math.Max(1, c.size*(1+0.2*rng.NormFloat64())))
				ev := Event{Kind: EventDecision, At: at.UnixNano(), SubKind: topology.KindDevice, Subject: d.name, Class: c.name,
					Service: svc, Method: "POST", Path: "/api/v1/" + svc, Allowed: true, Bytes: size}
				for _, f := range e.Observe(&ev) {
					findings++
					byDetector[f.Detector]++
				}
				ev.Kind, ev.RespBytes, ev.Status = EventAccess, int64(c.resp), 200
				for _, f := range e.Observe(&ev) {
					findings++
					byDetector[f.Detector]++
				}
				events += 2
				d.next += time.Duration(rng.ExpFloat64() * float64(c.every) / diurnal)
			}
		}
		if now%time.Hour == 0 {
			for range n / 2000 { // a few devices reboot each hour
				d := &devs[rng.IntN(n)]
				ev := Event{Kind: EventSignal, At: start.Add(now).UnixNano(), SubKind: topology.KindDevice, Subject: d.name,
					Class: classes[d.c].name, Name: "reboot"}
				for _, f := range e.Observe(&ev) {
					findings++
					byDetector[f.Detector]++
				}
			}
		}
	}
	quarantines, maxRisk := 0, 0
	for i := range devs {
		r := e.RiskOf(topology.DeviceSubject(devs[i].name), start.Add(day))
		maxRisk = max(maxRisk, r.Score)
		if r.Score >= topology.DefaultQuarantineAt {
			quarantines++
		}
	}
	t.Logf("benign day: %d devices, %d events in %v (%.0f events/s on one core)", n, events, time.Since(wall).Round(time.Second),
		float64(events)/time.Since(wall).Seconds())
	t.Logf("findings: %d (%.2f per 1,000 devices) %v; devices at quarantineAt at the end: %d; highest risk at the end: %d",
		findings, float64(findings)*1000/float64(n), byDetector, quarantines, maxRisk)
	if quarantines > 0 {
		t.Errorf("a benign day quarantined %d devices", quarantines)
	}
}
