package attest

// The tpm2-quote verifier: a TPM 2.0 quote exactly as `tpm2_quote -m msg -s
// sig` writes it (a marshalled TPMS_ATTEST and TPMT_SIGNATURE, big-endian,
// TPM 2.0 Library Part 2), the PCR values it covers and the event log that
// explains them (the evidence's JSON log, or a TCG PC Client crypto-agile
// binary log, little-endian, tpm2_binlog.go's parser).
//
// The parsers here are small and strict: every length is bounded before it
// is used, nothing is left over, unknown algorithms are refused.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

func init() { register(tpm2Verifier{}) }

// Bounds of the tpm2-quote evidence.
const (
	// MaxTPM2QuoteBytes bounds the marshalled TPMS_ATTEST.
	MaxTPM2QuoteBytes = 4 << 10
	// MaxTPM2SignatureBytes bounds the marshalled TPMT_SIGNATURE.
	MaxTPM2SignatureBytes = 1 << 10
	// MaxTPM2Events bounds the events of an event log (JSON or binary).
	MaxTPM2Events = 1024
	// MaxTPM2BinaryEventLogBytes bounds a binary event log.
	MaxTPM2BinaryEventLogBytes = 1 << 20
	// TPM2PCRs is the number of PCRs of a PC Client TPM (0 to 23).
	TPM2PCRs = 24
)

// TPM 2.0 constants (TPM 2.0 Library, Part 2).
const (
	tpmGeneratedValue = 0xff544347 // TPM_GENERATED_VALUE
	tpmSTAttestQuote  = 0x8018     // TPM_ST_ATTEST_QUOTE

	tpmAlgSHA1   = 0x0004
	tpmAlgSHA256 = 0x000b
	tpmAlgSHA384 = 0x000c
	tpmAlgSHA512 = 0x000d
	tpmAlgSM3256 = 0x0012
	tpmAlgRSASSA = 0x0014
	tpmAlgRSAPSS = 0x0016
	tpmAlgECDSA  = 0x0018

	maxTPMHashSize   = 64  // the largest digest (SHA-512)
	maxTPMNameSize   = 66  // sizeof(TPMU_NAME) = sizeof(TPMT_HA)
	maxTPMDataSize   = 66  // TPM2B_DATA holds a TPMT_HA
	maxPCRSelectSize = 4   // sizeofSelect: 32 PCRs (PC Client TPMs have 24: 3 bytes)
	maxPCRBanks      = 16  // TPML_PCR_SELECTION.count
	maxECCParamSize  = 66  // P-521
	maxRSASigSize    = 512 // RSA-4096
	minRSABits       = 2048
)

// tpmBank is a PCR bank: its hash algorithm's name in the evidence's PCR map
// and its digest size.
type tpmBank struct {
	name string
	size int
}

var tpmBanks = map[uint16]tpmBank{
	tpmAlgSHA1:   {"sha1", 20},
	tpmAlgSHA256: {"sha256", 32},
	tpmAlgSHA384: {"sha384", 48},
	tpmAlgSHA512: {"sha512", 64},
	tpmAlgSM3256: {"sm3_256", 32},
}

// tpmsAttest is a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE.
type tpmsAttest struct {
	Magic           uint32
	Type            uint16
	QualifiedSigner []byte // TPM2B_NAME
	ExtraData       []byte // TPM2B_DATA: the nonce
	Clock           uint64 // TPMS_CLOCK_INFO
	ResetCount      uint32
	RestartCount    uint32
	Safe            uint8
	FirmwareVersion uint64
	PCRSelect       []tpmsPCRSelection // TPMS_QUOTE_INFO
	PCRDigest       []byte
}

// tpmsPCRSelection is one bank of a TPML_PCR_SELECTION: bit i of Select
// (byte i/8, bit i%8) selects PCR i.
type tpmsPCRSelection struct {
	Hash   uint16
	Select []byte
}

// indices are the PCRs selected, ascending.
func (s tpmsPCRSelection) indices() []int {
	var out []int
	for i := 0; i < len(s.Select)*8; i++ {
		if s.Select[i/8]&(1<<(i%8)) != 0 {
			out = append(out, i)
		}
	}
	return out
}

// tpmtSignature is a TPMT_SIGNATURE of an ECDSA, RSASSA or RSAPSS key.
type tpmtSignature struct {
	Alg  uint16
	Hash uint16
	R, S []byte // ECDSA
	RSA  []byte // RSASSA, RSAPSS
}

