package node

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/internal/spiretpm"
	"github.com/vigil-iot/vigil/topology"
)

const (
	tpmGoodFirmware = "5555555555555555555555555555555555555555555555555555555555555555"
	tpmBadFirmware  = "6666666666666666666666666666666666666666666666666666666666666666"
	// spireTPMToken is the SPIRE server plugin's token.
	spireTPMToken = "vigil-tpm-plugin-token-0123456789abcdef"
)

// gw-1 and gw-2 onboard through vigil_tpm; gw-3 has no class; gw-4's
// class attests without SPIRE. Device gw-1 (the same name as the gateway)
// runs its own agent; slc-1 gets its identity through its gateway.
const spireTPMDoc = `apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}, {name: cloud}]
gateways:
  - {name: gw-1, zone: north, class: edge-gw}
  - {name: gw-2, zone: north, class: edge-gw}
  - {name: gw-3, zone: north}
  - {name: gw-4, zone: north, class: plain-gw}
deviceClasses:
  - name: edge-gw
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      spire: onboard
      firmware: [{version: "5.0.0", sha256: "` + tpmGoodFirmware + `"}]
  - name: plain-gw
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      firmware: [{version: "5.0.0", sha256: "` + tpmGoodFirmware + `"}]
  - name: kiosk
    identity: agent
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      spire: required
      firmware: [{version: "7.1.0", sha256: "` + tpmGoodFirmware + `"}]
  - name: streetlight
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      firmware: [{version: "2.4.1", sha256: "` + tpmGoodFirmware + `"}]
devices:
  - {name: gw-1, class: kiosk, gateway: gw-2}
  - {name: slc-1, class: streetlight, gateway: gw-1}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.city.example], endpoints: ["10.0.0.1:8443"]}
flows:
  - {name: t, from: {classes: [streetlight]}, to: {service: telemetry}, http: {methods: [POST], paths: ["/t"]}}
`

