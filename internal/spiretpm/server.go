package spiretpm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/topology"
)

// Vigil is what the server side asks of Vigil's API. *Client implements
// it.
type Vigil interface {
	Challenge(ctx context.Context, req ChallengeRequest) (ChallengeResponse, error)
	Attest(ctx context.Context, req AttestRequest) (AttestResponse, error)
}

// ErrRefused is wrapped by every refusal of an agent: bad input, a
// subject Vigil does not let attest, evidence that fails. The plugin
// answers it with PermissionDenied; any other error means Vigil could not
// be asked (Unavailable).
var ErrRefused = errors.New("refused")

// Refusal is an agent refused, with the reason.
type Refusal struct {
	Subject topology.Subject // zero before the payload parsed
	Reason  string
}

func (r *Refusal) Error() string {
	if r.Subject.Name == "" || strings.HasPrefix(r.Reason, r.Subject.String()+": ") {
		return r.Reason
	}
	return r.Subject.String() + ": " + r.Reason
}

func (r *Refusal) Unwrap() error { return ErrRefused }

// Server is the server side of vigil_tpm attestations.
type Server struct {
	Vigil Vigil
	// TrustDomain is the SPIRE server's; an agent ID Vigil returns for
	// another is refused.
	TrustDomain string
}

// Attestation is one attestation in progress on the server side.
type Attestation struct {
	Subject topology.Subject
	nonce   string
	s       *Server
}

// Result is what a passed attestation gives SPIRE.
type Result struct {
	AgentID   string
	Selectors []string // without the "vigil_tpm:" type
	Firmware  string
}

// Begin reads the agent's payload and asks Vigil for a challenge.
func (s *Server) Begin(ctx context.Context, payload []byte) (*Attestation, []byte, error) {
	p, err := ParsePayload(payload)
	if err != nil {
		return nil, nil, &Refusal{Reason: err.Error()}
	}
	resp, err := s.Vigil.Challenge(ctx, ChallengeRequest{Subject: p.Subject, AKPublic: p.AKPublic, EKCert: p.EKCert})
	if err != nil {
		return nil, nil, withSubject(err, p.Subject)
	}
	ch, err := json.Marshal(Challenge{V: WireVersion, Nonce: resp.Nonce, PCRs: resp.PCRs})
	if err != nil {
		return nil, nil, err
	}
	if _, err := ParseChallenge(ch); err != nil {
		return nil, nil, fmt.Errorf("vigil issued a challenge this plugin cannot send: %w", err)
	}
	return &Attestation{Subject: p.Subject, nonce: resp.Nonce, s: s}, ch, nil
}

// Finish reads the agent's answer, has Vigil verify and record it, and
// returns the agent's ID and selectors.
func (a *Attestation) Finish(ctx context.Context, response []byte) (*Result, error) {
	ev, err := attest.ParseEvidence(response)
	if err != nil {
		return nil, &Refusal{Subject: a.Subject, Reason: "evidence: " + err.Error()}
	}
	if ev.Format != topology.AttestTPM2Quote {
		return nil, &Refusal{Subject: a.Subject, Reason: fmt.Sprintf("evidence of format %q: vigil_tpm takes %q", ev.Format, topology.AttestTPM2Quote)}
	}
	if !strings.EqualFold(ev.Nonce, a.nonce) {
		return nil, &Refusal{Subject: a.Subject, Reason: "the quote answers another nonce: a replayed or stale quote"}
	}
	resp, err := a.s.Vigil.Attest(ctx, AttestRequest{Subject: a.Subject, Evidence: response})
	if err != nil {
		return nil, withSubject(err, a.Subject)
	}
	want := "spiffe://" + a.s.TrustDomain + "/spire/agent/vigil_tpm/" + a.Subject.Kind.String() + "/" + a.Subject.Name
	if resp.AgentID != want {
		return nil, fmt.Errorf("vigil returned agent ID %q for %s, want %q: is Vigil's topology for this SPIRE server's trust domain %q?", resp.AgentID, a.Subject, want, a.s.TrustDomain)
	}
	fw := ""
	if resp.Attestation != nil {
		fw = resp.Attestation.FirmwareVersion
	}
	return &Result{AgentID: resp.AgentID, Selectors: resp.Selectors, Firmware: fw}, nil
}

// withSubject names the subject in a refusal from Vigil.
func withSubject(err error, s topology.Subject) error {
	var r *Refusal
	if errors.As(err, &r) && r.Subject.Name == "" {
		return &Refusal{Subject: s, Reason: r.Reason}
	}
	return err
}
