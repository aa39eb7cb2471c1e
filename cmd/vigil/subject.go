package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/topology"
)

// newSubjectCmd builds "vigil device …" or "vigil gateway …".
func newSubjectCmd(kindName string) *cobra.Command {
	kind, _ := topology.ParseKind(kindName)
	cmd := &cobra.Command{Use: kindName, Short: "Read and quarantine a " + kindName}

	var getFlags clientFlags
	get := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a " + kindName + ", its identity and its runtime state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := getFlags.client()
			if err != nil {
				return err
			}
			s, err := cl.Subject(cmd.Context(), kind, args[0])
			if err != nil {
				return err
			}
			return getFlags.print(cmd.OutOrStdout(), s, func(w io.Writer) { printSubject(w, s) })
		},
	}
	getFlags.register(get, true)

	var qFlags clientFlags
	var reason string
	var local bool
	quarantine := &cobra.Command{
		Use:   "quarantine NAME --reason TEXT",
		Short: "Cut a " + kindName + " off everywhere until it is released",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return fmt.Errorf("--reason is required: say why, it is recorded with the quarantine")
			}
			cl, err := qFlags.client()
			if err != nil {
				return err
			}
			if local {
				lq, err := cl.QuarantineLocal(cmd.Context(), kind, args[0], reason)
				if err != nil {
					return err
				}
				return qFlags.print(cmd.OutOrStdout(), lq, func(w io.Writer) {
					fmt.Fprintf(w, "%s %s quarantined on this member only (over revision %d); it is proposed to the cluster, once, when this member reaches a leader (local id %s)\n",
						kindName, lq.Name, lq.Revision, lq.LocalID[:min(16, len(lq.LocalID))])
				})
			}
			s, err := cl.Quarantine(cmd.Context(), kind, args[0], reason)
			if err != nil {
				return err
			}
			return qFlags.print(cmd.OutOrStdout(), s, func(w io.Writer) {
				fmt.Fprintf(w, "%s %s quarantined at revision %d\n", kindName, s.Name, s.Revision)
			})
		},
	}
	qFlags.register(quarantine, true)
	quarantine.Flags().StringVar(&reason, "reason", "", "why (recorded with the quarantine)")
	quarantine.Flags().BoolVar(&local, "local", false, "for a member cut off from its cluster (writes fail with \"partitioned\"): quarantine on the member --addr names alone, at once (its ext_authz and its gateways' xDS), and propose it to the cluster, exactly once, when the partition heals")

	var rFlags clientFlags
	release := &cobra.Command{
		Use:   "release NAME",
		Short: "Lift a " + kindName + "'s quarantine",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := rFlags.client()
			if err != nil {
				return err
			}
			s, err := cl.Release(cmd.Context(), kind, args[0])
			if err != nil {
				return err
			}
			return rFlags.print(cmd.OutOrStdout(), s, func(w io.Writer) {
				fmt.Fprintf(w, "%s %s released at revision %d\n", kindName, s.Name, s.Revision)
			})
		},
	}
	rFlags.register(release, true)

	cmd.AddCommand(get, quarantine, release)
	cmd.AddCommand(newAgentCmds(kind)...)
	cmd.AddCommand(newGatewaySignalCmds(kind)...)
	if kind == topology.KindDevice {
		cmd.AddCommand(newDeviceAttestCmds()...)
	} else {
		cmd.AddCommand(newGatewayEnrollCmd())
	}
	return cmd
}

func printSubject(w io.Writer, s *api.Subject) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	row("Name", s.Name)
	row("Kind", s.Kind.String())
	row("Zone", s.Zone)
	row("Class", s.Class)
	row("Gateway", s.Gateway)
	if s.Kind == topology.KindGateway {
		row("Devices", fmt.Sprint(s.Devices))
	}
	row("SPIFFE ID", s.SPIFFEID)
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		row("Label "+k, s.Labels[k])
	}
	quarantine := "no"
	if st := s.State; st != nil && st.Quarantine != nil {
		q := st.Quarantine
		quarantine = fmt.Sprintf("yes, since %s by %s: %s", q.Since.Format(time.RFC3339), q.By, q.Reason)
	}
	row("Quarantined", quarantine)
	if st := s.State; st != nil && st.Risk != nil {
		row("Risk", fmt.Sprintf("%d (updated %s)", st.Risk.Score, st.Risk.UpdatedAt.Format(time.RFC3339)))
		for _, sig := range st.Risk.Signals {
			at := ""
			if !sig.At.IsZero() {
				at = " at " + sig.At.Format(time.RFC3339)
			}
			row("  finding", fmt.Sprintf("%s (%s) +%d%s: %s", sig.Name, sig.Severity, sig.Score, at, sig.Detail))
		}
	}
	attest := "none"
	if st := s.State; st != nil && st.Attestation != nil {
		a := st.Attestation
		attest = fmt.Sprintf("%s, firmware %s, verified %s by %s, expires %s", a.Method, a.FirmwareVersion,
			a.VerifiedAt.Format(time.RFC3339), a.Verifier, a.ExpiresAt.Format(time.RFC3339))
		if a.Failed() {
			attest = fmt.Sprintf("FAILED %s evidence at %s: %s", a.Method, a.VerifiedAt.Format(time.RFC3339), strings.Join(a.Reasons, "; "))
		}
	}
	row("Attestation", attest)
	if st := s.State; st != nil && st.Enrollment != nil {
		e := st.Enrollment
		how := ""
		if e.Method != "" {
			how = ", " + e.Method
			if e.EKCertFingerprint != "" {
				how += " (EK certificate sha256 " + e.EKCertFingerprint + ")"
			}
		}
		row("Enrolled key", fmt.Sprintf("sha256 %s, by %s at %s%s", e.Fingerprint, e.By, e.At.Format(time.RFC3339), how))
	}
	row("Revision", fmt.Sprint(s.Revision))
}
