package main

import (
	"github.com/spf13/cobra"
)

func newXDSCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "xds", Short: "Inspect the Envoy configuration Vigil serves"}
	var c clientFlags
	var node, cluster string
	var proxyless bool
	dump := &cobra.Command{
		Use:   "dump --node NAME [--cluster ZONE] [--proxyless]",
		Short: "Print, as YAML, the listeners, routes, clusters and endpoints a node receives",
		Long: `Print exactly what the member at --server sends the proxy whose node.id is
NAME and node.cluster is ZONE: a gateway gets its zone's least-privilege
configuration (ZONE may be left out), a cloud edge (any name, ZONE its zone)
the inbound listeners of the zone's fronted services, a proxyless gRPC
gateway or service (--proxyless) its client and server configuration; an
unknown node gets the deny-all configuration every unknown proxy gets.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			data, err := cl.XDSDump(cmd.Context(), node, cluster, proxyless)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	}
	c.register(dump, false)
	dump.Flags().StringVar(&node, "node", "", "the proxy's node.id (a gateway's, service's or cloud edge's name)")
	dump.Flags().StringVar(&cluster, "cluster", "", "the proxy's node.cluster (its zone; required for a cloud edge)")
	dump.Flags().BoolVar(&proxyless, "proxyless", false, "dump what a gRPC library (not Envoy) receives")
	dump.MarkFlagRequired("node")
	cmd.AddCommand(dump)
	return cmd
}
