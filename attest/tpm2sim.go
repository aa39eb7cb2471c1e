package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/vigil-iot/vigil/topology"
)

// SimTPM is a software stand-in for a TPM 2.0, for tests, `vigil sim` and
// `vigil dev`: an attestation key (ECDSA P-256 or RSA-2048), a SHA-256 PCR
// bank of 24 PCRs, the reset and restart counters, and the event log of what
// was extended. Its quotes are byte for byte what `tpm2_quote -m -s` writes
// for a real TPM (a TPMS_ATTEST and a TPMT_SIGNATURE; tpm2_checkquote accepts
// them), so they go through the same verifier.
//
// It is not a TPM: the key lives in process memory and anyone holding the
// SimTPM can extend or sign anything. Its qualifiedSigner is a stand-in
// (nameAlg SHA-256 and the SHA-256 of the AK's PKIX encoding, not of a
// TPMT_PUBLIC). It does no I/O. It is safe for concurrent use.
type SimTPM struct {
	mu           sync.Mutex
	ak           crypto.Signer
	pss          bool
	pcrs         [TPM2PCRs][32]byte
	events       []Event
	clock        uint64
	resetCount   uint32
	restartCount uint32
	name         []byte
}

// simFirmwareVersion is the TPM firmware version the simulator reports.
const simFirmwareVersion = 0x2024_0001_0000_0000

// NewSimTPM makes a simulated TPM with a fresh AK: RSA-2048 (signing
// RSASSA-PKCS1-v1_5 with SHA-256) when useRSA, else ECDSA P-256 with SHA-256.
// Its counters start at resetCount 0, restartCount 0 and its PCRs at zero.
func NewSimTPM(useRSA bool) (*SimTPM, error) {
	var ak crypto.Signer
	var err error
	if useRSA {
		ak, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		ak, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return nil, fmt.Errorf("simulated TPM: generating the AK: %w", err)
	}
	return NewSimTPMWithKey(ak)
}

// NewSimTPMWithKey makes a simulated TPM whose AK is ak: an *ecdsa.PrivateKey
// (P-256, P-384 or P-521) or an *rsa.PrivateKey of at least 2048 bits.
func NewSimTPMWithKey(ak crypto.Signer) (*SimTPM, error) {
	switch k := ak.(type) {
	case *ecdsa.PrivateKey:
		if k == nil || k.Curve == nil {
			return nil, errors.New("simulated TPM: no AK")
		}
	case *rsa.PrivateKey:
		if k == nil || k.N == nil || k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("simulated TPM: an RSA AK needs at least %d bits", minRSABits)
		}
	default:
		return nil, fmt.Errorf("simulated TPM: the AK is a %T, not an ECDSA or RSA private key", ak)
	}
	der, err := x509.MarshalPKIXPublicKey(ak.Public())
	if err != nil {
		return nil, fmt.Errorf("simulated TPM: %w", err)
	}
	sum := sha256.Sum256(der)
	return &SimTPM{ak: ak, name: append([]byte{0, tpmAlgSHA256}, sum[:]...)}, nil
}

// SetRSAPSS makes an RSA AK sign RSASSA-PSS (salt as long as the hash, as
// TPMs do) instead of RSASSA-PKCS1-v1_5. It does nothing for an ECDSA AK.
func (s *SimTPM) SetRSAPSS(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pss = on
}

// AKPublic is the AK's public key (*ecdsa.PublicKey or *rsa.PublicKey), what
// Enrolled.AK holds.
func (s *SimTPM) AKPublic() crypto.PublicKey { return s.ak.Public() }

// AKPublicPEM is the AK's public key as `tpm2_createak -f pem` writes it (a
// PKIX "PUBLIC KEY" block), what `vigil device enroll --tpm-ak` reads.
func (s *SimTPM) AKPublicPEM() ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(s.ak.Public())
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// Extend extends a SHA-256 digest into a PCR, as TPM2_PCR_Extend does
// (new = SHA-256(old || digest)), and logs it with its type (EventFirmware
// for the firmware image's digest).
func (s *SimTPM) Extend(pcr int, digest []byte, typ string) error {
	if pcr < 0 || pcr >= TPM2PCRs {
		return fmt.Errorf("simulated TPM: PCR %d does not exist (0 to %d)", pcr, TPM2PCRs-1)
	}
	if len(digest) != sha256.Size {
		return fmt.Errorf("simulated TPM: a SHA-256 digest is %d bytes, not %d", sha256.Size, len(digest))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.events) >= MaxTPM2Events {
		return fmt.Errorf("simulated TPM: the event log is full (%d events)", MaxTPM2Events)
	}
	h := sha256.New()
	h.Write(s.pcrs[pcr][:])
	h.Write(digest)
	h.Sum(s.pcrs[pcr][:0])
	s.events = append(s.events, Event{PCR: pcr, SHA256: hex.EncodeToString(digest), Type: typ})
	return nil
}

// MeasureFirmware extends a firmware image's SHA-256 (hex) into PCR 16 as the
// firmware event, what a device's boot does before it attests.
func (s *SimTPM) MeasureFirmware(sha256Hex string) error {
	d, err := hex.DecodeString(sha256Hex)
	if err != nil {
		return fmt.Errorf("simulated TPM: firmware digest: %w", err)
	}
	return s.Extend(16, d, EventFirmware)
}

// PCR is a PCR's value (nil if it does not exist).
func (s *SimTPM) PCR(pcr int) []byte {
	if pcr < 0 || pcr >= TPM2PCRs {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.pcrs[pcr][:])
}

