package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/authz/authztest"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

func runAuthz(args []string) error {
	fs := flag.NewFlagSet("authz", flag.ExitOnError)
	duration := fs.Duration("duration", 10*time.Second, "how long to send checks")
	inflight := fs.Int("inflight", 16, "requests in flight")
	conns := fs.Int("conns", 4, "gRPC connections the requests share")
	devices := fs.Int("devices", 100_000, "devices in the topology")
	distinct := fs.Int("distinct", 20_000, "distinct requests cycled through; enough that no device exceeds its rate limit (10/m) in a run")
	bin, dir, err := setup(fs, args)
	defer os.RemoveAll(dir)
	if err != nil {
		return err
	}
	c, err := startCluster(bin, filepath.Join(dir, "cluster"), harness.Options{Members: 1,
		Args: []string{"--decision-log", filepath.Join(dir, "decisions.log")}})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	// Classes without an attestation requirement: attestations are only
	// recorded from verified evidence, which this tool does not produce.
	doc := topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: 10, Devices: *devices, NoAttestation: true})
	ix, err := applyDocument(ctx, c, doc)
	if err != nil {
		return err
	}
	reqs := authztest.Requests(ix, min(*distinct, *devices), *devices)
	clients := make([]authv3.AuthorizationClient, *conns)
	for i := range clients {
		cc, err := grpc.NewClient(c.Member(0).AuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		clients[i] = authv3.NewAuthorizationClient(cc)
	}
	fmt.Printf("1 member on 127.0.0.1, %d devices, %d requests in flight over %d connections, %v, half allowed and half denied\n",
		*devices, *inflight, *conns, *duration)
	header("ext_authz Check over loopback gRPC")
	var mu sync.Mutex
	var lat latencies
	var allowed, denied, failed int
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(*duration)
	for w := range *inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine latencies
			var a, d, f int
			for i := w; time.Now().Before(deadline); i += *inflight {
				t0 := time.Now()
				resp, err := clients[w%len(clients)].Check(ctx, reqs[i%len(reqs)])
				mine = append(mine, time.Since(t0))
				switch {
				case err != nil:
					f++
				case resp.GetStatus().GetCode() == 0:
					a++
				default:
					d++
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			allowed, denied, failed = allowed+a, denied+d, failed+f
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	fmt.Printf("checks %d in %v: %.0f checks/s (allowed %d, denied %d, errors %d)\n",
		len(lat), elapsed.Round(time.Millisecond), float64(len(lat))/elapsed.Seconds(), allowed, denied, failed)
	fmt.Printf("latency: %v\n", lat)
	rss, peak, _ := harness.ProcMemory(c.PID(0))
	fmt.Printf("member RSS %s (peak %s)\n", mib(rss), mib(peak))
	return nil
}