// withSPIRETPMTokens gives the member a --spire-tpm-token-file holding
// spireTPMToken.
func withSPIRETPMTokens(t *testing.T) func(*Config) {
	path := filepath.Join(t.TempDir(), "spire-tpm-tokens")
	if err := os.WriteFile(path, []byte("# the SPIRE server's vigil_tpm plugin\nspire-server:"+spireTPMToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *Config) { c.SPIRE.TPMTokenFile = path }
}

// firmwareTPM is a simulated TPM with firmware measured into PCR 16.
func firmwareTPM(t *testing.T, firmware string) *attest.SimTPM {
	t.Helper()
	tpm, err := attest.NewSimTPM(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.MeasureFirmware(firmware); err != nil {
		t.Fatal(err)
	}
	return tpm
}

func akPEM(t *testing.T, tpm *attest.SimTPM) string {
	t.Helper()
	b, err := tpm.AKPublicPEM()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// akFingerprint is the hex SHA-256 of the AK's DER, as refusals name it.
func akFingerprint(t *testing.T, tpm *attest.SimTPM) string {
	t.Helper()
	blk, _ := pem.Decode([]byte(akPEM(t, tpm)))
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// tpmQuote answers a vigil_tpm challenge with tpm's evidence.
func tpmQuote(t *testing.T, tpm *attest.SimTPM, ch spiretpm.ChallengeResponse) json.RawMessage {
	t.Helper()
	nonce, err := hex.DecodeString(ch.Nonce)
	if err != nil || len(nonce) != attest.NonceSize {
		t.Fatalf("nonce %q: %v", ch.Nonce, err)
	}
	ev, err := tpm.Evidence(nonce, ch.PCRs)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// wantTPMError checks err is an *api.Error with status and code whose
// message holds each of msgs.
func wantTPMError(t *testing.T, what string, err error, status int, code string, msgs ...string) {
	t.Helper()
	var e *api.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: err = %v, want %d %s", what, err, status, code)
	}
	if e.Status != status || e.Code != code {
		t.Fatalf("%s: %d %s (%s), want %d %s", what, e.Status, e.Code, e.Message, status, code)
	}
	for _, m := range msgs {
		if !strings.Contains(e.Message, m) {
			t.Fatalf("%s: message %q does not say %q", what, e.Message, m)
		}
	}
}

func gwSubject(name string) topology.Subject  { return topology.GatewaySubject(name) }
func devSubject(name string) topology.Subject { return topology.DeviceSubject(name) }

// TestSPIRETPMNodeAttestation runs the vigil_tpm node attestor's calls
// through the API with the SPIRE server plugin's scoped token: gateway
// enrollment, the challenge's refusals (unknown subject, no vigil_tpm
// class, no or another AK), an unsigned quote that is not recorded, a
// pass with its agent ID and node selectors, a replay, a gateway's nonce
// answered for the device of the same name, and unlisted firmware that is
// recorded and refused.
func TestSPIRETPMNodeAttestation(t *testing.T) {
	n, cl, _ := runNode(t, withSPIRETPMTokens(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(spireTPMDoc)); err != nil {
		t.Fatal(err)
	}
	plugin := api.NewClient(n.APIAddr(), spireTPMToken)
	state := func(s topology.Subject) *topology.SubjectState { return n.Store().Current().SubjectState(s) }

	// Enrollment of gateways, by operators.
	gw1 := firmwareTPM(t, tpmGoodFirmware)
	resp, err := cl.EnrollGateway(ctx, "gw-1", api.EnrollRequest{TPMAK: akPEM(t, gw1)})
	if err != nil || resp.Enrollment == nil || resp.Enrollment.By != "admin" || resp.Enrollment.Fingerprint != akFingerprint(t, gw1) {
		t.Fatalf("enroll gw-1: %+v, %v", resp.Enrollment, err)
	}
	if st := state(gwSubject("gw-1")); st == nil || st.Enrollment == nil || st.Enrollment.TPMAK == "" {
		t.Fatalf("gateway gw-1's state after enrolling: %+v", st)
	}
	if st := state(devSubject("gw-1")); st != nil && st.Enrollment != nil {
		t.Fatalf("enrolling gateway gw-1 enrolled device gw-1: %+v", st.Enrollment)
	}
	_, err = cl.EnrollGateway(ctx, "gw-9", api.EnrollRequest{TPMAK: akPEM(t, gw1)})
	wantTPMError(t, "enroll an unknown gateway", err, http.StatusNotFound, api.CodeNotFound, `no gateway named "gw-9"`)
	_, err = cl.EnrollGateway(ctx, "gw-3", api.EnrollRequest{TPMAK: akPEM(t, gw1)})
	wantTPMError(t, "enroll a gateway without a class", err, http.StatusBadRequest, api.CodeBadRequest, "gateway gw-3 has no class")
	_, err = cl.EnrollGateway(ctx, "gw-2", api.EnrollRequest{EATKey: akPEM(t, gw1)})
	wantTPMError(t, "enroll a gateway's EAT key", err, http.StatusBadRequest, api.CodeBadRequest, "TPM quote only")
	_, err = plugin.EnrollGateway(ctx, "gw-2", api.EnrollRequest{TPMAK: akPEM(t, gw1)})
	wantTPMError(t, "enroll with the plugin's token", err, http.StatusUnauthorized, api.CodeUnauthenticated)

	// The challenge's refusals.
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-9"), AKPublic: akPEM(t, gw1)})
	wantTPMError(t, "an unknown gateway", err, http.StatusNotFound, api.CodeNotFound, `no gateway named "gw-9"`)
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-2"), AKPublic: akPEM(t, gw1)})
	wantTPMError(t, "a gateway without an AK", err, http.StatusForbidden, api.CodeRefused,
		"gateway/gw-2 has no enrolled TPM AK: enroll it with `vigil gateway enroll gw-2 --tpm-ak ak.pem`")
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-3"), AKPublic: akPEM(t, gw1)})
	wantTPMError(t, "a gateway without a class", err, http.StatusForbidden, api.CodeRefused, "gateway/gw-3 cannot join SPIRE through vigil_tpm")
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-4"), AKPublic: akPEM(t, gw1)})
	wantTPMError(t, "a gateway whose class does not set spire", err, http.StatusForbidden, api.CodeRefused,
		"class plain-gw does not set attestation.spire")
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: devSubject("slc-1"), AKPublic: akPEM(t, gw1)})
	wantTPMError(t, "a device whose class does not set spire", err, http.StatusForbidden, api.CodeRefused,
		"class streetlight does not set attestation.spire")
	other := firmwareTPM(t, tpmGoodFirmware)
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-1"), AKPublic: akPEM(t, other)})
	wantTPMError(t, "another AK", err, http.StatusForbidden, api.CodeRefused,
		"the AK is not the one enrolled for gateway/gw-1 (enrolled "+akFingerprint(t, gw1)+", presented "+akFingerprint(t, other)+")")
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-1"), AKPublic: "not a key"})
	wantTPMError(t, "an AK that is no PEM key", err, http.StatusBadRequest, api.CodeBadRequest, "akPublic")

	ch, err := plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-1"), AKPublic: akPEM(t, gw1)})
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Nonce) != 64 || !slices.Equal(ch.PCRs, []int{16}) || !ch.Expires.After(time.Now()) {
		t.Fatalf("challenge = %+v", ch)
	}

	// Quotes not signed by the enrolled AK are refused and not recorded:
	// a garbage signature, and another TPM's quote over the nonce.
	good := tpmQuote(t, gw1, ch)
	var ev attest.Evidence
	if err := json.Unmarshal(good, &ev); err != nil {
		t.Fatal(err)
	}
	sig := ev.TPM2.Signature
	ev.TPM2.Signature = append(slices.Clone(sig[:len(sig)-8]), 1, 2, 3, 4, 5, 6, 7, 8)
	garbage, _ := json.Marshal(&ev)
	for what, raw := range map[string]json.RawMessage{"a garbage signature": garbage, "another TPM's quote": tpmQuote(t, other, ch)} {
		_, err = plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-1"), Evidence: raw})
		wantTPMError(t, what, err, http.StatusForbidden, api.CodeRefused, "gateway/gw-1: attestation refused and not recorded",
			"not signed by the enrolled AK")
	}
	if st := state(gwSubject("gw-1")); st.Attestation != nil {
		t.Fatalf("an unsigned quote was recorded: %+v", st.Attestation)
	}

	// The genuine quote over the same nonce, which is still unused, passes.
	got, err := plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-1"), Evidence: good})
	if err != nil {
		t.Fatal(err)
	}
	wantSelectors := []string{"ak:" + akFingerprint(t, gw1)[:16], "class:edge-gw", "firmware-sha256:" + tpmGoodFirmware, "firmware:5.0.0",
		"kind:gateway", "subject:gw-1", "zone:north"}
	if got.AgentID != "spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-1" || !slices.Equal(got.Selectors, wantSelectors) ||
		got.Attestation == nil || got.Attestation.Failed() || got.Attestation.FirmwareVersion != "5.0.0" || got.Revision == 0 {
		t.Fatalf("pass = %+v (attestation %+v)", got, got.Attestation)
	}
	if st := state(gwSubject("gw-1")); st.Attestation == nil || st.Attestation.Failed() || st.Attestation.Verifier != "n1" || st.Attestation.Clock == nil {
		t.Fatalf("gateway gw-1's recorded attestation: %+v", st.Attestation)
	}
	_, err = plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-1"), Evidence: good})
	wantTPMError(t, "the same evidence again", err, http.StatusConflict, api.CodeReplay)

	// A gateway's nonce does not answer for the device of the same name.
	devTPM := firmwareTPM(t, tpmGoodFirmware)
	if _, err := cl.Enroll(ctx, "gw-1", api.EnrollRequest{TPMAK: akPEM(t, devTPM)}); err != nil {
		t.Fatal(err)
	}
	gwNonce, err := plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-1"), AKPublic: akPEM(t, gw1)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: devSubject("gw-1"), Evidence: tpmQuote(t, devTPM, gwNonce)})
	wantTPMError(t, "a gateway's nonce for a device", err, http.StatusBadRequest, api.CodeBadRequest, "not issued by this cluster")
	_, err = cl.Attest(ctx, "gw-1", tpmQuote(t, devTPM, gwNonce))
	wantTPMError(t, "a gateway's nonce on the device route", err, http.StatusBadRequest, api.CodeBadRequest, "not issued by this cluster")
	devCh, err := cl.Challenge(ctx, "gw-1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-1"),
		Evidence: tpmQuote(t, gw1, spiretpm.ChallengeResponse{Nonce: devCh.Nonce, PCRs: []int{16}})})
	wantTPMError(t, "a device's nonce for a gateway", err, http.StatusBadRequest, api.CodeBadRequest, "not issued by this cluster for gateway/gw-1")
	if st := state(devSubject("gw-1")); st.Attestation != nil {
		t.Fatalf("device gw-1 has an attestation: %+v", st.Attestation)
	}

	// The device of an identity: agent class attests as itself.
	devCh2, err := plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: devSubject("gw-1"), AKPublic: akPEM(t, devTPM)})
	if err != nil {
		t.Fatal(err)
	}
	got, err = plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: devSubject("gw-1"), Evidence: tpmQuote(t, devTPM, devCh2)})
	if err != nil {
		t.Fatal(err)
	}
	wantSelectors = []string{"ak:" + akFingerprint(t, devTPM)[:16], "class:kiosk", "firmware-sha256:" + tpmGoodFirmware, "firmware:7.1.0",
		"kind:device", "subject:gw-1", "zone:north"}
	if got.AgentID != "spiffe://city.example/spire/agent/vigil_tpm/device/gw-1" || !slices.Equal(got.Selectors, wantSelectors) {
		t.Fatalf("device gw-1's pass = %+v", got)
	}

	// Unlisted firmware on a genuine quote is recorded, then refused.
	gw2 := firmwareTPM(t, tpmBadFirmware)
	if _, err := cl.EnrollGateway(ctx, "gw-2", api.EnrollRequest{TPMAK: akPEM(t, gw2)}); err != nil {
		t.Fatal(err)
	}
	ch2, err := plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-2"), AKPublic: akPEM(t, gw2)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-2"), Evidence: tpmQuote(t, gw2, ch2)})
	wantTPMError(t, "unlisted firmware", err, http.StatusForbidden, api.CodeRefused,
		"gateway/gw-2: attestation failed: firmware "+tpmBadFirmware+" is not a reference value of class edge-gw")
	if st := state(gwSubject("gw-2")); st.Attestation == nil || !st.Attestation.Failed() || st.Attestation.Clock == nil {
		t.Fatalf("gateway gw-2's failure was not recorded: %+v", st)
	}
}

