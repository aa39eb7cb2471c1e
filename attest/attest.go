// Package attest verifies device firmware evidence: TPM 2.0 quotes, DICE
// certificate chains and EAT tokens, each against the device's enrolled key,
// its class's policy and the nonce Vigil issued. Verifiers are pure: no I/O,
// no clock but the one passed in, no state but what the caller hands over
// (the device's enrolled keys and what its last accepted evidence said).
// Bad evidence is a failed Result with precise reasons, never a panic and
// never a pass.
//
// It imports topology (for the class policy) and crypto libraries only.
package attest

import (
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Result statuses.
const (
	StatusPassed = "passed"
	StatusFailed = "failed"
)

// NonceSize is the length of a nonce: 32 random bytes.
const NonceSize = 32

// MaxEvidenceBytes bounds the JSON evidence document a device submits.
const MaxEvidenceBytes = 256 << 10

// Evidence is what a device submits for one nonce (the JSON body of
// POST /v1/devices/{name}/attestations). Exactly one of TPM2, DICE and EAT
// is set, matching Format.
type Evidence struct {
	Format string        `json:"format"`
	Nonce  string        `json:"nonce"` // hex of the nonce Vigil issued
	TPM2   *TPM2Evidence `json:"tpm2,omitempty"`
	DICE   *DICEEvidence `json:"dice,omitempty"`
	EAT    *EATEvidence  `json:"eat,omitempty"`
}

// TPM2Evidence is a TPM 2.0 quote exactly as `tpm2_quote -m msg -s sig`
// writes it, the PCR values it covers and the event log that explains them.
type TPM2Evidence struct {
	// Quote is the marshalled TPMS_ATTEST (tpm2_quote -m).
	Quote []byte `json:"quote"`
	// Signature is the marshalled TPMT_SIGNATURE (tpm2_quote -s).
	Signature []byte `json:"signature"`
	// PCRs are the PCR values by bank ("sha256") and index ("16"), in hex.
	PCRs map[string]map[string]string `json:"pcrs"`
	// EventLog lists, in order, what was extended into the PCRs. The event
	// of type "firmware" carries the firmware image's SHA-256.
	EventLog []Event `json:"eventLog,omitempty"`
	// BinaryEventLog is a TCG PC Client (crypto-agile) event log, for
	// devices that keep one; used when EventLog is empty.
	BinaryEventLog []byte `json:"binaryEventLog,omitempty"`
}

// Event is one extension of a PCR.
type Event struct {
	PCR    int    `json:"pcr"`
	SHA256 string `json:"sha256"` // hex of the digest extended
	Type   string `json:"type"`   // "firmware" for the firmware image
}

// EventFirmware is the Event.Type of the firmware measurement.
const EventFirmware = "firmware"

// DICEEvidence is a DICE certificate chain, leaf (the alias key) first,
// and the leaf key's signature over the nonce.
type DICEEvidence struct {
	Chain     [][]byte `json:"chain"`     // DER certificates, leaf first
	Signature []byte   `json:"signature"` // by the leaf key over the nonce (ECDSA ASN.1 or Ed25519)
}

// EATEvidence is an RFC 9711 Entity Attestation Token in a COSE_Sign1.
type EATEvidence struct {
	Token []byte `json:"token"`
}

// Enrolled is what Vigil holds about a device's attestation keys and its
// last accepted evidence.
type Enrolled struct {
	// AK is the TPM attestation key's public key (tpm2-quote).
	AK crypto.PublicKey
	// EATKey is the key that signs the device's tokens (eat).
	EATKey crypto.PublicKey
	// Clock is the TPM clock info of the last accepted quote, nil if none.
	Clock *TPMClock
}

// TPMClock is the part of a quote's clock info that must never go back for
// one TPM: resetCount counts TPM resets (reboots), restartCount TPM
// restarts and resumes since the last reset.
type TPMClock struct {
	ResetCount   uint32 `json:"resetCount"`
	RestartCount uint32 `json:"restartCount"`
}

// Policy is what a device's class asks of its evidence.
type Policy struct {
	Class     string
	Formats   []string
	PCRs      []int
	DICERoots *CertPool
	Firmware  []topology.FirmwareRef
}

// PolicyOf reads the policy of a class that requires attestation.
func PolicyOf(c *topology.Class) Policy {
	p := Policy{Class: c.Name, Formats: c.Attestation.Formats, PCRs: c.Attestation.PCRs, Firmware: c.Attestation.Firmware}
	p.DICERoots = NewCertPool(c.Attestation.DICERoots)
	return p
}

// Result is a verification's outcome.
type Result struct {
	Status          string   `json:"status"`
	Format          string   `json:"format"`
	FirmwareVersion string   `json:"firmwareVersion,omitempty"`
	FirmwareSHA256  string   `json:"firmwareSha256,omitempty"`
	Reasons         []string `json:"reasons,omitempty"`
	// EvidenceDigest is the hex SHA-256 of the evidence as submitted.
	EvidenceDigest string `json:"evidenceDigest"`
	// Clock is the accepted quote's clock info, to record for the next one.
	Clock *TPMClock `json:"clock,omitempty"`
	// Authentic is set for a TPM quote signed by the enrolled AK over this
	// attestation's nonce: whatever else it fails, it is the subject's own
	// state now, not an old quote replayed or a forgery. A failure that is
	// not authentic says nothing of the subject.
	Authentic bool `json:"-"`
}

// Passed reports whether the evidence was accepted.
func (r Result) Passed() bool { return r.Status == StatusPassed }

// Verifier checks evidence of one format. It fills in Status, Reasons and
// what it learned (firmware, clock); Verify does the rest.
type Verifier interface {
	Format() string
	Verify(ev *Evidence, key Enrolled, pol Policy, nonce []byte, now time.Time) Result
}

var verifiers = map[string]Verifier{}

// register adds a format's verifier (from each format's file).
func register(v Verifier) { verifiers[v.Format()] = v }

// Verify checks evidence against the device's enrolled keys, its class's
// policy and the nonce issued for it, and returns the result. raw is the
// evidence as submitted, for its digest.
func Verify(raw []byte, ev *Evidence, key Enrolled, pol Policy, nonce []byte, now time.Time) Result {
	sum := sha256.Sum256(raw)
	digest := hex.EncodeToString(sum[:])
	fail := func(format, why string, args ...any) Result {
		return Result{Status: StatusFailed, Format: format, EvidenceDigest: digest, Reasons: []string{fmt.Sprintf(why, args...)}}
	}
	if ev == nil {
		return fail("", "no evidence")
	}
	v, ok := verifiers[ev.Format]
	if !ok {
		return fail(ev.Format, "unknown evidence format %q", ev.Format)
	}
	if !slices.Contains(pol.Formats, ev.Format) {
		return fail(ev.Format, "class %s does not accept %s evidence (it accepts %v)", pol.Class, ev.Format, pol.Formats)
	}
	got, err := hex.DecodeString(ev.Nonce)
	if err != nil || len(got) != NonceSize || len(nonce) != NonceSize || subtle.ConstantTimeCompare(got, nonce) != 1 {
		return fail(ev.Format, "the evidence names another nonce than the one issued for this attestation")
	}
	r := v.Verify(ev, key, pol, nonce, now)
	r.Format, r.EvidenceDigest = ev.Format, digest
	if r.Status != StatusPassed || len(r.Reasons) > 0 {
		r.Status = StatusFailed // fail closed: a verifier that explains a problem never passes
	}
	if r.Passed() && r.FirmwareVersion == "" {
		r.Status, r.Reasons = StatusFailed, []string{"the evidence names no firmware of the class's reference values"}
	}
	return r
}

// ParseEvidence decodes the JSON evidence document strictly.
func ParseEvidence(raw []byte) (*Evidence, error) {
	if len(raw) > MaxEvidenceBytes {
		return nil, fmt.Errorf("evidence is %d bytes; at most %d are accepted", len(raw), MaxEvidenceBytes)
	}
	var ev Evidence
	dec := json.NewDecoder(bytesReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return nil, fmt.Errorf("evidence is not valid JSON of the evidence format: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("evidence has data after its JSON object")
	}
	n := 0
	for _, set := range []bool{ev.TPM2 != nil, ev.DICE != nil, ev.EAT != nil} {
		if set {
			n++
		}
	}
	want := map[string]bool{topology.AttestTPM2Quote: ev.TPM2 != nil, topology.AttestDICE: ev.DICE != nil, topology.AttestEAT: ev.EAT != nil}
	if set, known := want[ev.Format]; !known || !set || n != 1 {
		return nil, fmt.Errorf("evidence of format %q must carry exactly the matching one of tpm2, dice and eat", ev.Format)
	}
	return &ev, nil
}

// firmwareRef finds the reference value with this digest (hex, any case).
func firmwareRef(pol Policy, sha string) (topology.FirmwareRef, bool) {
	for _, f := range pol.Firmware {
		if len(sha) == len(f.SHA256) && subtle.ConstantTimeCompare([]byte(f.SHA256), []byte(lowerHex(sha))) == 1 {
			return f, true
		}
	}
	return topology.FirmwareRef{}, false
}
