package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/xds"
)

func newProxyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "proxy", Short: "See the proxies connected for xDS"}
	var c clientFlags
	status := &cobra.Command{
		Use:   "status",
		Short: "Show each proxy connected to the member at --server: zone, versions sent and ACKed per type, last NACK",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			raw, err := cl.Proxies(cmd.Context())
			if err != nil {
				return err
			}
			// Re-read the generic answer into the server's own types.
			data, _ := json.Marshal(raw["proxies"])
			var proxies []xds.ProxyStatus
			if err := json.Unmarshal(data, &proxies); err != nil {
				return fmt.Errorf("proxy status: %w", err)
			}
			return c.print(cmd.OutOrStdout(), raw, func(w io.Writer) { printProxies(w, fmt.Sprint(raw["member"]), proxies) })
		},
	}
	c.register(status, true)
	cmd.AddCommand(status)
	return cmd
}

func printProxies(w io.Writer, member string, proxies []xds.ProxyStatus) {
	if len(proxies) == 0 {
		fmt.Fprintf(w, "no proxy has connected to member %s\n", member)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintf(tw, "NODE\tZONE\tMEMBER\tCONNECTED\tPEER\tTYPE\tSENT\tACKED\tLAST NACK\n")
	for _, p := range proxies {
		connected := "no"
		if p.Connected {
			connected = "since " + p.ConnectedSince.Format("15:04:05")
		}
		if p.DenyAll {
			connected += " (deny-all: unknown node, or not its identity)"
		}
		for i, t := range p.Types {
			node, zone, peer := p.NodeID, p.Cluster, p.Peer
			if p.Identity != "" {
				peer += " " + p.Identity
			}
			if p.Proxyless {
				node += " (gRPC)"
			}
			if i > 0 {
				node, zone, peer, connected = "", "", "", ""
			}
			nack := ""
			if t.Nack != nil {
				nack = fmt.Sprintf("%s: %s", t.Nack.Version, t.Nack.Message)
			}
			typ := t.TypeURL[strings.LastIndex(t.TypeURL, ".")+1:]
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", node, zone, member, connected, peer, typ, t.Sent, t.Acked, nack)
		}
	}
}
