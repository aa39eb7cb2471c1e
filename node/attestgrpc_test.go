package node

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/internal/attestrpc"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/topology"
)

const attestGRPCFirmware = "3333333333333333333333333333333333333333333333333333333333333333"

// Two gateways of zone north, each with its devices.
const attestGRPCDoc = `apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}, {name: cloud}]
gateways: [{name: gw-1, zone: north}, {name: gw-2, zone: north}]
deviceClasses:
  - name: streetlight
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      firmware: [{version: "2.4.1", sha256: "` + attestGRPCFirmware + `"}]
devices:
  - {name: slc-1, class: streetlight, gateway: gw-1}
  - {name: slc-2, class: streetlight, gateway: gw-1}
  - {name: slc-9, class: streetlight, gateway: gw-2}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.city.example], endpoints: ["10.0.0.1:8443"]}
flows:
  - {name: t, from: {classes: [streetlight]}, to: {service: telemetry}, http: {methods: [POST], paths: ["/t"]}}
`

// withProxyTLS gives member id its SVID (with 127.0.0.1, which clients
// dial) and ca's bundle as --proxy-tls-* files.
func withProxyTLS(t *testing.T, ca *spiffetest.CA, id string) func(*Config) {
	dir := t.TempDir()
	cert, key, bundle := ca.Write(t, ca.Issue(t, topology.NodeSPIFFEID("city.example", id), "127.0.0.1"), dir, id)
	return func(c *Config) { c.ProxyTLS = ProxyTLS{CertFile: cert, KeyFile: key, CAFile: bundle} }
}

// attestClientAs dials addr with the SVID of id (no certificate when id is
// "-").
func attestClientAs(t *testing.T, ca *spiffetest.CA, addr, id string) (*attestrpc.Client, *grpc.ClientConn) {
	t.Helper()
	cfg := attestrpc.ClientTLS(ca.Issue(t, id).TLS, ca.Pool, "city.example")
	if id == "-" {
		cfg.Certificates = nil
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return attestrpc.NewClient(cc), cc
}

// enrolledTPM enrolls a simulated TPM's AK for device through the HTTP API
// and measures firmware into it.
func enrolledTPM(ctx context.Context, t *testing.T, cl *api.Client, device, firmware string) *attest.SimTPM {
	t.Helper()
	tpm, err := attest.NewSimTPM(false)
	if err != nil {
		t.Fatal(err)
	}
	pemAK, err := tpm.AKPublicPEM()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Enroll(ctx, device, api.EnrollRequest{TPMAK: string(pemAK)}); err != nil {
		t.Fatal(err)
	}
	if err := tpm.MeasureFirmware(firmware); err != nil {
		t.Fatal(err)
	}
	return tpm
}

// evidenceFor answers a challenge with tpm's quote.
func evidenceFor(t *testing.T, tpm *attest.SimTPM, ch api.ChallengeResponse) []byte {
	t.Helper()
	nonce, err := hex.DecodeString(ch.Nonce)
	if err != nil || len(nonce) != 32 {
		t.Fatalf("nonce %q: %v", ch.Nonce, err)
	}
	ev, err := tpm.Evidence(nonce, []int{16})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Errorf("%s: %v, want %v mentioning %q", what, err, code, msg)
	}
}

