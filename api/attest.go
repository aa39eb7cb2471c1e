package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// Attestor is the member's attestation service (node/): nonces, evidence
// verification and enrollment. Errors it returns are *Error or what a
// write may return (a *raft.NotLeaderError forwards the request).
type Attestor interface {
	Challenge(device string) (ChallengeResponse, error)
	Attest(ctx context.Context, device string, evidence []byte) (AttestResponse, error)
	Enroll(ctx context.Context, device, actor string, req EnrollRequest) (EnrollResponse, error)
}

// ChallengeResponse is a fresh nonce for one device's evidence.
type ChallengeResponse struct {
	Nonce   string    `json:"nonce"` // 64 hex digits
	Expires time.Time `json:"expires"`
}

// AttestResponse is the verdict on submitted evidence, as recorded.
type AttestResponse struct {
	Revision    topology.Revision     `json:"revision"`
	Attestation *topology.Attestation `json:"attestation"`
}

// EnrollRequest carries a device's attestation keys: PKIX public keys in
// PEM (a TPM AK as `tpm2_createak -f pem` writes it; an EAT signing key).
type EnrollRequest struct {
	TPMAK  string `json:"tpmAk,omitempty"`
	EATKey string `json:"eatKey,omitempty"`
}

// EnrollResponse is the recorded enrollment.
type EnrollResponse struct {
	Revision   topology.Revision    `json:"revision"`
	Enrollment *topology.Enrollment `json:"enrollment"`
}

// CodeReplay marks evidence for a nonce that was already used.
const CodeReplay = "replay"

func (s *Server) challenge(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Attestor == nil {
		return notFound("this member does not verify attestations")
	}
	resp, err := s.cfg.Attestor.Challenge(r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) attest(w http.ResponseWriter, r *http.Request, body []byte) error {
	if s.cfg.Attestor == nil {
		return notFound("this member does not verify attestations")
	}
	resp, err := s.cfg.Attestor.Attest(r.Context(), r.PathValue("name"), body)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) enroll(w http.ResponseWriter, r *http.Request, body []byte) error {
	if s.cfg.Attestor == nil {
		return notFound("this member does not verify attestations")
	}
	var req EnrollRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	resp, err := s.cfg.Attestor.Enroll(r.Context(), r.PathValue("name"), actorOf(r), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// Challenge asks for a nonce for device.
func (c *Client) Challenge(ctx context.Context, device string) (ChallengeResponse, error) {
	var out ChallengeResponse
	return out, c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(device)+"/challenge", "", nil, &out)
}

// Attest submits evidence (the JSON evidence document) for device.
func (c *Client) Attest(ctx context.Context, device string, evidence []byte) (AttestResponse, error) {
	var out AttestResponse
	return out, c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(device)+"/attestations", "application/json", evidence, &out)
}

// Enroll records device's attestation keys.
func (c *Client) Enroll(ctx context.Context, device string, req EnrollRequest) (EnrollResponse, error) {
	var out EnrollResponse
	body, err := json.Marshal(req)
	if err != nil {
		return out, err
	}
	return out, c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(device)+"/enroll", "application/json", body, &out)
}

// Verified results travel from the member that verified them to the leader
// in batches (members only, the peer token):
//
//	POST /v1/internal/attestation-results   {"batch": [[ops of one result], …]}
//	→ {"results": [{"revision": N} | {"code": …, "message": …}, …]}
//
// An operator may never write attestations; members verify evidence
// themselves and trust each other's verdicts (they share the cluster key).

// ResultsRequest is a batch of verified results, each the operations of
// one attestation (the attestation with its nonce, and maybe a quarantine).
type ResultsRequest struct {
	Batch [][]raft.StateOp `json:"batch"`
}

// ResultsResponse answers each result of a ResultsRequest, in order.
type ResultsResponse struct {
	Results []ResultAnswer `json:"results"`
}

// ResultAnswer is one result's revision, or why it was refused.
type ResultAnswer struct {
	Revision topology.Revision `json:"revision,omitempty"`
	Code     string            `json:"code,omitempty"`
	Message  string            `json:"message,omitempty"`
}

// ResultRecorder records verified results on the leader (node/).
type ResultRecorder interface {
	RecordResults(ctx context.Context, batch [][]raft.StateOp) ([]ResultAnswer, error)
}

func (s *Server) recordResults(w http.ResponseWriter, r *http.Request, body []byte) error {
	if actorOf(r) != PeerActor {
		return &Error{Status: http.StatusForbidden, Code: CodeForbidden,
			Message: "only cluster members (the peer token) may record verified attestation results"}
	}
	rec, ok := s.cfg.Attestor.(ResultRecorder)
	if !ok {
		return notFound("this member does not record attestation results")
	}
	var req ResultsRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	answers, err := rec.RecordResults(r.Context(), req.Batch)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ResultsResponse{Results: answers})
	return nil
}

// RecordResults sends verified results to the leader's member (peer token).
func (c *Client) RecordResults(ctx context.Context, batch [][]raft.StateOp) ([]ResultAnswer, error) {
	var out ResultsResponse
	if err := c.send(ctx, http.MethodPost, "/v1/internal/attestation-results", ResultsRequest{Batch: batch}, &out); err != nil {
		return nil, err
	}
	if len(out.Results) != len(batch) {
		return nil, fmt.Errorf("the leader answered %d results for %d", len(out.Results), len(batch))
	}
	return out.Results, nil
}
