package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// runQuarantine measures how long a quarantine takes to reach every
// member's authorizer: from sending the quarantine to the leader until each
// member's Check denies the device.
func runQuarantine(args []string) error {
	fs := flag.NewFlagSet("quarantine", flag.ExitOnError)
	trials := fs.Int("trials", 30, "quarantines to time")
	devices := fs.Int("devices", 10_000, "devices in the topology")
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
	doc := topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: 10, Devices: *devices, NoAttestation: true})
	ctx := context.Background()
	ix, err := applyDocument(ctx, c, doc)
	if err != nil {
		return err
	}
	leader, err := c.Leader()
	if err != nil {
		return err
	}
	clients := make([]authv3.AuthorizationClient, c.Size())
	for i := range clients {
		cc, err := grpc.NewClient(c.Member(i).AuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		clients[i] = authv3.NewAuthorizationClient(cc)
	}
	fmt.Printf("3-member cluster on 127.0.0.1, %d devices, %d quarantines sent to the leader's API\n", *devices, *trials)
	header("quarantine -> every member's ext_authz denies")
	var fromSend, fromAck latencies
	for k := range *trials {
		// Street lights (every third device) have a flow to telemetry.
		name := topologytest.DeviceName((k * 3 * 97) % *devices)
		id, _ := ix.SPIFFEID(topology.DeviceSubject(name))
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: id},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "POST", Path: "/api/v1/telemetry", Host: "telemetry.city.example"}},
		}}
		for i, cl := range clients { // every member allows it first
			if resp, err := cl.Check(ctx, req); err != nil || resp.GetStatus().GetCode() != 0 {
				return fmt.Errorf("trial %d: %s does not allow %s before the quarantine: %v %v", k, c.Member(i).ID, name, resp.GetStatus(), err)
			}
		}
		sent := time.Now()
		var acked time.Time
		var wg sync.WaitGroup
		denied := make([]time.Time, len(clients))
		for i, cl := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Since(sent) < 10*time.Second {
					// Only the quarantine counts: polling may also meet the
					// device's rate limit (429) before the quarantine lands.
					if resp, err := cl.Check(ctx, req); err == nil && strings.Contains(resp.GetDeniedResponse().GetBody(), "is quarantined") {
						denied[i] = time.Now()
						return
					}
				}
			}()
		}
		if _, err := c.Client(leader).Quarantine(ctx, topology.KindDevice, name, "load test"); err != nil {
			return err
		}
		acked = time.Now()
		wg.Wait()
		for i, d := range denied {
			if d.IsZero() {
				return fmt.Errorf("trial %d: %s still allows %s 10s after the quarantine", k, c.Member(i).ID, name)
			}
			fromSend = append(fromSend, d.Sub(sent))
			fromAck = append(fromAck, max(0, d.Sub(acked)))
		}
	}
	fmt.Printf("from sending the quarantine (%d member decisions): %v\n", len(fromSend), fromSend)
	fmt.Printf("from its acknowledgement:                        %v\n", fromAck)
	return nil
}
