package main

// `vigil attest tpm ak-public|quote` and `vigil attest tpm2-evidence`: the
// device side of tpm2-quote attestation, for devices and gateways that have
// no tooling of their own. The TPM is reached with go-tpm's tpm2 package,
// either through the kernel's device (/dev/tpmrm0, whose resource manager
// flushes what a connection leaves loaded) or through swtpm's data channel
// (raw TPM command/response framing over TCP or a unix socket: swtpm's
// control channel speaks its own protocol, not the Microsoft simulator's
// platform one, and is not needed). Without a resource manager transient
// objects stay loaded, so every transient object made here is flushed
// before the command returns.

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/topology"
)

// Defaults of `vigil attest tpm`.
const (
	defaultTPM      = "/dev/tpmrm0"
	defaultAKHandle = "0x81010002"
	// swtpm's data port when a swtpm: spec names none (tpm2-tss's default).
	defaultSwtpmPort = 2321
	// tpmCommandTimeout bounds one command sent to swtpm.
	tpmCommandTimeout = 60 * time.Second
	// maxTPMResponse bounds a response read from swtpm (real TPMs answer
	// with at most a few KiB).
	maxTPMResponse = 64 << 10
	// quoteAttempts: PCRs read after a quote must be the ones it covered;
	// an extend in between makes us quote again, this many times at most.
	quoteAttempts = 3
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
	cmd.Flags().StringVar(&f.tpm, "tpm", defaultTPM, `the TPM: a device such as /dev/tpmrm0 (the kernel's resource manager; /dev/tpm0 works too when nothing else uses it), or "swtpm:host=H,port=P" for swtpm's data channel over TCP (default host 127.0.0.1, port 2321), or "swtpm:path=SOCKET" over a unix socket (env VIGIL_TPM)`)
	cmd.Flags().StringVar(&f.akHandle, "ak-handle", defaultAKHandle, "the persistent handle (0x81000000-0x81FFFFFF) of the attestation key (env VIGIL_AK_HANDLE)")
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
			handle, err := parseAKHandle(f.akHandle)
			if err != nil {
				return err
			}
			t, err := openTPM(f.tpm)
			if err != nil {
				return err
			}
			defer t.Close()
			ak, created, err := ensureAK(t, handle)
			if err != nil {
				return err
			}
			if created {
				fmt.Fprintf(cmd.ErrOrStderr(), "created an ECDSA P-256 attestation key at persistent handle 0x%08x\n", uint32(handle))
			}
			der, err := x509.MarshalPKIXPublicKey(ak.pub)
			if err != nil {
				return fmt.Errorf("the AK at 0x%08x: %w", uint32(handle), err)
			}
			return pem.Encode(cmd.OutOrStdout(), &pem.Block{Type: "PUBLIC KEY", Bytes: der})
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
			nonce, err := parseNonce(nonceHex)
			if err != nil {
				return err
			}
			if err := checkPCRIndexes(pcrs); err != nil {
				return err
			}
			handle, err := parseAKHandle(f.akHandle)
			if err != nil {
				return err
			}
			var log *eventLogFile
			if eventLog != "" {
				if log, err = readEventLog(eventLog); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: no --event-log: Vigil refuses tpm2-quote evidence without an event log that names the firmware")
			}
			t, err := openTPM(f.tpm)
			if err != nil {
				return err
			}
			defer t.Close()
			ak, err := readAK(t, handle)
			if err != nil {
				return err
			}
			if ak == nil {
				return fmt.Errorf("there is no key at persistent handle 0x%08x: run 'vigil attest tpm ak-public --ak-handle 0x%08x' (it creates one) and enroll its output with 'vigil device enroll NAME --tpm-ak'", uint32(handle), uint32(handle))
			}
			var ev *attest.Evidence
			var warnings []string
			for attempt := 1; ; attempt++ {
				q, err := quotePCRs(t, ak, nonce, pcrs)
				if err != nil {
					return err
				}
				ev, warnings, err = buildTPM2Evidence(q.quote, q.sig, nonce, q.values, log)
				if err == nil {
					break
				}
				if !errors.Is(err, errPCRDigest) || attempt == quoteAttempts {
					return fmt.Errorf("the TPM's own quote does not check out: %w", err)
				}
				// a PCR was extended between the quote and the read: again
			}
			for _, w := range warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			return writeEvidence(cmd.OutOrStdout(), ev)
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
			nonce, err := parseNonce(nonceHex)
			if err != nil {
				return err
			}
			quote, err := readBounded(quoteFile, "--quote", attest.MaxTPM2QuoteBytes)
			if err != nil {
				return err
			}
			sig, err := readBounded(sigFile, "--signature", attest.MaxTPM2SignatureBytes)
			if err != nil {
				return err
			}
			values, err := parsePCRArgs(pcrArgs)
			if err != nil {
				return err
			}
			log, err := readEventLog(eventLog)
			if err != nil {
				return err
			}
			ev, warnings, err := buildTPM2Evidence(quote, sig, nonce, values, log)
			if err != nil {
				return err
			}
			for _, w := range warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			return writeEvidence(cmd.OutOrStdout(), ev)
		},
	}
	cmd.Flags().StringVar(&quoteFile, "quote", "", "the quote as tpm2_quote -m writes it (a marshalled TPMS_ATTEST)")
	cmd.Flags().StringVar(&sigFile, "signature", "", "the signature as tpm2_quote -s writes it (a marshalled TPMT_SIGNATURE)")
	cmd.Flags().StringArrayVar(&pcrArgs, "pcr", nil, "a quoted PCR's value: INDEX=HEX (sha256), BANK:INDEX=HEX or INDEX=@FILE; repeat for each PCR")
	cmd.Flags().StringVar(&eventLog, "event-log", "", "the event log: a JSON array of {pcr, sha256, type} events, or a TCG binary event log")
	cmd.Flags().StringVar(&nonceHex, "nonce", "", "the nonce the quote was made over (tpm2_quote -q), 64 hex digits from 'vigil device challenge'")
	return cmd
}

