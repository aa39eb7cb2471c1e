package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/internal/attestrpc"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/topology"
)

// TestEvidenceHelper is not a test: it is the evidence command that
// TestTheBridgeReattestsItsDevices runs (this test binary, re-executed). It
// prints the evidence of the simulated TPM whose AK is in
// $VIGIL_HELPER_KEY_DIR/<device>.key for the nonce, as a device would.
func TestEvidenceHelper(t *testing.T) {
	dir := os.Getenv("VIGIL_HELPER_KEY_DIR")
	if dir == "" {
		t.Skip("the evidence command of TestTheBridgeReattestsItsDevices")
	}
	args := os.Args[slices.Index(os.Args, "--")+1:]
	device, nonceHex := args[0], args[1]
	pemKey, err := os.ReadFile(filepath.Join(dir, device+".key"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	blk, _ := pem.Decode(pemKey)
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		os.Exit(2)
	}
	tpm, _ := attest.NewSimTPMWithKey(key)
	tpm.MeasureFirmware(os.Getenv("VIGIL_HELPER_FIRMWARE"))
	nonce, _ := hex.DecodeString(nonceHex)
	ev, err := tpm.Evidence(nonce, []int{16})
	if err != nil {
		os.Exit(2)
	}
	json.NewEncoder(os.Stdout).Encode(ev)
	os.Exit(0)
}

// TestTheBridgeReattestsItsDevices: a gateway's re-attester (vigil gateway
// bridge --evidence-cmd) attests each of its devices over the proxy mTLS
// port, with the gateway's SVID and no API token, and again before the
// attestation runs out.
func TestTheBridgeReattestsItsDevices(t *testing.T) {
	ca := spiffetest.NewCA(t, "city.example")
	n, cl, _ := runNode(t, withProxyTLS(t, ca, "n1"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestGRPCDoc)); err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	for _, d := range []string{"slc-1", "slc-2"} {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.MarshalECPrivateKey(k)
		os.WriteFile(filepath.Join(keys, d+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
		pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if _, err := cl.Enroll(ctx, d, api.EnrollRequest{TPMAK: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))}); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("VIGIL_HELPER_KEY_DIR", keys)
	t.Setenv("VIGIL_HELPER_FIRMWARE", attestGRPCFirmware)
	client, _ := attestClientAs(t, ca, n.AuthzAddr(), "spiffe://city.example/zone/north/gateway/gw-1")
	r := &attestrpc.Reattester{Client: client, Every: 3 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		EvidenceCmd: []string{os.Args[0], "-test.run=^TestEvidenceHelper$", "--"},
		Devices:     func(context.Context) ([]string, error) { return []string{"slc-1", "slc-2"}, nil }}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { stop(); <-done }()

	verifiedAt := func(d string) time.Time {
		st := n.Store().Current().SubjectState(topology.DeviceSubject(d))
		if st == nil || st.Attestation == nil || st.Attestation.Failed() {
			return time.Time{}
		}
		return st.Attestation.VerifiedAt
	}
	testwait.For(t, 20*time.Second, "both devices attested", func() bool {
		return !verifiedAt("slc-1").IsZero() && !verifiedAt("slc-2").IsZero()
	})
	first := verifiedAt("slc-1")
	testwait.For(t, 20*time.Second, "slc-1 attested again", func() bool { return verifiedAt("slc-1").After(first) })
}