// TestSPIRETPMQuarantinedGateway: a quarantined gateway is refused at the
// challenge, and at the attestation before its evidence is verified, so
// its nonce stays unused: once released, the same evidence passes.
func TestSPIRETPMQuarantinedGateway(t *testing.T) {
	n, cl, _ := runNode(t, withSPIRETPMTokens(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(spireTPMDoc)); err != nil {
		t.Fatal(err)
	}
	plugin := api.NewClient(n.APIAddr(), spireTPMToken)
	tpm := firmwareTPM(t, tpmGoodFirmware)
	if _, err := cl.EnrollGateway(ctx, "gw-1", api.EnrollRequest{TPMAK: akPEM(t, tpm)}); err != nil {
		t.Fatal(err)
	}
	ch, err := plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-1"), AKPublic: akPEM(t, tpm)})
	if err != nil {
		t.Fatal(err)
	}
	raw := tpmQuote(t, tpm, ch)
	if _, err := cl.Quarantine(ctx, topology.KindGateway, "gw-1", "stolen from its cabinet"); err != nil {
		t.Fatal(err)
	}
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-1"), AKPublic: akPEM(t, tpm)})
	wantTPMError(t, "challenge", err, http.StatusForbidden, api.CodeRefused, "gateway gw-1 is quarantined: stolen from its cabinet")
	_, err = plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-1"), Evidence: raw})
	wantTPMError(t, "attest", err, http.StatusForbidden, api.CodeRefused, "gateway gw-1 is quarantined: stolen from its cabinet")
	if st := n.Store().Current().SubjectState(gwSubject("gw-1")); st.Attestation != nil {
		t.Fatalf("a quarantined gateway's evidence was recorded: %+v", st.Attestation)
	}
	if _, err := cl.Release(ctx, topology.KindGateway, "gw-1"); err != nil {
		t.Fatal(err)
	}
	got, err := plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-1"), Evidence: raw})
	if err != nil || got.AgentID == "" {
		t.Fatalf("after release, the same evidence: %+v, %v", got, err)
	}
}

// TestSPIRETPMTokenIsScoped: the SPIRE server plugin's token reaches the
// two vigil_tpm routes and nothing else, as an unknown token would not;
// operators' tokens reach those routes too.
func TestSPIRETPMTokenIsScoped(t *testing.T) {
	n, cl, _ := runNode(t, withSPIRETPMTokens(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(spireTPMDoc)); err != nil {
		t.Fatal(err)
	}
	base := "http://" + api.HostPort(n.APIAddr())
	call := func(token, method, path, body string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct{ method, path, body string }{
		{"PUT", "/v1/topology", spireTPMDoc},
		{"GET", "/v1/topology", ""},
		{"GET", "/v1/devices", ""},
		{"GET", "/v1/gateways/gw-1", ""},
		{"POST", "/v1/gateways/gw-1/quarantine", `{"reason":"x"}`},
		{"POST", "/v1/gateways/gw-1/enroll", `{"tpmAk":"x"}`},
		{"POST", "/v1/devices/gw-1/challenge", ""},
		{"POST", "/v1/devices/gw-1/attestations", "{}"},
		{"POST", "/v1/internal/attestation-results", `{"batch":[]}`},
		{"POST", "/v1/state", `{"ops":[]}`},
		{"POST", "/v1/console/links", ""},
	} {
		if st := call(spireTPMToken, c.method, c.path, c.body); st != http.StatusUnauthorized {
			t.Errorf("%s %s with the SPIRE TPM token: %d, want 401", c.method, c.path, st)
		}
	}
	if st := call("wrong-token-wrong-token-wrong-token", "POST", spiretpm.ChallengePath, `{}`); st != http.StatusUnauthorized {
		t.Errorf("a wrong token on the challenge: %d, want 401", st)
	}
	// It reaches both routes: an unknown gateway is a 404 from the
	// attestor, not a 401.
	for path, body := range map[string]string{
		spiretpm.ChallengePath: `{"subject":{"kind":"gateway","name":"gw-9"},"akPublic":"x"}`,
		spiretpm.AttestPath:    `{"subject":{"kind":"gateway","name":"gw-9"},"evidence":{}}`,
	} {
		if st := call(spireTPMToken, "POST", path, body); st != http.StatusNotFound {
			t.Errorf("POST %s with the SPIRE TPM token: %d, want 404 (unknown gateway)", path, st)
		}
	}
	// Operators' tokens reach them too.
	tpm := firmwareTPM(t, tpmGoodFirmware)
	if _, err := cl.EnrollGateway(ctx, "gw-1", api.EnrollRequest{TPMAK: akPEM(t, tpm)}); err != nil {
		t.Fatal(err)
	}
	ch, err := cl.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject("gw-1"), AKPublic: akPEM(t, tpm)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-1"), Evidence: tpmQuote(t, tpm, ch)}); err != nil {
		t.Fatal(err)
	}
}

// TestSPIRETPMAttestationForwardedWithItsToken: at a follower, a failed
// attestation is left to the leader: the API forwards the request, with
// the plugin's token, which the leader (holding the same token file)
// accepts, and the leader records and refuses it. A pass at the follower
// is recorded through the leader too.
func TestSPIRETPMAttestationForwardedWithItsToken(t *testing.T) {
	withTokens := withSPIRETPMTokens(t)
	n1, cl, _ := runNode(t, withTokens)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(spireTPMDoc)); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir, cfg.Join = "n2", filepath.Join(t.TempDir(), "data"), n1.APIAddr()
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.ClusterKeyFile, cfg.TokenFile = n1.cfg.ClusterKeyFile, n1.TokenFile()
	cfg.Logger = n1.cfg.Logger.With("member", "n2")
	withTokens(&cfg)
	n2, _ := startStoppable(t, cfg)
	if n2.Store().IsLeader() {
		t.Fatal("n2 leads")
	}
	good, bad := firmwareTPM(t, tpmGoodFirmware), firmwareTPM(t, tpmBadFirmware)
	if _, err := cl.EnrollGateway(ctx, "gw-1", api.EnrollRequest{TPMAK: akPEM(t, good)}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.EnrollGateway(ctx, "gw-2", api.EnrollRequest{TPMAK: akPEM(t, bad)}); err != nil {
		t.Fatal(err)
	}
	plugin := api.NewClient(n2.APIAddr(), spireTPMToken)
	challenge := func(name string, tpm *attest.SimTPM) spiretpm.ChallengeResponse {
		t.Helper()
		// The follower must have applied the enrollments.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			ch, err := plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: gwSubject(name), AKPublic: akPEM(t, tpm)})
			if err == nil {
				return ch
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
		}
	}
	_, err := plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-2"), Evidence: tpmQuote(t, bad, challenge("gw-2", bad))})
	wantTPMError(t, "unlisted firmware at a follower", err, http.StatusForbidden, api.CodeRefused, "gateway/gw-2: attestation failed: firmware")
	if st := n1.Store().Current().SubjectState(gwSubject("gw-2")); st == nil || st.Attestation == nil || !st.Attestation.Failed() || st.Attestation.Verifier != "n1" {
		t.Fatalf("the leader did not record gw-2's failure: %+v", st)
	}
	got, err := plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: gwSubject("gw-1"), Evidence: tpmQuote(t, good, challenge("gw-1", good))})
	if err != nil || got.AgentID != "spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-1" || got.Attestation.Verifier != "n2" {
		t.Fatalf("a pass at the follower: %+v, %v", got, err)
	}
}

