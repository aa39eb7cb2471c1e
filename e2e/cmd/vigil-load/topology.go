package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

func runTopology(args []string) error {
	fs := flag.NewFlagSet("topology", flag.ExitOnError)
	sizes := fs.String("devices", "100000,1000000", "comma-separated device counts")
	zones := fs.Int("zones", 100, "zones")
	gateways := fs.Int("gateways-per-zone", 100, "gateways per zone")
	var extra stringList
	fs.Var(&extra, "serve-arg", "extra flag for every 'vigil serve' (repeatable)")
	bin, dir, err := setup(fs, args)
	defer os.RemoveAll(dir)
	if err != nil {
		return err
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("-devices: %w", err)
		}
		spec := topologytest.Spec{Zones: *zones, GatewaysPerZone: *gateways, Devices: n}
		if err := bigApply(bin, filepath.Join(dir, s), spec, extra); err != nil {
			return fmt.Errorf("%d devices: %w", n, err)
		}
	}
	return nil
}

// bigApply applies a generated document to a fresh 3-member cluster and
// reports the apply time, memory, log and snapshot sizes, and the time a
// full restart takes to serve the document again.
func bigApply(bin, dir string, spec topologytest.Spec, extra []string) error {
	header(fmt.Sprintf("%d devices, %d gateways, %d zones", spec.Devices, spec.Zones*spec.GatewaysPerZone, spec.Zones))
	doc, err := json.Marshal(topologytest.Generate(spec))
	if err != nil {
		return err
	}
	runtime.GC()
	fmt.Printf("document: %s of JSON\n", mib(int64(len(doc))))
	c, err := startCluster(bin, dir, harness.Options{Timeout: 5 * time.Minute, Args: extra})
	if err != nil {
		return err
	}
	defer c.Close()
	leader, err := c.Leader()
	if err != nil {
		return err
	}
	ctx := context.Background()
	before, err := c.Status(leader)
	if err != nil {
		return err
	}
	t0 := time.Now()
	rev, err := c.Client(leader).ApplyTopology(ctx, doc)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	committed := time.Since(t0)
	if err := waitRevision(c, rev); err != nil {
		return err
	}
	everywhere := time.Since(t0)
	fmt.Printf("apply (PUT at the leader until committed): %v; applied on all 3 members: %v\n", round(committed), round(everywhere))
	if after, err := c.Status(leader); err == nil {
		fmt.Printf("raft term before/after the apply: %d/%d (a change means an election happened)\n", before.Term, after.Term)
	}
	memory(c, "after apply")
	fmt.Printf("raft log (bolt file) per member: %s\n", fileSizes(c, "raft.db"))

	t0 = time.Now()
	for i := range c.Size() {
		if _, err := c.Client(i).Snapshot(ctx); err != nil {
			return fmt.Errorf("snapshot on %s: %w", c.Member(i).ID, err)
		}
	}
	fmt.Printf("snapshot on all 3 members (one after another): %v; size per member: %s\n", round(time.Since(t0)), fileSizes(c, "snapshots"))

	for i := range c.Size() {
		if err := c.Stop(i); err != nil {
			return err
		}
	}
	t0 = time.Now()
	errs := make([]error, c.Size())
	var wg sync.WaitGroup
	for i := range c.Size() {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.Restart(i) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	if err := waitRevision(c, rev); err != nil {
		return err
	}
	fmt.Printf("restart of all 3 members until each serves revision %d again: %v\n", rev, round(time.Since(t0)))
	memory(c, "after restart")
	return nil
}

func waitRevision(c *harness.Cluster, rev topology.Revision) error {
	for i := range c.Size() {
		cl := c.Client(i)
		cl.MinRevision = rev
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		var err error
		for ctx.Err() == nil {
			if _, err = cl.Self(ctx); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("%s did not reach revision %d: %w", c.Member(i).ID, rev, err)
		}
	}
	return nil
}

func memory(c *harness.Cluster, when string) {
	var parts []string
	for i := range c.Size() {
		rss, peak, err := harness.ProcMemory(c.PID(i))
		if err != nil {
			parts = append(parts, c.Member(i).ID+" ?")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s (peak %s)", c.Member(i).ID, mib(rss), mib(peak)))
	}
	fmt.Printf("RSS %s: %s\n", when, strings.Join(parts, ", "))
}

// fileSizes reports the size of a file or directory in each member's data dir.
func fileSizes(c *harness.Cluster, name string) string {
	var parts []string
	for i := range c.Size() {
		var total int64
		filepath.WalkDir(filepath.Join(c.Member(i).DataDir, name), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if info, err := d.Info(); err == nil {
					total += info.Size()
				}
			}
			return nil
		})
		parts = append(parts, c.Member(i).ID+" "+mib(total))
	}
	return strings.Join(parts, ", ")
}
