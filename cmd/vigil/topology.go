package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/topology"
)

func newTopologyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "topology", Short: "Validate, apply and read the zone topology document"}
	cmd.AddCommand(newTopologyValidateCmd(), newTopologyApplyCmd(), newTopologyGetCmd())
	return cmd
}

func readInput(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("-f FILE is required (- reads standard input)")
	}
	if path == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(path)
}

func newTopologyValidateCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "validate -f FILE",
		Short: "Check a topology document offline and list every problem in it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := readInput(file)
			if err != nil {
				return err
			}
			ix, err := topology.Load(data)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is valid: %d zones, %d gateways, %d devices, %d services, %d flows\n",
				file, ix.NumZones(), ix.NumGateways(), ix.NumDevices(), ix.NumServices(), ix.NumFlows())
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the document (YAML or JSON; - for standard input)")
	return cmd
}

func newTopologyApplyCmd() *cobra.Command {
	var file string
	var c clientFlags
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Replace the cluster's topology document",
		Long: `Replace the topology document on every member. The document is checked
first, here and again by the cluster; if it has any problem, every problem is
listed and nothing changes. Runtime state (quarantine, risk, attestation) of
subjects that remain in the document is kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := readInput(file)
			if err != nil {
				return err
			}
			if _, err := topology.Load(data); err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			rev, err := cl.ApplyTopology(cmd.Context(), data)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "applied %s at revision %d\n", file, rev)
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the document (YAML or JSON; - for standard input)")
	c.register(cmd, false)
	return cmd
}

func newTopologyGetCmd() *cobra.Command {
	var c clientFlags
	cmd := &cobra.Command{
		Use:   "get",
		Short: "Print the topology document in force",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			if c.output == "json" {
				resp, err := cl.Topology(cmd.Context())
				if err != nil {
					return err
				}
				return c.print(cmd.OutOrStdout(), resp, nil)
			}
			if c.output != "yaml" {
				return fmt.Errorf("unknown output format %q (want yaml or json)", c.output)
			}
			data, err := cl.TopologyYAML(cmd.Context())
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	}
	c.register(cmd, true)
	// The document reads best as YAML; set the default without marking the
	// flag as given, so that VIGIL_OUTPUT still applies.
	c.output = "yaml"
	cmd.Flags().Lookup("output").DefValue = "yaml"
	cmd.Flags().Lookup("output").Usage = "output format: yaml or json"
	return cmd
}
