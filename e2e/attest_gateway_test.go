package e2e_test

import (
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/attestrpc"
	"github.com/vigil-iot/vigil/internal/spiffetest"
)

const gwAttestFirmware = "4444444444444444444444444444444444444444444444444444444444444444"

const gwAttestDoc = `apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}, {name: cloud}]
gateways: [{name: gw-1, zone: north}, {name: gw-2, zone: north}]
deviceClasses:
  - name: streetlight
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      firmware: [{version: "2.4.1", sha256: "` + gwAttestFirmware + `"}]
devices:
  - {name: slc-1, class: streetlight, gateway: gw-1}
  - {name: slc-9, class: streetlight, gateway: gw-2}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.city.example], endpoints: ["10.0.0.1:8443"]}
flows:
  - {name: t, from: {classes: [streetlight]}, to: {service: telemetry}, http: {methods: [POST], paths: ["/t"]}}
`

// TestAGatewayAttestsOnlyItsOwnDevices: on a 3-member cluster with proxy
// TLS, a gateway submits its device's evidence over the proxy port of every
// member with its SVID (followers relay to the leader) and it passes; the
// same gateway cannot attest another gateway's device, and the other
// gateway cannot attest this one's.
func TestAGatewayAttestsOnlyItsOwnDevices(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	ca := spiffetest.NewCA(t, "city.example")
	cert, key, bundle := ca.Write(t, ca.Issue(t, "spiffe://city.example/vigil/node/n1", "127.0.0.1"), t.TempDir(), "member")
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3,
		Args: []string{"--proxy-tls-cert", cert, "--proxy-tls-key", key, "--proxy-tls-ca", bundle}})
	if _, err := c.Client(0).ApplyTopology(ctx, []byte(gwAttestDoc)); err != nil {
		t.Fatal(err)
	}
	tpm, err := attest.NewSimTPM(false)
	if err != nil {
		t.Fatal(err)
	}
	ak, _ := tpm.AKPublicPEM()
	if _, err := c.Client(0).Enroll(ctx, "slc-1", api.EnrollRequest{TPMAK: string(ak)}); err != nil {
		t.Fatal(err)
	}
	tpm.MeasureFirmware(gwAttestFirmware)
	as := func(member int, gateway string) *attestrpc.Client {
		cfg := attestrpc.ClientTLS(ca.Issue(t, "spiffe://city.example/zone/north/gateway/"+gateway).TLS, ca.Pool, "city.example")
		cc, err := grpc.NewClient(c.Member(member).AuthzAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return attestrpc.NewClient(cc)
	}
	for member := range 3 {
		gw1 := as(member, "gw-1")
		ch, err := gw1.Challenge(ctx, "slc-1")
		if err != nil {
			t.Fatalf("member %d: gw-1 challenge for its own device: %v", member, err)
		}
		nonce, _ := hex.DecodeString(ch.Nonce)
		ev, _ := tpm.Evidence(nonce, []int{16})
		raw, _ := json.Marshal(ev)
		resp, err := gw1.Attest(ctx, "slc-1", raw)
		if err != nil || resp.Attestation == nil || resp.Attestation.Failed() {
			t.Fatalf("member %d: gw-1 attests its own device: %+v, %v", member, resp.Attestation, err)
		}
		if _, err := gw1.Challenge(ctx, "slc-9"); status.Code(err) != codes.PermissionDenied {
			t.Errorf("member %d: gw-1 asks about gw-2's device: %v, want PermissionDenied", member, err)
		}
		_, err = as(member, "gw-2").Attest(ctx, "slc-1", raw)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "only its own devices") {
			t.Errorf("member %d: gw-2 submits gw-1's device's evidence: %v, want PermissionDenied", member, err)
		}
	}
}