// ---- evidence ----

// pcrBanks are the PCR banks by their name in the evidence, with the TPM
// algorithm and digest size.
var pcrBanks = map[string]struct {
	alg  tpm2.TPMAlgID
	size int
}{
	"sha1":   {tpm2.TPMAlgSHA1, 20},
	"sha256": {tpm2.TPMAlgSHA256, 32},
	"sha384": {tpm2.TPMAlgSHA384, 48},
	"sha512": {tpm2.TPMAlgSHA512, 64},
}

func bankName(alg tpm2.TPMAlgID) (string, bool) {
	for name, b := range pcrBanks {
		if b.alg == alg {
			return name, true
		}
	}
	return "", false
}

// pcrValues are PCR values by bank name and index.
type pcrValues map[string]map[int][]byte

func (v pcrValues) set(bank string, i int, val []byte) {
	if v[bank] == nil {
		v[bank] = map[int][]byte{}
	}
	v[bank][i] = val
}

// eventLogFile is an event log as --event-log gives it.
type eventLogFile struct {
	events []attest.Event // a JSON log
	binary []byte         // or a TCG binary log
}

// errPCRDigest: the PCR values are not those the quote covers.
var errPCRDigest = errors.New("the PCR values are not the ones quoted")

// buildTPM2Evidence checks a quote, its signature and the PCR values
// against each other and the nonce, and makes the evidence. Warnings are
// problems Vigil will refuse the evidence for that are not in the files'
// consistency (a log that does not replay).
func buildTPM2Evidence(quote, sig, nonce []byte, values pcrValues, log *eventLogFile) (*attest.Evidence, []string, error) {
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](quote)
	if err != nil {
		return nil, nil, fmt.Errorf("the quote is not a TPMS_ATTEST as tpm2_quote -m writes it: %w", err)
	}
	if n := len(tpm2.Marshal(*att)); n != len(quote) {
		return nil, nil, fmt.Errorf("the quote has %d bytes after its TPMS_ATTEST (%d bytes): is it tpm2_quote -m's file?", len(quote)-n, n)
	}
	if att.Type != tpm2.TPMSTAttestQuote {
		return nil, nil, fmt.Errorf("the quote's TPMS_ATTEST has type 0x%04x, not TPM_ST_ATTEST_QUOTE (0x%04x)", uint16(att.Type), uint16(tpm2.TPMSTAttestQuote))
	}
	if got := att.ExtraData.Buffer; subtle.ConstantTimeCompare(got, nonce) != 1 {
		return nil, nil, fmt.Errorf("the quote's extraData is %q, not the nonce %s: quote over the nonce (tpm2_quote -q %s)", hex.EncodeToString(got), hex.EncodeToString(nonce), hex.EncodeToString(nonce))
	}
	info, err := att.Attested.Quote()
	if err != nil {
		return nil, nil, fmt.Errorf("the quote's TPMS_ATTEST: %w", err)
	}
	s, err := tpm2.Unmarshal[tpm2.TPMTSignature](sig)
	if err != nil {
		return nil, nil, fmt.Errorf("the signature is not a TPMT_SIGNATURE as tpm2_quote -s writes it (its default tss format, not plain): %w", err)
	}
	if n := len(tpm2.Marshal(*s)); n != len(sig) {
		return nil, nil, fmt.Errorf("the signature has %d bytes after its TPMT_SIGNATURE (%d bytes): is it tpm2_quote -s's file in the tss format?", len(sig)-n, n)
	}
	var hash tpm2.TPMIAlgHash
	switch s.SigAlg {
	case tpm2.TPMAlgECDSA:
		e, _ := s.Signature.ECDSA()
		hash = e.Hash
	case tpm2.TPMAlgRSASSA:
		r, _ := s.Signature.RSASSA()
		hash = r.Hash
	case tpm2.TPMAlgRSAPSS:
		r, _ := s.Signature.RSAPSS()
		hash = r.Hash
	default:
		return nil, nil, fmt.Errorf("the signature's algorithm is 0x%04x; Vigil verifies ECDSA, RSASSA and RSAPSS", uint16(s.SigAlg))
	}
	if hash != tpm2.TPMAlgSHA256 {
		return nil, nil, fmt.Errorf("the signature's hash algorithm is 0x%04x; Vigil verifies SHA-256 signatures (tpm2_quote -g sha256)", uint16(hash))
	}

	// The PCR values, in the quote's order, and their digest.
	out := map[string]map[string]string{}
	used := map[string]map[int]bool{}
	var concat []byte
	var quoted []string
	for _, sel := range info.PCRSelect.PCRSelections {
		bank, ok := bankName(sel.Hash)
		if !ok {
			return nil, nil, fmt.Errorf("the quote selects PCRs of hash algorithm 0x%04x, which Vigil does not know", uint16(sel.Hash))
		}
		for i := 0; i < len(sel.PCRSelect)*8; i++ {
			if sel.PCRSelect[i/8]&(1<<(i%8)) == 0 {
				continue
			}
			quoted = append(quoted, fmt.Sprintf("%s:%d", bank, i))
			v, ok := values[bank][i]
			if !ok {
				return nil, nil, fmt.Errorf("the quote covers PCR %s:%d but no value is given for it (--pcr %s:%d=HEX; tpm2_pcrread %s:%d prints it)", bank, i, bank, i, bank, i)
			}
			concat = append(concat, v...)
			if out[bank] == nil {
				out[bank], used[bank] = map[string]string{}, map[int]bool{}
			}
			out[bank][strconv.Itoa(i)] = hex.EncodeToString(v)
			used[bank][i] = true
		}
	}
	if len(quoted) == 0 {
		return nil, nil, errors.New("the quote selects no PCR")
	}
	for bank, vs := range values {
		for i := range vs {
			if !used[bank][i] {
				return nil, nil, fmt.Errorf("a value is given for PCR %s:%d, which the quote does not cover (it covers %s)", bank, i, strings.Join(quoted, ", "))
			}
		}
	}
	sum := sha256.Sum256(concat)
	if got := info.PCRDigest.Buffer; subtle.ConstantTimeCompare(got, sum[:]) != 1 {
		return nil, nil, fmt.Errorf("%w: the quote's pcrDigest is %x, the SHA-256 of the values given for %s is %x (read them right after the quote, with nothing extended in between)",
			errPCRDigest, got, strings.Join(quoted, ", "), sum)
	}

	ev := &attest.Evidence{Format: topology.AttestTPM2Quote, Nonce: hex.EncodeToString(nonce),
		TPM2: &attest.TPM2Evidence{Quote: quote, Signature: sig, PCRs: out}}
	var warnings []string
	if log != nil {
		ev.TPM2.EventLog, ev.TPM2.BinaryEventLog = log.events, log.binary
		warnings = replayWarnings(log.events, values["sha256"], used["sha256"])
	}
	return ev, warnings, nil
}