// TestAttestGRPCGatewaysAttestTheirOwnDevices: over the ext_authz port with
// its SVID, a gateway challenges and attests its own device (passed, and
// replicated); the same evidence again is a replay. Another gateway, a
// device, a cloud edge, a stranger of the trust domain and a client
// without a certificate are refused, and a gateway learns nothing about
// devices that are not its own, existing or not.
func TestAttestGRPCGatewaysAttestTheirOwnDevices(t *testing.T) {
	if attestrpc.MaxRequestBytes > authz.MaxCheckRequestBytes {
		t.Fatalf("attestrpc.MaxRequestBytes %d is more than the proxy port accepts (%d)", attestrpc.MaxRequestBytes, authz.MaxCheckRequestBytes)
	}
	ca := spiffetest.NewCA(t, "city.example")
	n, cl, logs := runNode(t, withProxyTLS(t, ca, "n1"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestGRPCDoc)); err != nil {
		t.Fatal(err)
	}
	tpm := enrolledTPM(ctx, t, cl, "slc-1", attestGRPCFirmware)

	gw1, gw1Conn := attestClientAs(t, ca, n.AuthzAddr(), "spiffe://city.example/zone/north/gateway/gw-1")
	ch, err := gw1.Challenge(ctx, "slc-1")
	if err != nil {
		t.Fatal(err)
	}
	raw := evidenceFor(t, tpm, ch)
	resp, err := gw1.Attest(ctx, "slc-1", raw)
	if err != nil {
		t.Fatal(err)
	}
	if a := resp.Attestation; a == nil || a.Status != "passed" || a.FirmwareVersion != "2.4.1" || a.Verifier != "n1" || resp.Revision == 0 {
		t.Fatalf("gw-1 attesting slc-1: %+v", resp)
	}
	if st := n.Store().Current().SubjectState(topology.DeviceSubject("slc-1")); st == nil || st.Attestation == nil || st.Attestation.Failed() {
		t.Fatalf("slc-1's state: %+v", st)
	}
	_, err = gw1.Attest(ctx, "slc-1", raw)
	wantCode(t, "the same evidence again", err, codes.AlreadyExists, "replay")

	// Malformed or oversized requests are refused before anything runs.
	err = gw1Conn.Invoke(ctx, attestrpc.AttestMethod, wrapperspb.Bytes([]byte(`{"device":"slc-1","evidence":{},"extra":1}`)), new(wrapperspb.BytesValue))
	wantCode(t, "an unknown request field", err, codes.InvalidArgument, "unknown field")
	err = gw1Conn.Invoke(ctx, attestrpc.AttestMethod, wrapperspb.Bytes([]byte(`{"device":"slc-1","evidence":[1]}`)), new(wrapperspb.BytesValue))
	wantCode(t, "evidence that is not an object", err, codes.InvalidArgument, "JSON object")
	_, err = gw1.Attest(ctx, "slc-2", []byte(`{"format":"tpm2-quote","nonce":"00"}`))
	wantCode(t, "a nonce the member never issued", err, codes.InvalidArgument, "")
	big := `{"device":"slc-1","evidence":{"pad":"` + strings.Repeat("a", attest.MaxEvidenceBytes) + `"}}`
	err = gw1Conn.Invoke(ctx, attestrpc.AttestMethod, wrapperspb.Bytes([]byte(big)), new(wrapperspb.BytesValue))
	wantCode(t, "a request over the port's limit", err, codes.ResourceExhausted, "")

	// gw-1 for a device of gw-2 and for one that does not exist: the same answer.
	for _, dev := range []string{"slc-9", "no-such-device"} {
		_, err = gw1.Challenge(ctx, dev)
		wantCode(t, "gw-1 challenging "+dev, err, codes.PermissionDenied, "gateway gw-1 may attest only its own devices")
	}
	gw2, _ := attestClientAs(t, ca, n.AuthzAddr(), "spiffe://city.example/zone/north/gateway/gw-2")
	_, err = gw2.Challenge(ctx, "slc-1")
	wantCode(t, "gw-2 challenging slc-1", err, codes.PermissionDenied, "gateway gw-2 may attest only its own devices")
	ch2, err := gw1.Challenge(ctx, "slc-1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = gw2.Attest(ctx, "slc-1", evidenceFor(t, tpm, ch2))
	wantCode(t, "gw-2 attesting slc-1", err, codes.PermissionDenied, "gateway gw-2 may attest only its own devices")

	for _, id := range []string{
		"spiffe://city.example/zone/north/device/slc-1", // the device itself
		"spiffe://city.example/zone/cloud/edge/edge-1",  // a cloud edge
		"spiffe://city.example/zone/south/gateway/gw-1", // gw-1's name, not its identity
		"spiffe://city.example/vigil/node/n2",           // a member
	} {
		c, _ := attestClientAs(t, ca, n.AuthzAddr(), id)
		_, err := c.Challenge(ctx, "slc-1")
		wantCode(t, id, err, codes.PermissionDenied, id+" is not a gateway of this topology")
	}
	noID, _ := attestClientAs(t, ca, n.AuthzAddr(), "")
	_, err = noID.Challenge(ctx, "slc-1")
	wantCode(t, "a certificate without a SPIFFE ID", err, codes.PermissionDenied, "presented no SPIFFE ID")
	anon, _ := attestClientAs(t, ca, n.AuthzAddr(), "-")
	if _, err = anon.Challenge(ctx, "slc-1"); status.Code(err) != codes.Unavailable {
		t.Errorf("a client without a certificate: %v, want the handshake to fail", err)
	}
	other := spiffetest.NewCA(t, "city.example")
	forged, _ := attestClientAs(t, other, n.AuthzAddr(), "spiffe://city.example/zone/north/gateway/gw-1")
	if _, err = forged.Challenge(ctx, "slc-1"); err == nil {
		t.Error("a gateway SVID from another CA was accepted")
	}

	// The attestation passed through gRPC is the one the authorizer uses.
	if st := n.Store().Current().SubjectState(topology.DeviceSubject("slc-1")); st.Attestation.EvidenceDigest != resp.Attestation.EvidenceDigest {
		t.Errorf("recorded evidence %s, want %s", st.Attestation.EvidenceDigest, resp.Attestation.EvidenceDigest)
	}
	out := logs.String()
	if !strings.Contains(out, "attestation over the proxy port refused") || !strings.Contains(out, "gateway gw-2 may attest only its own devices") {
		t.Errorf("refusals were not logged:\n%s", out)
	}
	if strings.Contains(out, ch.Nonce) || strings.Contains(out, ch2.Nonce) {
		t.Error("a nonce was logged")
	}
}

// TestAttestGRPCNeedsProxyTLS: a member that does not authenticate its
// proxies refuses the service outright.
func TestAttestGRPCNeedsProxyTLS(t *testing.T) {
	n, cl, logs := runNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestGRPCDoc)); err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(n.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := attestrpc.NewClient(cc)
	for range 2 {
		_, err = c.Challenge(ctx, "slc-1")
		wantCode(t, "challenge without proxy TLS", err, codes.FailedPrecondition, "attestation over the proxy port needs --proxy-tls-*")
	}
	_, err = c.Attest(ctx, "slc-1", []byte(`{"format":"tpm2-quote","nonce":"00"}`))
	wantCode(t, "attest without proxy TLS", err, codes.FailedPrecondition, "needs --proxy-tls-*")
	if got := strings.Count(logs.String(), "attestation over the proxy port refused"); got != 1 {
		t.Errorf("the refusal was logged %d times, want once:\n%s", got, logs)
	}
}

