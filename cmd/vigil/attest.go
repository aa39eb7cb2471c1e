package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
)

// newDeviceAttestCmds are `vigil device challenge|attest|enroll`.
func newDeviceAttestCmds() []*cobra.Command {
	var chFlags clientFlags
	challenge := &cobra.Command{
		Use:   "challenge NAME",
		Short: "Get a fresh nonce for a device's next attestation evidence (valid 60 s, single use)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := chFlags.client()
			if err != nil {
				return err
			}
			resp, err := cl.Challenge(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return chFlags.print(cmd.OutOrStdout(), resp, func(w io.Writer) {
				fmt.Fprintf(w, "%s\n", resp.Nonce)
			})
		},
	}
	chFlags.register(challenge, true)

	var atFlags clientFlags
	var evidence string
	attestCmd := &cobra.Command{
		Use:   "attest NAME --evidence FILE",
		Short: "Submit a device's attestation evidence; exits 0 only when it passed",
		Long: `Submit attestation evidence (the JSON evidence document: format, nonce, and
the tpm2, dice or eat part) for a device. Vigil verifies it against the
device's enrolled key, its class's reference values and the nonce, which
must come from 'vigil device challenge' and may be used once across the
cluster. The result is recorded, and a failure denies the device (or
quarantines it, with onFailure: quarantine). Exits 0 only when it passed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if evidence == "" {
				return fmt.Errorf("--evidence FILE is required (- reads standard input)")
			}
			var raw []byte
			var err error
			if evidence == "-" {
				raw, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
			} else {
				raw, err = os.ReadFile(evidence)
			}
			if err != nil {
				return err
			}
			cl, err := atFlags.client()
			if err != nil {
				return err
			}
			resp, err := cl.Attest(cmd.Context(), args[0], raw)
			if err != nil {
				return err
			}
			if err := atFlags.print(cmd.OutOrStdout(), resp, func(w io.Writer) { printAttestation(w, args[0], resp) }); err != nil {
				return err
			}
			if resp.Attestation == nil || resp.Attestation.Failed() {
				cmd.SilenceUsage = true
				return errExit{code: 1}
			}
			return nil
		},
	}
	atFlags.register(attestCmd, true)
	attestCmd.Flags().StringVar(&evidence, "evidence", "", "the evidence JSON file (- for standard input)")

	var enFlags clientFlags
	var akFile, eatFile string
	var ek ekEnrollFlags
	enroll := &cobra.Command{
		Use:   "enroll NAME (--tpm-ak ak.pem | --eat-key key.pem | --ek-cert ek.crt --ak-public ak.pub --credential-out cred.bin | --activate ID --secret secret.bin)",
		Short: "Record a device's attestation keys (replacing earlier ones; who did it is recorded)",
		Long: `Record a device's attestation keys, replacing earlier ones; who did it is
recorded. Either give the keys (--tpm-ak, a PKIX PEM as 'tpm2_createak -f pem'
writes it; --eat-key, the key that signs the device's EAT tokens), or have the
TPM prove its AK by EK certificate and credential activation.

` + enrollEKHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			step, err := ek.step()
			if err != nil {
				return err
			}
			if step != 0 {
				if akFile != "" || eatFile != "" {
					return fmt.Errorf("--tpm-ak and --eat-key cannot be combined with enrollment by EK certificate")
				}
				return runEnrollEK(cmd, args[0], step, &ek, &enFlags)
			}
			var req api.EnrollRequest
			for _, f := range []struct {
				path string
				dst  *string
			}{{akFile, &req.TPMAK}, {eatFile, &req.EATKey}} {
				if f.path == "" {
					continue
				}
				b, err := os.ReadFile(f.path)
				if err != nil {
					return err
				}
				*f.dst = string(b)
			}
			if req.TPMAK == "" && req.EATKey == "" {
				return fmt.Errorf("give --tpm-ak (a PEM public key as tpm2_createak -f pem writes it), --eat-key, or --ek-cert and --ak-public (see --help)")
			}
			cl, err := enFlags.client()
			if err != nil {
				return err
			}
			resp, err := cl.Enroll(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return enFlags.print(cmd.OutOrStdout(), resp, func(w io.Writer) {
				fmt.Fprintf(w, "device %s enrolled at revision %d: key fingerprint %s\n", args[0], resp.Revision, resp.Enrollment.Fingerprint)
			})
		},
	}
	enFlags.register(enroll, true)
	enroll.Flags().StringVar(&akFile, "tpm-ak", "", "the TPM attestation key's public key (PEM, PKIX)")
	enroll.Flags().StringVar(&eatFile, "eat-key", "", "the public key that signs the device's EAT tokens (PEM, PKIX)")
	ek.register(enroll)
	return []*cobra.Command{challenge, attestCmd, enroll}
}

func printAttestation(w io.Writer, device string, r api.AttestResponse) {
	a := r.Attestation
	if a == nil {
		fmt.Fprintf(w, "device %s: no result\n", device)
		return
	}
	if a.Failed() {
		fmt.Fprintf(w, "device %s: %s evidence FAILED (revision %d):\n", device, a.Method, r.Revision)
		for _, why := range a.Reasons {
			fmt.Fprintf(w, "  - %s\n", why)
		}
		return
	}
	fmt.Fprintf(w, "device %s: %s evidence passed: firmware %s (sha256 %s), valid until %s (revision %d)\n",
		device, a.Method, a.FirmwareVersion, a.FirmwareSHA256, a.ExpiresAt.Format("2006-01-02T15:04:05Z07:00"), r.Revision)
}
