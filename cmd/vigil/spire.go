package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vigil-iot/vigil/node"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/topology"
)

// registerSPIREFlags adds the SPIRE integration's flags to a command that
// runs a member.
func registerSPIREFlags(f *pflag.FlagSet, c *node.SPIREConfig) {
	d := spire.DefaultOptions()
	c.Options = d
	f.StringVar(&c.Socket, "spire-socket", "", "the SPIRE server's API unix socket; turns the SPIRE integration on (entries from the topology, bans on quarantine, join tokens)")
	f.StringVar(&c.Options.Owner, "spire-owner", d.Owner, "marks the SPIRE entries this cluster owns (their hint and entry ID prefix); clusters sharing a SPIRE server need different owners")
	f.DurationVar(&c.Options.DeviceTTL, "spire-device-ttl", d.DeviceTTL, "X509-SVID lifetime of devices: how long a quarantined device's last SVID stays valid (ext_authz and RBAC deny it at once)")
	f.DurationVar(&c.Options.GatewayTTL, "spire-gateway-ttl", d.GatewayTTL, "X509-SVID lifetime of gateways")
	f.DurationVar(&c.Options.ServiceTTL, "spire-service-ttl", d.ServiceTTL, "X509-SVID lifetime of services")
	f.StringSliceVar(&c.Options.GatewaySelectors, "spire-gateway-selector", nil,
		"workload selector (type:value, repeatable) of the processes on a gateway that hold its identity, its Envoy and device bridge, e.g. unix:uid:101; a gateway's label "+spire.SelectorsLabel+" overrides it")
	f.StringSliceVar(&c.Options.DeviceAgentSelectors, "spire-device-agent-selector", nil,
		"the same for devices of identity: agent classes, on the device's own agent")
	f.DurationVar(&c.Resync, "spire-resync", 5*time.Minute, "how often the leader compares the whole SPIRE server with the topology without a change")
	f.IntVar(&c.Parallel, "spire-parallel", 1, "entry batches in flight at once; more helps a SPIRE server on PostgreSQL or MySQL, not one on sqlite3")
	f.StringVar(&c.TPMTokenFile, "spire-tpm-token-file", "",
		"tokens (\"name:token\" per line, mode 0600, as --token-file) of the "+spire.TPMAttestor+" node attestor's server plugin in the SPIRE server: "+
			"they reach only POST /v1/spire/tpm/challenge and /v1/spire/tpm/attest (operators' tokens reach those too); every member needs the same file, "+
			"for attestations are forwarded to the leader with their token")
}

