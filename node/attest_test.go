package node

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

const goodFirmware = "1111111111111111111111111111111111111111111111111111111111111111"

const attestDoc = `apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}, {name: cloud}]
gateways: [{name: gw-1, zone: north}]
deviceClasses:
  - name: streetlight
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      firmware: [{version: "2.4.1", sha256: "` + goodFirmware + `"}]
devices:
  - {name: slc-1, class: streetlight, gateway: gw-1}
  - {name: slc-2, class: streetlight, gateway: gw-1}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.city.example], endpoints: ["10.0.0.1:8443"]}
flows:
  - {name: t, from: {classes: [streetlight]}, to: {service: telemetry}, http: {methods: [POST], paths: ["/t"]}}
`

// TestAttestationThroughTheAPI: a device enrolled with its TPM's AK answers
// a challenge with a quote; the verified result is replicated and the
// authorizer allows it. The same evidence again is a replay; evidence of
// firmware that is not a reference value is recorded as failed and denies
// the device, with the reason.
func TestAttestationThroughTheAPI(t *testing.T) {
	n, cl, _ := runNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestDoc)); err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(n.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	check := func(dev string) (bool, string) {
		resp, err := authv3.NewAuthorizationClient(cc).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: "spiffe://city.example/zone/north/device/" + dev},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "POST", Path: "/t", Host: "telemetry.city.example"}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetStatus().GetCode() == int32(codes.OK), resp.GetDeniedResponse().GetBody()
	}
	if ok, body := check("slc-1"); ok || !strings.Contains(body, "has no attestation") {
		t.Fatalf("before attesting: allowed=%v %s", ok, body)
	}

	attestWith := func(dev, firmware string) ([]byte, api.AttestResponse, error) {
		tpm, err := attest.NewSimTPM(false)
		if err != nil {
			t.Fatal(err)
		}
		pemAK, _ := tpm.AKPublicPEM()
		if _, err := cl.Enroll(ctx, dev, api.EnrollRequest{TPMAK: string(pemAK)}); err != nil {
			t.Fatal(err)
		}
		if err := tpm.MeasureFirmware(firmware); err != nil {
			t.Fatal(err)
		}
		ch, err := cl.Challenge(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		nonce, _ := hex.DecodeString(ch.Nonce)
		ev, err := tpm.Evidence(nonce, []int{16})
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(ev)
		resp, err := cl.Attest(ctx, dev, raw)
		return raw, resp, err
	}
	raw, resp, err := attestWith("slc-1", goodFirmware)
	if err != nil || resp.Attestation == nil || resp.Attestation.Failed() || resp.Attestation.FirmwareVersion != "2.4.1" {
		t.Fatalf("good evidence: %+v, %v", resp.Attestation, err)
	}
	if ok, body := check("slc-1"); !ok {
		t.Fatalf("an attested device is denied: %s", body)
	}
	_, err = cl.Attest(ctx, "slc-1", raw)
	var apiErr *api.Error
	if !errors.As(err, &apiErr) || apiErr.Code != api.CodeReplay {
		t.Fatalf("the same evidence again: %v, want a replay", err)
	}

	bad := strings.Repeat("2", 64)
	_, resp, err = attestWith("slc-2", bad)
	if err != nil || resp.Attestation == nil || !resp.Attestation.Failed() || !strings.Contains(strings.Join(resp.Attestation.Reasons, " "), "not a reference value") {
		t.Fatalf("unknown firmware: %+v, %v", resp.Attestation, err)
	}
	if ok, body := check("slc-2"); ok || !strings.Contains(body, "failed verification") {
		t.Fatalf("a device whose evidence failed: allowed=%v %s", ok, body)
	}
	st := n.Store().Current().SubjectState(topology.DeviceSubject("slc-2"))
	if st == nil || st.Enrollment == nil || st.Attestation.Verifier != "n1" {
		t.Fatalf("state = %+v", st)
	}
}

// TestFailedEvidenceQuarantinesWhenTheClassSaysSo: with onFailure:
// quarantine, evidence that fails puts the device in quarantine at once,
// by vigil/attest, with the reason.
func TestFailedEvidenceQuarantinesWhenTheClassSaysSo(t *testing.T) {
	_, cl, _ := runNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	doc := strings.Replace(attestDoc, "      formats: [tpm2-quote]\n", "      formats: [tpm2-quote]\n      onFailure: quarantine\n", 1)
	if _, err := cl.ApplyTopology(ctx, []byte(doc)); err != nil {
		t.Fatal(err)
	}
	tpm, _ := attest.NewSimTPM(false)
	pemAK, _ := tpm.AKPublicPEM()
	if _, err := cl.Enroll(ctx, "slc-1", api.EnrollRequest{TPMAK: string(pemAK)}); err != nil {
		t.Fatal(err)
	}
	tpm.MeasureFirmware(strings.Repeat("9", 64))
	ch, _ := cl.Challenge(ctx, "slc-1")
	nonce, _ := hex.DecodeString(ch.Nonce)
	ev, _ := tpm.Evidence(nonce, []int{16})
	raw, _ := json.Marshal(ev)
	if resp, err := cl.Attest(ctx, "slc-1", raw); err != nil || !resp.Attestation.Failed() {
		t.Fatalf("attest: %+v, %v", resp.Attestation, err)
	}
	s, err := cl.Subject(ctx, topology.KindDevice, "slc-1")
	if err != nil {
		t.Fatal(err)
	}
	if q := s.State.Quarantine; q == nil || q.By != "vigil/attest" || !strings.Contains(q.Reason, "not a reference value") {
		t.Fatalf("quarantine = %+v, want one by vigil/attest naming the firmware", q)
	}
}

// TestOperatorsCannotRecordResults: verified results travel between
// members with the peer token only; an operator's token is refused.
func TestOperatorsCannotRecordResults(t *testing.T) {
	_, cl, _ := runNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestDoc)); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	_, err := cl.RecordResults(ctx, [][]raft.StateOp{{{Subject: topology.DeviceSubject("slc-1"), Op: raft.OpSetAttestation,
		Attestation: &topology.Attestation{Status: topology.AttestationPassed, Method: "tpm2-quote", FirmwareVersion: "2.4.1",
			VerifiedAt: now, ExpiresAt: now.Add(time.Hour)}}}})
	var apiErr *api.Error
	if !errors.As(err, &apiErr) || apiErr.Code != api.CodeForbidden {
		t.Fatalf("an operator records a result: %v, want forbidden", err)
	}
}
