package topology_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// Sizes used by the benchmarks: the 1M case is the architecture's target
// (1,000,000 devices, 10,000 gateways, 100 zones).
var benchSizes = []struct {
	name string
	spec topologytest.Spec
}{
	{"100k", topologytest.Spec{Zones: 10, GatewaysPerZone: 100, Devices: 100_000}},
	{"1M", topologytest.Spec{Zones: 100, GatewaysPerZone: 100, Devices: 1_000_000}},
}

var (
	benchMu   sync.Mutex
	benchDocs = map[string]*topology.Document{}
)

func benchDoc(b *testing.B, name string, spec topologytest.Spec) *topology.Document {
	b.Helper()
	benchMu.Lock()
	defer benchMu.Unlock()
	if d, ok := benchDocs[name]; ok {
		return d
	}
	d := topologytest.Generate(spec)
	benchDocs[name] = d
	return d
}

func BenchmarkLoadJSON(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			data, err := json.Marshal(benchDoc(b, s.name, s.spec))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for b.Loop() {
				if _, err := topology.Load(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkNewIndex(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			doc := benchDoc(b, s.name, s.spec)
			for b.Loop() {
				if _, err := topology.NewIndex(doc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLookups measures what the authorizer does per request: resolve
// the caller's SPIFFE ID, find its flows, read its state.
func BenchmarkLookups(b *testing.B) {
	for _, s := range benchSizes {
		doc := benchDoc(b, s.name, s.spec)
		ix, err := topology.NewIndex(doc)
		if err != nil {
			b.Fatal(err)
		}
		ids := make([]string, 1024)
		for i := range ids {
			sub := topology.DeviceSubject(topologytest.DeviceName(i * (s.spec.Devices / len(ids))))
			ids[i], _ = ix.SPIFFEID(sub)
		}
		snap := topology.NewSnapshot(1, 1, ix, topology.NewState())
		b.Run(s.name+"/BySPIFFEID+RulesFrom+State", func(b *testing.B) {
			i := 0
			for b.Loop() {
				sub, ok := ix.BySPIFFEID(ids[i%len(ids)])
				if !ok || len(ix.RulesFrom(sub)) == 0 || snap.Quarantined(sub) {
					b.Fatal("lookup failed")
				}
				i++
			}
		})
	}
}

// BenchmarkStateWith is the cost of one runtime-state write when every one
// of a million devices already has state.
func BenchmarkStateWith(b *testing.B) {
	st := topology.NewState()
	fill := make(map[topology.Subject]*topology.SubjectState, 1_000_000)
	q := &topology.SubjectState{Risk: &topology.Risk{Score: 1}}
	for i := range 1_000_000 {
		fill[topology.DeviceSubject(topologytest.DeviceName(i))] = q
	}
	st = st.With(fill)
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("1M/batch=%d", batch), func(b *testing.B) {
			i := 0
			for b.Loop() {
				u := make(map[topology.Subject]*topology.SubjectState, batch)
				for range batch {
					u[topology.DeviceSubject(topologytest.DeviceName(i%1_000_000))] = q
					i += 7919
				}
				st.With(u)
			}
		})
	}
}
