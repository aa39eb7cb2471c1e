package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newClusterCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Inspect and change cluster membership"}

	var c clientFlags
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the leader, every member, and the revision each has applied",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			st, err := cl.ClusterStatus(cmd.Context())
			if err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), st, func(w io.Writer) {
				fmt.Fprintf(w, "leader %s, term %d, answered by %s at revision %d\n\n", orNone(st.LeaderID), st.Term, st.AnsweredBy, st.Revision)
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tROLE\tSTATE\tRAFT\tAPI\tREVISION\tAPPLIED INDEX\tNOTE")
				for _, m := range st.Members {
					role := "voter"
					if !m.Voter {
						role = "nonvoter"
					}
					if m.Leader {
						role += " (leader)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", m.ID, role, orNone(m.State), m.RaftAddr, orNone(m.APIAddr),
						m.Revision, m.AppliedIndex, m.Error)
				}
				tw.Flush()
			})
		},
	}
	c.register(status, true)

	var rc clientFlags
	remove := &cobra.Command{
		Use:   "remove-member ID",
		Short: "Remove a member from the cluster for good",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := rc.client()
			if err != nil {
				return err
			}
			if err := cl.RemoveMember(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "member %s removed\n", args[0])
			return nil
		},
	}
	rc.register(remove, false)

	var sc clientFlags
	snapshot := &cobra.Command{
		Use:   "snapshot",
		Short: "Make the member at --server write a raft snapshot and compact its log",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := sc.client()
			if err != nil {
				return err
			}
			rev, err := cl.Snapshot(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "snapshot taken at revision %d\n", rev)
			return nil
		},
	}
	sc.register(snapshot, false)
	cmd.AddCommand(status, remove, snapshot)
	return cmd
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
