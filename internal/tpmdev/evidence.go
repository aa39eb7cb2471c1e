package tpmdev

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/vigil-iot/vigil/attest"
)

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

// PCRValues are PCR values by bank name and index.
type PCRValues map[string]map[int][]byte

// Set sets the value of PCR i of bank.
func (v PCRValues) Set(bank string, i int, val []byte) {
	if v[bank] == nil {
		v[bank] = map[int][]byte{}
	}
	v[bank][i] = val
}

// EventLogFile is an event log as --event-log gives it: one of Events and
// Binary is set.
type EventLogFile struct {
	Events []attest.Event // a JSON log
	Binary []byte         // or a TCG binary log
}

// ErrPCRDigest is what BuildEvidence's error matches (errors.Is) when the
// PCR values are not those the quote covers, as when a PCR was extended
// between the quote and the read.
//
// ErrPCRDigest: the PCR values are not those the quote covers.
var ErrPCRDigest = errors.New("the PCR values are not the ones quoted")

// BuildEvidence checks a quote, its signature and the PCR values
// against each other and the nonce, and makes the evidence. Warnings are
// problems Vigil will refuse the evidence for that are not in the files'
// consistency (a log that does not replay).
func BuildEvidence(quote, sig, nonce []byte, values PCRValues, log *EventLogFile) (*attest.Evidence, []string, error) {
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
			ErrPCRDigest, got, strings.Join(quoted, ", "), sum)
	}

	ev := &attest.Evidence{Format: formatTPM2Quote, Nonce: hex.EncodeToString(nonce),
		TPM2: &attest.TPM2Evidence{Quote: quote, Signature: sig, PCRs: out}}
	var warnings []string
	if log != nil {
		ev.TPM2.EventLog, ev.TPM2.BinaryEventLog = log.Events, log.Binary
		warnings = ReplayWarnings(log.Events, values["sha256"], used["sha256"])
	}
	return ev, warnings, nil
}

// ReplayWarnings replays a JSON event log and names each quoted sha256 PCR
// it extends whose value it does not reproduce.
func ReplayWarnings(events []attest.Event, values map[int][]byte, quoted map[int]bool) []string {
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

// WriteEvidence writes the evidence as indented JSON and a newline, as
// `vigil attest tpm quote` prints it, refusing evidence larger than Vigil
// accepts.
func WriteEvidence(w io.Writer, ev *attest.Evidence) error {
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

// ParseNonce reads a nonce Vigil issued: 32 bytes in hex.
func ParseNonce(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("--nonce is required: the 64 hex digits 'vigil device challenge NAME' prints")
	}
	b, err := hex.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), "0x"))
	if err != nil || len(b) != attest.NonceSize {
		return nil, fmt.Errorf("--nonce %q is not %d bytes of hex (%d hex digits, as 'vigil device challenge NAME' prints)", s, attest.NonceSize, 2*attest.NonceSize)
	}
	return b, nil
}

// ParseAKHandle reads a persistent handle such as 0x81010002.
func ParseAKHandle(s string) (tpm2.TPMHandle, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 0, 32)
	if err != nil || v < 0x81000000 || v > 0x81ffffff {
		return 0, fmt.Errorf("--ak-handle %q is not a persistent handle (0x81000000 to 0x81FFFFFF, e.g. %s)", s, DefaultAKHandle)
	}
	return tpm2.TPMHandle(v), nil
}

// CheckPCRIndexes checks --pcrs: at least one PCR, each one that exists.
func CheckPCRIndexes(pcrs []int) error {
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

// ParsePCRArgs reads --pcr INDEX=HEX, BANK:INDEX=HEX and INDEX=@FILE.
func ParsePCRArgs(args []string) (PCRValues, error) {
	out := PCRValues{}
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
			if v, err = ReadBounded(path, "--pcr "+key, b.size); err != nil {
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
		out.Set(bank, i, v)
	}
	return out, nil
}

// ReadBounded reads a file of at most max bytes that is not empty; what
// (a flag) prefixes its errors.
func ReadBounded(path, what string, max int) ([]byte, error) {
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

// ReadEventLog reads --event-log: a JSON array of events, or else a TCG
// crypto-agile binary log (which Vigil parses and replays itself).
func ReadEventLog(path string) (*EventLogFile, error) {
	b, err := ReadBounded(path, "--event-log", attest.MaxTPM2BinaryEventLogBytes)
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
		return &EventLogFile{Events: events}, nil
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
	return &EventLogFile{Binary: b}, nil
}
