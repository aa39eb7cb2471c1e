package attest

// Credential activation against a real TPM 2.0 implementation: swtpm
// manufactured by swtpm_setup with EK certificates from swtpm_localca's CA
// (as a TPM vendor's factory does), AKs made by tpm2_createak, and Vigil's
// MakeCredential output consumed by tpm2_activatecredential. The tests skip
// when swtpm or tpm2-tools are missing.
//
// With VIGIL_TPM2_UPDATE_TESTDATA=1, TestEKCredentialActivationWithSwtpm
// also writes what swtpm produced to testdata/ek/, which the unit tests of
// ekcred_test.go read on every machine.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/internal/swtpmtest"
)

// ekManufacturedSwtpm runs swtpm_setup with a local CA in a temporary
// directory and starts swtpm on the state it made: an RSA-2048 EK at
// 0x81010001 with its certificate at NV 0x01c00002, an ECC P-384 EK at
// 0x81010016 with its certificate at NV 0x01c00016. The CA's root and
// issuing certificates are in ca/.
func ekManufacturedSwtpm(t *testing.T) *tpm2Swtpm {
	t.Helper()
	dir := t.TempDir()
	state, ca := filepath.Join(dir, "state"), filepath.Join(dir, "ca")
	for _, d := range []string{state, ca} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"localca.conf":    fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca),
		"localca.options": "--platform-manufacturer Vigil\n--platform-version 2.1\n--platform-model test\n",
		"setup.conf": fmt.Sprintf("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %[1]s/localca.conf\n"+
			"create_certs_tool_options = %[1]s/localca.options\nactive_pcr_banks = sha256\n", dir),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*tpm2ToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpmstate", state, "--create-ek-cert",
		"--config", filepath.Join(dir, "setup.conf"), "--logfile", filepath.Join(dir, "setup.log"))
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "setup.log"))
		t.Fatalf("swtpm_setup: %v\n%s\n%s", err, out, log)
	}
	return tpm2StartSwtpm(t, swtpmtest.Dir(dir))
}

// activate runs tpm2_activatecredential for the AK in akCtx under the EK
// ek (a handle or a context file) on the credential file cred, and returns
// the secret the TPM recovered. An EK without userWithAuth (the TCG
// templates) is authorized by a policy session with PolicySecret(endorsement).
func (sw *tpm2Swtpm) activate(t *testing.T, ek string, ekPub *TPMPublic, akCtx, cred string) ([]byte, error) {
	t.Helper()
	defer sw.flush(t)
	out := "activated-" + filepath.Base(cred)
	os.Remove(filepath.Join(sw.Dir, out))
	args := []string{"tpm2_activatecredential", "-c", akCtx, "-C", ek, "-i", cred, "-o", out}
	if ekPub.Attributes&TPMAUserWithAuth == 0 {
		alg := "sha256"
		if ekPub.NameAlg == tpmAlgSHA384 {
			alg = "sha384"
		}
		sw.Tool(t, "tpm2_startauthsession", "--policy-session", "-g", alg, "-S", "session.ctx")
		sw.Tool(t, "tpm2_policysecret", "-S", "session.ctx", "-c", "e")
		args = append(args, "-P", "session:session.ctx")
	}
	if msg, err := sw.Run(args...); err != nil {
		return nil, fmt.Errorf("%v: %s", err, msg)
	}
	return os.ReadFile(filepath.Join(sw.Dir, out))
}

// ekTestCA is a stand-in TPM manufacturer CA.
func ekTestCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func ekReadPEMCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseEKCertificates(b)
	if err != nil || len(certs) != 1 {
		t.Fatalf("%s: %v", path, err)
	}
	return certs[0]
}