// tpmReader reads big-endian TPM structures; the first error sticks.
type tpmReader struct {
	what string // the structure, for errors
	b    []byte
	err  error
}

func (r *tpmReader) take(n int, field string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = fmt.Errorf("%s is truncated: %s needs %d bytes, %d are left", r.what, field, n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *tpmReader) u8(field string) uint8 {
	if b := r.take(1, field); b != nil {
		return b[0]
	}
	return 0
}

func (r *tpmReader) u16(field string) uint16 {
	if b := r.take(2, field); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *tpmReader) u32(field string) uint32 {
	if b := r.take(4, field); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *tpmReader) u64(field string) uint64 {
	if b := r.take(8, field); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// tpm2b reads a TPM2B (a uint16 size, then that many bytes) of at most max bytes.
func (r *tpmReader) tpm2b(field string, max int) []byte {
	n := int(r.u16(field + " size"))
	if r.err == nil && n > max {
		r.err = fmt.Errorf("%s: %s is %d bytes; at most %d are allowed", r.what, field, n, max)
		return nil
	}
	return r.take(n, field)
}

// end fails unless everything was read.
func (r *tpmReader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%s has %d trailing bytes after its end", r.what, len(r.b))
	}
	return r.err
}

// parseTPMSAttest parses a quote as `tpm2_quote -m` writes it: a TPMS_ATTEST
// of type TPM_ST_ATTEST_QUOTE, without the TPM2B_ATTEST size, and nothing after.
func parseTPMSAttest(b []byte) (*tpmsAttest, error) {
	if len(b) > MaxTPM2QuoteBytes {
		return nil, fmt.Errorf("the quote is %d bytes; at most %d are accepted", len(b), MaxTPM2QuoteBytes)
	}
	r := &tpmReader{what: "the quote (TPMS_ATTEST)", b: b}
	q := &tpmsAttest{}
	q.Magic = r.u32("magic")
	if r.err == nil && q.Magic != tpmGeneratedValue {
		return nil, fmt.Errorf("the quote's magic is 0x%08x, not TPM_GENERATED_VALUE (0x%08x): the TPM did not generate it", q.Magic, uint32(tpmGeneratedValue))
	}
	q.Type = r.u16("type")
	if r.err == nil && q.Type != tpmSTAttestQuote {
		return nil, fmt.Errorf("the quote's type is 0x%04x, not TPM_ST_ATTEST_QUOTE (0x%04x)", q.Type, tpmSTAttestQuote)
	}
	q.QualifiedSigner = r.tpm2b("qualifiedSigner", maxTPMNameSize)
	q.ExtraData = r.tpm2b("extraData", maxTPMDataSize)
	q.Clock = r.u64("clockInfo.clock")
	q.ResetCount = r.u32("clockInfo.resetCount")
	q.RestartCount = r.u32("clockInfo.restartCount")
	q.Safe = r.u8("clockInfo.safe")
	if r.err == nil && q.Safe > 1 {
		return nil, fmt.Errorf("the quote's clockInfo.safe is %d, not a TPMI_YES_NO", q.Safe)
	}
	q.FirmwareVersion = r.u64("firmwareVersion")
	n := r.u32("pcrSelect.count")
	if r.err == nil && n > maxPCRBanks {
		return nil, fmt.Errorf("the quote's PCR selection has %d banks; at most %d are accepted", n, maxPCRBanks)
	}
	for i := 0; r.err == nil && i < int(n); i++ {
		s := tpmsPCRSelection{Hash: r.u16("pcrSelect.hash")}
		size := int(r.u8("pcrSelect.sizeofSelect"))
		if r.err == nil && size > maxPCRSelectSize {
			return nil, fmt.Errorf("the quote's PCR selection of bank 0x%04x is %d bytes; at most %d are accepted", s.Hash, size, maxPCRSelectSize)
		}
		s.Select = r.take(size, "pcrSelect.pcrSelect")
		q.PCRSelect = append(q.PCRSelect, s)
	}
	q.PCRDigest = r.tpm2b("pcrDigest", maxTPMHashSize)
	if err := r.end(); err != nil {
		return nil, err
	}
	return q, nil
}

// marshal writes the quote as the TPM does (for the simulator and tests).
func (q *tpmsAttest) marshal() []byte {
	b := binary.BigEndian.AppendUint32(nil, q.Magic)
	b = binary.BigEndian.AppendUint16(b, q.Type)
	b = appendTPM2B(b, q.QualifiedSigner)
	b = appendTPM2B(b, q.ExtraData)
	b = binary.BigEndian.AppendUint64(b, q.Clock)
	b = binary.BigEndian.AppendUint32(b, q.ResetCount)
	b = binary.BigEndian.AppendUint32(b, q.RestartCount)
	b = append(b, q.Safe)
	b = binary.BigEndian.AppendUint64(b, q.FirmwareVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(len(q.PCRSelect)))
	for _, s := range q.PCRSelect {
		b = binary.BigEndian.AppendUint16(b, s.Hash)
		b = append(b, byte(len(s.Select)))
		b = append(b, s.Select...)
	}
	return appendTPM2B(b, q.PCRDigest)
}

func appendTPM2B(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

// parseTPMTSignature parses a signature as `tpm2_quote -s` writes it (the
// default "tss" format): a TPMT_SIGNATURE, and nothing after.
func parseTPMTSignature(b []byte) (*tpmtSignature, error) {
	if len(b) > MaxTPM2SignatureBytes {
		return nil, fmt.Errorf("the signature is %d bytes; at most %d are accepted", len(b), MaxTPM2SignatureBytes)
	}
	r := &tpmReader{what: "the signature (TPMT_SIGNATURE)", b: b}
	s := &tpmtSignature{Alg: r.u16("sigAlg")}
	if r.err != nil {
		return nil, r.err
	}
	switch s.Alg {
	case tpmAlgECDSA:
		s.Hash = r.u16("hash")
		s.R = r.tpm2b("signatureR", maxECCParamSize)
		s.S = r.tpm2b("signatureS", maxECCParamSize)
	case tpmAlgRSASSA, tpmAlgRSAPSS:
		s.Hash = r.u16("hash")
		s.RSA = r.tpm2b("sig", maxRSASigSize)
	default:
		return nil, fmt.Errorf("the signature's algorithm is 0x%04x, not ECDSA (0x%04x), RSASSA (0x%04x) or RSAPSS (0x%04x)", s.Alg, tpmAlgECDSA, tpmAlgRSASSA, tpmAlgRSAPSS)
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	if s.Hash != tpmAlgSHA256 {
		return nil, fmt.Errorf("the signature's hash algorithm is 0x%04x, not SHA-256 (0x%04x)", s.Hash, tpmAlgSHA256)
	}
	return s, nil
}

// marshal writes the signature as the TPM does (for the simulator and tests).
func (s *tpmtSignature) marshal() []byte {
	b := binary.BigEndian.AppendUint16(nil, s.Alg)
	b = binary.BigEndian.AppendUint16(b, s.Hash)
	if s.Alg == tpmAlgECDSA {
		return appendTPM2B(appendTPM2B(b, s.R), s.S)
	}
	return appendTPM2B(b, s.RSA)
}

var errNoAK = errors.New("no TPM attestation key is enrolled for this device")

// verify checks the signature over SHA-256(msg) with the AK.
func (s *tpmtSignature) verify(ak crypto.PublicKey, msg []byte) error {
	digest := sha256.Sum256(msg)
	switch k := ak.(type) {
	case nil:
		return errNoAK
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil || k.X == nil || k.Y == nil {
			return errNoAK
		}
		if s.Alg != tpmAlgECDSA {
			return fmt.Errorf("the signature's algorithm is 0x%04x but the enrolled AK is an ECDSA key", s.Alg)
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		if len(s.R) == 0 || len(s.S) == 0 || len(s.R) > size || len(s.S) > size {
			return fmt.Errorf("the ECDSA signature's r (%d bytes) or s (%d bytes) does not fit the AK's %d-byte curve", len(s.R), len(s.S), size)
		}
		if !ecdsa.Verify(k, digest[:], new(big.Int).SetBytes(s.R), new(big.Int).SetBytes(s.S)) {
			return errors.New("the quote's ECDSA signature does not verify with the enrolled AK")
		}
		return nil
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return errNoAK
		}
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("the enrolled AK is a %d-bit RSA key; at least %d bits are required", k.N.BitLen(), minRSABits)
		}
		var err error
		switch s.Alg {
		case tpmAlgRSASSA:
			err = rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], s.RSA)
		case tpmAlgRSAPSS:
			err = rsa.VerifyPSS(k, crypto.SHA256, digest[:], s.RSA, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256})
		default:
			return fmt.Errorf("the signature's algorithm is 0x%04x but the enrolled AK is an RSA key", s.Alg)
		}
		if err != nil {
			return errors.New("the quote's RSA signature does not verify with the enrolled AK")
		}
		return nil
	default:
		return fmt.Errorf("the enrolled TPM attestation key is a %T, not an ECDSA or RSA public key", ak)
	}
}

