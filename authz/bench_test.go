package authz

import (
	"context"
	"slices"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/vigil-iot/vigil/authz/authztest"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

var benchSpecs = []struct {
	name string
	spec topologytest.Spec
}{
	{"10k", topologytest.Spec{Zones: 10, GatewaysPerZone: 10, Devices: 10_000}},
	{"1M", topologytest.Spec{Zones: 100, GatewaysPerZone: 100, Devices: 1_000_000}},
}

func benchServer(b *testing.B, spec topologytest.Spec) (*Server, []*authv3.CheckRequest) {
	b.Helper()
	// The benchmark measures decisions; repeating requests would otherwise
	// run into the devices' rate limits.
	doc := topologytest.Generate(spec)
	for i := range doc.DeviceClasses {
		doc.DeviceClasses[i].RateLimit = ""
	}
	for i := range doc.Flows {
		doc.Flows[i].RateLimit = ""
	}
	ix, err := topology.NewIndex(doc)
	if err != nil {
		b.Fatal(err)
	}
	snap := topology.NewSnapshot(9, 1, ix, topology.NewState())
	engine, err := NewEngine(context.Background(), quiet())
	if err != nil {
		b.Fatal(err)
	}
	// The generated classes require attestation; without it every request
	// would stop at that check. Record a fresh one for every device asked.
	reqs := authztest.Requests(ix, 1024, spec.Devices)
	updates := map[topology.Subject]*topology.SubjectState{}
	for _, r := range reqs {
		sub, _ := ix.BySPIFFEID(r.Attributes.Source.Principal)
		updates[sub] = &topology.SubjectState{Attestation: &topology.Attestation{Method: "tpm", FirmwareVersion: "1.0.0",
			VerifiedAt: time.Now().Add(-time.Hour), ExpiresAt: time.Now().Add(time.Hour)}}
	}
	snap = topology.NewSnapshot(10, 1, ix, snap.State().With(updates))
	s := NewServer(Config{Node: "bench", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine, Log: discard{}})
	return s, reqs
}

type discard struct{}

func (discard) Record(*Decision) {}

// BenchmarkCheck is the whole decision path of one Check, without gRPC:
// parse, resolve, build input, evaluate, respond. 1,024 distinct requests
// are cycled, so after the first round the decision cache answers.
func BenchmarkCheck(b *testing.B) {
	for _, bs := range benchSpecs {
		b.Run(bs.name, func(b *testing.B) {
			s, reqs := benchServer(b, bs.spec)
			ctx := context.Background()
			allowed := 0
			i := 0
			for b.Loop() {
				resp, _ := s.Check(ctx, reqs[i%len(reqs)])
				if resp.GetStatus().GetCode() == 0 {
					allowed++
				}
				i++
			}
			b.ReportMetric(float64(allowed)/float64(i), "allowed/op")
		})
	}
}

// BenchmarkCheckObserved is BenchmarkCheck with an observer: "chan" does
// what a member's does, a non-blocking send of a copy into a bounded
// channel that another goroutine drains; "noop" only copies, which is what
// observing costs the Check itself.
func BenchmarkCheckObserved(b *testing.B) {
	for _, bs := range benchSpecs {
		b.Run(bs.name+"/chan", func(b *testing.B) {
			s, reqs := benchServer(b, bs.spec)
			ch := make(chan Observation, 4096)
			drained := make(chan int)
			go func() {
				n := 0
				for range ch {
					n++
				}
				drained <- n
			}()
			s.cfg.Observer = func(o *Observation) {
				select {
				case ch <- *o:
				default:
				}
			}
			ctx := context.Background()
			i := 0
			for b.Loop() {
				s.Check(ctx, reqs[i%len(reqs)])
				i++
			}
			close(ch)
			b.ReportMetric(float64(<-drained)/float64(i), "observed/op")
		})
		b.Run(bs.name+"/noop", func(b *testing.B) {
			s, reqs := benchServer(b, bs.spec)
			var last Observation
			s.cfg.Observer = func(o *Observation) { last = *o }
			ctx := context.Background()
			i := 0
			for b.Loop() {
				s.Check(ctx, reqs[i%len(reqs)])
				i++
			}
			if last.DecisionID == "" {
				b.Fatal("nothing observed")
			}
		})
	}
}

// BenchmarkCheckUncached is BenchmarkCheck with every decision evaluated:
// by the default policy's Go form (decision 0009), and by OPA running its
// Rego with the decision cache emptied before each Check.
func BenchmarkCheckUncached(b *testing.B) {
	for _, bs := range benchSpecs {
		for _, via := range []string{"go", "rego"} {
			b.Run(bs.name+"/"+via, func(b *testing.B) {
				s, reqs := benchServer(b, bs.spec)
				if via == "rego" {
					s.cfg.Engine.Use(s.cfg.Engine.Current().WithRego())
				}
				ctx := context.Background()
				i := 0
				for b.Loop() {
					if via == "rego" {
						s.cache = newDecisionCache()
					}
					s.Check(ctx, reqs[i%len(reqs)])
					i++
				}
			})
		}
	}
}

// BenchmarkPolicyEval is policy evaluation alone (inputs built beforehand),
// with its p99, the figure docs/architecture.md sets a target for; allowed and
// denied requests take different paths through the policy.
func BenchmarkPolicyEval(b *testing.B) {
	for _, bs := range benchSpecs {
		s, reqs := benchServer(b, bs.spec)
		snap := s.cfg.Snapshot()
		var allowed, denied []ast.Value
		for i, req := range reqs {
			r, err := ParseRequest(req)
			if err != nil {
				b.Fatal(err)
			}
			res := resolve(snap, &r, time.Now())
			in, err := BuildInput(req, res.input("bench"))
			if err != nil {
				b.Fatal(err)
			}
			if i%2 == 0 {
				allowed = append(allowed, in)
			} else {
				denied = append(denied, in)
			}
		}
		p := s.cfg.Engine.Current()
		for _, set := range []struct {
			name   string
			inputs []ast.Value
			want   bool
		}{{"allow", allowed, true}, {"deny", denied, false}} {
			b.Run(bs.name+"/"+set.name, func(b *testing.B) {
				ctx := context.Background()
				times := make([]time.Duration, 0, 1<<16)
				i := 0
				for b.Loop() {
					t0 := time.Now()
					res, err := p.Eval(ctx, set.inputs[i%len(set.inputs)])
					if err != nil || res.Allowed != set.want {
						b.Fatalf("allowed=%v err=%v, want allowed=%v", res.Allowed, err, set.want)
					}
					if len(times) < cap(times) {
						times = append(times, time.Since(t0))
					}
					i++
				}
				slices.Sort(times)
				b.ReportMetric(float64(times[len(times)*99/100].Nanoseconds())/1000, "p99-µs")
			})
		}
	}
}
