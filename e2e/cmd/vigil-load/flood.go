package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// runFlood sends what an unauthenticated attacker can: Checks whose path is
// megabytes of control bytes, then reports the member's RSS, how much the
// decision log grew and whether `vigil audit verify` still reads it. -bin
// runs another build (an older commit) for a before/after comparison on
// the same machine.
func runFlood(args []string) error {
	fs := flag.NewFlagSet("flood", flag.ExitOnError)
	requests := fs.Int("requests", 400, "Checks to send")
	pathBytes := fs.Int("path-bytes", 4_000_000, "bytes of control characters in each request's path")
	inflight := fs.Int("inflight", 16, "requests in flight")
	other := fs.String("bin", "", "a vigil binary to measure instead of this checkout's")
	bin, dir, err := setup(fs, args)
	defer os.RemoveAll(dir)
	if err != nil {
		return err
	}
	if *other != "" {
		bin = *other
	}
	logPath := filepath.Join(dir, "decisions.log")
	c, err := startCluster(bin, filepath.Join(dir, "cluster"), harness.Options{Members: 1, Args: []string{"--decision-log", logPath}})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	doc := topologytest.Generate(topologytest.Spec{Zones: 2, GatewaysPerZone: 2, Devices: 100, NoAttestation: true})
	if _, err := applyDocument(ctx, c, doc); err != nil {
		return err
	}
	fmt.Printf("binary %s; 1 member; %d Checks in flight %d, each with a path of %d control bytes\n", bin, *requests, *inflight, *pathBytes)
	header("Check flood: memory, disk and the audit trail")
	cc, err := grpc.NewClient(c.Member(0).AuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		return err
	}
	defer cc.Close()
	client := authv3.NewAuthorizationClient(cc)
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: "spiffe://city.example/zone/z0/device/d0"},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Host: "svc.city.example", Path: "/" + strings.Repeat("\x01", *pathBytes),
		}},
	}}
	memory(c, "before")
	size0 := fileSize(logPath)
	var sent, refused atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range *inflight {
		wg.Go(func() {
			for i := w; i < *requests; i += *inflight {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				if _, err := client.Check(cctx, req); err != nil {
					refused.Add(1)
				}
				cancel()
				sent.Add(1)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	time.Sleep(time.Second) // let the log flush
	memory(c, "after")
	grew := fileSize(logPath) - size0
	fmt.Printf("sent %d in %v (%d refused by gRPC before any decision); decisions.log grew %s (%.1f MiB/s)\n",
		sent.Load(), round(took), refused.Load(), mib(grew), float64(grew)/(1<<20)/took.Seconds())
	out, err := exec.Command(bin, "audit", "verify", logPath).CombinedOutput()
	verdict := "verifies"
	if err != nil {
		verdict = "does NOT verify"
	}
	fmt.Printf("vigil audit verify: %s: %s", verdict, out)
	return nil
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}
