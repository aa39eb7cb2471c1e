// Package spiretpm is the vigil_tpm SPIRE node attestor's logic, apart
// from SPIRE's plugin SDK (spire/tpmplugin glues the two): the messages
// the agent and server plugins exchange over SPIRE's attestation stream,
// the agent's side over a TPM, the server's side, and the small HTTP
// client through which the server side has Vigil issue nonces and verify
// evidence. See docs/decisions/0011-spire-tpm-node-attestor.md and
// docs/spire-tpm.md.
package spiretpm

import (
	"encoding/json"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// WireVersion is the version of the messages on SPIRE's stream.
const WireVersion = 1

// Limits of what either side reads from the other.
const (
	MaxPayloadBytes   = 16 << 10
	MaxChallengeBytes = 4 << 10
	// MaxAttestRequestBytes bounds an AttestRequest: the largest evidence
	// (attest.MaxEvidenceBytes) and its envelope.
	MaxAttestRequestBytes = 256<<10 + 4<<10
)

// Payload is the agent's first message: who it attests as and the keys
// its TPM holds. Claiming another subject gains nothing: only the
// subject's enrolled AK can answer the challenge.
type Payload struct {
	V       int              `json:"v"`
	Subject topology.Subject `json:"subject"`
	// AKPublic is the TPM attestation key, PEM (PKIX).
	AKPublic string `json:"akPublic"`
	// EKCert is the TPM's endorsement key certificate, DER, when the
	// agent is configured with one.
	EKCert []byte `json:"ekCert,omitempty"`
}

// Challenge is the server's one challenge: quote these PCRs over this
// nonce. The agent answers with the evidence (attest.Evidence JSON, the
// document `vigil attest tpm quote` prints).
type Challenge struct {
	V     int    `json:"v"`
	Nonce string `json:"nonce"` // hex
	PCRs  []int  `json:"pcrs"`
}

// ChallengeRequest is the body of POST /v1/spire/tpm/challenge.
type ChallengeRequest struct {
	Subject  topology.Subject `json:"subject"`
	AKPublic string           `json:"akPublic"`
	EKCert   []byte           `json:"ekCert,omitempty"`
}

// ChallengeResponse answers it: a single-use nonce for the subject and
// the PCRs its class's quotes must cover.
type ChallengeResponse struct {
	Nonce   string    `json:"nonce"`
	Expires time.Time `json:"expires"`
	PCRs    []int     `json:"pcrs"`
}

// AttestRequest is the body of POST /v1/spire/tpm/attest.
type AttestRequest struct {
	Subject  topology.Subject `json:"subject"`
	Evidence json.RawMessage  `json:"evidence"`
}

// AttestResponse answers a verified attestation: what was recorded, and
// the agent ID and node selectors (without the "vigil_tpm:" type) SPIRE
// is to give the agent.
type AttestResponse struct {
	Revision    topology.Revision     `json:"revision"`
	Attestation *topology.Attestation `json:"attestation"`
	AgentID     string                `json:"agentId"`
	Selectors   []string              `json:"selectors"`
}

// Paths of Vigil's API the server plugin calls.
const (
	ChallengePath = "/v1/spire/tpm/challenge"
	AttestPath    = "/v1/spire/tpm/attest"
)

// Error codes of Vigil's API (api.Code*) the server plugin tells apart.
const (
	CodeRefused  = "refused"
	CodeReplay   = "replay"
	CodeNotFound = "not_found"
)
