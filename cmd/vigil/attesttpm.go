package main

// `vigil attest tpm ak-public|quote` and `vigil attest tpm2-evidence`: the
// device side of tpm2-quote attestation, for devices and gateways that have
// no tooling of their own. The TPM work (reaching the TPM, the AK, quotes,
// evidence) is internal/tpmdev's; this file is the commands.

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/internal/tpmdev"
)

// newAttestCmd is `vigil attest`.
func newAttestCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "attest",
		Short: "Make attestation evidence on a device or gateway (TPM 2.0 quotes)",
		Long: `Make the evidence that 'vigil device attest' submits, on the device itself.

  vigil attest tpm ak-public    the TPM attestation key's public key, for 'vigil device enroll --tpm-ak'
  vigil attest tpm quote        a quote of the TPM's PCRs over a nonce, as evidence JSON
  vigil attest tpm2-evidence    the same evidence JSON from tpm2-tools' files (tpm2_quote -m/-s)

A device attests in four steps: enroll its AK once (vigil device enroll NAME
--tpm-ak ak.pem), then for each attestation get a nonce (vigil device
challenge NAME), quote over it, and submit the evidence (vigil device attest
NAME --evidence FILE).`,
	}
	cmd.AddCommand(newAttestTPMCmd(), newTPM2EvidenceCmd())
	return cmd
}

// tpmFlags are the flags of the commands that talk to a TPM.
type tpmFlags struct {
	tpm      string
	akHandle string
}

func (f *tpmFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.tpm, "tpm", tpmdev.DefaultTPM, `the TPM: a device such as /dev/tpmrm0 (the kernel's resource manager; /dev/tpm0 works too when nothing else uses it), or "swtpm:host=H,port=P" for swtpm's data channel over TCP (default host 127.0.0.1, port 2321), or "swtpm:path=SOCKET" over a unix socket (env VIGIL_TPM)`)
	cmd.Flags().StringVar(&f.akHandle, "ak-handle", tpmdev.DefaultAKHandle, "the persistent handle (0x81000000-0x81FFFFFF) of the attestation key (env VIGIL_AK_HANDLE)")
}

func newAttestTPMCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tpm",
		Short: "Use this machine's TPM 2.0: its attestation key and quotes",
		Long: `Use this machine's TPM 2.0 (--tpm /dev/tpmrm0, or swtpm through
--tpm swtpm:host=H,port=P) to attest: 'ak-public' makes sure a persistent
attestation key exists and prints its public key for enrollment, 'quote'
signs the PCRs and a nonce with it and prints the evidence JSON.`,
	}
	cmd.AddCommand(newTPMAKPublicCmd(), newTPMQuoteCmd())
	return cmd
}

func newTPMAKPublicCmd() *cobra.Command {
	var f tpmFlags
	cmd := &cobra.Command{
		Use:   "ak-public [--tpm /dev/tpmrm0] [--ak-handle 0x81010002]",
		Short: "Print the TPM attestation key's public key (PEM), creating the key if the handle is empty",
		Long: `Print the public key of the attestation key (AK) at --ak-handle as a PKIX
PEM "PUBLIC KEY", the form 'vigil device enroll NAME --tpm-ak FILE' takes.

If the handle is empty, an ECDSA P-256 restricted signing key (SHA-256, no
authorization value) is created as a primary key of the owner hierarchy and
made persistent there (TPM2_EvictControl): this needs the owner hierarchy's
authorization to be empty, as it is on a TPM that was never taken ownership
of. A key already at the handle is used as it is if it is a restricted
signing key (ECDSA, or RSA of 2048 bits or more) that signs with SHA-256.

  vigil attest tpm ak-public > ak.pem
  vigil device enroll NAME --tpm-ak ak.pem --server VIGIL_API`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			handle, err := tpmdev.ParseAKHandle(f.akHandle)
			if err != nil {
				return err
			}
			t, err := tpmdev.Open(f.tpm)
			if err != nil {
				return err
			}
			defer t.Close()
			ak, created, err := tpmdev.EnsureAK(t, handle)
			if err != nil {
				return err
			}
			if created {
				fmt.Fprintf(cmd.ErrOrStderr(), "created an ECDSA P-256 attestation key at persistent handle 0x%08x\n", uint32(handle))
			}
			out, err := ak.PublicPEM()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	f.register(cmd)
	return cmd
}

func newTPMQuoteCmd() *cobra.Command {
	var f tpmFlags
	var nonceHex, eventLog string
	var pcrs []int
	cmd := &cobra.Command{
		Use:   "quote --nonce HEX [--tpm /dev/tpmrm0] [--ak-handle 0x81010002] [--pcrs 16] [--event-log FILE]",
		Short: "Quote the TPM's PCRs over a nonce and print the tpm2-quote evidence JSON",
		Long: `Quote the sha256 PCRs --pcrs over --nonce (from 'vigil device challenge NAME')
with the attestation key at --ak-handle (see 'vigil attest tpm ak-public'),
read those PCRs, and print the evidence JSON that 'vigil device attest NAME
--evidence FILE' submits: format tpm2-quote, the nonce, the quote (a
marshalled TPMS_ATTEST), its signature (a marshalled TPMT_SIGNATURE), the
PCR values and the event log.

--event-log is what explains the PCRs: either a JSON array of the events
extended, in order, such as
  [{"pcr": 16, "sha256": "<64 hex digits>", "type": "firmware"}]
(the event of type "firmware" carries the firmware image's SHA-256), or a
TCG PC Client crypto-agile binary event log (such as
/sys/kernel/security/tpm0/binary_bios_measurements). Vigil refuses evidence
without one.

  nonce=$(vigil device challenge NAME --server VIGIL_API)
  vigil attest tpm quote --nonce $nonce --event-log events.json > evidence.json
  vigil device attest NAME --evidence evidence.json --server VIGIL_API`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nonce, err := tpmdev.ParseNonce(nonceHex)
			if err != nil {
				return err
			}
			if err := tpmdev.CheckPCRIndexes(pcrs); err != nil {
				return err
			}
			handle, err := tpmdev.ParseAKHandle(f.akHandle)
			if err != nil {
				return err
			}
			if eventLog == "" {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: no --event-log: Vigil refuses tpm2-quote evidence without an event log that names the firmware")
			}
			d := &tpmdev.Device{Spec: f.tpm, AKHandle: handle, EventLog: eventLog,
				Warn: func(w string) { fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w) }}
			ev, err := d.Evidence(nonce, pcrs)
			if err != nil {
				return err
			}
			return tpmdev.WriteEvidence(cmd.OutOrStdout(), ev)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&nonceHex, "nonce", "", "the nonce, 64 hex digits, from 'vigil device challenge NAME' (required)")
	cmd.Flags().IntSliceVar(&pcrs, "pcrs", []int{16}, "the sha256 PCRs to quote, comma-separated (the device class's pcrs)")
	cmd.Flags().StringVar(&eventLog, "event-log", "", "the event log: a JSON array of {pcr, sha256, type} events, or a TCG binary event log")
	return cmd
}