// EventLog is a copy of the event log since the last reboot.
func (s *SimTPM) EventLog() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

// BinaryEventLog is the event log as a TCG PC Client crypto-agile binary log
// with SHA-256 digests (firmware events as EV_EFI_PLATFORM_FIRMWARE_BLOB2).
func (s *SimTPM) BinaryEventLog() []byte {
	return appendTCGEventLog(nil, s.EventLog())
}

// Clock is the TPM's reset and restart counters.
func (s *SimTPM) Clock() TPMClock {
	s.mu.Lock()
	defer s.mu.Unlock()
	return TPMClock{ResetCount: s.resetCount, RestartCount: s.restartCount}
}

// Reboot is a TPM reset (TPM2_Startup(CLEAR) after a power cycle): the
// resetCount goes up, the restartCount back to 0, the PCRs to zero and the
// event log is emptied.
func (s *SimTPM) Reboot() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetCount++
	s.restartCount = 0
	s.pcrs = [TPM2PCRs][32]byte{}
	s.events = nil
}

// Restart is a TPM restart or resume (TPM2_Startup(STATE)): the
// restartCount goes up; PCRs and the event log are kept.
func (s *SimTPM) Restart() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restartCount++
}

// Quote quotes the SHA-256 PCRs pcrs (any order; duplicates are ignored)
// with the nonce as extraData, as `tpm2_quote -c ak -l sha256:PCRS -q NONCE
// -g sha256 -m quote.msg -s quote.sig` does, and returns the evidence: the
// quote, its signature, the quoted PCRs' values and the whole event log.
func (s *SimTPM) Quote(nonce []byte, pcrs []int) (*TPM2Evidence, error) {
	if len(nonce) > maxTPMDataSize {
		return nil, fmt.Errorf("simulated TPM: a nonce is at most %d bytes", maxTPMDataSize)
	}
	if len(pcrs) == 0 {
		return nil, errors.New("simulated TPM: no PCRs to quote")
	}
	sel := make([]byte, (TPM2PCRs+7)/8)
	for _, p := range pcrs {
		if p < 0 || p >= TPM2PCRs {
			return nil, fmt.Errorf("simulated TPM: PCR %d does not exist (0 to %d)", p, TPM2PCRs-1)
		}
		sel[p/8] |= 1 << (p % 8)
	}
	selection := tpmsPCRSelection{Hash: tpmAlgSHA256, Select: sel}

	s.mu.Lock()
	defer s.mu.Unlock()
	values := map[string]string{}
	var concat []byte
	for _, p := range selection.indices() {
		concat = append(concat, s.pcrs[p][:]...)
		values[strconv.Itoa(p)] = hex.EncodeToString(s.pcrs[p][:])
	}
	digest := sha256.Sum256(concat)
	s.clock += 1000 // milliseconds: one quote a second
	q := tpmsAttest{
		Magic:           tpmGeneratedValue,
		Type:            tpmSTAttestQuote,
		QualifiedSigner: s.name,
		ExtraData:       slices.Clone(nonce),
		Clock:           s.clock,
		ResetCount:      s.resetCount,
		RestartCount:    s.restartCount,
		Safe:            1,
		FirmwareVersion: simFirmwareVersion,
		PCRSelect:       []tpmsPCRSelection{selection},
		PCRDigest:       digest[:],
	}
	msg := q.marshal()
	sig, err := s.signLocked(msg)
	if err != nil {
		return nil, err
	}
	return &TPM2Evidence{
		Quote:     msg,
		Signature: sig,
		PCRs:      map[string]map[string]string{"sha256": values},
		EventLog:  slices.Clone(s.events),
	}, nil
}

// Evidence is a quote of pcrs for the nonce as the evidence document a
// device submits (format tpm2-quote, the nonce in hex).
func (s *SimTPM) Evidence(nonce []byte, pcrs []int) (*Evidence, error) {
	q, err := s.Quote(nonce, pcrs)
	if err != nil {
		return nil, err
	}
	return &Evidence{Format: topology.AttestTPM2Quote, Nonce: hex.EncodeToString(nonce), TPM2: q}, nil
}

// sign signs msg as TPM2_Quote signs its TPMS_ATTEST (SHA-256 of it) and
// returns the marshalled TPMT_SIGNATURE.
func (s *SimTPM) sign(msg []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.signLocked(msg)
}

func (s *SimTPM) signLocked(msg []byte) ([]byte, error) {
	digest := sha256.Sum256(msg)
	sig := tpmtSignature{Hash: tpmAlgSHA256}
	switch k := s.ak.(type) {
	case *ecdsa.PrivateKey:
		r, ss, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			return nil, fmt.Errorf("simulated TPM: signing: %w", err)
		}
		size := (k.Curve.Params().BitSize + 7) / 8 // TPMs pad r and s to the curve's size
		sig.Alg, sig.R, sig.S = tpmAlgECDSA, r.FillBytes(make([]byte, size)), ss.FillBytes(make([]byte, size))
	case *rsa.PrivateKey:
		var b []byte
		var err error
		if s.pss {
			sig.Alg = tpmAlgRSAPSS
			b, err = rsa.SignPSS(rand.Reader, k, crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		} else {
			sig.Alg = tpmAlgRSASSA
			b, err = rsa.SignPKCS1v15(nil, k, crypto.SHA256, digest[:])
		}
		if err != nil {
			return nil, fmt.Errorf("simulated TPM: signing: %w", err)
		}
		sig.RSA = b
	}
	return sig.marshal(), nil
}