// replayEvent is one event of a log, JSON or binary, as the replay needs it.
type replayEvent struct {
	PCR      int
	SHA256   [32]byte
	Firmware bool // the firmware measurement
	// Initial sets the PCR's value instead of extending it: PCR 0 starts
	// from the startup locality (TPM2_Startup) a binary log names.
	Initial bool
}

// tpm2Verifier verifies tpm2-quote evidence.
type tpm2Verifier struct{}

func (tpm2Verifier) Format() string { return topology.AttestTPM2Quote }

// Verify checks, in order: the quote's structure, its signature by the
// enrolled AK, extraData = the nonce, the TPM counters against the last
// accepted quote, the PCR selection covering the class's PCRs, pcrDigest =
// SHA-256 of the evidence's PCR values, the event log replaying to the
// class's PCRs, and its single firmware event being a reference value.
// Every failed check adds a reason; those that depend on one that failed
// are skipped. Clock is set only when the signature verified, so an
// unauthenticated quote never moves the counters recorded for the device;
// the firmware only when everything passed.
func (tpm2Verifier) Verify(ev *Evidence, key Enrolled, pol Policy, nonce []byte, now time.Time) Result {
	res := Result{Status: StatusFailed, Format: topology.AttestTPM2Quote}
	fail := func(format string, args ...any) { res.Reasons = append(res.Reasons, fmt.Sprintf(format, args...)) }
	if ev == nil || ev.TPM2 == nil {
		fail("the evidence has no tpm2 section")
		return res
	}
	t := ev.TPM2
	pcrs := pol.PCRs
	if len(pcrs) == 0 {
		pcrs = []int{16} // the class default (topology)
	}
	for _, p := range pcrs {
		if p < 0 || p >= TPM2PCRs {
			fail("class %s requires PCR %d, which does not exist (0 to %d)", pol.Class, p, TPM2PCRs-1)
			return res
		}
	}

	q, err := parseTPMSAttest(t.Quote)
	if err != nil {
		fail("%v", err)
		return res
	}
	signed := false
	if key.AK == nil {
		fail("%v", errNoAK)
	} else if sig, err := parseTPMTSignature(t.Signature); err != nil {
		fail("%v", err)
	} else if err := sig.verify(key.AK, t.Quote); err != nil {
		fail("%v", err)
	} else {
		signed = true
		res.Clock = &TPMClock{ResetCount: q.ResetCount, RestartCount: q.RestartCount}
	}

	if len(nonce) == 0 || subtle.ConstantTimeCompare(q.ExtraData, nonce) != 1 {
		fail("the quote's extraData is not the nonce issued for this attestation")
	} else {
		res.Authentic = signed
	}

	if c := key.Clock; c != nil {
		if q.ResetCount < c.ResetCount || q.ResetCount == c.ResetCount && q.RestartCount < c.RestartCount {
			fail("TPM counters went back: resetCount %d (last accepted %d) restartCount %d (last accepted %d): a replayed or rolled-back quote",
				q.ResetCount, c.ResetCount, q.RestartCount, c.RestartCount)
		}
	}

	quoted, ok := tpm2QuotedPCRs(q, t.PCRs, pcrs, pol.Class, fail)
	if !ok || !signed {
		quoted = nil // PCR values the TPM did not vouch for are not compared to the log
	}

	events, err := tpm2Events(t)
	if err != nil {
		fail("%v", err)
		return res
	}
	replayed := tpm2Replay(events)
	if quoted != nil {
		for _, p := range pcrs {
			if got, want := replayed[p], quoted[p]; subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				fail("the event log does not replay to PCR %d: it gives %x, the quote %x", p, got, want)
			}
		}
	}

	var fw []replayEvent
	for _, e := range events {
		if e.Firmware && !e.Initial && slices.Contains(pcrs, e.PCR) {
			fw = append(fw, e)
		}
	}
	var ref topology.FirmwareRef
	switch len(fw) {
	case 0:
		fail("the event log has no firmware event in the class's PCRs %v", pcrs)
	case 1:
		sha := hex.EncodeToString(fw[0].SHA256[:])
		var known bool
		if ref, known = firmwareRef(pol, sha); !known {
			fail("firmware %s is not a reference value of class %s", sha, pol.Class)
		}
	default:
		fail("the event log has %d firmware events in the class's PCRs %v; exactly one is accepted", len(fw), pcrs)
	}

	if len(res.Reasons) == 0 && signed && quoted != nil {
		res.Status = StatusPassed
		res.FirmwareVersion = ref.Version
		res.FirmwareSHA256 = hex.EncodeToString(fw[0].SHA256[:])
	}
	return res
}