// replayWarnings replays a JSON event log and names each quoted sha256 PCR
// it extends whose value it does not reproduce.
func replayWarnings(events []attest.Event, values map[int][]byte, quoted map[int]bool) []string {
	replayed := map[int][]byte{}
	for _, e := range events {
		cur, ok := replayed[e.PCR]
		if !ok {
			cur = make([]byte, sha256.Size)
		}
		d, _ := hex.DecodeString(e.SHA256)
		h := sha256.New()
		h.Write(cur)
		h.Write(d)
		replayed[e.PCR] = h.Sum(nil)
	}
	var out []string
	for _, i := range slices.Sorted(maps.Keys(replayed)) {
		if quoted[i] && !bytes.Equal(replayed[i], values[i]) {
			out = append(out, fmt.Sprintf("the event log replays PCR %d to %x but the TPM's value is %x: Vigil will refuse this evidence", i, replayed[i], values[i]))
		}
	}
	return out
}

func writeEvidence(w io.Writer, ev *attest.Evidence) error {
	raw, err := json.MarshalIndent(ev, "", "  ")
	if err != nil {
		return err
	}
	if len(raw) > attest.MaxEvidenceBytes {
		return fmt.Errorf("the evidence is %d bytes; Vigil accepts at most %d (is the event log that large?)", len(raw), attest.MaxEvidenceBytes)
	}
	_, err = w.Write(append(raw, '\n'))
	return err
}