// newAgentCmds builds "vigil gateway token|list" and "vigil device token|list".
func newAgentCmds(kind topology.Kind) []*cobra.Command {
	var tFlags clientFlags
	var ttl time.Duration
	var bundleOut string
	token := &cobra.Command{
		Use:   "token NAME [--ttl 1h]",
		Short: "Issue a one-time SPIRE join token bound to a " + kind.String() + "'s identity",
		Long: `Issue a one-time SPIRE join token. The SPIRE agent that attests with it (spire-agent run
-joinToken TOKEN) is bound to the ` + kind.String() + `: entries parented to its SPIFFE ID are the
agent's to serve, and the processes matching --spire-gateway-selector get its SVID.
A device needs a class with "identity: agent". The leader issues it; any member forwards.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := tFlags.client()
			if err != nil {
				return err
			}
			var tok spire.Token
			if err := cl.JoinToken(cmd.Context(), kind, args[0], ttl, &tok); err != nil {
				return err
			}
			if bundleOut != "" {
				if err := os.WriteFile(bundleOut, []byte(tok.Bundle), 0o644); err != nil {
					return fmt.Errorf("--bundle-out: %w", err)
				}
			}
			return tFlags.print(cmd.OutOrStdout(), &tok, func(w io.Writer) { printToken(w, &tok, bundleOut) })
		},
	}
	tFlags.register(token, true)
	token.Flags().DurationVar(&ttl, "ttl", spire.DefaultTokenTTL, fmt.Sprintf("how long the token may be used (1m to %v)", spire.MaxTokenTTL))
	token.Flags().StringVar(&bundleOut, "bundle-out", "", "write the SPIRE server's CA bundle (the agent's trust_bundle_path) to this file")

	var lFlags clientFlags
	what := "gateway"
	if kind == topology.KindDevice {
		what = `device of an "identity: agent" class`
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "Show each " + what + " with its SPIRE agents: attested or not, attestation type, SVID expiry, banned",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := lFlags.client()
			if err != nil {
				return err
			}
			var out []spire.SubjectAgents
			if err := cl.SPIREAgents(cmd.Context(), kind, &out); err != nil {
				return err
			}
			return lFlags.print(cmd.OutOrStdout(), out, func(w io.Writer) { printAgents(w, kind, out) })
		},
	}
	lFlags.register(list, true)
	if kind == topology.KindGateway {
		return []*cobra.Command{token, list, newBridgeCmd()}
	}
	return []*cobra.Command{token, list}
}

// newBridgeCmd builds "vigil gateway bridge".
func newBridgeCmd() *cobra.Command {
	var b spire.Bridge
	var devicesFile string
	var att bridgeAttestFlags
	cmd := &cobra.Command{
		Use:   "bridge --admin-socket PATH --devices-file FILE --out DIR",
		Short: "On a gateway: keep its devices' SVIDs in files, from its SPIRE agent's Delegated Identity API",
		Long: `Run on a gateway, as a process matching --spire-gateway-selector (it must
hold the gateway's SVID, which the agent's authorized_delegates names). For each
device named in --devices-file (one name per line, # comments; re-read every
--resync) it keeps

  DIR/<device>/svid.pem, DIR/<device>/svid.key (0600)   and   DIR/bundle.pem

equal to what the agent serves, replaced atomically on every rotation. The
agent serves only devices of this gateway that hold an identity: a device whose
identity is taken away (quarantined, removed from the topology, or not this
gateway's) has no directory, and loses it as soon as the agent stops serving
its SVID. Carrying the files to the devices is up to the gateway.

With --evidence-cmd it also keeps the devices attested: for each device, every
--attest-every (jittered), it asks the member at --vigil for a nonce over mutual
TLS with the gateway's SVID (from --workload-socket), runs the command with the
device name and the nonce appended, and submits the evidence JSON it prints. A
gateway may attest only its own devices.

The bridge needs no Vigil API token: a gateway must never hold one. Write the
devices file when the gateway is provisioned (vigil gateway get NAME shows its
device count; vigil topology get -o json lists them). Runs until interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b.Devices = func(context.Context) ([]string, error) { return readDevicesFile(devicesFile) }
			if _, err := b.Devices(cmd.Context()); err != nil {
				return err
			}
			b.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			ctx, stop := signalContext()
			defer stop()
			errc := make(chan error, 2)
			go func() { errc <- b.Run(ctx) }()
			go func() { errc <- att.run(ctx, b.Devices, b.Logger) }()
			err := <-errc
			if err == nil {
				return <-errc
			}
			stop()
			<-errc
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&b.AdminSocket, "admin-socket", "", "the gateway's SPIRE agent admin socket (Delegated Identity API)")
	f.StringVar(&devicesFile, "devices-file", "", "the gateway's devices, one name per line")
	f.StringVar(&b.Dir, "out", "", "directory for the devices' SVID files (created 0700)")
	f.DurationVar(&b.Resync, "resync", 30*time.Second, "how often the devices file is re-read")
	att.register(cmd)
	for _, name := range []string{"admin-socket", "devices-file", "out"} {
		cmd.MarkFlagRequired(name)
	}
	return cmd
}

// readDevicesFile reads device names, one per line; blank lines and
// # comments are skipped, and a line that is no device name is an error.
func readDevicesFile(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("devices file: %w", err)
	}
	var out []string
	for i, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		if !topology.IsName(line) {
			return nil, fmt.Errorf("devices file %s:%d: %q is not a device name (a lowercase DNS label)", path, i+1, line)
		}
		out = append(out, line)
	}
	return out, nil
}

func printToken(w io.Writer, t *spire.Token, bundleOut string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Token\t%s\n", t.Token)
	fmt.Fprintf(tw, "Expires\t%s\n", t.ExpiresAt.Format(time.RFC3339))
	fmt.Fprintf(tw, "Identity\t%s\n", t.SPIFFEID)
	fmt.Fprintf(tw, "Agent ID\t%s\n", t.AgentID)
	if bundleOut != "" {
		fmt.Fprintf(tw, "CA bundle\t%s\n", bundleOut)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nOn the %s: spire-agent run -config agent.conf -joinToken %s\n", t.Subject.Kind, t.Token)
	fmt.Fprintln(w, "(trust_domain", t.TrustDomain+"; the token works once)")
}

func printAgents(w io.Writer, kind topology.Kind, list []spire.SubjectAgents) {
	if len(list) == 0 {
		fmt.Fprintf(w, "no %s can run an agent of its own\n", kind)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintf(tw, "%s\tQUARANTINED\tAGENT\tATTESTED\tTYPE\tSVID EXPIRES\tBANNED\n", map[topology.Kind]string{topology.KindGateway: "GATEWAY", topology.KindDevice: "DEVICE"}[kind])
	yes := map[bool]string{true: "yes", false: "no"}
	for _, s := range list {
		if len(s.Agents) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\tno\t-\t-\t-\n", s.Subject.Name, yes[s.Quarantined])
		}
		for _, a := range s.Agents {
			typ, expires, banned := "-", "-", "-"
			if a.Agent != nil {
				typ, banned = a.Agent.AttestationType, yes[a.Agent.Banned]
				if !a.Agent.ExpiresAt.IsZero() {
					expires = a.Agent.ExpiresAt.Format(time.RFC3339)
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Subject.Name, yes[s.Quarantined], a.AgentID, yes[a.Attested], typ, expires, banned)
		}
	}
}

// newSPIRECmd builds "vigil spire status".
func newSPIRECmd() *cobra.Command {
	cmd := &cobra.Command{Use: "spire", Short: "See the SPIRE integration"}
	var c clientFlags
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the SPIRE reconciler of the member at --server: whether it leads, its last passes and their errors",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			out, err := cl.SPIREStatus(cmd.Context())
			if err != nil {
				return err
			}
			if c.output == "table" || c.output == "" {
				c.output = "yaml"
			}
			return c.print(cmd.OutOrStdout(), out, nil)
		},
	}
	c.register(status, true)
	cmd.AddCommand(status)
	return cmd
}