// tpm2QuotedPCRs checks the quote's PCR selection against the class's PCRs
// and its pcrDigest against the evidence's PCR values, and returns the
// sha256 bank's values (by PCR) when all of them check out.
func tpm2QuotedPCRs(q *tpmsAttest, values map[string]map[string]string, pcrs []int, class string, fail func(string, ...any)) (map[int][32]byte, bool) {
	ok := true
	covered := map[int]bool{}
	sha256Bank := map[int][32]byte{}
	var concat []byte
	for _, s := range q.PCRSelect {
		bank, known := tpmBanks[s.Hash]
		if !known {
			fail("the quote selects PCRs of an unknown hash algorithm 0x%04x", s.Hash)
			return nil, false
		}
		for _, i := range s.indices() {
			h, present := values[bank.name][strconv.Itoa(i)]
			if !present {
				fail("the quote covers PCR %s:%d but the evidence has no value for it", bank.name, i)
				ok = false
				continue
			}
			v, err := hex.DecodeString(h)
			if err != nil || len(v) != bank.size {
				fail("the evidence's value of PCR %s:%d is not %d bytes of hex", bank.name, i, bank.size)
				ok = false
				continue
			}
			concat = append(concat, v...)
			if s.Hash == tpmAlgSHA256 {
				covered[i] = true
				sha256Bank[i] = [32]byte(v)
			}
		}
	}
	for _, p := range pcrs {
		if !covered[p] {
			fail("the quote's PCR selection does not cover sha256 PCR %d, which class %s requires", p, class)
			ok = false
		}
	}
	if !ok {
		return nil, false
	}
	sum := sha256.Sum256(concat)
	if len(q.PCRDigest) != len(sum) || subtle.ConstantTimeCompare(q.PCRDigest, sum[:]) != 1 {
		fail("the quote's pcrDigest %x is not the SHA-256 of the evidence's PCR values (%x)", q.PCRDigest, sum)
		return nil, false
	}
	return sha256Bank, true
}