// parseNonce reads a nonce Vigil issued: 32 bytes in hex.
func parseNonce(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("--nonce is required: the 64 hex digits 'vigil device challenge NAME' prints")
	}
	b, err := hex.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), "0x"))
	if err != nil || len(b) != attest.NonceSize {
		return nil, fmt.Errorf("--nonce %q is not %d bytes of hex (%d hex digits, as 'vigil device challenge NAME' prints)", s, attest.NonceSize, 2*attest.NonceSize)
	}
	return b, nil
}

// parseAKHandle reads a persistent handle such as 0x81010002.
func parseAKHandle(s string) (tpm2.TPMHandle, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 0, 32)
	if err != nil || v < 0x81000000 || v > 0x81ffffff {
		return 0, fmt.Errorf("--ak-handle %q is not a persistent handle (0x81000000 to 0x81FFFFFF, e.g. %s)", s, defaultAKHandle)
	}
	return tpm2.TPMHandle(v), nil
}

func checkPCRIndexes(pcrs []int) error {
	if len(pcrs) == 0 {
		return errors.New("--pcrs names no PCR")
	}
	for _, p := range pcrs {
		if p < 0 || p >= attest.TPM2PCRs {
			return fmt.Errorf("--pcrs: PCR %d does not exist (0 to %d)", p, attest.TPM2PCRs-1)
		}
	}
	return nil
}

// parsePCRArgs reads --pcr INDEX=HEX, BANK:INDEX=HEX and INDEX=@FILE.
func parsePCRArgs(args []string) (pcrValues, error) {
	out := pcrValues{}
	for _, a := range args {
		key, val, ok := strings.Cut(a, "=")
		if !ok {
			return nil, fmt.Errorf("--pcr %q: want INDEX=HEX (e.g. 16=%s), BANK:INDEX=HEX or INDEX=@FILE", a, strings.Repeat("0", 64))
		}
		bank, idx := "sha256", key
		if b, i, ok := strings.Cut(key, ":"); ok {
			bank, idx = strings.ToLower(strings.TrimSpace(b)), i
		}
		b, known := pcrBanks[bank]
		if !known {
			return nil, fmt.Errorf("--pcr %q: unknown bank %q (sha1, sha256, sha384 or sha512)", a, bank)
		}
		i, err := strconv.Atoi(strings.TrimSpace(idx))
		if err != nil || i < 0 || i >= attest.TPM2PCRs {
			return nil, fmt.Errorf("--pcr %q: %q is not a PCR index (0 to %d)", a, idx, attest.TPM2PCRs-1)
		}
		var v []byte
		if path, isFile := strings.CutPrefix(val, "@"); isFile {
			if v, err = readBounded(path, "--pcr "+key, b.size); err != nil {
				return nil, err
			}
		} else if v, err = hex.DecodeString(strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(val), "0x"), "0X")); err != nil {
			return nil, fmt.Errorf("--pcr %q: the value is not hex", a)
		}
		if len(v) != b.size {
			return nil, fmt.Errorf("--pcr %q: a %s PCR is %d bytes, not %d", a, bank, b.size, len(v))
		}
		if _, dup := out[bank][i]; dup {
			return nil, fmt.Errorf("--pcr: PCR %s:%d is given twice", bank, i)
		}
		out.set(bank, i, v)
	}
	return out, nil
}

// readBounded reads a file of at most max bytes.
func readBounded(path, what string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("%s: %s is larger than %d bytes", what, path, max)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s: %s is empty", what, path)
	}
	return b, nil
}

