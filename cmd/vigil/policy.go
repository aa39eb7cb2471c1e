package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/authz"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Test and evaluate authorization policies offline"}

	test := &cobra.Command{
		Use:   "test DIR",
		Short: "Run the Rego unit tests (test_* rules) in DIR",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()
			results, err := tester.Run(ctx, args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			failed := 0
			for _, r := range results {
				status := "PASS"
				if r.Fail || r.Error != nil {
					status, failed = "FAIL", failed+1
				}
				fmt.Fprintf(w, "%s %s.%s (%v)\n", status, r.Package, r.Name, r.Duration.Round(time.Microsecond))
				if r.Error != nil {
					fmt.Fprintf(w, "     %v\n", r.Error)
				}
			}
			fmt.Fprintf(w, "%d passed, %d failed\n", len(results)-failed, failed)
			if len(results) == 0 {
				return fmt.Errorf("no tests found in %s", args[0])
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d policy tests failed", failed, len(results))
			}
			return nil
		},
	}

	var input, dir, query string
	eval := &cobra.Command{
		Use:   "eval --input FILE [--policy-dir DIR]",
		Short: "Evaluate a policy for one input document and print the decision and its reason",
		Long: `Evaluate Vigil's default policy (or the one in --policy-dir) for an input
document: a JSON object shaped like the input Vigil gives policies
(attributes, parsed_path, parsed_query, parsed_body and vigil). A decision
log line's context can be replayed this way.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := readInput(input)
			if err != nil {
				return err
			}
			var raw any
			if err := json.Unmarshal(data, &raw); err != nil {
				return fmt.Errorf("input %s is not JSON: %w", input, err)
			}
			value, err := ast.InterfaceToValue(raw)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var policy *authz.Policy
			if dir != "" {
				policy, err = authz.LoadDir(ctx, dir, query)
			} else {
				policy, err = authz.Compile(ctx, map[string]string{"vigil.rego": authz.DefaultPolicy}, nil, query, "embedded default")
			}
			if err != nil {
				return err
			}
			res, err := policy.Eval(ctx, value)
			if err != nil {
				return fmt.Errorf("denied: %w", err)
			}
			verdict := "denied"
			if res.Allowed {
				verdict = "allowed"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\npolicy %s (%s)\n", verdict, res.Reason, policy.Hash[:12], policy.Source)
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(res)
		},
	}
	eval.Flags().StringVar(&input, "input", "", "the input document (JSON; - for standard input)")
	eval.Flags().StringVar(&dir, "policy-dir", "", "policy directory (default: Vigil's embedded policy)")
	eval.Flags().StringVar(&query, "policy-query", authz.DefaultQuery, "the decision to query")
	cmd.AddCommand(test, eval)
	return cmd
}
