package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/examples"
	"github.com/vigil-iot/vigil/internal/fleetsim"
	"github.com/vigil-iot/vigil/node"
	"github.com/vigil-iot/vigil/topology"
)

func newDevCmd() *cobra.Command {
	var m memberFlags
	var keep, sim bool
	var attack string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run Vigil on this machine with the smart-city example loaded",
		Long: `Run a single Vigil member with the smart-city example topology applied,
and print what is listening and what to try next.

Without --data-dir the member lives in a fresh temporary directory that is
removed when it stops (unless --keep). With --data-dir an existing store is
reused and the example is only applied if the store holds no topology yet.

Once the example's devices have attested, a simulated fleet (vigil sim's)
acts as the example's gateways: every device sends what its flows allow
through the member's ext_authz and access log service, so the decision log,
the monitor's baselines and the console have traffic to show (--sim=false for
none). After a minute of it one device attacks (--attack, default
exfiltration; --attack=false for none) and the output says what the monitor
found, the quarantine and the incident.`,
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
			printDevBanner(out, n, &m.cfg, snap, keep || cmd.Flags().Changed("data-dir"), devConsoleLink(n))
			fmt.Fprintf(out, "Attestation: %d devices enrolled simulated TPMs and passed through the real path (challenge, quote, verification, Raft).\n", passed)
			for _, f := range failed {
				fmt.Fprintf(out, "  FAILED %s\n", f)
			}
			fmt.Fprintln(out, "Decisions, as a gateway's Envoy would ask for them:")
			showDecisions(ctx, out, n, snap)
			simDone := make(chan struct{})
			if sim {
				go func() {
					defer close(simDone)
					runDevSim(ctx, out, n, attack)
				}()
			} else {
				close(simDone)
			}
			fmt.Fprintln(out, "\nPress Ctrl-C to stop.")
			err = <-errc
			select {
			case <-simDone:
			case <-time.After(5 * time.Second):
			}
			return err
		},
	}
	m.register(cmd)
	m.cfg.ID = "dev"
	m.cfg.Authz.Addr = "127.0.0.1:9191"
	cmd.Flags().Lookup("authz-addr").DefValue = m.cfg.Authz.Addr
	m.cfg.XDS.Addr = "127.0.0.1:18000"
	cmd.Flags().Lookup("xds-addr").DefValue = m.cfg.XDS.Addr
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary data dir when stopping")
	cmd.Flags().BoolVar(&sim, "sim", true, "run a simulated fleet's traffic through the member (vigil sim)")
	cmd.Flags().StringVar(&attack, "attack", fleetsim.ScenarioExfiltration,
		"the attack the simulated fleet plays after a minute: "+strings.Join(fleetsim.Scenarios, ", ")+", or false for none")
	return cmd
}

// runDevSim runs the simulated fleet against the dev member until ctx
// ends: the example's devices (attested already) send their benign
// traffic, and after the warm-up one of them plays attack.
func runDevSim(ctx context.Context, w io.Writer, n *node.Node, attack string) {
	tokens, err := os.ReadFile(n.TokenFile())
	if err != nil {
		fmt.Fprintln(w, "fleet simulator:", err)
		return
	}
	tok, err := api.FirstToken(tokens)
	if err != nil {
		fmt.Fprintln(w, "fleet simulator:", err)
		return
	}
	cfg := fleetsim.Config{Server: n.APIAddr(), Token: tok, AuthzAddrs: []string{n.AuthzAddr()},
		XDSAddrs: []string{n.XDSAddr()}, KeepRunning: true, Seed: uint64(time.Now().UnixNano())}
	switch strings.ToLower(attack) {
	case "", "false", "none", "no", "off":
	default:
		cfg.Scenarios = []string{attack}
	}
	cfg.OnScenario = func(res fleetsim.ScenarioResult) { printDevAttack(w, res) }
	cfg.Out = errorLines{w}
	s, err := fleetsim.New(ctx, cfg)
	if err != nil {
		fmt.Fprintln(w, "fleet simulator:", err)
		return
	}
	gws := map[string]bool{}
	for _, d := range s.Fleet() {
		gws[d.Gateway] = true
	}
	fmt.Fprintf(w, "\nSimulated fleet: %d devices behind %d gateways send what their flows allow through ext_authz and\n"+
		"the access log service, as the gateways' Envoys would (go run ./cmd/vigil sim --help).\n", len(s.Fleet()), len(gws))
	if len(cfg.Scenarios) > 0 {
		fmt.Fprintf(w, "In about a minute one device attacks (%s); what the monitor does about it follows here.\n", cfg.Scenarios[0])
	}
	if _, err := s.Run(ctx); err != nil && ctx.Err() == nil {
		fmt.Fprintln(w, "fleet simulator:", err)
	}
}