// readEventLog reads --event-log: a JSON array of events, or else a TCG
// crypto-agile binary log (which Vigil parses and replays itself).
func readEventLog(path string) (*eventLogFile, error) {
	b, err := readBounded(path, "--event-log", attest.MaxTPM2BinaryEventLogBytes)
	if err != nil {
		return nil, err
	}
	switch trimmed := bytes.TrimLeft(b, " \t\r\n"); {
	case len(trimmed) > 0 && trimmed[0] == '[':
		var events []attest.Event
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&events); err != nil {
			return nil, fmt.Errorf("--event-log %s: not a JSON array of {\"pcr\", \"sha256\", \"type\"} events: %v", path, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("--event-log %s: data after the JSON array", path)
		}
		if len(events) == 0 {
			return nil, fmt.Errorf("--event-log %s: the JSON array has no event", path)
		}
		if len(events) > attest.MaxTPM2Events {
			return nil, fmt.Errorf("--event-log %s: %d events; Vigil accepts at most %d", path, len(events), attest.MaxTPM2Events)
		}
		for i := range events {
			e := &events[i]
			if e.PCR < 0 || e.PCR >= attest.TPM2PCRs {
				return nil, fmt.Errorf("--event-log %s: event %d names PCR %d, which does not exist (0 to %d)", path, i, e.PCR, attest.TPM2PCRs-1)
			}
			if d, err := hex.DecodeString(e.SHA256); err != nil || len(d) != sha256.Size {
				return nil, fmt.Errorf("--event-log %s: event %d: sha256 %q is not 64 hex digits", path, i, e.SHA256)
			}
			e.SHA256 = strings.ToLower(e.SHA256)
		}
		return &eventLogFile{events: events}, nil
	case len(trimmed) > 0 && trimmed[0] == '{':
		return nil, fmt.Errorf("--event-log %s: a JSON event log is an array of {\"pcr\", \"sha256\", \"type\"} events, not an object", path)
	}
	// TCG_PCClientPCREvent header: pcrIndex 0, EV_NO_ACTION, 20-byte digest,
	// eventSize, then the Spec ID event's signature.
	const specAt = 4 + 4 + 20 + 4
	if len(b) < specAt+16 || binary.LittleEndian.Uint32(b) != 0 || binary.LittleEndian.Uint32(b[4:]) != 3 ||
		!bytes.Equal(b[specAt:specAt+16], []byte("Spec ID Event03\x00")) {
		return nil, fmt.Errorf("--event-log %s is neither a JSON array of events nor a TCG crypto-agile binary event log (it does not start with a \"Spec ID Event03\" header)", path)
	}
	return &eventLogFile{binary: b}, nil
}

// ---- the TPM ----

// tpmConn is a connection to a TPM: it sends TPM2_Startup(CLEAR) itself
// when the TPM answers TPM_RC_INITIALIZE (a swtpm started without
// --flags startup-clear), and names the TPM in its errors.
type tpmConn struct {
	t       transport.TPM
	closer  io.Closer
	desc    string
	swtpm   bool
	started bool // Startup was tried already
}

func (c *tpmConn) Close() error { return c.closer.Close() }

// TPM 2.0 header fields (Part 1) and the codes tpmConn looks at.
const (
	tpmCCStartup    = 0x00000144
	tpmRCInitialize = 0x00000100
	tpmRCFailure    = 0x00000101
	tpmHeaderSize   = 10
	tpmCodeAt       = 6 // the command code of a command, the response code of a response
)

func (c *tpmConn) Send(cmd []byte) ([]byte, error) {
	rsp, err := c.t.Send(cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.desc, err)
	}
	if len(rsp) < tpmHeaderSize || len(cmd) < tpmHeaderSize {
		return rsp, nil // go-tpm reports the malformed response
	}
	rc := binary.BigEndian.Uint32(rsp[tpmCodeAt:])
	cc := binary.BigEndian.Uint32(cmd[tpmCodeAt:])
	switch {
	case rc == tpmRCInitialize && cc != tpmCCStartup && !c.started:
		c.started = true
		if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(c.t); err != nil {
			return nil, fmt.Errorf("%s was not started up (TPM_RC_INITIALIZE) and TPM2_Startup(CLEAR) failed: %w", c.desc, err)
		}
		return c.Send(cmd)
	case rc == tpmRCFailure && c.swtpm:
		return nil, fmt.Errorf("%s answers TPM_RC_FAILURE: swtpm was started without --flags not-need-init (or startup-clear) and was not initialised on its control channel (swtpm_ioctl -i), or it is in failure mode", c.desc)
	}
	return rsp, nil
}

