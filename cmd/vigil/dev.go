package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/examples"
	"github.com/vigil-iot/vigil/node"
	"github.com/vigil-iot/vigil/topology"
)

func newDevCmd() *cobra.Command {
	var m memberFlags
	var keep bool
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run Vigil on this machine with the smart-city example loaded",
		Long: `Run a single Vigil member with the smart-city example topology applied,
and print what is listening and what to try next.

Without --data-dir the member lives in a fresh temporary directory that is
removed when it stops (unless --keep). With --data-dir an existing store is
reused and the example is only applied if the store holds no topology yet.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := m.setLogger(); err != nil {
				return err
			}
			if !cmd.Flags().Changed("data-dir") {
				dir, err := os.MkdirTemp("", "vigil-dev-")
				if err != nil {
					return err
				}
				m.cfg.DataDir = dir
				if !keep {
					defer os.RemoveAll(dir)
				}
			}
			n, err := node.Start(m.cfg)
			if err != nil {
				return err
			}
			ctx, stop := signalContext()
			defer stop()
			errc := make(chan error, 1)
			go func() { errc <- n.Run(ctx) }()
			snap, err := loadExample(ctx, n)
			if err != nil {
				stop()
				<-errc
				return err
			}
			passed, failed, err := attestExample(ctx, n, snap)
			if err != nil {
				stop()
				<-errc
				return fmt.Errorf("attesting the example's devices: %w", err)
			}
			snap = n.Store().Current()
			out := cmd.OutOrStdout()
			printDevBanner(out, n, &m.cfg, snap, keep || cmd.Flags().Changed("data-dir"))
			fmt.Fprintf(out, "Attestation: %d devices enrolled simulated TPMs and passed through the real path (challenge, quote, verification, Raft).\n", passed)
			for _, f := range failed {
				fmt.Fprintf(out, "  FAILED %s\n", f)
			}
			fmt.Fprintln(out, "Decisions, as a gateway's Envoy would ask for them:")
			showDecisions(ctx, out, n, snap)
			fmt.Fprintln(out, "\nPress Ctrl-C to stop.")
			return <-errc
		},
	}
	m.register(cmd)
	m.cfg.ID = "dev"
	m.cfg.Authz.Addr = "127.0.0.1:9191"
	cmd.Flags().Lookup("authz-addr").DefValue = m.cfg.Authz.Addr
	m.cfg.XDS.Addr = "127.0.0.1:18000"
	cmd.Flags().Lookup("xds-addr").DefValue = m.cfg.XDS.Addr
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary data dir when stopping")
	return cmd
}

// loadExample waits for the member to lead, then applies the smart-city
// example unless a topology is already in force.
func loadExample(ctx context.Context, n *node.Node) (*topology.Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s := n.Store()
	for !s.IsLeader() {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dev member did not become leader: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if cur := s.Current(); cur.HasDocument() {
		return cur, nil
	}
	ix, err := topology.Load(examples.SmartCity)
	if err != nil {
		return nil, fmt.Errorf("embedded example: %w", err)
	}
	rev, err := s.ReplaceDocument(ctx, ix)
	if err != nil {
		return nil, err
	}
	return s.WaitFor(ctx, rev)
}

func printDevBanner(w io.Writer, n *node.Node, cfg *node.Config, snap *topology.Snapshot, kept bool) {
	ix := snap.Index()
	device := "slc-n1-001"
	if ds := ix.Devices(); len(ds) > 0 {
		device = ds[0].Name
	}
	removed := "removed when vigil stops"
	if kept {
		removed = "kept"
	}
	fmt.Fprintf(w, `
Vigil dev member %q is running.
  HTTP API   http://%s   (bearer tokens in %s)
  ext_authz  %s   (gRPC envoy.service.auth.v3.Authorization, policy: %s)
  xDS        %s   (ADS for the gateways' Envoy: vigil envoy bootstrap --node gw-north-1)
  Raft       %s
  Data dir   %s (%s)
  Topology   smart-city example at revision %d: %d zones, %d gateways, %d devices, %d services, %d flows

Try, in another terminal:
  export VIGIL_TOKEN_FILE=%s
  go run ./cmd/vigil topology get
  go run ./cmd/vigil device get %s
  go run ./cmd/vigil device get `+devTampered+`           (its evidence failed: firmware not released)
  go run ./cmd/vigil device quarantine %s --reason "tamper switch opened"
  go run ./cmd/vigil device release %s
  go run ./cmd/vigil cluster status
  go run ./cmd/vigil xds dump --node gw-north-1
  go run ./cmd/vigil topology validate -f examples/smart-city/topology.yaml

`, cfg.ID, n.APIAddr(), n.TokenFile(), n.AuthzAddr(), policyName(cfg), n.XDSAddr(), n.Store().Addr(), cfg.DataDir, removed,
		snap.Revision(), ix.NumZones(), ix.NumGateways(), ix.NumDevices(), ix.NumServices(), ix.NumFlows(),
		n.TokenFile(), device, device, device)
}

func policyName(cfg *node.Config) string {
	if cfg.Authz.PolicyDir != "" {
		return cfg.Authz.PolicyDir
	}
	return "Vigil's default"
}
