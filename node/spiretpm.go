package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/internal/spiretpm"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/topology"
)

// The vigil_tpm SPIRE node attestor's side in Vigil (decision 0011, §3):
// the server plugin asks any member for a nonce for the subject its agent
// claims (TPMChallenge), then has the evidence the agent's TPM quoted over
// it verified and recorded (TPMAttest, through the API's write path, so on
// the leader or forwarded to it), and gives the agent the ID and node
// selectors answered. The plugin holds a --spire-tpm-token-file token,
// which reaches these two routes only.

var _ api.TPMNodeAttestor = (*attestor)(nil)

// refused is the 403 of the vigil_tpm routes.
func refused(format string, args ...any) error {
	return apiErr(http.StatusForbidden, api.CodeRefused, format, args...)
}

// spireSubject applies, after a.subject's lookup (class, err), the rules
// of who may join SPIRE through vigil_tpm: a subject whose class requires
// no attestation, or does not set attestation.spire, a device whose class
// is not identity: agent, and a quarantined subject are refused (403
// refused). An unknown subject stays a 404.
func (a *attestor) spireSubject(snap *topology.Snapshot, s topology.Subject, class *topology.Class, err error) (*topology.Class, error) {
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status == http.StatusBadRequest && (s.Kind == topology.KindDevice || s.Kind == topology.KindGateway) {
			// The subject exists but requires no attestation.
			return nil, refused("%s cannot join SPIRE through %s: %s", s, spire.TPMAttestor, ae.Message)
		}
		return nil, err
	}
	if !class.SPIRETPM() {
		return nil, refused("%s: class %s does not set attestation.spire, so its %ss join SPIRE with join tokens (vigil %s token %s), not through %s",
			s, class.Name, s.Kind, s.Kind, s.Name, spire.TPMAttestor)
	}
	if s.Kind == topology.KindDevice && !class.OwnAgent() {
		return nil, refused("%s: class %s is not identity: agent, so its devices run no SPIRE agent of their own (they get their identity through their gateway)",
			s, class.Name)
	}
	if st := snap.SubjectState(s); st != nil && st.Quarantine != nil {
		return nil, refused("%s %s is quarantined: %s", s.Kind, s.Name, st.Quarantine.Reason)
	}
	return class, nil
}

