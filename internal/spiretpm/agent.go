package spiretpm

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/topology"
)

// TPM is what the agent side needs of a TPM: its AK and a quote over a
// nonce as evidence. *attest.SimTPM and *tpmdev.Device satisfy it.
type TPM interface {
	AKPublicPEM() ([]byte, error)
	Evidence(nonce []byte, pcrs []int) (*attest.Evidence, error)
}

// Agent is the agent side of one attestation: it sends the payload, then
// answers the server's challenge with a quote.
type Agent struct {
	Subject topology.Subject
	TPM     TPM
	// EKCert, DER, is sent when set.
	EKCert []byte
}

// Payload is the agent's first message.
func (a *Agent) Payload() ([]byte, error) {
	ak, err := a.TPM.AKPublicPEM()
	if err != nil {
		return nil, fmt.Errorf("reading the TPM's AK: %w", err)
	}
	return json.Marshal(Payload{V: WireVersion, Subject: a.Subject, AKPublic: string(ak), EKCert: a.EKCert})
}

// Answer quotes the challenged PCRs over the challenge's nonce and returns
// the evidence.
func (a *Agent) Answer(challenge []byte) ([]byte, error) {
	ch, err := ParseChallenge(challenge)
	if err != nil {
		return nil, err
	}
	nonce, _ := hex.DecodeString(ch.Nonce)
	ev, err := a.TPM.Evidence(nonce, ch.PCRs)
	if err != nil {
		return nil, fmt.Errorf("quoting PCRs %v: %w", ch.PCRs, err)
	}
	return json.Marshal(ev)
}

// ParseChallenge reads a server's challenge strictly.
func ParseChallenge(b []byte) (*Challenge, error) {
	if len(b) > MaxChallengeBytes {
		return nil, fmt.Errorf("challenge is %d bytes; at most %d are accepted", len(b), MaxChallengeBytes)
	}
	var ch Challenge
	if err := decodeStrict(b, &ch); err != nil {
		return nil, fmt.Errorf("challenge: %w", err)
	}
	if ch.V != WireVersion {
		return nil, fmt.Errorf("challenge: version %d, this plugin speaks %d (are the agent and server plugins of one release?)", ch.V, WireVersion)
	}
	if n, err := hex.DecodeString(ch.Nonce); err != nil || len(n) < 16 || len(n) > 64 {
		return nil, errors.New("challenge: the nonce must be 16 to 64 bytes of hex")
	}
	if len(ch.PCRs) == 0 || len(ch.PCRs) > 24 {
		return nil, errors.New("challenge: 1 to 24 PCRs must be named")
	}
	for _, p := range ch.PCRs {
		if p < 0 || p > 23 {
			return nil, fmt.Errorf("challenge: PCR %d does not exist (0 to 23)", p)
		}
	}
	if !slices.IsSorted(ch.PCRs) || len(slices.Compact(slices.Clone(ch.PCRs))) != len(ch.PCRs) {
		return nil, errors.New("challenge: PCRs must be sorted and distinct")
	}
	return &ch, nil
}

// ParsePayload reads an agent's payload strictly.
func ParsePayload(b []byte) (*Payload, error) {
	if len(b) > MaxPayloadBytes {
		return nil, fmt.Errorf("payload is %d bytes; at most %d are accepted", len(b), MaxPayloadBytes)
	}
	var p Payload
	if err := decodeStrict(b, &p); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	if p.V != WireVersion {
		return nil, fmt.Errorf("payload: version %d, this plugin speaks %d (are the agent and server plugins of one release?)", p.V, WireVersion)
	}
	switch p.Subject.Kind {
	case topology.KindGateway, topology.KindDevice:
	default:
		return nil, fmt.Errorf("payload: subject kind %q: only a gateway or a device attests", p.Subject.Kind)
	}
	if !topology.IsName(p.Subject.Name) {
		return nil, fmt.Errorf("payload: %q is not a valid subject name", p.Subject.Name)
	}
	if p.AKPublic == "" {
		return nil, errors.New("payload: akPublic is required")
	}
	return &p, nil
}

// decodeStrict decodes exactly one JSON value with no unknown fields.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}
