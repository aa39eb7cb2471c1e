package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// Enrollment of a TPM AK by EK certificate and credential activation
// (docs/attestation-ek.md): step 1, POST /v1/devices/{name}/enroll/ek,
// checks the EK certificate and the AK and returns a credential only that
// TPM can activate; step 2, POST /v1/devices/{name}/enroll/ek/activate,
// takes the secret the TPM recovered and records the enrollment.

// EKEnroller is the part of an Attestor that enrolls by EK credential;
// an Attestor without it answers 404.
type EKEnroller interface {
	EnrollEK(ctx context.Context, device string, req EKEnrollRequest) (EKEnrollResponse, error)
	ActivateEK(ctx context.Context, device, actor string, req EKActivateRequest) (EnrollResponse, error)
}

// EKEnrollRequest is step 1.
type EKEnrollRequest struct {
	// EKCert is the TPM's EK certificate: PEM, or base64 of DER (as
	// `tpm2_nvread 0x01c00002` reads it; NV padding after the DER is
	// ignored). PEM may carry intermediates after it.
	EKCert string `json:"ekCert"`
	// EKChain are intermediate CA certificates (PEM or base64 DER) between
	// the EK certificate and the class's ekRoots.
	EKChain []string `json:"ekChain,omitempty"`
	// EKPublic (optional) is the EK's public area, base64 of TPM2B_PUBLIC
	// or TPMT_PUBLIC (`tpm2_createek -u`, `tpm2_readpublic -o`). It must
	// hold the certificate's key; its name algorithm and AES key size are
	// used instead of the TCG default template's for that key.
	EKPublic string `json:"ekPublic,omitempty"`
	// AKPublic is the AK's public area, base64 of TPM2B_PUBLIC or
	// TPMT_PUBLIC, as `tpm2_createak -u ak.pub` writes it.
	AKPublic string `json:"akPublic"`
}

// EKEnrollResponse is step 1's credential. The member keeps nothing: ID
// carries, under the cluster's MAC, the device, the AK, the hash of the
// secret and the expiry.
type EKEnrollResponse struct {
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
	// AKName is the AK's TPM name in hex (what `tpm2_createak -n` writes).
	AKName string `json:"akName"`
	// EKCertFingerprint is the hex SHA-256 of the EK certificate's DER.
	EKCertFingerprint string `json:"ekCertFingerprint"`
	// Credential is the file `tpm2_activatecredential -i` reads (as
	// `tpm2_makecredential -o` writes it): 0xBADCC0DE, version 1, then
	// CredentialBlob and EncryptedSecret.
	Credential []byte `json:"credential"`
	// CredentialBlob is the marshalled TPM2B_ID_OBJECT and EncryptedSecret
	// the marshalled TPM2B_ENCRYPTED_SECRET (each a 2-byte size first), the
	// parameters of TPM2_ActivateCredential.
	CredentialBlob  []byte `json:"credentialBlob"`
	EncryptedSecret []byte `json:"encryptedSecret"`
}

// EKActivateRequest is step 2: the id of step 1 and the secret the TPM
// recovered (`tpm2_activatecredential -o`), base64 in JSON.
type EKActivateRequest struct {
	ID     string `json:"id"`
	Secret []byte `json:"secret"`
}

func (s *Server) ekEnroller() (EKEnroller, error) {
	if e, ok := s.cfg.Attestor.(EKEnroller); ok && s.cfg.Attestor != nil {
		return e, nil
	}
	return nil, notFound("this member does not enroll by EK certificate")
}

func (s *Server) enrollEK(w http.ResponseWriter, r *http.Request, body []byte) error {
	e, err := s.ekEnroller()
	if err != nil {
		return err
	}
	var req EKEnrollRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	resp, err := e.EnrollEK(r.Context(), r.PathValue("name"), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) activateEK(w http.ResponseWriter, r *http.Request, body []byte) error {
	e, err := s.ekEnroller()
	if err != nil {
		return err
	}
	var req EKActivateRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	resp, err := e.ActivateEK(r.Context(), r.PathValue("name"), actorOf(r), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// EnrollEK runs step 1 of enrollment by EK credential for device.
func (c *Client) EnrollEK(ctx context.Context, device string, req EKEnrollRequest) (EKEnrollResponse, error) {
	var out EKEnrollResponse
	body, err := json.Marshal(req)
	if err != nil {
		return out, err
	}
	return out, c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(device)+"/enroll/ek", "application/json", body, &out)
}

// ActivateEK runs step 2: it records device's AK once the secret is right.
func (c *Client) ActivateEK(ctx context.Context, device string, req EKActivateRequest) (EnrollResponse, error) {
	var out EnrollResponse
	body, err := json.Marshal(req)
	if err != nil {
		return out, err
	}
	return out, c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(device)+"/enroll/ek/activate", "application/json", body, &out)
}
