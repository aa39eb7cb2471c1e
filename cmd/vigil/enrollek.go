package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
)

// Enrollment by EK certificate and TPM credential activation, the two
// steps of `vigil device enroll` (docs/attestation-ek.md).

const enrollEKHelp = `Enrollment by EK certificate (two steps, no AK PEM to copy by hand; the
device's class must list its TPM manufacturers' CAs in attestation.ekRoots):

 1. vigil device enroll NAME --ek-cert ek.crt --ak-public ak.pub --credential-out cred.bin
    ek.crt is the TPM's EK certificate, DER as 'tpm2_nvread 0x01c00002 -o ek.crt'
    reads it (RSA; 0x01c0000a for ECC) or PEM, which may carry its chain;
    --ek-chain adds intermediate CAs. ak.pub is the AK's public area as
    'tpm2_createak -C 0x81010001 -c ak.ctx -u ak.pub' writes it. Vigil checks
    the certificate against the class's ekRoots and that the AK is a restricted
    signing key of its TPM, writes the credential for tpm2_activatecredential
    to cred.bin and prints the credential's id (valid 10 minutes). --ek-public
    (tpm2_readpublic -c 0x81010001 -o ek.pub) is needed only for an EK not made
    from a TCG default template.

 2. On the device, recover the secret (only the TPM holding the EK can, and only
    with the AK loaded):
      tpm2_startauthsession --policy-session -S session.ctx
      tpm2_policysecret -S session.ctx -c e
      tpm2_activatecredential -c ak.ctx -C 0x81010001 -i cred.bin -o secret.bin -P session:session.ctx
    then: vigil device enroll NAME --activate ID --secret secret.bin
    Vigil records the AK (as PEM), who enrolled it, and the EK certificate's
    fingerprint. An id activates once.`

// ekEnrollFlags are the flags of both steps.
type ekEnrollFlags struct {
	ekCert, ekPublic, akPublic, credentialOut string
	ekChain                                   []string
	activate, secret                          string
}

func (f *ekEnrollFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.ekCert, "ek-cert", "", "step 1: the TPM's EK certificate (DER as tpm2_nvread reads it, or PEM, optionally followed by its chain)")
	fl.StringArrayVar(&f.ekChain, "ek-chain", nil, "step 1: an intermediate CA certificate between the EK certificate and the class's ekRoots (PEM or DER; repeatable)")
	fl.StringVar(&f.ekPublic, "ek-public", "", "step 1, optional: the EK's public area (tpm2_readpublic -o, tpm2_createek -u), for an EK not of a TCG default template")
	fl.StringVar(&f.akPublic, "ak-public", "", "step 1: the AK's public area as tpm2_createak -u writes it (TPM2B_PUBLIC or TPMT_PUBLIC)")
	fl.StringVar(&f.credentialOut, "credential-out", "", "step 1: where to write the credential for tpm2_activatecredential -i (mode 0600)")
	fl.StringVar(&f.activate, "activate", "", "step 2: the id step 1 printed (or @FILE holding it)")
	fl.StringVar(&f.secret, "secret", "", "step 2: the secret tpm2_activatecredential -o recovered")
}

// step is 1 or 2 when the EK flags are used, 0 otherwise; mixing is an error.
func (f *ekEnrollFlags) step() (int, error) {
	one := f.ekCert != "" || f.akPublic != "" || f.ekPublic != "" || len(f.ekChain) > 0 || f.credentialOut != ""
	two := f.activate != "" || f.secret != ""
	switch {
	case one && two:
		return 0, errors.New("--activate and --secret are step 2; --ek-cert, --ak-public and --credential-out step 1: run them apart")
	case one:
		if f.ekCert == "" || f.akPublic == "" || f.credentialOut == "" {
			return 0, errors.New("step 1 needs --ek-cert, --ak-public and --credential-out")
		}
		return 1, nil
	case two:
		if f.activate == "" || f.secret == "" {
			return 0, errors.New("step 2 needs --activate ID and --secret FILE")
		}
		return 2, nil
	}
	return 0, nil
}

// certText reads a certificate file as the API takes it: PEM as is, DER
// as base64.
func certText(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(strings.TrimSpace(string(b)), "-----BEGIN") {
		return string(b), nil
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

func readBase64File(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// runEnrollEK runs step 1 or 2.
func runEnrollEK(cmd *cobra.Command, device string, step int, f *ekEnrollFlags, cf *clientFlags) error {
	cl, err := cf.client()
	if err != nil {
		return err
	}
	if step == 2 {
		id := f.activate
		if path, ok := strings.CutPrefix(id, "@"); ok {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			id = strings.TrimSpace(string(b))
		}
		secret, err := os.ReadFile(f.secret)
		if err != nil {
			return err
		}
		resp, err := cl.ActivateEK(cmd.Context(), device, api.EKActivateRequest{ID: id, Secret: secret})
		if err != nil {
			return err
		}
		return cf.print(cmd.OutOrStdout(), resp, func(w io.Writer) {
			fmt.Fprintf(w, "device %s enrolled by EK certificate (sha256 %s) at revision %d: key fingerprint %s\n",
				device, resp.Enrollment.EKCertFingerprint, resp.Revision, resp.Enrollment.Fingerprint)
		})
	}

	var req api.EKEnrollRequest
	if req.EKCert, err = certText(f.ekCert); err != nil {
		return err
	}
	for _, p := range f.ekChain {
		c, err := certText(p)
		if err != nil {
			return err
		}
		req.EKChain = append(req.EKChain, c)
	}
	if req.AKPublic, err = readBase64File(f.akPublic); err != nil {
		return err
	}
	if f.ekPublic != "" {
		if req.EKPublic, err = readBase64File(f.ekPublic); err != nil {
			return err
		}
	}
	resp, err := cl.EnrollEK(cmd.Context(), device, req)
	if err != nil {
		return err
	}
	if err := os.WriteFile(f.credentialOut, resp.Credential, 0o600); err != nil {
		return fmt.Errorf("writing the credential: %w", err)
	}
	return cf.print(cmd.OutOrStdout(), resp, func(w io.Writer) {
		fmt.Fprintf(cmd.ErrOrStderr(), "credential for device %s (AK name %s) written to %s; it expires at %s.\n"+
			"On the device, recover the secret with tpm2_activatecredential -i %s -o secret.bin (see --help), then run\n"+
			"  vigil device enroll %s --activate <id> --secret secret.bin\nid:\n",
			device, resp.AKName, f.credentialOut, resp.Expires.Format("2006-01-02T15:04:05Z07:00"), f.credentialOut, device)
		fmt.Fprintln(w, resp.ID)
	})
}