// printDevAttack says what an attack did and how the member answered.
func printDevAttack(w io.Writer, r fleetsim.ScenarioResult) {
	fmt.Fprintf(w, "\nAttack (%s) by %s (%s behind %s)", r.Scenario, orDash(r.Target), r.Class, r.Gateway)
	if r.Detail != "" {
		fmt.Fprintf(w, ": %s", r.Detail)
	}
	fmt.Fprintln(w)
	if r.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", r.Error)
	}
	for _, f := range r.Findings {
		fmt.Fprintf(w, "  finding %s (%s, +%d): %s\n", f.Detector, f.Severity, f.Score, f.Summary)
	}
	switch r.Status {
	case fleetsim.StatusQuarantined:
		fmt.Fprintf(w, "  risk %d: quarantined %s after its first request (the monitor decided at %s)\n",
			r.Risk, time.Duration(r.QuarantineMS)*time.Millisecond, time.Duration(r.DecidedMS)*time.Millisecond)
	case fleetsim.StatusAwaiting:
		fmt.Fprintf(w, "  risk %d: restricted; the quarantine awaits approval (go run ./cmd/vigil incident approve %s)\n", r.Risk, r.Incident)
	default:
		fmt.Fprintf(w, "  risk %d: %s\n", r.Risk, r.Status)
	}
	if r.Target == "" {
		return
	}
	if r.Incident != "" {
		fmt.Fprintf(w, "  incident %s. Look:\n    go run ./cmd/vigil incident list\n    go run ./cmd/vigil incident show %s\n", r.Incident, r.Incident)
	} else {
		fmt.Fprintln(w, "  Look:")
	}
	fmt.Fprintf(w, "    go run ./cmd/vigil device get %s\n    go run ./cmd/vigil device release %s   (the device is back; its risk starts again)\n", r.Target, r.Target)
}

// errorLines passes on the simulator's error lines only (it writes each
// progress line at once).
type errorLines struct{ w io.Writer }

func (e errorLines) Write(p []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(p), "\n") {
		if strings.HasPrefix(line, "error: ") {
			fmt.Fprint(e.w, "fleet simulator "+line)
		}
	}
	return len(p), nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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

// devConsoleLink is a one-time login link to the dev member's console, or
// how to make one if that failed.
func devConsoleLink(n *node.Node) string {
	tokens, err := os.ReadFile(n.TokenFile())
	if err == nil {
		var tok, code string
		if tok, err = api.FirstToken(tokens); err == nil {
			if code, _, err = n.LoginLink(tok); err == nil {
				return "http://" + n.APIAddr() + "/ui/#code=" + code + "   (one-time login link, 10 min)"
			}
		}
	}
	return "http://" + n.APIAddr() + "/ui/   (sign in with a token of the token file: " + err.Error() + ")"
}

func printDevBanner(w io.Writer, n *node.Node, cfg *node.Config, snap *topology.Snapshot, kept bool, console string) {
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
  Console    %s
             another link: go run ./cmd/vigil console link --token-file %s
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
  go run ./cmd/vigil incident list
  go run ./cmd/vigil sim --attest=false --scenario scan   (another attack, by another device)
  go run ./cmd/vigil xds dump --node gw-north-1
  go run ./cmd/vigil topology validate -f examples/smart-city/topology.yaml

`, cfg.ID, console, n.TokenFile(), n.APIAddr(), n.TokenFile(), n.AuthzAddr(), policyName(cfg), n.XDSAddr(), n.Store().Addr(), cfg.DataDir, removed,
		snap.Revision(), ix.NumZones(), ix.NumGateways(), ix.NumDevices(), ix.NumServices(), ix.NumFlows(),
		n.TokenFile(), device, device, device)
}

func policyName(cfg *node.Config) string {
	if cfg.Authz.PolicyDir != "" {
		return cfg.Authz.PolicyDir
	}
	return "Vigil's default"
}