// TestSPIRETPMEKCertificate: for an AK enrolled by EK credential in a
// class with ekRoots, the agent must present that EK certificate (DER, or
// PEM) with the AK.
func TestSPIRETPMEKCertificate(t *testing.T) {
	n, cl, _ := runNode(t, withSPIRETPMTokens(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ca, caKey := ekTestCA(t, "TPM Maker Root CA")
	indented := strings.ReplaceAll(strings.TrimSpace(certPEM(ca)), "\n", "\n          ")
	doc := strings.Replace(spireTPMDoc, "      spire: required\n", "      spire: required\n      ekRoots:\n        - |\n          "+indented+"\n", 1)
	if _, err := cl.ApplyTopology(ctx, []byte(doc)); err != nil {
		t.Fatal(err)
	}
	d := newSimDevice(t, "ecc", ca, caKey)
	if err := d.tpm.MeasureFirmware(tpmGoodFirmware); err != nil {
		t.Fatal(err)
	}
	step1, err := cl.EnrollEK(ctx, "gw-1", d.request())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.ActivateEK(ctx, "gw-1", api.EKActivateRequest{ID: step1.ID, Secret: d.activate(t, step1)}); err != nil {
		t.Fatal(err)
	}
	plugin := api.NewClient(n.APIAddr(), spireTPMToken)
	ak := akPEM(t, d.tpm)
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: devSubject("gw-1"), AKPublic: ak})
	wantTPMError(t, "no EK certificate", err, http.StatusForbidden, api.CodeRefused,
		"device/gw-1's AK was enrolled by EK credential (EK certificate "+step1.EKCertFingerprint+")")
	other := newSimDevice(t, "ecc", ca, caKey)
	_, err = plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: devSubject("gw-1"), AKPublic: ak, EKCert: other.ek.Cert.Raw})
	wantTPMError(t, "another EK certificate", err, http.StatusForbidden, api.CodeRefused,
		"the EK certificate is not the one device/gw-1's AK was enrolled with (enrolled "+step1.EKCertFingerprint+", presented ")
	for what, cert := range map[string][]byte{"DER": d.ek.Cert.Raw, "PEM": []byte(certPEM(d.ek.Cert))} {
		ch, err := plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: devSubject("gw-1"), AKPublic: ak, EKCert: cert})
		if err != nil {
			t.Fatalf("the enrolled EK certificate as %s: %v", what, err)
		}
		if what == "DER" {
			got, err := plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: devSubject("gw-1"), Evidence: tpmQuote(t, d.tpm, ch)})
			if err != nil || got.AgentID != "spiffe://city.example/spire/agent/vigil_tpm/device/gw-1" {
				t.Fatalf("attest: %+v, %v", got, err)
			}
		}
	}
}