// openTPM opens the TPM a --tpm spec names.
func openTPM(spec string) (*tpmConn, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, fmt.Errorf("--tpm is empty: give a device (%s) or swtpm:host=H,port=P", defaultTPM)
	}
	if conf, ok := strings.CutPrefix(spec, "swtpm:"); ok || spec == "swtpm" {
		return openSwtpm(conf)
	}
	if strings.Contains(spec, ":") && !strings.HasPrefix(spec, "/") {
		return nil, fmt.Errorf("--tpm %q: unknown kind of TPM: give a device path (%s) or swtpm:host=H,port=P", spec, defaultTPM)
	}
	fi, err := os.Stat(spec)
	if err != nil {
		return nil, fmt.Errorf("--tpm %s: %w (is there a TPM? load its kernel driver, or run swtpm and pass --tpm swtpm:host=H,port=P)", spec, err)
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return nil, fmt.Errorf("--tpm %s is not a character device (%s); a TPM is reached through /dev/tpmrm0 or /dev/tpm0", spec, fi.Mode())
	}
	f, err := os.OpenFile(spec, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("--tpm %s: %w (the tss group usually may open /dev/tpmrm0)", spec, err)
	}
	return &tpmConn{t: transport.FromReadWriteCloser(f), closer: f, desc: "the TPM " + spec}, nil
}

// openSwtpm connects to swtpm's data channel: "host=H,port=P" (TCP) or
// "path=SOCKET" (unix), as tpm2-tss's swtpm TCTI takes them.
func openSwtpm(conf string) (*tpmConn, error) {
	host, port, path := "127.0.0.1", defaultSwtpmPort, ""
	for _, kv := range strings.Split(conf, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		switch k = strings.TrimSpace(k); {
		case !ok:
			return nil, fmt.Errorf("--tpm swtpm:%s: %q is not KEY=VALUE (host=H,port=P or path=SOCKET)", conf, kv)
		case k == "host":
			host = strings.Trim(strings.TrimSpace(v), "[]")
		case k == "port":
			p, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || p <= 0 || p > 65535 {
				return nil, fmt.Errorf("--tpm swtpm:%s: port %q is not a TCP port", conf, v)
			}
			port = p
		case k == "path":
			path = strings.TrimSpace(v)
		default:
			return nil, fmt.Errorf("--tpm swtpm:%s: unknown setting %q (host, port or path)", conf, k)
		}
	}
	network, addr := "tcp", net.JoinHostPort(host, strconv.Itoa(port))
	if path != "" {
		network, addr = "unix", path
	}
	desc := fmt.Sprintf("swtpm at %s", addr)
	conn, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		hint := fmt.Sprintf("type=tcp,port=%d", port)
		if path != "" {
			hint = "type=unixio,path=" + path
		}
		return nil, fmt.Errorf("%s: %w (is swtpm running with its data channel there: swtpm socket --tpm2 --server %s ...?)", desc, err, hint)
	}
	return &tpmConn{t: &rawTPM{conn: conn}, closer: conn, desc: desc, swtpm: true}, nil
}

// rawTPM speaks raw TPM 2.0 command/response framing over a stream, as
// swtpm's data channel does: a command, then a response whose header gives
// its size.
type rawTPM struct{ conn net.Conn }

func (r *rawTPM) Send(cmd []byte) ([]byte, error) {
	r.conn.SetDeadline(time.Now().Add(tpmCommandTimeout))
	defer r.conn.SetDeadline(time.Time{})
	if _, err := r.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("sending a command: %w", err)
	}
	hdr := make([]byte, tpmHeaderSize)
	if _, err := io.ReadFull(r.conn, hdr); err != nil {
		return nil, fmt.Errorf("reading a response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < tpmHeaderSize || size > maxTPMResponse {
		return nil, fmt.Errorf("the response header gives a size of %d bytes (10 to %d): not a TPM 2.0 response", size, maxTPMResponse)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(r.conn, rsp[tpmHeaderSize:]); err != nil {
		return nil, fmt.Errorf("reading a %d-byte response: %w", size, err)
	}
	return rsp, nil
}

// tpmAK is an attestation key found at its persistent handle.
type tpmAK struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public tpm2.TPMTPublic
	pub    any // crypto public key
	// scheme is what Quote's inScheme must say: TPM_ALG_NULL when the key
	// has its own scheme.
	scheme tpm2.TPMTSigScheme
}

// akTemplate is the AK this command creates: ECDSA P-256 restricted signing
// with SHA-256, no authorization value (noDA), fixed to this TPM.
func akTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
			NoDA: true, Restricted: true, SignEncrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}

