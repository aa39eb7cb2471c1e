// Command vigil-load measures a real Vigil cluster: three `vigil serve`
// processes on 127.0.0.1, built from this checkout. Every run prints the
// hardware it ran on, because the figures mean nothing without it.
//
//	vigil-load writes   [-duration 10s] [-clients 16] [-batch 100] [-failovers 5]
//	vigil-load topology [-devices 100000,1000000]
//	vigil-load authz      [-duration 10s] [-inflight 16] [-devices 100000]
//	vigil-load authz-compare [-duration 10s] [-rounds 2] [-tls] [-bin OLD_VIGIL] [-quick]
//	vigil-load quarantine [-trials 30]
//	vigil-load xds        [-gateways 1000,5000] [-devices-per-gateway 2]
//	vigil-load flood      [-requests 400] [-path-bytes 4000000] [-bin OLD_VIGIL]
//	vigil-load attest     [-devices 5000] [-clients 32] [-duration 10s]
//	vigil-load console    [-devices 1000000] [-requests 2000] [-rate 10000] [-phase 10s] [-quick]
//	vigil-load hardware   (prints the hardware line and exits; `make bench` starts with it)
//
// Results belong in BENCHMARKS.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "writes":
		err = runWrites(os.Args[2:])
	case "topology":
		err = runTopology(os.Args[2:])
	case "authz":
		err = runAuthz(os.Args[2:])
	case "authz-compare":
		err = runAuthzCompare(os.Args[2:])
	case "quarantine":
		err = runQuarantine(os.Args[2:])
	case "xds":
		err = runXDS(os.Args[2:])
	case "flood":
		err = runFlood(os.Args[2:])
	case "attest":
		err = runAttest(os.Args[2:])
	case "monitor":
		err = runMonitor(os.Args[2:])
	case "console":
		err = runConsole(os.Args[2:])
	case "hardware":
		fmt.Println(harness.Hardware())
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vigil-load:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: vigil-load writes|topology|authz|authz-compare|quarantine|xds|flood|attest|monitor|console|hardware [flags]   (-h for the flags of each)")
	os.Exit(2)
}

// setup builds the binary and prints the hardware.
func setup(fs *flag.FlagSet, args []string) (bin, dir string, err error) {
	if err := fs.Parse(args); err != nil {
		return "", "", err
	}
	fmt.Println(harness.Hardware())
	dir, err = os.MkdirTemp("", "vigil-load-")
	if err != nil {
		return "", "", err
	}
	bin, err = harness.Build(filepath.Join(dir, "bin"))
	return bin, dir, err
}

// startCluster starts a cluster of `vigil serve` processes in dir.
func startCluster(bin, dir string, opts harness.Options) (*harness.Cluster, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	opts.Binary, opts.Dir = bin, dir
	c, err := harness.New(opts)
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	return c, nil
}

// applyDocument applies doc through the leader, waits until every member
// serves it, and returns its index.
func applyDocument(ctx context.Context, c *harness.Cluster, doc *topology.Document) (*topology.Index, error) {
	ix, err := topology.NewIndex(doc)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	leader, err := c.Leader()
	if err != nil {
		return nil, err
	}
	rev, err := c.Client(leader).ApplyTopology(ctx, data)
	if err != nil {
		return nil, fmt.Errorf("apply topology: %w", err)
	}
	return ix, waitRevision(c, rev)
}

// latencies summarises request times.
type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append(latencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func (l latencies) String() string {
	return fmt.Sprintf("p50 %v  p90 %v  p99 %v  max %v", round(l.pct(.5)), round(l.pct(.9)), round(l.pct(.99)), round(l.pct(1)))
}

func round(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(10 * time.Millisecond)
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func header(title string) {
	fmt.Printf("\n== %s %s\n", title, strings.Repeat("=", max(0, 70-len(title))))
}