// TestEKCredentialActivationWithSwtpm: a TPM manufactured with EK
// certificates (RSA-2048, ECC P-384) and an EK made by tpm2_createek (ECC
// P-256, its certificate issued here); for each, ECDSA and RSA AKs made by
// tpm2_createak. Vigil verifies the EK certificate to the manufacturer's
// root, checks the AK and computes its name (equal to tpm2_createak -n), and
// makes a credential; tpm2_activatecredential on the TPM recovers Vigil's
// secret from the file Vigil wrote, and the id accepts that secret. A
// credential for another AK's name is refused by the TPM.
func TestEKCredentialActivationWithSwtpm(t *testing.T) {
	tpm2NeedTools(t, "swtpm", "swtpm_setup", "swtpm_localca", "tpm2_nvread", "tpm2_readpublic", "tpm2_createek", "tpm2_createak",
		"tpm2_createprimary", "tpm2_activatecredential", "tpm2_startauthsession", "tpm2_policysecret", "tpm2_flushcontext")
	sw := ekManufacturedSwtpm(t)
	root := ekReadPEMCert(t, filepath.Join(sw.Dir, "ca", "swtpm-localca-rootca-cert.pem"))
	issuer := ekReadPEMCert(t, filepath.Join(sw.Dir, "ca", "issuercert.pem"))
	roots := NewCertPool([]*x509.Certificate{root})
	now := time.Now()
	update := os.Getenv(tpm2UpdateEnv) == "1"
	fixtures := map[string][]byte{
		"root.pem":   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
		"issuer.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: issuer.Raw}),
	}

	// The P-256 EK of the TCG template, made on demand, certified here.
	sw.Tool(t, "tpm2_createek", "-c", "ek-ecc.ctx", "-G", "ecc", "-u", "ek-ecc.pub")
	sw.flush(t)
	ek256Pub, err := ParseTPMPublic(sw.read(t, "ek-ecc.pub"))
	if err != nil {
		t.Fatal(err)
	}
	ek256Key, _ := ek256Pub.PublicKey()
	testCA, testCAKey := ekTestCA(t, "Vigil test TPM CA")
	ek256Cert, err := SimEKCertificate(ek256Key, x509.KeyUsageKeyAgreement, testCA, testCAKey)
	if err != nil {
		t.Fatal(err)
	}

	type ekCase struct {
		name, handle string
		cert         []byte
		chain        []*x509.Certificate
		roots        *CertPool
	}
	eks := []ekCase{
		{name: "rsa", handle: "0x81010001", chain: []*x509.Certificate{issuer}, roots: roots},
		{name: "ecc384", handle: "0x81010016", chain: []*x509.Certificate{issuer}, roots: roots},
		{name: "ecc", handle: "ek-ecc.ctx", cert: ek256Cert.Raw, roots: NewCertPool([]*x509.Certificate{testCA})},
	}
	for i, nv := range map[int]string{0: "0x01c00002", 1: "0x01c00016"} {
		sw.Tool(t, "tpm2_nvread", nv, "-o", "ek-"+eks[i].name+".der")
		eks[i].cert = sw.read(t, "ek-"+eks[i].name+".der")
		sw.Tool(t, "tpm2_readpublic", "-c", eks[i].handle, "-o", "ek-"+eks[i].name+".pub")
		fixtures["ek-"+eks[i].name+".der"] = eks[i].cert
		fixtures["ek-"+eks[i].name+".pub"] = sw.read(t, "ek-"+eks[i].name+".pub")
	}

	for _, ekc := range eks {
		t.Run("ek-"+ekc.name, func(t *testing.T) {
			certs, err := ParseEKCertificates(ekc.cert)
			if err != nil {
				t.Fatal(err)
			}
			if ekc.name != "ecc" && !slices.ContainsFunc(certs[0].UnhandledCriticalExtensions, oidSubjectAltName.Equal) {
				t.Errorf("swtpm's EK certificate has no critical SAN Go leaves unhandled: %v", certs[0].UnhandledCriticalExtensions)
			}
			ek, err := VerifyEKCertificate(certs[0], ekc.chain, ekc.roots, now)
			if err != nil {
				t.Fatal(err)
			}
			ekPub, err := ParseTPMPublic(sw.read(t, "ek-"+ekc.name+".pub"))
			if err != nil {
				t.Fatal(err)
			}
			fromArea, err := ekPub.EKPublic()
			if err != nil {
				t.Fatal(err)
			}
			if fromArea.NameAlg != ek.NameAlg || fromArea.SymKeyBits != ek.SymKeyBits || !SameEKKey(fromArea.Key, ek.Key) {
				t.Fatalf("the EK's public area (%s, AES-%d) and the certificate's template defaults (%s, AES-%d) differ",
					tpmHashName(fromArea.NameAlg), fromArea.SymKeyBits, tpmHashName(ek.NameAlg), ek.SymKeyBits)
			}
			names := map[string][]byte{}
			for _, ak := range []struct{ name, alg, scheme string }{{"ecc", "ecc", "ecdsa"}, {"rsa", "rsa", "rsassa"}} {
				base := "ak-" + ak.name + "-under-" + ekc.name
				sw.Tool(t, "tpm2_createak", "-C", ekc.handle, "-c", base+".ctx", "-G", ak.alg, "-g", "sha256", "-s", ak.scheme,
					"-u", base+".pub", "-n", base+".name")
				sw.flush(t)
				sw.Tool(t, "tpm2_readpublic", "-c", base+".ctx", "-f", "pem", "-o", base+".pem")
				sw.flush(t)
				akPub, err := ParseTPMPublic(sw.read(t, base+".pub"))
				if err != nil {
					t.Fatal(err)
				}
				if err := akPub.CheckAK(); err != nil {
					t.Fatalf("%s: %v", base, err)
				}
				if want := sw.read(t, base+".name"); !bytes.Equal(akPub.Name(), want) {
					t.Fatalf("%s: name %x, tpm2_createak says %x", base, akPub.Name(), want)
				}
				der, _, err := akPub.PKIXPublicKey()
				if blk, _ := pem.Decode(sw.read(t, base+".pem")); err != nil || blk == nil || !bytes.Equal(blk.Bytes, der) {
					t.Fatalf("%s: the PKIX key differs from tpm2_readpublic -f pem's (%v)", base, err)
				}
				names[ak.name] = akPub.Name()

				secret := make([]byte, EKCredentialSecretSize)
				rand.Read(secret)
				cred, err := MakeCredential(rand.Reader, ek, akPub.Name(), secret)
				if err != nil {
					t.Fatal(err)
				}
				credFile := base + ".cred"
				if err := os.WriteFile(filepath.Join(sw.Dir, credFile), cred.TPM2ToolsFile(), 0o600); err != nil {
					t.Fatal(err)
				}
				got, err := sw.activate(t, ekc.handle, ekPub, base+".ctx", credFile)
				if err != nil {
					t.Fatalf("%s: tpm2_activatecredential refused Vigil's credential: %v", base, err)
				}
				if !bytes.Equal(got, secret) {
					t.Fatalf("%s: the TPM recovered %x, Vigil encrypted %x", base, got, secret)
				}
				t.Logf("%s: the TPM recovered Vigil's secret", base)

				// the id of step 1 accepts the secret the TPM recovered
				key := []byte("cluster key")
				id := EKTicket{Expires: now.Add(EKCredentialTTL), SecretSHA256: sha256.Sum256(secret),
					EKCertSHA256: sha256.Sum256(certs[0].Raw), AKPublic: akPub.Bytes()}.Seal(key, "slc-1")
				tk, err := OpenEKTicket(key, "slc-1", id, now)
				if err != nil || tk.CheckSecret(got) != nil || !bytes.Equal(tk.AKPublic, akPub.Bytes()) {
					t.Fatalf("%s: the id does not accept the recovered secret: %v", base, err)
				}

				if update && ekc.name == "rsa" {
					for _, ext := range []string{".pub", ".name", ".pem"} {
						fixtures["ak-"+ak.name+ext] = sw.read(t, base+ext)
					}
				}
			}
			// A credential bound to the ECDSA AK's name cannot be activated
			// with the RSA AK, though both are in this TPM under this EK.
			secret := make([]byte, EKCredentialSecretSize)
			rand.Read(secret)
			cred, err := MakeCredential(rand.Reader, ek, names["ecc"], secret)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(sw.Dir, "wrong.cred"), cred.TPM2ToolsFile(), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := sw.activate(t, ekc.handle, ekPub, "ak-rsa-under-"+ekc.name+".ctx", "wrong.cred")
			if err == nil || !strings.Contains(err.Error(), "integrity") {
				t.Fatalf("a credential for another AK's name: recovered %x, %v; want the TPM's integrity error", got, err)
			}
		})
	}

	if update {
		// A key that signs anything: not restricted, so no AK.
		sw.Tool(t, "tpm2_createprimary", "-C", "o", "-G", "ecc", "-g", "sha256", "-c", "unrestricted.ctx",
			"-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign")
		sw.Tool(t, "tpm2_readpublic", "-c", "unrestricted.ctx", "-o", "unrestricted.pub")
		sw.flush(t)
		fixtures["unrestricted.pub"] = sw.read(t, "unrestricted.pub")
		// tpm2-tools' own credential file, for its format
		if _, err := exec.LookPath("tpm2_makecredential"); err == nil {
			secret := bytes.Repeat([]byte{0x5a}, 32)
			if err := os.WriteFile(filepath.Join(sw.Dir, "tools.secret"), secret, 0o600); err != nil {
				t.Fatal(err)
			}
			sw.Tool(t, "tpm2_makecredential", "-T", "none", "-u", "ek-rsa.pub", "-s", "tools.secret",
				"-n", hex.EncodeToString(fixtures["ak-ecc.name"]), "-o", "tools.cred")
			fixtures["tpm2-tools.cred"] = sw.read(t, "tools.cred")
		}
		dir := filepath.Join("testdata", "ek")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range fixtures {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("wrote %d fixtures to %s", len(fixtures), dir)
	}
}