func newTPM2EvidenceCmd() *cobra.Command {
	var quoteFile, sigFile, nonceHex, eventLog string
	var pcrArgs []string
	cmd := &cobra.Command{
		Use:   "tpm2-evidence --quote quote.msg --signature quote.sig --pcr 16=HEX... --event-log FILE --nonce HEX",
		Short: "Build tpm2-quote evidence JSON from tpm2-tools' files (tpm2_quote -m, -s)",
		Long: `Build the evidence JSON that 'vigil device attest NAME --evidence FILE'
submits from what tpm2-tools wrote, for devices that have tpm2-tools but not
the TPM commands of vigil:

  nonce=$(vigil device challenge NAME --server VIGIL_API)
  tpm2_quote -c ak.ctx -l sha256:16 -q $nonce -m quote.msg -s quote.sig -g sha256
  tpm2_pcrread sha256:16          # prints 16: 0x<value>
  vigil attest tpm2-evidence --quote quote.msg --signature quote.sig \
      --pcr 16=<value> --event-log events.json --nonce $nonce > evidence.json

--quote is the marshalled TPMS_ATTEST (tpm2_quote -m), --signature the
marshalled TPMT_SIGNATURE (tpm2_quote -s, in its default "tss" format).
--pcr gives the value of each PCR the quote covers, as INDEX=HEX for the
sha256 bank or BANK:INDEX=HEX (sha1, sha256, sha384, sha512), HEX with or
without 0x, or INDEX=@FILE for a file holding the raw value (tpm2_pcrread
-o). --event-log is a JSON array of {pcr, sha256, type} events or a TCG
binary event log, as for 'vigil attest tpm quote'.

The files are checked against each other before anything is printed: the
quote's extraData must be the nonce and its pcrDigest the SHA-256 of the
PCR values given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, req := range []struct{ flag, val string }{{"--quote", quoteFile}, {"--signature", sigFile}, {"--nonce", nonceHex}, {"--event-log", eventLog}} {
				if req.val == "" {
					return fmt.Errorf("%s is required", req.flag)
				}
			}
			if len(pcrArgs) == 0 {
				return errors.New("--pcr INDEX=HEX is required for every PCR the quote covers (tpm2_pcrread sha256:16 prints them)")
			}
			nonce, err := tpmdev.ParseNonce(nonceHex)
			if err != nil {
				return err
			}
			quote, err := tpmdev.ReadBounded(quoteFile, "--quote", attest.MaxTPM2QuoteBytes)
			if err != nil {
				return err
			}
			sig, err := tpmdev.ReadBounded(sigFile, "--signature", attest.MaxTPM2SignatureBytes)
			if err != nil {
				return err
			}
			values, err := tpmdev.ParsePCRArgs(pcrArgs)
			if err != nil {
				return err
			}
			log, err := tpmdev.ReadEventLog(eventLog)
			if err != nil {
				return err
			}
			ev, warnings, err := tpmdev.BuildEvidence(quote, sig, nonce, values, log)
			if err != nil {
				return err
			}
			for _, w := range warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			return tpmdev.WriteEvidence(cmd.OutOrStdout(), ev)
		},
	}
	cmd.Flags().StringVar(&quoteFile, "quote", "", "the quote as tpm2_quote -m writes it (a marshalled TPMS_ATTEST)")
	cmd.Flags().StringVar(&sigFile, "signature", "", "the signature as tpm2_quote -s writes it (a marshalled TPMT_SIGNATURE)")
	cmd.Flags().StringArrayVar(&pcrArgs, "pcr", nil, "a quoted PCR's value: INDEX=HEX (sha256), BANK:INDEX=HEX or INDEX=@FILE; repeat for each PCR")
	cmd.Flags().StringVar(&eventLog, "event-log", "", "the event log: a JSON array of {pcr, sha256, type} events, or a TCG binary event log")
	cmd.Flags().StringVar(&nonceHex, "nonce", "", "the nonce the quote was made over (tpm2_quote -q), 64 hex digits from 'vigil device challenge'")
	return cmd
}