// tpmErr explains the TPM errors a user can do something about.
func tpmErr(what string, err error) error {
	switch {
	case errors.Is(err, tpm2.TPMRCObjectMemory), errors.Is(err, tpm2.TPMRCSessionMemory):
		return fmt.Errorf("%s: %w: the TPM has no free slot; without a resource manager transient objects and sessions stay loaded: flush them (tpm2_flushcontext -t; -s) or use /dev/tpmrm0", what, err)
	case errors.Is(err, tpm2.TPMRCBadAuth), errors.Is(err, tpm2.TPMRCAuthFail):
		return fmt.Errorf("%s: %w: vigil attest tpm uses empty authorization values", what, err)
	case errors.Is(err, tpm2.TPMRCLockout):
		return fmt.Errorf("%s: %w: the TPM is in dictionary-attack lockout", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// readAK reads the key at handle and checks that it can be an AK Vigil
// verifies; it returns nil, nil when the handle is empty.
func readAK(t transport.TPM, handle tpm2.TPMHandle) (*tpmAK, error) {
	rsp, err := tpm2.ReadPublic{ObjectHandle: handle}.Execute(t)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, tpmErr(fmt.Sprintf("reading the key at 0x%08x", uint32(handle)), err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("the key at 0x%08x: its public area: %w", uint32(handle), err)
	}
	ak := &tpmAK{handle: handle, name: rsp.Name, public: *pub}
	notAK := func(why string, args ...any) error {
		return fmt.Errorf("the key at persistent handle 0x%08x is not an attestation key Vigil can verify: %s; pick a free handle with --ak-handle (0x81010002 is also where TPM makers put an ECC endorsement key), or evict this one (tpm2_evictcontrol -c 0x%08x)",
			uint32(handle), fmt.Sprintf(why, args...), uint32(handle))
	}
	a := pub.ObjectAttributes
	if !a.SignEncrypt || !a.Restricted || a.Decrypt {
		return nil, notAK("it is not a restricted signing key (sign %v, restricted %v, decrypt %v)", a.SignEncrypt, a.Restricted, a.Decrypt)
	}
	if !a.FixedTPM {
		return nil, notAK("it is not fixedTPM: it could have been made outside this TPM")
	}
	if !a.UserWithAuth {
		return nil, notAK("its use needs a policy (userWithAuth is clear)")
	}
	var scheme tpm2.TPMAlgID
	var hash tpm2.TPMIAlgHash
	switch pub.Type {
	case tpm2.TPMAlgECC:
		p, err := pub.Parameters.ECCDetail()
		if err != nil {
			return nil, notAK("%v", err)
		}
		switch p.CurveID {
		case tpm2.TPMECCNistP256, tpm2.TPMECCNistP384, tpm2.TPMECCNistP521:
		default:
			return nil, notAK("its curve 0x%04x is not a NIST curve", uint16(p.CurveID))
		}
		scheme = p.Scheme.Scheme
		if scheme == tpm2.TPMAlgECDSA {
			d, _ := p.Scheme.Details.ECDSA()
			hash = d.HashAlg
		} else if scheme != tpm2.TPMAlgNull {
			return nil, notAK("its scheme 0x%04x is not ECDSA", uint16(scheme))
		}
	case tpm2.TPMAlgRSA:
		p, err := pub.Parameters.RSADetail()
		if err != nil {
			return nil, notAK("%v", err)
		}
		if p.KeyBits < 2048 {
			return nil, notAK("it is a %d-bit RSA key (2048 bits at least)", p.KeyBits)
		}
		switch scheme = p.Scheme.Scheme; scheme {
		case tpm2.TPMAlgRSASSA:
			d, _ := p.Scheme.Details.RSASSA()
			hash = d.HashAlg
		case tpm2.TPMAlgRSAPSS:
			d, _ := p.Scheme.Details.RSAPSS()
			hash = d.HashAlg
		case tpm2.TPMAlgNull:
		default:
			return nil, notAK("its scheme 0x%04x is not RSASSA or RSAPSS", uint16(scheme))
		}
	default:
		return nil, notAK("its type 0x%04x is neither ECC nor RSA", uint16(pub.Type))
	}
	if scheme != tpm2.TPMAlgNull && hash != tpm2.TPMAlgSHA256 {
		return nil, notAK("it signs with hash algorithm 0x%04x, and Vigil verifies SHA-256 signatures", uint16(hash))
	}
	if ak.pub, err = tpm2.Pub(*pub); err != nil {
		return nil, notAK("%v", err)
	}
	ak.scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}
	if scheme == tpm2.TPMAlgNull {
		// The key has no scheme of its own: the quote names one.
		alg := tpm2.TPMAlgECDSA
		if pub.Type == tpm2.TPMAlgRSA {
			alg = tpm2.TPMAlgRSASSA
		}
		ak.scheme = tpm2.TPMTSigScheme{Scheme: alg, Details: tpm2.NewTPMUSigScheme(alg, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})}
	}
	return ak, nil
}

// ensureAK returns the AK at handle, creating it there if the handle is
// empty: a primary key of the owner hierarchy from akTemplate, made
// persistent, its transient copy flushed.
func ensureAK(t transport.TPM, handle tpm2.TPMHandle) (ak *tpmAK, created bool, err error) {
	if ak, err := readAK(t, handle); err != nil || ak != nil {
		return ak, false, err
	}
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	prim, err := tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(akTemplate())}.Execute(t)
	if err != nil {
		return nil, false, tpmErr("creating the attestation key (TPM2_CreatePrimary in the owner hierarchy)", err)
	}
	defer func() {
		if _, ferr := (tpm2.FlushContext{FlushHandle: prim.ObjectHandle}).Execute(t); ferr != nil && err == nil {
			err = tpmErr(fmt.Sprintf("flushing the transient key 0x%08x", uint32(prim.ObjectHandle)), ferr)
		}
	}()
	_, err = tpm2.EvictControl{Auth: owner, ObjectHandle: &tpm2.NamedHandle{Handle: prim.ObjectHandle, Name: prim.Name},
		PersistentHandle: handle}.Execute(t)
	if errors.Is(err, tpm2.TPMRCNVDefined) {
		// made there meanwhile by another process
		ak, err := readAK(t, handle)
		return ak, false, err
	}
	if err != nil {
		return nil, false, tpmErr(fmt.Sprintf("making the attestation key persistent at 0x%08x (TPM2_EvictControl)", uint32(handle)), err)
	}
	ak, err = readAK(t, handle)
	if err == nil && ak == nil {
		err = fmt.Errorf("the attestation key made persistent at 0x%08x is not there", uint32(handle))
	}
	return ak, err == nil, err
}

