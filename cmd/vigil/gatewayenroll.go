package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
)

// newGatewayEnrollCmd is `vigil gateway enroll NAME --tpm-ak ak.pem`: the
// gateway's TPM AK, which the vigil_tpm SPIRE node attestor checks its
// agent's quotes with (docs/spire-tpm.md).
func newGatewayEnrollCmd() *cobra.Command {
	var flags clientFlags
	var akFile string
	cmd := &cobra.Command{
		Use:   "enroll NAME --tpm-ak ak.pem",
		Short: "Record a gateway's TPM attestation key (replacing an earlier one; who did it is recorded)",
		Long: `Record a gateway's TPM attestation key (AK), replacing an earlier one; who did
it is recorded. The gateway needs a class (gateways[].class) with attestation.
Its SPIRE agent, with the vigil_tpm node attestor, must present this AK and
answer Vigil's challenges with quotes it signs; make the AK once on the gateway
with 'vigil attest tpm ak-public' (a PKIX PEM, as 'tpm2_createak -f pem' writes).`,
		Example: `  vigil gateway enroll gw-north-1 --tpm-ak gw-north-1-ak.pem`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if akFile == "" {
				return fmt.Errorf("--tpm-ak is required: the gateway's TPM AK, a PEM public key (vigil attest tpm ak-public, or tpm2_createak -f pem)")
			}
			b, err := os.ReadFile(akFile)
			if err != nil {
				return err
			}
			cl, err := flags.client()
			if err != nil {
				return err
			}
			resp, err := cl.EnrollGateway(cmd.Context(), args[0], api.EnrollRequest{TPMAK: string(b)})
			if err != nil {
				return err
			}
			return flags.print(cmd.OutOrStdout(), resp, func(w io.Writer) {
				fmt.Fprintf(w, "gateway %s enrolled at revision %d: key fingerprint %s\n", args[0], resp.Revision, resp.Enrollment.Fingerprint)
			})
		},
	}
	flags.register(cmd, true)
	cmd.Flags().StringVar(&akFile, "tpm-ak", "", "the gateway's TPM attestation key's public key (PEM, PKIX)")
	return cmd
}
