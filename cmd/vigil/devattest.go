package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/node"
	"github.com/vigil-iot/vigil/topology"
)

// devTampered is the example device that runs firmware of no reference
// value, so that `vigil dev` shows a device denied for its firmware.
const devTampered = "slc-s1-009"

// attestExample gives every device of the example whose class requires
// attestation a simulated TPM, enrolls its AK and attests it through the
// member's API, as a device and its gateway would: challenge, quote,
// verification, replicated result. devTampered measures an image that is
// not a reference value and fails.
func attestExample(ctx context.Context, n *node.Node, snap *topology.Snapshot) (passed int, failed []string, err error) {
	tokens, err := os.ReadFile(n.TokenFile())
	if err != nil {
		return 0, nil, err
	}
	tok, err := api.FirstToken(tokens)
	if err != nil {
		return 0, nil, err
	}
	cl := api.NewClient(n.APIAddr(), tok)
	ix := snap.Index()
	for _, d := range ix.Devices() {
		c, _ := ix.Class(d.Class)
		if c == nil || c.MaxAge == 0 || len(c.Attestation.Firmware) == 0 {
			continue
		}
		st := snap.SubjectState(topology.DeviceSubject(d.Name))
		if st != nil && st.Attestation != nil {
			continue // a kept data dir: attested before
		}
		tpm, err := attest.NewSimTPM(false)
		if err != nil {
			return passed, failed, err
		}
		ak, err := tpm.AKPublicPEM()
		if err != nil {
			return passed, failed, err
		}
		if _, err := cl.Enroll(ctx, d.Name, api.EnrollRequest{TPMAK: string(ak)}); err != nil {
			return passed, failed, fmt.Errorf("enroll %s: %w", d.Name, err)
		}
		fw := c.Attestation.Firmware[len(c.Attestation.Firmware)-1].SHA256
		if d.Name == devTampered {
			sum := sha256.Sum256([]byte("a patched image nobody released"))
			fw = hex.EncodeToString(sum[:])
		}
		if err := tpm.MeasureFirmware(fw); err != nil {
			return passed, failed, err
		}
		ch, err := cl.Challenge(ctx, d.Name)
		if err != nil {
			return passed, failed, fmt.Errorf("challenge %s: %w", d.Name, err)
		}
		nonce, _ := hex.DecodeString(ch.Nonce)
		ev, err := tpm.Evidence(nonce, c.Attestation.PCRs)
		if err != nil {
			return passed, failed, err
		}
		raw, _ := json.Marshal(ev)
		resp, err := cl.Attest(ctx, d.Name, raw)
		if err != nil {
			return passed, failed, fmt.Errorf("attest %s: %w", d.Name, err)
		}
		if resp.Attestation.Failed() {
			failed = append(failed, d.Name+": "+strings.Join(resp.Attestation.Reasons, "; "))
		} else {
			passed++
		}
	}
	return passed, failed, nil
}

// showDecisions asks the member's authorizer what a gateway's Envoy would
// ask for three requests, and prints the answers.
func showDecisions(ctx context.Context, w io.Writer, n *node.Node, snap *topology.Snapshot) {
	cc, err := grpc.NewClient(n.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer cc.Close()
	td := snap.Index().TrustDomain()
	for _, q := range []struct{ zone, device, method, host, path, what string }{
		{"north", "slc-n1-001", "POST", "telemetry.city.example", "/api/v1/telemetry", "a street light reports telemetry"},
		{"north", "slc-n1-001", "GET", "video.city.example", "/upload/", "the same light reaches for camera storage"},
		{"south", devTampered, "POST", "telemetry.city.example", "/api/v1/telemetry", "a light with unreleased firmware reports"},
	} {
		resp, err := authv3.NewAuthorizationClient(cc).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: fmt.Sprintf("spiffe://%s/zone/%s/device/%s", td, q.zone, q.device)},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: q.method, Host: q.host, Path: q.path}},
		}})
		if err != nil {
			continue
		}
		verdict := "ALLOW"
		reason := ""
		if resp.GetStatus().GetCode() != int32(codes.OK) {
			verdict = "DENY "
			var body struct {
				Reason string `json:"reason"`
			}
			json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body)
			reason = ": " + body.Reason
		}
		fmt.Fprintf(w, "  %s %s %s%s  (%s)%s\n", verdict, q.method, q.host, q.path, q.what, reason)
	}
}
