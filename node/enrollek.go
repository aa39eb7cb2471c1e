package node

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// Enrollment of a TPM AK by EK certificate and credential activation
// (docs/attestation-ek.md). Step 1 (EnrollEK) runs on any member and
// writes nothing: what step 2 needs travels in the id, MACed under a key
// every member derives from the cluster key. Step 2 (ActivateEK) runs on
// the leader and records the enrollment through Raft.

var _ api.EKEnroller = (*attestor)(nil)

// ekKey is the MAC key of EK credential ids, apart from the nonces'.
func (a *attestor) ekKey() []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte("vigil ek credential key v1"))
	return m.Sum(nil)
}

// enrollmentDigest identifies a device's enrollment as it stands (zero for
// none): an id is good only while it is unchanged, so it activates once.
func enrollmentDigest(e *topology.Enrollment) [16]byte {
	var d [16]byte
	if e == nil {
		return d
	}
	b, _ := json.Marshal(e)
	h := sha256.Sum256(b)
	copy(d[:], h[:])
	return d
}

// decodeBase64 reads standard base64, padded or not.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawStdEncoding.DecodeString(s)
}

func ekBadRequest(format string, args ...any) error {
	return apiErr(http.StatusBadRequest, api.CodeBadRequest, format, args...)
}

// EnrollEK is step 1: it verifies the EK certificate to the class's
// ekRoots and that the AK is a restricted signing key of its TPM, and
// returns a credential for the AK's name encrypted to the EK.
func (a *attestor) EnrollEK(ctx context.Context, device string, req api.EKEnrollRequest) (api.EKEnrollResponse, error) {
	snap := a.store.Current()
	_, class, err := a.device(snap, device)
	if err != nil {
		return api.EKEnrollResponse{}, err
	}
	roots := class.Attestation.EKRoots
	if len(roots) == 0 {
		return api.EKEnrollResponse{}, ekBadRequest("class %s has no attestation.ekRoots: add the CAs of its TPMs' manufacturers, or enroll the AK's PEM with --tpm-ak", class.Name)
	}
	if strings.TrimSpace(req.EKCert) == "" || strings.TrimSpace(req.AKPublic) == "" {
		return api.EKEnrollResponse{}, ekBadRequest("give the TPM's EK certificate (ekCert) and the AK's public area (akPublic)")
	}
	certs, err := attest.ParseEKCertificates([]byte(req.EKCert))
	if err != nil {
		return api.EKEnrollResponse{}, ekBadRequest("ekCert: %v", err)
	}
	chain := certs[1:]
	if len(chain)+len(req.EKChain) > attest.MaxEKChain {
		return api.EKEnrollResponse{}, ekBadRequest("%d intermediate certificates; at most %d are accepted", len(chain)+len(req.EKChain), attest.MaxEKChain)
	}
	for i, c := range req.EKChain {
		cs, err := attest.ParseEKCertificates([]byte(c))
		if err != nil {
			return api.EKEnrollResponse{}, ekBadRequest("ekChain[%d]: %v", i, err)
		}
		chain = append(chain, cs...)
	}
	now := a.now().UTC()
	ek, err := attest.VerifyEKCertificate(certs[0], chain, attest.NewCertPool(roots), now)
	if err != nil {
		a.log.Warn("security: EK certificate refused", "device", device, "class", class.Name, "err", err)
		return api.EKEnrollResponse{}, ekBadRequest("ekCert: %v", err)
	}
	if req.EKPublic != "" {
		raw, err := decodeBase64(req.EKPublic)
		if err != nil {
			return api.EKEnrollResponse{}, ekBadRequest("ekPublic is not base64")
		}
		area, err := attest.ParseTPMPublic(raw)
		if err != nil {
			return api.EKEnrollResponse{}, ekBadRequest("ekPublic: %v", err)
		}
		fromArea, err := area.EKPublic()
		if err != nil {
			return api.EKEnrollResponse{}, ekBadRequest("ekPublic: %v", err)
		}
		if !attest.SameEKKey(fromArea.Key, ek.Key) {
			return api.EKEnrollResponse{}, ekBadRequest("ekPublic does not hold the EK certificate's key")
		}
		ek = fromArea
	}
	raw, err := decodeBase64(req.AKPublic)
	if err != nil {
		return api.EKEnrollResponse{}, ekBadRequest("akPublic is not base64 (of the file tpm2_createak -u writes)")
	}
	ak, err := attest.ParseTPMPublic(raw)
	if err != nil {
		return api.EKEnrollResponse{}, ekBadRequest("akPublic: %v", err)
	}
	if err := ak.CheckAK(); err != nil {
		return api.EKEnrollResponse{}, ekBadRequest("akPublic: %v", err)
	}
	secret := make([]byte, attest.EKCredentialSecretSize)
	if _, err := rand.Read(secret); err != nil {
		return api.EKEnrollResponse{}, err
	}
	cred, err := attest.MakeCredential(rand.Reader, ek, ak.Name(), secret)
	if err != nil {
		return api.EKEnrollResponse{}, ekBadRequest("%v", err)
	}
	var current *topology.Enrollment
	if st := snap.SubjectState(topology.DeviceSubject(device)); st != nil {
		current = st.Enrollment
	}
	tk := attest.EKTicket{
		Expires:      now.Add(attest.EKCredentialTTL).Truncate(time.Second),
		SecretSHA256: sha256.Sum256(secret),
		EKCertSHA256: sha256.Sum256(certs[0].Raw),
		Prior:        enrollmentDigest(current),
		AKPublic:     ak.Bytes(),
	}
	resp := api.EKEnrollResponse{
		ID:                tk.Seal(a.ekKey(), device),
		Expires:           tk.Expires,
		AKName:            hex.EncodeToString(ak.Name()),
		EKCertFingerprint: hex.EncodeToString(tk.EKCertSHA256[:]),
		Credential:        cred.TPM2ToolsFile(),
		CredentialBlob:    cred.IDObject,
		EncryptedSecret:   cred.EncryptedSecret,
	}
	a.log.Info("EK credential issued", "device", device, "ak_name", resp.AKName, "ek_cert", resp.EKCertFingerprint, "expires", tk.Expires)
	return resp, nil
}

