// Command vigil is the Vigil control plane: one binary that runs a member
// (serve, dev) and talks to one (topology, device, gateway, cluster). It
// holds flags and wiring only; the work is done by the packages it imports.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		var quiet errExit
		if errors.As(err, &quiet) {
			os.Exit(quiet.code) // the command has said why
		}
		var apiErr *api.Error
		if errors.As(err, &apiErr) {
			fmt.Fprintln(os.Stderr, "error:", apiErr.Message)
			for _, fe := range apiErr.Errors {
				fmt.Fprintln(os.Stderr, "  "+fe.Error())
			}
		} else {
			fmt.Fprintln(os.Stderr, "error:", err)
		}
		os.Exit(1)
	}
}

// errExit ends the command with an exit code and no further message: the
// command printed its outcome (a failed attestation) already.
type errExit struct{ code int }

func (e errExit) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "vigil",
		Short: "Vigil: a zero-trust policy control plane for IoT fleets",
		Long: `Vigil holds the zone topology of an IoT fleet (zones, gateways, devices,
services and the flows allowed between them) and every device's runtime state
in a Raft-replicated store, and serves it to the proxies and authorizers that
enforce it.

Run a member with "vigil serve" (or everything on one machine with "vigil dev");
the other commands talk to a member's API at --server (env VIGIL_SERVER).
Every flag can also be set as a VIGIL_* environment variable, e.g.
VIGIL_DATA_DIR for --data-dir; flags win over the environment, which wins over
a --config file.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return layerSettings(cmd)
		},
	}
	root.AddCommand(newServeCmd(), newDevCmd(), newTopologyCmd(), newSubjectCmd("device"), newSubjectCmd("gateway"),
		newClusterCmd(), newPolicyCmd(), newAuditCmd(), newEnvoyCmd(), newGRPCCmd(), newXDSCmd(), newProxyCmd(), newSPIRECmd(), newAttestCmd(), newIncidentCmd(), newSimCmd(), newVersionCmd())
	root.AddCommand(newReplayCmd(), newConsoleCmd())
	return root
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "vigil", version) },
	}
}
