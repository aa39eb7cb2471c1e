// Package tpmdev is the device side of tpm2-quote attestation: it talks to
// this machine's TPM 2.0 to read or create the attestation key (AK), quote
// PCRs over a nonce, and build the evidence Vigil verifies. `vigil attest
// tpm` and the vigil_tpm SPIRE agent plugin both use it.
//
// The TPM is reached with go-tpm's tpm2 package, either through the
// kernel's device (/dev/tpmrm0, whose resource manager flushes what a
// connection leaves loaded) or through swtpm's data channel (raw TPM
// command/response framing over TCP or a unix socket: swtpm's control
// channel speaks its own protocol, not the Microsoft simulator's platform
// one, and is not needed). Without a resource manager transient objects
// stay loaded, so every transient object made here is flushed before the
// function that made it returns.
//
// Error messages name the flags of `vigil attest tpm` (--tpm, --ak-handle,
// --nonce, --event-log, --pcr, --pcrs) that the values come from.
package tpmdev

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/vigil-iot/vigil/attest"
)

// Defaults of `vigil attest tpm`.
const (
	// DefaultTPM is the TPM used when none is named: the kernel's resource
	// manager.
	DefaultTPM = "/dev/tpmrm0"
	// DefaultAKHandle is the persistent handle of the AK when none is named.
	DefaultAKHandle = "0x81010002"
)

const (
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
	// formatTPM2Quote is the evidence format of a TPM quote
	// (topology.AttestTPM2Quote, which this package may not import).
	formatTPM2Quote = "tpm2-quote"
)

// ErrNoAK is what the error of a missing AK matches (errors.Is): there is
// no key at the persistent handle.
var ErrNoAK = errors.New("no attestation key at the persistent handle")

// noAKError is the error when the AK's handle is empty: it says how to make
// and enroll one.
type noAKError struct{ handle tpm2.TPMHandle }

func (e *noAKError) Error() string {
	return fmt.Sprintf("there is no key at persistent handle 0x%08x: run 'vigil attest tpm ak-public --ak-handle 0x%08x' (it creates one) and enroll its output with 'vigil device enroll NAME --tpm-ak'", uint32(e.handle), uint32(e.handle))
}

func (e *noAKError) Is(target error) bool { return target == ErrNoAK }

// NoAKError is the error for an empty AK handle, matching ErrNoAK.
func NoAKError(handle tpm2.TPMHandle) error { return &noAKError{handle: handle} }

// Device is a TPM reached by spec with an AK at AKHandle; EventLog is the
// firmware event log file (JSON event list or TCG binary), "" for none.
//
// Each call opens the TPM afresh and closes it before returning, so a
// Device holds no connection and may be kept for the life of a process;
// it makes no transient object (the AK is persistent), and leaves none
// loaded. It has the methods of *attest.SimTPM that an agent uses.
type Device struct {
	Spec     string         // the TPM: a device path, swtpm:host=H,port=P or swtpm:path=SOCKET (see Open)
	AKHandle tpm2.TPMHandle // the AK's persistent handle (ParseAKHandle)
	EventLog string         // the event log file read for each quote (ReadEventLog), "" for none
	// Warn, when set, is called with each warning about evidence Evidence
	// made (a JSON event log that does not replay to the TPM's PCRs, which
	// Vigil will refuse).
	Warn func(string)
}

// checkHandle refuses a handle outside the persistent range.
func (d *Device) checkHandle() error {
	if d.AKHandle < 0x81000000 || d.AKHandle > 0x81ffffff {
		return fmt.Errorf("the AK handle 0x%08x is not a persistent handle (0x81000000 to 0x81FFFFFF, e.g. %s)", uint32(d.AKHandle), DefaultAKHandle)
	}
	return nil
}

// readAK opens the TPM and reads the AK; the error names an empty handle
// (NoAKError). The caller closes the connection.
func (d *Device) readAK() (*Conn, *AK, error) {
	if err := d.checkHandle(); err != nil {
		return nil, nil, err
	}
	t, err := Open(d.Spec)
	if err != nil {
		return nil, nil, err
	}
	ak, err := ReadAK(t, d.AKHandle)
	if err == nil && ak == nil {
		err = NoAKError(d.AKHandle)
	}
	if err != nil {
		t.Close()
		return nil, nil, err
	}
	return t, ak, nil
}

// AKPublicPEM is the public key of the AK at AKHandle as a PKIX PEM
// "PUBLIC KEY" block, what `vigil attest tpm ak-public` prints. Unlike
// ak-public it never creates the key: an empty handle is an error
// (NoAKError, matching ErrNoAK), as is a key there that cannot be an AK.
func (d *Device) AKPublicPEM() ([]byte, error) {
	t, ak, err := d.readAK()
	if err != nil {
		return nil, err
	}
	defer t.Close()
	return ak.PublicPEM()
}

// Evidence quotes the sha256 PCRs pcrs over nonce (the 32 bytes Vigil
// issued) with the AK and returns the evidence `vigil attest tpm quote`
// prints: format tpm2-quote, the nonce, the quote, its signature, the PCR
// values and the event log, read again from EventLog for every call. When
// a PCR is extended between the quote and the read of the PCRs, it quotes
// again (a few times at most).
func (d *Device) Evidence(nonce []byte, pcrs []int) (*attest.Evidence, error) {
	if len(nonce) != attest.NonceSize {
		return nil, fmt.Errorf("the nonce is %d bytes, not the %d bytes of a nonce Vigil issues", len(nonce), attest.NonceSize)
	}
	if len(pcrs) == 0 {
		return nil, errors.New("no PCR to quote")
	}
	for _, p := range pcrs {
		if p < 0 || p >= attest.TPM2PCRs {
			return nil, fmt.Errorf("PCR %d does not exist (0 to %d)", p, attest.TPM2PCRs-1)
		}
	}
	var log *EventLogFile
	if d.EventLog != "" {
		var err error
		if log, err = ReadEventLog(d.EventLog); err != nil {
			return nil, err
		}
	}
	t, ak, err := d.readAK()
	if err != nil {
		return nil, err
	}
	defer t.Close()
	ev, warnings, err := QuoteEvidence(t, ak, nonce, pcrs, log)
	if err != nil {
		return nil, err
	}
	if d.Warn != nil {
		for _, w := range warnings {
			d.Warn(w)
		}
	}
	return ev, nil
}

// PublicPEM is the AK's public key as a PKIX PEM "PUBLIC KEY" block, the
// form 'vigil device enroll NAME --tpm-ak FILE' takes.
func (ak *AK) PublicPEM() ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(ak.pub)
	if err != nil {
		return nil, fmt.Errorf("the AK at 0x%08x: %w", uint32(ak.handle), err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
