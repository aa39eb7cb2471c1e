package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/xds"
)

func newGRPCCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "grpc", Short: "Configure proxyless gRPC clients and servers (grpc-go's xDS support)"}
	var c clientFlags
	var node string
	var xdsAddrs []string
	var certs xds.GRPCCerts
	bootstrap := &cobra.Command{
		Use:   "bootstrap --node NAME --cert FILE --key FILE --ca FILE [--xds-server HOST:PORT ...]",
		Short: "Print the xDS bootstrap of a proxyless gRPC gateway or service",
		Long: `Print the bootstrap (JSON) a grpc-go program reads from the file named by
GRPC_XDS_BOOTSTRAP, which must be set before the program starts. The program
then dials xds:///<service host> and gets the routes, clusters and endpoints
its flows allow from Vigil; an xDS-enabled server (grpc/xds NewGRPCServer)
gets listeners whose RBAC admits only the flows' callers.

NAME is a gateway or a service of the topology at --server (which gives its
zone). Certificates come from the files given, through grpc-go's file_watcher
certificate provider: the workload's SVID chain, its key and the trust
domain's CA bundle (spiffe-helper keeps them fresh from a SPIRE agent).
Paths must be absolute.

With --xds-tls the program reaches Vigil over mutual TLS with the same files,
as members started with --proxy-tls-cert require. grpc-go checks a member's
certificate against the host in --xds-server, so that certificate must carry
that DNS name or IP address.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			sub, err := cl.Subject(cmd.Context(), topology.KindGateway, node)
			var apiErr *api.Error
			if errors.As(err, &apiErr) && apiErr.Status == 404 {
				sub, err = cl.Subject(cmd.Context(), topology.KindService, node)
				if errors.As(err, &apiErr) && apiErr.Status == 404 {
					return fmt.Errorf("%q names no gateway or service of the topology", node)
				}
			}
			if err != nil {
				return err
			}
			for _, f := range []*string{&certs.CertFile, &certs.KeyFile, &certs.CAFile} {
				if *f != "" {
					if *f, err = filepath.Abs(*f); err != nil {
						return err
					}
				}
			}
			b, err := xds.GRPCBootstrap(xds.Node{ID: sub.Name, Cluster: sub.Zone}, xdsAddrs, certs)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return err
		},
	}
	c.register(bootstrap, false)
	f := bootstrap.Flags()
	f.StringVar(&node, "node", "", "the gateway or service the program runs as (its xDS node.id)")
	f.StringSliceVar(&xdsAddrs, "xds-server", []string{"127.0.0.1:18000"}, "xDS addresses of Vigil members (repeat or comma-separate)")
	f.StringVar(&certs.CertFile, "cert", "", "PEM certificate chain of the node's SVID")
	f.StringVar(&certs.KeyFile, "key", "", "PEM private key of the node's SVID")
	f.StringVar(&certs.CAFile, "ca", "", "PEM CA bundle of the trust domain")
	f.DurationVar(&certs.Refresh, "refresh", 0, "how often grpc-go rereads the certificate files (default 10m)")
	f.BoolVar(&certs.XDSTLS, "xds-tls", false, "reach Vigil over mutual TLS with these files (members started with --proxy-tls-cert)")
	for _, name := range []string{"node", "cert", "key", "ca"} {
		bootstrap.MarkFlagRequired(name)
	}
	cmd.AddCommand(bootstrap)
	return cmd
}