// TestAttestGRPCRelaysFromAFollower: a gateway connected to a follower
// attests; the follower relays the evidence to the leader, which verifies
// and records it.
func TestAttestGRPCRelaysFromAFollower(t *testing.T) {
	ca := spiffetest.NewCA(t, "city.example")
	n1, cl, _ := runNode(t, withProxyTLS(t, ca, "n1"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestGRPCDoc)); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir, cfg.Join = "n2", filepath.Join(t.TempDir(), "data"), n1.APIAddr()
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.ClusterKeyFile, cfg.TokenFile = n1.cfg.ClusterKeyFile, n1.TokenFile()
	cfg.Logger = n1.cfg.Logger.With("member", "n2")
	withProxyTLS(t, ca, "n2")(&cfg)
	n2, _ := startStoppable(t, cfg)
	if n2.Store().IsLeader() {
		t.Fatal("n2 leads")
	}
	tpm := enrolledTPM(ctx, t, cl, "slc-2", attestGRPCFirmware)
	gw1, _ := attestClientAs(t, ca, n2.AuthzAddr(), "spiffe://city.example/zone/north/gateway/gw-1")
	// The follower must have applied the enrollment and the document.
	var ch api.ChallengeResponse
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ch, err = gw1.Challenge(ctx, "slc-2"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	raw := evidenceFor(t, tpm, ch)
	resp, err := gw1.Attest(ctx, "slc-2", raw)
	if err != nil {
		t.Fatal(err)
	}
	if a := resp.Attestation; a == nil || a.Status != "passed" || a.Verifier != "n1" {
		t.Fatalf("attesting through the follower: %+v", resp)
	}
	_, err = gw1.Attest(ctx, "slc-2", raw)
	wantCode(t, "a replay through the follower", err, codes.AlreadyExists, "replay")
}