// fingerprint is the hex SHA-256 of b.
func fingerprint(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TPMChallenge issues a nonce for a subject whose agent presents the AK
// enrolled for it (and, for an AK enrolled by EK credential in a class
// with ekRoots, that enrollment's EK certificate). It runs on any member
// and writes nothing.
func (a *attestor) TPMChallenge(ctx context.Context, req spiretpm.ChallengeRequest) (spiretpm.ChallengeResponse, error) {
	s := req.Subject
	snap := a.store.Current()
	class, err := a.subject(snap, s)
	if class, err = a.spireSubject(snap, s, class, err); err != nil {
		a.logRefusal("challenge", s, err)
		return spiretpm.ChallengeResponse{}, err
	}
	if err := a.checkTPMKeys(snap, s, class, req); err != nil {
		a.logRefusal("challenge", s, err)
		return spiretpm.ChallengeResponse{}, err
	}
	nonce, exp, err := attest.NewNonce(a.key, nonceSubject(s), a.now(), a.ttl)
	if err != nil {
		return spiretpm.ChallengeResponse{}, err
	}
	// The class's PCRs: never empty (topology fills in the default).
	return spiretpm.ChallengeResponse{Nonce: hex.EncodeToString(nonce), Expires: exp, PCRs: class.Attestation.PCRs}, nil
}

// checkTPMKeys compares the keys an agent presents with s's enrollment.
func (a *attestor) checkTPMKeys(snap *topology.Snapshot, s topology.Subject, class *topology.Class, req spiretpm.ChallengeRequest) error {
	var en *topology.Enrollment
	if st := snap.SubjectState(s); st != nil {
		en = st.Enrollment
	}
	if en == nil || en.TPMAK == "" {
		return refused("%s has no enrolled TPM AK: enroll it with `vigil %s enroll %s --tpm-ak ak.pem`", s, s.Kind, s.Name)
	}
	enrolled, err := parsePublicKey(en.TPMAK)
	if err != nil {
		return errors.New(s.String() + ": enrolled TPM AK: " + err.Error())
	}
	enrolledDER, err := x509.MarshalPKIXPublicKey(enrolled)
	if err != nil {
		return errors.New(s.String() + ": enrolled TPM AK: " + err.Error())
	}
	if req.AKPublic == "" {
		return apiErr(http.StatusBadRequest, api.CodeBadRequest, "akPublic (the agent's TPM AK, PEM) is required")
	}
	presented, err := parsePublicKey(req.AKPublic)
	if err != nil {
		return apiErr(http.StatusBadRequest, api.CodeBadRequest, "akPublic: %v", err)
	}
	presentedDER, err := x509.MarshalPKIXPublicKey(presented)
	if err != nil {
		return apiErr(http.StatusBadRequest, api.CodeBadRequest, "akPublic: %v", err)
	}
	if !bytes.Equal(enrolledDER, presentedDER) {
		return refused("the AK is not the one enrolled for %s (enrolled %s, presented %s)", s, fingerprint(enrolledDER), fingerprint(presentedDER))
	}
	if len(class.Attestation.EKRoots) > 0 && en.Method == topology.EnrollEKCredential {
		if len(req.EKCert) == 0 {
			return refused("%s's AK was enrolled by EK credential (EK certificate %s): the agent must present that EK certificate (ek_cert in its plugin_data)",
				s, en.EKCertFingerprint)
		}
		der := req.EKCert
		if blk, _ := pem.Decode(der); blk != nil && blk.Type == "CERTIFICATE" {
			der = blk.Bytes
		}
		if got := fingerprint(der); got != en.EKCertFingerprint {
			return refused("the EK certificate is not the one %s's AK was enrolled with (enrolled %s, presented %s)", s, en.EKCertFingerprint, got)
		}
	}
	return nil
}

// logRefusal logs a refusal of the vigil_tpm routes (not a 404, which
// says nothing of the subject), at most once a second per step: whoever
// reaches SPIRE's agent port can cause them.
func (a *attestor) logRefusal(step string, s topology.Subject, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeRefused {
		return
	}
	if ok, held := a.warns.Allow("vigil_tpm "+step, time.Now()); ok {
		a.log.Warn("security: vigil_tpm "+step+" refused", subjectLog(s), "reason", ae.Message, "held_back", held)
	}
}

// TPMAttest verifies and records the evidence an agent's TPM quoted over
// a TPMChallenge nonce (attestSubject with the SPIRE rules) and, when it
// passed, answers the agent ID and node selectors SPIRE is to give the
// agent. A failure is answered 403 refused, recorded first when the quote
// is genuine.
func (a *attestor) TPMAttest(ctx context.Context, req spiretpm.AttestRequest) (spiretpm.AttestResponse, error) {
	s := req.Subject
	if len(req.Evidence) == 0 {
		return spiretpm.AttestResponse{}, apiErr(http.StatusBadRequest, api.CodeBadRequest, "evidence (the attest.Evidence JSON of the quote) is required")
	}
	resp, snap, err := a.attestSubject(ctx, s, req.Evidence, true)
	if err != nil {
		a.logRefusal("attestation", s, err)
		return spiretpm.AttestResponse{}, err
	}
	ix := snap.Index()
	// The enrollment whose AK the quote was verified with: snap is the
	// snapshot attestSubject verified against.
	var enrolled string
	if st := snap.SubjectState(s); st != nil && st.Enrollment != nil {
		enrolled = st.Enrollment.Fingerprint
	}
	selectors, ok := spire.TPMSelectorValues(ix, s, resp.Attestation, enrolled)
	if !ok {
		return spiretpm.AttestResponse{}, apiErr(http.StatusNotFound, api.CodeNotFound, "no %s named %q", s.Kind, s.Name)
	}
	return spiretpm.AttestResponse{Revision: resp.Revision, Attestation: resp.Attestation,
		AgentID: spire.TPMAgentID(ix.TrustDomain(), s), Selectors: selectors}, nil
}

// loadSPIRETPMTokens reads --spire-tpm-token-file (nil without one). It
// holds secrets, so it must not be readable by others, as the operators'
// token file.
func loadSPIRETPMTokens(path string) (*api.Tokens, error) {
	if path == "" {
		return nil, nil
	}
	data, err := readSecret(path)
	if err != nil {
		return nil, fmt.Errorf("SPIRE TPM token file (--spire-tpm-token-file): %w", err)
	}
	t, err := api.ParseTokens(data)
	if err != nil {
		return nil, fmt.Errorf("SPIRE TPM token file %s: %w", path, err)
	}
	return t, nil
}
