package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/topology"
)

func newIncidentCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "incident", Short: "List and decide the monitor's incidents",
		Long: `Incidents are what the monitor's playbook opened for a device or gateway whose
risk reached its class's quarantineAt: the findings behind it, its risk over
time and every action taken (quarantine, evidence, alert, owner notification),
with its outcome. They are replicated: every member shows the same ones.

Statuses: open (actions taken), awaiting (the class's response mode is
approve: the device is restricted and waits for "vigil incident approve"),
acknowledged, resolved. Resolving an incident does not release the device:
"vigil device release" does.`}

	var lf clientFlags
	var status string
	list := &cobra.Command{
		Use:   "list",
		Short: "List incidents, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := lf.client()
			if err != nil {
				return err
			}
			incs, err := cl.Incidents(cmd.Context(), status)
			if err != nil {
				return err
			}
			if incs == nil {
				incs = []topology.Incident{}
			}
			return lf.print(cmd.OutOrStdout(), incs, func(w io.Writer) {
				if len(incs) == 0 {
					fmt.Fprintln(w, "no incidents")
					return
				}
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSUBJECT\tSTATUS\tRISK\tOPENED\tACTIONS\tTITLE")
				for _, inc := range incs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", inc.ID, inc.Subject, inc.Status, inc.Risk,
						inc.OpenedAt.Local().Format(time.DateTime), actionSummary(inc.Actions), inc.Title)
				}
				tw.Flush()
			})
		},
	}
	lf.register(list, true)
	list.Flags().StringVar(&status, "status", "", "only incidents with this status (open, awaiting, acknowledged, resolved)")

	var sf clientFlags
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show an incident: its findings, risk timeline and actions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := sf.client()
			if err != nil {
				return err
			}
			inc, err := cl.Incident(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return sf.print(cmd.OutOrStdout(), inc, func(w io.Writer) { printIncident(w, inc) })
		},
	}
	sf.register(show, true)

	cmd.AddCommand(list, show)
	for _, verb := range []struct{ name, short string }{
		{"ack", "Acknowledge an incident: someone is on it"},
		{"approve", "Approve the quarantine an incident awaits (response mode approve)"},
		{"resolve", "Resolve an incident (the device stays quarantined until released)"},
	} {
		var f clientFlags
		var note string
		c := &cobra.Command{
			Use:   verb.name + " ID",
			Short: verb.short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				cl, err := f.client()
				if err != nil {
					return err
				}
				inc, err := cl.DecideIncident(cmd.Context(), args[0], verb.name, note)
				if err != nil {
					return err
				}
				return f.print(cmd.OutOrStdout(), inc, func(w io.Writer) {
					fmt.Fprintf(w, "incident %s is %s\n", inc.ID, inc.Status)
				})
			},
		}
		f.register(c, true)
		c.Flags().StringVar(&note, "note", "", "a note recorded with the action")
		cmd.AddCommand(c)
	}

	var ef clientFlags
	var dir string
	export := &cobra.Command{
		Use:   "export ID [--dir DIR]",
		Short: "Write an incident and its sealed evidence bundle to files",
		Long: `Writes DIR/ID.json (the incident) and DIR/ID.evidence.log (the evidence
bundle: the device's decisions and access logs of the last 24 hours from
every member, hash-chained and sealed). Check the bundle with
"vigil audit verify DIR/ID.evidence.log"; its head hash is recorded in the
incident's evidence action.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := ef.client()
			if err != nil {
				return err
			}
			ex, err := cl.ExportIncident(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			inc, _ := json.MarshalIndent(ex.Incident, "", "  ")
			incPath := filepath.Join(dir, ex.Incident.ID+".json")
			if err := os.WriteFile(incPath, append(inc, '\n'), 0o600); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "incident:", incPath)
			if ex.Evidence == "" {
				return fmt.Errorf("no evidence bundle: %s", ex.EvidenceError)
			}
			evPath := filepath.Join(dir, ex.Incident.ID+".evidence.log")
			if err := os.WriteFile(evPath, []byte(ex.Evidence), 0o600); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "evidence:", evPath, "(check it with: vigil audit verify "+evPath+")")
			return nil
		},
	}
	ef.register(export, false)
	export.Flags().StringVar(&dir, "dir", ".", "directory to write the files to")
	cmd.AddCommand(export)
	return cmd
}

func actionSummary(as []topology.Action) string {
	parts := make([]string, 0, len(as))
	for _, a := range as {
		parts = append(parts, a.Name+":"+a.Outcome)
	}
	return strings.Join(parts, ",")
}

func printIncident(w io.Writer, inc *topology.Incident) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Incident\t%s\n", inc.ID)
	fmt.Fprintf(tw, "Subject\t%s\n", inc.Subject)
	fmt.Fprintf(tw, "Status\t%s (mode %s)\n", inc.Status, inc.Mode)
	fmt.Fprintf(tw, "Title\t%s\n", inc.Title)
	fmt.Fprintf(tw, "Opened\t%s by member %s\n", inc.OpenedAt.Format(time.RFC3339), inc.OpenedBy)
	fmt.Fprintf(tw, "Risk\t%d\n", inc.Risk)
	tw.Flush()
	fmt.Fprintln(w, "\nFindings:")
	for _, f := range inc.Findings {
		fmt.Fprintf(w, "  %s  %-18s %-8s +%d  %s\n", f.At.Format(time.TimeOnly), f.Detector, f.Severity, f.Score, f.Summary)
	}
	fmt.Fprintln(w, "\nRisk timeline:")
	for _, p := range inc.Timeline {
		fmt.Fprintf(w, "  %s  %d\n", p.At.Format(time.RFC3339), p.Score)
	}
	fmt.Fprintln(w, "\nActions:")
	for _, a := range inc.Actions {
		fmt.Fprintf(w, "  %s  %-13s %-8s by %s", a.At.Format(time.RFC3339), a.Name, a.Outcome, a.By)
		if a.Detail != "" {
			fmt.Fprintf(w, ": %s", a.Detail)
		}
		fmt.Fprintln(w)
	}
}
