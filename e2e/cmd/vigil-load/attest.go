package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/authz/authztest"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// runAttest measures attestation on a 3-member cluster: devices with
// simulated TPMs ask any member for a nonce, quote, and submit the evidence
// to any member (followers forward to the leader, which verifies and
// records the result and the nonce's use through Raft). Meanwhile ext_authz
// Checks run against a follower, so that their p99 during the storm can be
// compared with the p99 before it, in the same run.
func runAttest(args []string) error {
	fs := flag.NewFlagSet("attest", flag.ExitOnError)
	devices := fs.Int("devices", 5000, "devices in the topology, each with its own simulated TPM")
	clients := fs.Int("clients", 32, "concurrent attesting devices")
	duration := fs.Duration("duration", 10*time.Second, "how long the attestation storm runs")
	checks := fs.Int("checks-inflight", 4, "ext_authz Checks in flight during both phases")
	atLeader := fs.Bool("at-leader", false, "send every challenge and attestation to the leader (no forwarding), to see what forwarding costs")
	bin, dir, err := setup(fs, args)
	defer os.RemoveAll(dir)
	if err != nil {
		return err
	}
	c, err := startCluster(bin, filepath.Join(dir, "cluster"), harness.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	ix, err := applyDocument(ctx, c, topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: 10, Devices: *devices}))
	if err != nil {
		return err
	}
	leader, err := c.Leader()
	if err != nil {
		return err
	}
	follower := (leader + 1) % c.Size()
	fmt.Printf("3-member cluster on 127.0.0.1, %d devices with simulated ECDSA TPMs, %d attesting at once, Checks at a follower (%d in flight)\n",
		*devices, *clients, *checks)

	// Enroll every device (at the leader, 16 at a time).
	header("enrollment")
	tpms := make([]*attest.SimTPM, *devices)
	firmware := ix.Devices()[0]
	cl, _ := ix.Class(firmware.Class)
	fw := cl.Attestation.Firmware[0].SHA256
	start := time.Now()
	if err := forEach(*devices, 16, func(i int) error {
		t, err := attest.NewSimTPM(false)
		if err != nil {
			return err
		}
		if err := t.MeasureFirmware(fw); err != nil {
			return err
		}
		pemAK, _ := t.AKPublicPEM()
		tpms[i] = t
		_, err = c.Client(leader).Enroll(ctx, topologytest.DeviceName(i), api.EnrollRequest{TPMAK: string(pemAK)})
		return err
	}); err != nil {
		return err
	}
	fmt.Printf("enrolled %d devices in %v: %.0f/s\n", *devices, round(time.Since(start)), float64(*devices)/time.Since(start).Seconds())

	checkLat := func(d time.Duration) latencies {
		return runChecks(ctx, c.Member(follower).AuthzAddr, ix, *checks, d)
	}
	header("ext_authz at a follower, before the storm")
	base := checkLat(5 * time.Second)
	fmt.Printf("checks %d in 5s: latency %v\n", len(base), base)

	header("attestation storm: challenge at any member, quote, attest at any member")
	var done, failed atomic.Int64
	var mu sync.Mutex
	var lat latencies
	var next atomic.Int64
	stormLat := make(chan latencies, 1)
	go func() { stormLat <- checkLat(*duration) }()
	start = time.Now()
	deadline := start.Add(*duration)
	var wg sync.WaitGroup
	for w := range *clients {
		wg.Go(func() {
			var mine latencies
			for time.Now().Before(deadline) {
				i := int(next.Add(1)-1) % *devices
				name := topologytest.DeviceName(i)
				t0 := time.Now()
				a, b := w%c.Size(), (w+1)%c.Size()
				if *atLeader {
					a, b = leader, leader
				}
				ok := attestOnce(ctx, c, tpms[i], name, a, b)
				mine = append(mine, time.Since(t0))
				if ok {
					done.Add(1)
				} else {
					failed.Add(1)
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	rate := float64(done.Load()) / elapsed.Seconds()
	fmt.Printf("attestations recorded: %d in %v: %.0f/s (failed %d); latency %v\n", done.Load(), round(elapsed), rate, failed.Load(), lat)
	if rate > 0 {
		fmt.Printf("at this rate 1,000,000 devices re-attest in %v\n", round(time.Duration(1e6/rate*float64(time.Second))))
	}
	during := <-stormLat
	fmt.Printf("ext_authz during the storm: %d checks, latency %v (before: p99 %v)\n", len(during), during, round(base.pct(.99)))
	memory(c, "after")
	return nil
}

// attestOnce runs one device's challenge (at member a), quote and
// attestation (at member b), and reports whether the evidence passed.
func attestOnce(ctx context.Context, c *harness.Cluster, t *attest.SimTPM, name string, a, b int) bool {
	ch, err := c.Client(a).Challenge(ctx, name)
	if err != nil {
		return false
	}
	nonce, _ := hex.DecodeString(ch.Nonce)
	ev, err := t.Evidence(nonce, []int{16})
	if err != nil {
		return false
	}
	raw, _ := json.Marshal(ev)
	resp, err := c.Client(b).Attest(ctx, name, raw)
	return err == nil && resp.Attestation != nil && !resp.Attestation.Failed()
}

// runChecks sends Checks to addr for d and returns their latencies.
func runChecks(ctx context.Context, addr string, ix *topology.Index, inflight int, d time.Duration) latencies {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil
	}
	defer cc.Close()
	client := authv3.NewAuthorizationClient(cc)
	reqs := authztest.Requests(ix, 2000, ix.NumDevices())
	var mu sync.Mutex
	var lat latencies
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range inflight {
		wg.Go(func() {
			var mine latencies
			for i := w; time.Now().Before(deadline); i += inflight {
				t0 := time.Now()
				client.Check(ctx, reqs[i%len(reqs)])
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return lat
}

// forEach runs f(0..n-1) with at most par at once and returns the first error.
func forEach(n, par int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range par {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = fmt.Errorf("item %d: %w", i, err) })
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}