// ActivateEK is step 2: given the secret the TPM recovered, it records the
// AK (as PKIX PEM) as the device's enrolled key, with who did it and the EK
// certificate's fingerprint. It runs on the leader.
func (a *attestor) ActivateEK(ctx context.Context, device, actor string, req api.EKActivateRequest) (api.EnrollResponse, error) {
	if !a.store.IsLeader() {
		id, addr := a.store.Leader()
		return api.EnrollResponse{}, &raft.NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	snap := a.store.Current()
	if _, _, err := a.device(snap, device); err != nil {
		return api.EnrollResponse{}, err
	}
	if req.ID == "" || len(req.Secret) == 0 {
		return api.EnrollResponse{}, ekBadRequest("give the id of step 1 and the secret tpm2_activatecredential recovered")
	}
	now := a.now().UTC()
	tk, err := attest.OpenEKTicket(a.ekKey(), device, req.ID, now)
	if err != nil {
		if errors.Is(err, attest.ErrEKTicketForged) {
			a.log.Warn("security: EK credential activation refused: forged id", "device", device, "actor", actor)
		}
		return api.EnrollResponse{}, ekBadRequest("id: %v", err)
	}
	if err := tk.CheckSecret(req.Secret); err != nil {
		a.log.Warn("security: EK credential activation refused: wrong secret", "device", device, "actor", actor)
		return api.EnrollResponse{}, ekBadRequest("%v", err)
	}
	ak, err := attest.ParseTPMPublic(tk.AKPublic)
	if err != nil {
		return api.EnrollResponse{}, fmt.Errorf("the id's AK: %w", err)
	}
	der, _, err := ak.PKIXPublicKey()
	if err != nil {
		return api.EnrollResponse{}, fmt.Errorf("the id's AK: %w", err)
	}
	akPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	fp := sha256.Sum256(der)
	ekFP := hex.EncodeToString(tk.EKCertSHA256[:])
	var current *topology.Enrollment
	if st := snap.SubjectState(topology.DeviceSubject(device)); st != nil {
		current = st.Enrollment
	}
	if enrollmentDigest(current) != tk.Prior {
		if c := current; c != nil && c.Method == topology.EnrollEKCredential && c.TPMAK == akPEM && c.EKCertFingerprint == ekFP && c.EATKey == "" {
			return api.EnrollResponse{Revision: snap.Revision(), Enrollment: c}, nil // a retry of what was recorded
		}
		return api.EnrollResponse{}, apiErr(http.StatusConflict, api.CodeReplay,
			"the device's enrollment changed since this credential was made (it was activated, or the device was enrolled again): start with step 1 again")
	}
	en := &topology.Enrollment{TPMAK: akPEM, Fingerprint: hex.EncodeToString(fp[:]), By: actor, At: now,
		Method: topology.EnrollEKCredential, EKCertFingerprint: ekFP}
	rev, err := a.store.UpdateState(ctx, []raft.StateOp{{Subject: topology.DeviceSubject(device), Op: raft.OpEnroll, Enrollment: en}})
	if err != nil {
		return api.EnrollResponse{}, err
	}
	a.log.Info("device enrolled by EK credential", "device", device, "fingerprint", en.Fingerprint, "ak_name", hex.EncodeToString(ak.Name()),
		"ek_cert", ekFP, "by", actor, "revision", rev)
	return api.EnrollResponse{Revision: rev, Enrollment: en}, nil
}
