package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/authz"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Check the authorizer's decision log"}
	cmd.AddCommand(newAuditVerifyCmd())
	return cmd
}

func newAuditVerifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify FILE",
		Short: "Check the hash chain of a decision log offline",
		Long: `Check the hash chain of a decision log file and print its head: the hash of
its last line. Every line vouches for the line before it, but nothing vouches
for the last one, so keep the head somewhere else (a ticket, another system's
log) and compare it on the next check to detect an edit of the last line.

Exits non-zero at the first edited, removed, reordered, inserted, invalid or
truncated line. A chain restart after a writer crashed mid-line is reported
but is not an error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			rep, err := authz.VerifyDecisionLog(f)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			out := cmd.OutOrStdout()
			for _, r := range rep.Restarts {
				fmt.Fprintf(out, "%s: line %d: chain restarted after a torn write (line %d, %d line(s) of torn bytes); decisions may be missing there\n",
					file, r.Line, r.TornLine, r.TornLines)
			}
			fmt.Fprintf(out, "%s: %d decisions, chain intact, head %s\n", file, rep.Entries, rep.Head)
			return nil
		},
	}
}
