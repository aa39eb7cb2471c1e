package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz"
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
	var (
		file     string
		c        clientFlags
		dryRun   bool
		maxLines int
		since    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE [--dry-run [--max-lines N] [--since DURATION]]",
		Short: "Replace the cluster's topology document, or with --dry-run show what it would flip",
		Long: `Replace the topology document on every member. The document is checked
first, here and again by the cluster; if it has any problem, every problem is
listed and nothing changes. Runtime state (quarantine, risk, attestation) of
subjects that remain in the document is kept.

With --dry-run nothing is applied. The member --server names (it answers
itself; the request is not forwarded to the leader) re-decides the most recent
decisions of its own decision log against the document: the last --max-lines
lines (default 100000, at most 1000000), and with --since only those of that
last period. It decides with the policy its authorizer uses, its current
topology (which names the flow that allowed a recorded allow) and its current
runtime state of each subject (quarantine, risk, attestation), and prints what
would flip, allow to deny and deny to allow, by flow, by device and by
service, with example decision IDs, in the format of "vigil replay"; -o json
prints the member's answer with the replay report under "report". Each member
keeps its own log: ask the members whose decisions matter. The exit status is
0 whether or not anything would flip; the document's problems, if any, are
listed as for an apply (exit status 1).`,
		Example: `  vigil topology apply -f candidate.yaml --dry-run
  vigil topology apply -f candidate.yaml --dry-run --since 24h --server https://vigil-2.example:7070 -o json
  vigil topology apply -f candidate.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !dryRun && (cmd.Flags().Changed("max-lines") || cmd.Flags().Changed("since")) {
				return errors.New("--max-lines and --since go with --dry-run")
			}
			if dryRun && (maxLines < 1 || maxLines > api.MaxDryRunLines) {
				return fmt.Errorf("--max-lines %d: want 1 to %d", maxLines, api.MaxDryRunLines)
			}
			if since < 0 {
				return fmt.Errorf("--since %s: want a positive duration", since)
			}
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
			w := cmd.OutOrStdout()
			if dryRun {
				res, err := cl.DryRunTopology(cmd.Context(), data, api.DryRunOptions{MaxLines: maxLines, Since: since})
				if err != nil {
					return err
				}
				var rep authz.ReplayReport
				if err := json.Unmarshal(res.Report, &rep); err != nil {
					return fmt.Errorf("the dry run's report: %w", err)
				}
				return c.print(w, res, func(w io.Writer) { printDryRun(w, file, res, &rep) })
			}
			rev, err := cl.ApplyTopology(cmd.Context(), data)
			if err != nil {
				return err
			}
			return c.print(w, api.WriteResponse{Revision: rev}, func(w io.Writer) {
				fmt.Fprintf(w, "applied %s at revision %d\n", file, rev)
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the document (YAML or JSON; - for standard input)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "apply nothing: show which of the member's recent decisions the document would flip")
	cmd.Flags().IntVar(&maxLines, "max-lines", api.DefaultDryRunLines, "with --dry-run: how many of the most recent lines of the member's decision log to replay")
	cmd.Flags().DurationVar(&since, "since", 0, "with --dry-run: replay only the decisions of this last period, e.g. 24h (default: no bound but --max-lines)")
	c.register(cmd, true)
	return cmd
}

// printDryRun prints a dry run in the format of vigil replay, with what was
// replayed and that nothing was applied.
func printDryRun(w io.Writer, file string, res *api.DryRunResult, rep *authz.ReplayReport) {
	fmt.Fprintf(w, "dry run of %s on member %s: nothing was applied\n", file, res.Member)
	cur := res.Current
	if cur.DocumentRevision == 0 {
		fmt.Fprintf(w, "  current:   no document (revision %d)\n", cur.Revision)
	} else {
		fmt.Fprintf(w, "  current:   revision %d (document of revision %d): %s\n", cur.Revision, cur.DocumentRevision, docCounts(cur))
	}
	fmt.Fprintf(w, "  candidate: %s\n", docCounts(res.Candidate))
	lg := res.Log
	fmt.Fprintf(w, "  log:       %s: %d line(s)", lg.Path, lg.Lines)
	if lg.FirstSeq > 0 && lg.LastSeq > 0 {
		fmt.Fprintf(w, ", seq %d to %d", lg.FirstSeq, lg.LastSeq)
	}
	if !lg.From.IsZero() && !lg.To.IsZero() {
		fmt.Fprintf(w, ", %s to %s", lg.From.UTC().Format(time.RFC3339), lg.To.UTC().Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	switch lg.Older {
	case "":
		fmt.Fprintln(w, "             (the whole log)")
	case "max_lines":
		fmt.Fprintf(w, "             (older lines not replayed: --max-lines %d)\n", lg.MaxLines)
	case "max_bytes":
		fmt.Fprintln(w, "             (older lines not replayed: the member reads at most 1 GiB back from the end)")
	case "since":
		fmt.Fprintf(w, "             (lines before %s not replayed: --since)\n", lg.Since.UTC().Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "             (older lines not replayed: %s)\n", lg.Older)
	}
	fmt.Fprintln(w)
	printReplay(w, fmt.Sprintf("member %s's recent decisions", res.Member), file, rep)
	fmt.Fprintln(w, "\ndry run: nothing was applied")
}

func docCounts(d api.DryRunDocument) string {
	return fmt.Sprintf("%d zones, %d gateways, %d devices, %d services, %d flows", d.Zones, d.Gateways, d.Devices, d.Services, d.Flows)
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