// TestSPIRETPMOldQuoteNotRecorded: a genuine quote that passed once, sent
// again with a new nonce written into its nonce field (its extraData still
// names the old one), is refused and never recorded, on the SPIRE route and
// on the device route of a device that onboards by TPM: whoever saw the
// quote pass cannot record failures that would evict the subject's agent.
func TestSPIRETPMOldQuoteNotRecorded(t *testing.T) {
	n, cl, _ := runNode(t, withSPIRETPMTokens(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(spireTPMDoc)); err != nil {
		t.Fatal(err)
	}
	plugin := api.NewClient(n.APIAddr(), spireTPMToken)
	rewrite := func(raw json.RawMessage, nonce string) json.RawMessage {
		var ev map[string]any
		if err := json.Unmarshal(raw, &ev); err != nil {
			t.Fatal(err)
		}
		ev["nonce"] = nonce
		out, _ := json.Marshal(ev)
		return out
	}
	for _, s := range []topology.Subject{gwSubject("gw-1"), devSubject("gw-1")} {
		tpm := firmwareTPM(t, tpmGoodFirmware)
		enroll := api.EnrollRequest{TPMAK: akPEM(t, tpm)}
		var err error
		if s.Kind == topology.KindGateway {
			_, err = cl.EnrollGateway(ctx, s.Name, enroll)
		} else {
			_, err = cl.Enroll(ctx, s.Name, enroll)
		}
		if err != nil {
			t.Fatal(err)
		}
		ch, err := plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: s, AKPublic: akPEM(t, tpm)})
		if err != nil {
			t.Fatal(err)
		}
		old := tpmQuote(t, tpm, ch)
		if _, err := plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: s, Evidence: old}); err != nil {
			t.Fatalf("%s: the genuine attestation: %v", s, err)
		}
		passed := n.Store().Current().SubjectState(s).Attestation
		ch2, err := plugin.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: s, AKPublic: akPEM(t, tpm)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = plugin.SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: s, Evidence: rewrite(old, ch2.Nonce)})
		wantTPMError(t, s.String()+": an old quote under a new nonce", err, http.StatusForbidden, api.CodeRefused, "not recorded", "extraData is not the nonce")
		if s.Kind == topology.KindDevice {
			dch, err := cl.Challenge(ctx, s.Name)
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.Attest(ctx, s.Name, rewrite(old, dch.Nonce))
			wantTPMError(t, s.String()+": an old quote on the device route", err, http.StatusForbidden, api.CodeRefused, "not recorded")
		}
		if got := n.Store().Current().SubjectState(s).Attestation; got.Failed() || got.EvidenceDigest != passed.EvidenceDigest {
			t.Fatalf("%s: the refused quote changed the recorded attestation: %+v", s, got)
		}
	}
}