// tpmQuote is a quote and the PCR values read after it.
type tpmQuote struct {
	quote, sig []byte
	values     pcrValues
}

// quotePCRs quotes the sha256 PCRs over nonce with the AK and reads them.
func quotePCRs(t transport.TPM, ak *tpmAK, nonce []byte, pcrs []int) (*tpmQuote, error) {
	sel := make([]uint, len(pcrs))
	for i, p := range pcrs {
		sel[i] = uint(p)
	}
	selection := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(sel...)}}}
	rsp, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       ak.scheme,
		PCRSelect:      selection,
	}.Execute(t)
	if err != nil {
		return nil, tpmErr(fmt.Sprintf("quoting PCRs %v with the key at 0x%08x", pcrs, uint32(ak.handle)), err)
	}
	q := &tpmQuote{quote: rsp.Quoted.Bytes(), sig: tpm2.Marshal(rsp.Signature), values: pcrValues{}}
	// PCR_Read returns at most 8 PCRs at a time: read until all are.
	pending := slices.Clone(pcrs)
	for len(pending) > 0 {
		sel := make([]uint, len(pending))
		for i, p := range pending {
			sel[i] = uint(p)
		}
		r, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(sel...)}}}}.Execute(t)
		if err != nil {
			return nil, tpmErr(fmt.Sprintf("reading PCRs %v", pending), err)
		}
		var got []int
		for _, s := range r.PCRSelectionOut.PCRSelections {
			for i := 0; i < len(s.PCRSelect)*8; i++ {
				if s.Hash == tpm2.TPMAlgSHA256 && s.PCRSelect[i/8]&(1<<(i%8)) != 0 {
					got = append(got, i)
				}
			}
		}
		if len(got) == 0 || len(got) != len(r.PCRValues.Digests) {
			return nil, fmt.Errorf("reading PCRs %v: the TPM returned %d values for PCRs %v (has it a sha256 bank with these PCRs?)", pending, len(r.PCRValues.Digests), got)
		}
		for k, i := range got {
			q.values.set("sha256", i, r.PCRValues.Digests[k].Buffer)
		}
		pending = slices.DeleteFunc(pending, func(p int) bool { return slices.Contains(got, p) })
	}
	return q, nil
}
