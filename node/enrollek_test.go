package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/topology"
)

// ekTestCA is a stand-in TPM manufacturer CA.
func ekTestCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func certPEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// ekDoc is attestDoc with streetlights' EK roots, and a class without.
func ekDoc(root *x509.Certificate) string {
	indented := strings.ReplaceAll(strings.TrimSpace(certPEM(root)), "\n", "\n          ")
	doc := strings.Replace(attestDoc, "      formats: [tpm2-quote]\n", "      formats: [tpm2-quote]\n      ekRoots:\n        - |\n          "+indented+"\n", 1)
	doc = strings.Replace(doc, "devices:\n", `  - name: meter
    attestation:
      maxAge: 1h
      firmware: [{version: "2.4.1", sha256: "`+goodFirmware+`"}]
devices:
  - {name: m-1, class: meter, gateway: gw-1}
`, 1)
	return doc
}

// simDevice is a device with a software TPM: an EK with a certificate from
// a manufacturer CA, and an AK (ECDSA P-256) that also quotes.
type simDevice struct {
	ek    *attest.SimEK
	ak    *attest.TPMPublic
	tpm   *attest.SimTPM
	akPub []byte // TPM2B_PUBLIC, as tpm2_createak -u writes it
}

func newSimDevice(t *testing.T, ekKind string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) *simDevice {
	t.Helper()
	ek, err := attest.NewSimEK(ekKind, ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	akKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ak, err := attest.SimAKPublic(&akKey.PublicKey, false)
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := attest.NewSimTPMWithKey(akKey)
	if err != nil {
		t.Fatal(err)
	}
	area := ak.Bytes()
	return &simDevice{ek: ek, ak: ak, tpm: tpm, akPub: append([]byte{byte(len(area) >> 8), byte(len(area))}, area...)}
}

// activate is TPM2_ActivateCredential on the device's TPM for its AK.
func (d *simDevice) activate(t *testing.T, r api.EKEnrollResponse) []byte {
	t.Helper()
	cred, err := attest.ParseTPM2ToolsCredential(r.Credential)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := attest.SimActivateCredential(d.ek.Priv, d.ek.Pub, d.ak.Name(), cred)
	if err != nil {
		t.Fatalf("the device's TPM cannot activate the credential: %v", err)
	}
	return secret
}

func (d *simDevice) request() api.EKEnrollRequest {
	return api.EKEnrollRequest{EKCert: base64.StdEncoding.EncodeToString(d.ek.Cert.Raw), AKPublic: base64.StdEncoding.EncodeToString(d.akPub)}
}

func wantAPIError(t *testing.T, what string, err error, status int, msg string) {
	t.Helper()
	var apiErr *api.Error
	if !errors.As(err, &apiErr) || apiErr.Status != status || !strings.Contains(apiErr.Message, msg) {
		t.Errorf("%s: %v; want %d %q", what, err, status, msg)
	}
}

// TestEnrollByEKCredential: a device whose EK certificate chains to its
// class's ekRoots gets a credential for its AK; the secret its TPM
// recovers (the software ActivateCredential, which
// TestMakeCredentialAgainstTPM2ToolsOffline holds to tpm2-tools) enrolls
// the AK, with the EK certificate's fingerprint, and the device then
// attests with it. Wrong secrets, forged, expired and used ids, other
// roots, non-restricted AKs and classes without ekRoots are refused, and
// nothing is recorded.
func TestEnrollByEKCredential(t *testing.T) {
	n, cl, logs := runNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ca, caKey := ekTestCA(t, "TPM vendor EK CA")
	if _, err := cl.ApplyTopology(ctx, []byte(ekDoc(ca))); err != nil {
		t.Fatal(err)
	}
	enrollment := func(dev string) *topology.Enrollment {
		st := n.Store().Current().SubjectState(topology.DeviceSubject(dev))
		if st == nil {
			return nil
		}
		return st.Enrollment
	}

	for _, c := range []struct{ dev, ek string }{{"slc-1", "rsa"}, {"slc-2", "ecc"}} {
		d := newSimDevice(t, c.ek, ca, caKey)
		resp, err := cl.EnrollEK(ctx, c.dev, d.request())
		if err != nil {
			t.Fatalf("%s: step 1: %v", c.dev, err)
		}
		certFP := sha256.Sum256(d.ek.Cert.Raw)
		if resp.AKName != hex.EncodeToString(d.ak.Name()) || resp.EKCertFingerprint != hex.EncodeToString(certFP[:]) ||
			time.Until(resp.Expires) > attest.EKCredentialTTL || time.Until(resp.Expires) < attest.EKCredentialTTL-time.Minute {
			t.Fatalf("%s: step 1 answered %+v", c.dev, resp)
		}
		file, err := attest.ParseTPM2ToolsCredential(resp.Credential)
		if err != nil || string(file.IDObject) != string(resp.CredentialBlob) || string(file.EncryptedSecret) != string(resp.EncryptedSecret) {
			t.Fatalf("%s: the credential file and the raw TPM2B values differ: %v", c.dev, err)
		}
		if enrollment(c.dev) != nil {
			t.Fatalf("%s: step 1 recorded something", c.dev)
		}
		secret := d.activate(t, resp)

		wrong := append([]byte(nil), secret...)
		wrong[0] ^= 1
		_, err = cl.ActivateEK(ctx, c.dev, api.EKActivateRequest{ID: resp.ID, Secret: wrong})
		wantAPIError(t, c.dev+": a wrong secret", err, http.StatusBadRequest, "the secret is not the credential's")
		_, err = cl.ActivateEK(ctx, "slc-3", api.EKActivateRequest{ID: resp.ID, Secret: secret})
		wantAPIError(t, c.dev+": another device's id", err, http.StatusNotFound, "no device")
		other := "slc-1"
		if c.dev == other {
			other = "slc-2"
		}
		_, err = cl.ActivateEK(ctx, other, api.EKActivateRequest{ID: resp.ID, Secret: secret})
		wantAPIError(t, c.dev+": the id for another device", err, http.StatusBadRequest, "not issued by this cluster for this device")
		raw, _ := base64.RawURLEncoding.DecodeString(resp.ID)
		raw[len(raw)/2] ^= 1
		_, err = cl.ActivateEK(ctx, c.dev, api.EKActivateRequest{ID: base64.RawURLEncoding.EncodeToString(raw), Secret: secret})
		wantAPIError(t, c.dev+": a tampered id", err, http.StatusBadRequest, "not issued by this cluster")
		if enrollment(c.dev) != nil {
			t.Fatalf("%s: a refused activation recorded something", c.dev)
		}

		got, err := cl.ActivateEK(ctx, c.dev, api.EKActivateRequest{ID: resp.ID, Secret: secret})
		if err != nil {
			t.Fatalf("%s: step 2: %v", c.dev, err)
		}
		der, _, _ := d.ak.PKIXPublicKey()
		akFP := sha256.Sum256(der)
		en := enrollment(c.dev)
		if en == nil || en.Method != topology.EnrollEKCredential || en.EKCertFingerprint != resp.EKCertFingerprint ||
			en.Fingerprint != hex.EncodeToString(akFP[:]) || en.By == "" || en.TPMAK != string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})) ||
			got.Enrollment == nil || got.Enrollment.Fingerprint != en.Fingerprint {
			t.Fatalf("%s: recorded %+v, answered %+v", c.dev, en, got.Enrollment)
		}
		// a retry of the same activation answers what was recorded
		again, err := cl.ActivateEK(ctx, c.dev, api.EKActivateRequest{ID: resp.ID, Secret: secret})
		if err != nil || again.Revision != got.Revision {
			t.Fatalf("%s: retrying step 2: %+v, %v", c.dev, again, err)
		}

		// the enrolled AK is the device's: its quotes pass
		if err := d.tpm.MeasureFirmware(goodFirmware); err != nil {
			t.Fatal(err)
		}
		ch, err := cl.Challenge(ctx, c.dev)
		if err != nil {
			t.Fatal(err)
		}
		nonce, _ := hex.DecodeString(ch.Nonce)
		ev, _ := d.tpm.Evidence(nonce, []int{16})
		evJSON, _ := json.Marshal(ev)
		ar, err := cl.Attest(ctx, c.dev, evJSON)
		if err != nil || ar.Attestation == nil || ar.Attestation.Failed() {
			t.Fatalf("%s: attesting with the AK enrolled by EK credential: %+v, %v", c.dev, ar.Attestation, err)
		}
	}

	// Once the device is enrolled again, an id of before is used up.
	d := newSimDevice(t, "ecc", ca, caKey)
	resp, err := cl.EnrollEK(ctx, "slc-1", d.request())
	if err != nil {
		t.Fatal(err)
	}
	secret := d.activate(t, resp)
	pemAK, _ := d.tpm.AKPublicPEM()
	if _, err := cl.Enroll(ctx, "slc-1", api.EnrollRequest{TPMAK: string(pemAK)}); err != nil {
		t.Fatal(err)
	}
	_, err = cl.ActivateEK(ctx, "slc-1", api.EKActivateRequest{ID: resp.ID, Secret: secret})
	wantAPIError(t, "an id made before the device was enrolled again", err, http.StatusConflict, "enrollment changed")

	// An expired id (made by this member's key, as step 1 makes them).
	d = newSimDevice(t, "ecc", ca, caKey)
	tk := attest.EKTicket{Expires: time.Now().Add(-time.Second), SecretSHA256: sha256.Sum256([]byte("s")), AKPublic: d.ak.Bytes()}
	_, err = cl.ActivateEK(ctx, "slc-2", api.EKActivateRequest{ID: tk.Seal(n.attest.ekKey(), "slc-2"), Secret: []byte("s")})
	wantAPIError(t, "an expired id", err, http.StatusBadRequest, "the credential has expired")

	// Step 1 refusals.
	otherCA, otherKey := ekTestCA(t, "another vendor")
	stranger := newSimDevice(t, "rsa", otherCA, otherKey)
	_, err = cl.EnrollEK(ctx, "slc-1", stranger.request())
	wantAPIError(t, "an EK certificate of another CA", err, http.StatusBadRequest, "does not chain to an EK root")
	if !strings.Contains(logs.String(), "security: EK certificate refused") {
		t.Error("a refused EK certificate is not logged as a security event")
	}

	d = newSimDevice(t, "rsa", ca, caKey)
	loose := *d.ak
	loose.Attributes &^= attest.TPMARestricted
	req := d.request()
	req.AKPublic = base64.StdEncoding.EncodeToString(loose.Marshal())
	_, err = cl.EnrollEK(ctx, "slc-1", req)
	wantAPIError(t, "a non-restricted AK", err, http.StatusBadRequest, "lack restricted")

	req = d.request()
	req.EKPublic = base64.StdEncoding.EncodeToString(d.akPub)
	_, err = cl.EnrollEK(ctx, "slc-1", req)
	wantAPIError(t, "an ekPublic that is not an EK", err, http.StatusBadRequest, "ekPublic")

	_, err = cl.EnrollEK(ctx, "m-1", d.request())
	wantAPIError(t, "a class without ekRoots", err, http.StatusBadRequest, "class meter has no attestation.ekRoots")
	_, err = cl.EnrollEK(ctx, "slc-1", api.EKEnrollRequest{EKCert: "garbage", AKPublic: req.AKPublic})
	wantAPIError(t, "a bad EK certificate", err, http.StatusBadRequest, "ekCert")

	// The EK certificate in PEM with its chain in ekChain, through an
	// intermediate CA.
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "TPM vendor EK issuing CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, ca, &interKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(interDER)
	d = newSimDevice(t, "ecc", inter, interKey)
	req = d.request()
	req.EKCert = certPEM(d.ek.Cert)
	if _, err := cl.EnrollEK(ctx, "slc-2", req); err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Fatalf("without its intermediate: %v", err)
	}
	req.EKChain = []string{certPEM(inter)}
	resp, err = cl.EnrollEK(ctx, "slc-2", req)
	if err != nil {
		t.Fatalf("with ekChain: %v", err)
	}
	if _, err := cl.ActivateEK(ctx, "slc-2", api.EKActivateRequest{ID: resp.ID, Secret: d.activate(t, resp)}); err != nil {
		t.Fatal(err)
	}
}
