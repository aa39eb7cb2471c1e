package api

import (
	"context"
	"net/http"
	"net/url"

	"github.com/vigil-iot/vigil/internal/spiretpm"
	"github.com/vigil-iot/vigil/topology"
)

// The vigil_tpm SPIRE node attestor's endpoints (decision 0011, §3). Its
// server plugin, in the SPIRE server, calls them with a token of the
// members' --spire-tpm-token-file (ServerConfig.SPIRETPMTokens), which
// authenticates these two routes only; operators' tokens work too.
//
//	POST /v1/spire/tpm/challenge   spiretpm.ChallengeRequest → spiretpm.ChallengeResponse (any member)
//	POST /v1/spire/tpm/attest      spiretpm.AttestRequest → spiretpm.AttestResponse (a write: the leader)
//
// A subject that may not join SPIRE this way, is quarantined, presents
// another AK than the one enrolled, or whose evidence failed is answered
// 403 with CodeRefused and the reason.

// CodeRefused marks a subject the vigil_tpm node attestor refuses (403):
// the plugin answers SPIRE PermissionDenied with the message.
const CodeRefused = spiretpm.CodeRefused

// TPMNodeAttestor is the part of an Attestor that serves the vigil_tpm
// node attestor; an Attestor without it answers 404 on its routes.
type TPMNodeAttestor interface {
	TPMChallenge(ctx context.Context, req spiretpm.ChallengeRequest) (spiretpm.ChallengeResponse, error)
	TPMAttest(ctx context.Context, req spiretpm.AttestRequest) (spiretpm.AttestResponse, error)
}

// SubjectEnroller is the part of an Attestor that enrolls the keys of
// gateways as well as devices; an Attestor without it answers 404 on
// POST /v1/gateways/{name}/enroll.
type SubjectEnroller interface {
	EnrollSubject(ctx context.Context, s topology.Subject, actor string, req EnrollRequest) (EnrollResponse, error)
}

// spireTPMActorPrefix marks, in logs, the actor of a request made with a
// --spire-tpm-token-file token.
const spireTPMActorPrefix = "spire-tpm/"

// spireTPMRoutes registers the two routes, which also accept the SPIRE
// TPM tokens.
func (s *Server) spireTPMRoutes() {
	s.routeSPIRETPM("POST "+spiretpm.ChallengePath, s.tpmChallenge)
	attest := s.write(s.tpmAttest)
	s.routeSPIRETPM("POST "+spiretpm.AttestPath, func(w http.ResponseWriter, r *http.Request) error {
		// The body is the evidence and its envelope, not the 16 MiB of
		// other writes.
		r.Body = http.MaxBytesReader(w, r.Body, spiretpm.MaxAttestRequestBytes)
		return attest(w, r)
	})
}

func (s *Server) tpmNodeAttestor() (TPMNodeAttestor, error) {
	if t, ok := s.cfg.Attestor.(TPMNodeAttestor); ok && s.cfg.Attestor != nil {
		return t, nil
	}
	return nil, notFound("this member does not serve the %s node attestor", "vigil_tpm")
}

func (s *Server) tpmChallenge(w http.ResponseWriter, r *http.Request) error {
	t, err := s.tpmNodeAttestor()
	if err != nil {
		return err
	}
	body, err := readBody(r, spiretpm.MaxPayloadBytes)
	if err != nil {
		return err
	}
	var req spiretpm.ChallengeRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	resp, err := t.TPMChallenge(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) tpmAttest(w http.ResponseWriter, r *http.Request, body []byte) error {
	t, err := s.tpmNodeAttestor()
	if err != nil {
		return err
	}
	var req spiretpm.AttestRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	resp, err := t.TPMAttest(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) enrollGateway(w http.ResponseWriter, r *http.Request, body []byte) error {
	e, ok := s.cfg.Attestor.(SubjectEnroller)
	if !ok || s.cfg.Attestor == nil {
		return notFound("this member does not enroll gateways")
	}
	var req EnrollRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	resp, err := e.EnrollSubject(r.Context(), topology.GatewaySubject(r.PathValue("name")), actorOf(r), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// routeSPIRETPM registers a handler that the operators' tokens and the
// SPIRE TPM tokens authenticate.
func (s *Server) routeSPIRETPM(pattern string, h func(http.ResponseWriter, *http.Request) error) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		actor, ok := s.cfg.Tokens.Actor(r)
		if !ok && s.cfg.SPIRETPMTokens != nil {
			if actor, ok = s.cfg.SPIRETPMTokens.Actor(r); ok {
				actor = spireTPMActorPrefix + actor
			}
		}
		if !ok {
			s.unauthenticated(w, r)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), actorKey{}, actor))
		if err := h(w, r); err != nil {
			s.fail(w, r, err)
		}
	})
}

// EnrollGateway records a gateway's TPM AK (req.TPMAK).
func (c *Client) EnrollGateway(ctx context.Context, gateway string, req EnrollRequest) (EnrollResponse, error) {
	var out EnrollResponse
	return out, c.send(ctx, http.MethodPost, "/v1/gateways/"+url.PathEscape(gateway)+"/enroll", req, &out)
}

// SPIRETPMChallenge asks for a nonce for a subject's vigil_tpm attestation.
func (c *Client) SPIRETPMChallenge(ctx context.Context, req spiretpm.ChallengeRequest) (spiretpm.ChallengeResponse, error) {
	var out spiretpm.ChallengeResponse
	return out, c.send(ctx, http.MethodPost, spiretpm.ChallengePath, req, &out)
}

// SPIRETPMAttest submits a subject's quote for its vigil_tpm attestation.
func (c *Client) SPIRETPMAttest(ctx context.Context, req spiretpm.AttestRequest) (spiretpm.AttestResponse, error) {
	var out spiretpm.AttestResponse
	return out, c.send(ctx, http.MethodPost, spiretpm.AttestPath, req, &out)
}