// tpm2Events reads the evidence's event log: the JSON one, or else the
// binary one.
func tpm2Events(t *TPM2Evidence) ([]replayEvent, error) {
	switch {
	case len(t.EventLog) > 0:
		if len(t.EventLog) > MaxTPM2Events {
			return nil, fmt.Errorf("the event log has %d events; at most %d are accepted", len(t.EventLog), MaxTPM2Events)
		}
		out := make([]replayEvent, 0, len(t.EventLog))
		for i, e := range t.EventLog {
			if e.PCR < 0 || e.PCR >= TPM2PCRs {
				return nil, fmt.Errorf("event %d of the event log names PCR %d, which does not exist (0 to %d)", i, e.PCR, TPM2PCRs-1)
			}
			d, err := hex.DecodeString(e.SHA256)
			if err != nil || len(d) != sha256.Size {
				return nil, fmt.Errorf("event %d of the event log: sha256 is not 64 hex digits", i)
			}
			out = append(out, replayEvent{PCR: e.PCR, SHA256: [32]byte(d), Firmware: e.Type == EventFirmware})
		}
		return out, nil
	case len(t.BinaryEventLog) > 0:
		log, err := parseTCGEventLog(t.BinaryEventLog)
		if err != nil {
			return nil, err
		}
		return log.replayEvents(), nil
	default:
		return nil, errors.New("the evidence has no event log")
	}
}

// tpm2Replay extends every event's digest into its PCR, from 32 zero bytes
// (PCR 0 from the startup locality a binary log names), and returns the
// values of the PCRs.
func tpm2Replay(events []replayEvent) [TPM2PCRs][32]byte {
	var pcrs [TPM2PCRs][32]byte
	for _, e := range events {
		if e.Initial {
			pcrs[e.PCR] = e.SHA256
			continue
		}
		h := sha256.New()
		h.Write(pcrs[e.PCR][:])
		h.Write(e.SHA256[:])
		h.Sum(pcrs[e.PCR][:0])
	}
	return pcrs
}
