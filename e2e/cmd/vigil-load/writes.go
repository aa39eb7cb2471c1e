package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

func runWrites(args []string) error {
	fs := flag.NewFlagSet("writes", flag.ExitOnError)
	duration := fs.Duration("duration", 10*time.Second, "how long each write phase runs")
	clients := fs.Int("clients", 16, "concurrent writers")
	batch := fs.Int("batch", 100, "operations per request in the batched phase")
	devices := fs.Int("devices", 10_000, "devices in the topology")
	failovers := fs.Int("failovers", 5, "times the leader is killed and the failover timed")
	onlyFailover := fs.Bool("only-failover", false, "skip the write phases")
	var extra stringList
	fs.Var(&extra, "serve-arg", "extra flag for every 'vigil serve' (repeatable), e.g. -serve-arg=--raft-heartbeat-timeout=300ms")
	bin, dir, err := setup(fs, args)
	defer os.RemoveAll(dir)
	if err != nil {
		return err
	}
	c, err := startCluster(bin, filepath.Join(dir, "cluster"), harness.Options{Args: extra})
	if err != nil {
		return err
	}
	defer c.Close()
	leader, err := c.Leader()
	if err != nil {
		return err
	}
	if _, err := applyDocument(context.Background(), c, topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: 10, Devices: *devices})); err != nil {
		return err
	}
	followers, err := c.Followers()
	if err != nil {
		return err
	}
	fmt.Printf("3-member cluster on 127.0.0.1, %d devices, %d concurrent writers, %v per phase, serve args %v\n", *devices, *clients, *duration, extra)

	phases := []struct {
		name   string
		member int
		batch  int
	}{
		{"single writes at the leader", leader, 1},
		{"single writes at a follower (forwarded)", followers[0], 1},
		{fmt.Sprintf("batched writes at the leader (%d ops per request)", *batch), leader, *batch},
	}
	if *onlyFailover {
		phases = nil
	}
	for _, p := range phases {
		header(p.name)
		r := writePhase(c.Client(p.member), *clients, p.batch, *devices, *duration)
		fmt.Printf("requests %d (errors %d) in %v: %.0f requests/s, %.0f device-state writes/s\n",
			r.requests, r.errors, r.elapsed.Round(time.Millisecond), float64(r.requests)/r.elapsed.Seconds(),
			float64(r.requests*int64(p.batch))/r.elapsed.Seconds())
		fmt.Printf("request latency: %v\n", r.lat)
	}

	header(fmt.Sprintf("leader failover (SIGKILL -> first acknowledged write), %d times", *failovers))
	var times latencies
	for k := range *failovers {
		d, err := failover(c, *devices)
		if err != nil {
			return fmt.Errorf("failover %d: %w", k+1, err)
		}
		fmt.Printf("failover %d: %v\n", k+1, round(d))
		times = append(times, d)
	}
	fmt.Printf("failover: %v\n", times)
	return nil
}

type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type phaseResult struct {
	requests, errors int64
	elapsed          time.Duration
	lat              latencies
}

// writePhase runs n writers against one member for d; each request sets
// the risk score of batch random devices.
func writePhase(cl *api.Client, n, batch, devices int, d time.Duration) phaseResult {
	var res phaseResult
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			var mine latencies
			var reqs, errs int64
			for time.Now().Before(deadline) {
				ops := make([]raft.StateOp, batch)
				for i := range ops {
					ops[i] = raft.StateOp{
						Subject: topology.DeviceSubject(topologytest.DeviceName(rng.IntN(devices))), Op: raft.OpSetRisk,
						Risk: &topology.Risk{Score: rng.IntN(101), UpdatedAt: time.Now().UTC()},
					}
				}
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := cl.UpdateState(ctx, ops)
				cancel()
				if err != nil {
					errs++
					continue
				}
				reqs++
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			res.requests += reqs
			res.errors += errs
			res.lat = append(res.lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// failover kills the leader while a writer keeps writing to the surviving
// members and returns the time from the SIGKILL to the acknowledgement of
// the first write sent after the leader's process was gone. It restarts the killed member before returning.
func failover(c *harness.Cluster, devices int) (time.Duration, error) {
	leader, err := c.Leader()
	if err != nil {
		return 0, err
	}
	var firstAfter atomic.Int64 // unix nanos of the first ack of a write sent after the leader died
	var killedAt, deadAt atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			alive := slices.DeleteFunc(c.RunningMembers(), func(m int) bool { return killedAt.Load() != 0 && m == leader })
			if len(alive) == 0 {
				continue
			}
			cl := c.Client(alive[i%len(alive)])
			sent := time.Now().UnixNano()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := cl.UpdateState(ctx, []raft.StateOp{{
				Subject: topology.DeviceSubject(topologytest.DeviceName(i % devices)), Op: raft.OpSetRisk,
				Risk: &topology.Risk{Score: i % 101, UpdatedAt: time.Now().UTC()},
			}})
			cancel()
			if dead := deadAt.Load(); err == nil && dead != 0 && sent > dead {
				firstAfter.CompareAndSwap(0, time.Now().UnixNano())
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)
	killedAt.Store(time.Now().UnixNano())
	if err := c.Kill(leader); err != nil {
		close(stop)
		<-done
		return 0, err
	}
	deadAt.Store(time.Now().UnixNano())
	deadline := time.Now().Add(30 * time.Second)
	for firstAfter.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	<-done
	if firstAfter.Load() == 0 {
		return 0, errors.New("no write was acknowledged within 30s of killing the leader")
	}
	d := time.Duration(firstAfter.Load() - killedAt.Load())
	if err := c.Restart(leader); err != nil {
		return d, err
	}
	return d, c.WaitReady()
}
