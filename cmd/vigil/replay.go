package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/topology"
)

func newReplayCmd() *cobra.Command {
	var (
		c                                    clientFlags
		logFile, candFile, curFile, dir, out string
		query                                string
		maxSubjects                          int
	)
	cmd := &cobra.Command{
		Use:   "replay --log FILE --topology CANDIDATE [--policy-dir DIR] [--current CURRENT] [-o json]",
		Short: "Show which recorded decisions a topology or policy change would flip",
		Long: `Re-decide every decision of a decision log against a candidate topology
(and, with --policy-dir, a candidate policy) and print what would flip, allow
to deny and deny to allow, grouped by flow, by device and by service, with
counts and example decision IDs, plus totals and what was skipped and why.

The log records no runtime state. Without --server (env VIGIL_SERVER) replay
assumes no quarantine and no risk, and that every device whose class requires
attestation is attested at a reference firmware; the output says so. With
--server it takes each subject's current state (quarantine, risk,
attestation) from that member, and the current topology too unless --current
is given; the current topology names the flow that allowed a recorded allow.
Rate limits are not replayed. The log is streamed; memory stays bounded.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if logFile == "" || candFile == "" {
				return errors.New("--log and --topology are required")
			}
			switch out {
			case "table", "json":
			default:
				return fmt.Errorf("output format %q: want table or json", out)
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			cand, err := loadTopologyFile(candFile)
			if err != nil {
				return err
			}
			cfg := authz.ReplayConfig{Candidate: cand}
			if curFile != "" {
				if cfg.Current, err = loadTopologyFile(curFile); err != nil {
					return err
				}
			}
			if dir != "" {
				if cfg.Policy, err = authz.LoadDir(ctx, dir, query); err != nil {
					return err
				}
			}
			if c.server != "" {
				cl, err := c.client()
				if err != nil {
					return err
				}
				if cfg.Current == nil {
					rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					data, err := cl.TopologyYAML(rctx)
					cancel()
					if err != nil {
						return fmt.Errorf("current topology from %s: %w", c.server, err)
					}
					if cfg.Current, err = topology.Load(data); err != nil {
						return fmt.Errorf("current topology from %s: %w", c.server, err)
					}
				}
				cfg.StateOf = memberState(cl, maxSubjects)
			}
			f, err := os.Open(logFile)
			if err != nil {
				return err
			}
			defer f.Close()
			rep, err := authz.Replay(ctx, f, cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", logFile, err)
			}
			w := cmd.OutOrStdout()
			if out == "json" {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printReplay(w, logFile, candFile, rep)
			return nil
		},
	}
	c.registerServer(cmd, "", "API address of a Vigil member (env VIGIL_SERVER) to take runtime state and the current topology from (default: none; a clean state is assumed)", false)
	cmd.Flags().StringVar(&logFile, "log", "", "the decision log to replay")
	cmd.Flags().StringVar(&candFile, "topology", "", "the candidate topology (YAML or JSON)")
	cmd.Flags().StringVar(&curFile, "current", "", "the topology the log was decided with, to name the flows that allowed (default: from --server, if given)")
	cmd.Flags().StringVar(&dir, "policy-dir", "", "a candidate policy directory (default: Vigil's embedded policy)")
	cmd.Flags().StringVar(&query, "policy-query", authz.DefaultQuery, "the decision to query in --policy-dir")
	cmd.Flags().IntVar(&maxSubjects, "max-subjects", 10000, "with --server: the most subjects whose state is fetched")
	cmd.Flags().StringVarP(&out, "output", "o", "table", "output format: table or json")
	return cmd
}

func loadTopologyFile(path string) (*topology.Index, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ix, err := topology.Load(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ix, nil
}

// memberState fetches a subject's state from a member, at most max
// subjects; a subject the member does not know has none.
func memberState(cl *api.Client, max int) func(context.Context, topology.Subject) (*topology.SubjectState, error) {
	n := 0
	return func(ctx context.Context, s topology.Subject) (*topology.SubjectState, error) {
		if n++; n > max {
			return nil, fmt.Errorf("more than %d subjects need their state from the member; raise --max-subjects", max)
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		sub, err := cl.Subject(ctx, s.Kind, s.Name)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return sub.State, nil
	}
}

func printReplay(w io.Writer, logFile, candFile string, rep *authz.ReplayReport) {
	fmt.Fprintf(w, "replay of %s against %s (policy %s)\n", logFile, candFile, shortHash(rep.PolicyHash))
	for _, a := range rep.Assumptions {
		fmt.Fprintf(w, "  assumes: %s\n", a)
	}
	t := rep.Totals
	fmt.Fprintf(w, "\n%d lines, %d decisions; %d re-decided: %d unchanged, %d allow → deny, %d deny → allow\n",
		t.Lines, t.Decisions, t.Redecided, t.Unchanged, t.AllowToDeny, t.DenyToAllow)
	reasons := make([]string, 0, len(t.Skipped))
	for r := range t.Skipped {
		reasons = append(reasons, r)
	}
	slices.Sort(reasons)
	for _, r := range reasons {
		fmt.Fprintf(w, "  skipped %d: %s\n", t.Skipped[r], r)
	}
	if t.AllowToDeny+t.DenyToAllow == 0 {
		fmt.Fprintln(w, "\nnothing would flip")
		return
	}
	for _, sec := range []struct {
		title  string
		groups []authz.ReplayGroup
	}{{"by flow (before → after)", rep.ByFlow}, {"by device", rep.ByDevice}, {"by service", rep.ByService}} {
		fmt.Fprintf(w, "\n%s:\n", sec.title)
		for _, g := range sec.groups {
			fmt.Fprintf(w, "  %-50s allow→deny %-6d deny→allow %d\n", g.Key, g.ToDeny, g.ToAllow)
			for _, ex := range g.Examples {
				fmt.Fprintf(w, "      %s  %s %s %s: %s\n", ex.DecisionID, ex.Method, replayService(ex.Service), ex.Path, ex.After)
			}
		}
	}
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func replayService(s string) string {
	if strings.TrimSpace(s) == "" {
		return "(unknown service)"
	}
	return s
}
