package node

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/authz/authztest"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// BenchmarkCheckMonitor is a member's ext_authz over loopback gRPC with
// the monitor off and on, side by side in one run: a benign fleet of
// 100,000 devices (allowed requests, no rate limit in the way, a steady
// rate the baselines have seen), 16 in flight. The monitor's cost is the
// difference; an attack's cost (Raft writes, playbooks) is not in it.
//
//	go test ./node/ -run '^$' -bench CheckMonitor -benchtime 5s
func BenchmarkCheckMonitor(b *testing.B) {
	const devices = 100_000
	doc := topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: 10, Devices: devices, NoAttestation: true})
	for i := range doc.DeviceClasses {
		doc.DeviceClasses[i].RateLimit = ""
	}
	for i := range doc.Flows {
		doc.Flows[i].RateLimit = ""
	}
	raw, _ := json.Marshal(doc)
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			n, cl, _ := runNode(b, func(c *Config) { c.Monitor.Off = !on })
			if _, err := cl.ApplyTopology(context.Background(), raw); err != nil {
				b.Fatal(err)
			}
			ix := n.Store().Current().Index()
			var reqs []*authv3.CheckRequest
			for i, r := range authztest.Requests(ix, devices, devices) {
				if i%2 == 0 { // the allowed half
					reqs = append(reqs, r)
				}
			}
			cc, err := grpc.NewClient(n.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			c := authv3.NewAuthorizationClient(cc)
			ctx := context.Background()
			for i := range reqs { // warm the decision cache and the baselines
				c.Check(ctx, reqs[i])
			}
			b.ResetTimer()
			var wg sync.WaitGroup
			var next sync.Mutex
			k := 0
			for range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						next.Lock()
						i := k
						k++
						next.Unlock()
						if i >= b.N {
							return
						}
						c.Check(ctx, reqs[i%len(reqs)])
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checks/s")
		})
	}
}
