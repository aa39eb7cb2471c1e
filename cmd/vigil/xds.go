package main

import (
	"github.com/spf13/cobra"
)

func newXDSCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "xds", Short: "Inspect the Envoy configuration Vigil serves"}
	var c clientFlags
	var node string
	dump := &cobra.Command{
		Use:   "dump --node NAME",
		Short: "Print, as YAML, the listeners, routes, clusters and endpoints a node receives",
		Long: `Print exactly what the member at --server sends the proxy whose node.id is
NAME: a gateway gets its zone's least-privilege configuration; an unknown
node gets the deny-all configuration every unknown proxy gets.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			data, err := cl.XDSDump(cmd.Context(), node)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	}
	c.register(dump, false)
	dump.Flags().StringVar(&node, "node", "", "the proxy's node.id (a gateway's name)")
	dump.MarkFlagRequired("node")
	cmd.AddCommand(dump)
	return cmd
}
