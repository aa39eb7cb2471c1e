package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/node"
	"github.com/vigil-iot/vigil/topology"
)

// TestGatewaySignal: "vigil gateway signal" with gw-1's SVID reports
// tamper for its device, which gets quarantined; about another gateway's
// device it is refused.
func TestGatewaySignal(t *testing.T) {
	ca := spiffetest.NewCA(t, "city.example")
	dir := t.TempDir()
	mcert, mkey, bundle := ca.Write(t, ca.Issue(t, topology.NodeSPIFFEID("city.example", "n1"), "127.0.0.1"), dir, "n1")
	gcert, gkey, _ := ca.Write(t, ca.Issue(t, "spiffe://city.example/zone/north/gateway/gw-1"), dir, "gw-1")
	cfg := node.DefaultConfig()
	cfg.ID, cfg.DataDir = "n1", filepath.Join(dir, "data")
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.ProxyTLS = node.ProxyTLS{CertFile: mcert, KeyFile: mkey, CAFile: bundle}
	n, err := node.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testwait.For(t, 10*time.Second, "the member to be ready", n.Ready)
	tokens, _ := os.ReadFile(n.TokenFile())
	tok, _ := api.FirstToken(tokens)
	doc := `apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}]
gateways: [{name: gw-1, zone: north}, {name: gw-2, zone: north}]
deviceClasses: [{name: sensor}]
devices: [{name: sen-1, class: sensor, gateway: gw-1}, {name: sen-9, class: sensor, gateway: gw-2}]
`
	if _, err := api.NewClient(n.APIAddr(), tok).ApplyTopology(ctx, []byte(doc)); err != nil {
		t.Fatal(err)
	}

	args := func(sub string) []string {
		return []string{"gateway", "signal", sub, "--signal", "tamper", "--detail", "lid open",
			"--vigil", n.AuthzAddr(), "--cert", gcert, "--key", gkey, "--ca", bundle}
	}
	out, err := runVigil(args("sen-1")...)
	if err != nil || !strings.Contains(out, "signal tamper about device/sen-1 accepted; judged by member n1") {
		t.Fatalf("vigil gateway signal sen-1: %v\n%s", err, out)
	}
	testwait.For(t, 20*time.Second, "sen-1 to be quarantined", func() bool {
		return n.Store().Current().Quarantined(topology.DeviceSubject("sen-1"))
	})
	if out, err := runVigil(args("sen-9")...); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("vigil gateway signal sen-9: %v\n%s", err, out)
	}
	if out, err := runVigil(args("service/x")...); err == nil || !strings.Contains(err.Error(), "subject must be") {
		t.Fatalf("vigil gateway signal service/x: %v\n%s", err, out)
	}
}
