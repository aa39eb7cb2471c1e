package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
)

func newConsoleCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "console", Short: "The web console every member serves at /ui/",
		Long: `Every member serves a web console at /ui/ on its API address: the topology by
zone, gateway and device (searched and paginated on the server), a live stream
of decisions, quarantine and release, incidents, proxies and the cluster.
Sign in with an API token, or with a one-time login link.`}
	var cf clientFlags
	link := &cobra.Command{
		Use:   "link",
		Short: "Print a one-time login link to the console",
		Long: `Print a one-time login link to the console of the member --server names.

The link signs the browser in with the token this command used (so it grants
no more than that token), works once, expires after 10 minutes and only at
the member that made it: open it in a browser that reaches --server. The code
is in the URL's fragment, which browsers do not send to servers or proxies.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			l, err := cl.ConsoleLink(cmd.Context())
			if err != nil {
				return err
			}
			url := cl.Addr() + l.Path
			return cf.print(cmd.OutOrStdout(), map[string]any{"url": url, "expiresAt": l.ExpiresAt}, func(w io.Writer) {
				fmt.Fprintf(w, "%s\n(one use, expires %s, in %s)\n", url, l.ExpiresAt.Local().Format(time.RFC3339), time.Until(l.ExpiresAt).Round(time.Second))
			})
		},
	}
	cf.register(link, true)
	cmd.AddCommand(link)
	return cmd
}
