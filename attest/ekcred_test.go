package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/internal/swtpmtest"
	"github.com/vigil-iot/vigil/topology"
)

// Fixtures made by swtpm and tpm2-tools (TestEKCredentialActivationWithSwtpm
// with VIGIL_TPM2_UPDATE_TESTDATA=1): EK certificates issued by
// swtpm_localca's CA (root.pem, issuer.pem), the EKs' and AKs' public areas
// as tpm2_readpublic -o and tpm2_createak -u write them (TPM2B_PUBLIC), the
// AKs' names (-n) and PEM (-f pem), a non-restricted signing key's public
// area, and a credential file made by tpm2_makecredential.
func ekFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "ek", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ekFixturePublic(t testing.TB, name string) *TPMPublic {
	t.Helper()
	p, err := ParseTPMPublic(ekFixture(t, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return p
}

func ekFixtureRoots(t testing.TB) (*CertPool, []*x509.Certificate) {
	t.Helper()
	root, err := ParseEKCertificates(ekFixture(t, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := ParseEKCertificates(ekFixture(t, "issuer.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return NewCertPool(root), issuer
}

// TestTPMPublicFromTPM2Tools: the AKs' public areas as tpm2_createak -u
// wrote them parse (as TPM2B_PUBLIC and as TPMT_PUBLIC), marshal back to
// the same bytes, have the name tpm2_createak -n wrote and the key
// tpm2_readpublic -f pem wrote, and are AKs.
func TestTPMPublicFromTPM2Tools(t *testing.T) {
	for _, kind := range []string{"ecc", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			raw := ekFixture(t, "ak-"+kind+".pub")
			if int(binary.BigEndian.Uint16(raw)) != len(raw)-2 {
				t.Fatalf("tpm2_createak -u wrote no TPM2B_PUBLIC")
			}
			p := ekFixturePublic(t, "ak-"+kind+".pub")
			q, err := ParseTPMPublic(raw[2:])
			if err != nil {
				t.Fatalf("as TPMT_PUBLIC: %v", err)
			}
			if !bytes.Equal(p.Bytes(), raw[2:]) || !bytes.Equal(q.Bytes(), raw[2:]) || !bytes.Equal(p.Marshal(), raw[2:]) {
				t.Fatal("the public area does not round-trip")
			}
			if want := ekFixture(t, "ak-"+kind+".name"); !bytes.Equal(p.Name(), want) || !bytes.Equal(q.Name(), want) {
				t.Fatalf("name %x, tpm2_createak -n wrote %x", p.Name(), want)
			}
			der, key, err := p.PKIXPublicKey()
			blk, _ := pem.Decode(ekFixture(t, "ak-"+kind+".pem"))
			if err != nil || blk == nil || !bytes.Equal(der, blk.Bytes) {
				t.Fatalf("PKIX key differs from tpm2_readpublic -f pem's: %v", err)
			}
			if err := p.CheckAK(); err != nil {
				t.Fatal(err)
			}
			wantType := map[string]uint16{"ecc": tpmAlgECC, "rsa": tpmAlgRSA}[kind]
			if p.Type != wantType || p.NameAlg != tpmAlgSHA256 {
				t.Errorf("type 0x%04x nameAlg 0x%04x", p.Type, p.NameAlg)
			}
			// the simulator's AK public area for the same key is shaped the same
			sim, err := SimAKPublic(key, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := sim.CheckAK(); err != nil {
				t.Fatal(err)
			}
			if sim.Attributes != p.Attributes || sim.Scheme != p.Scheme {
				t.Errorf("simulated AK: attributes 0x%08x scheme 0x%04x; tpm2_createak's: 0x%08x 0x%04x", sim.Attributes, sim.Scheme, p.Attributes, p.Scheme)
			}
		})
	}
}

// TestEKPublicFromTPM2Tools: swtpm's EKs' public areas are restricted
// decryption keys whose name algorithm and AES key size are what the TCG
// templates give the certificate's key; an EK is not an AK.
func TestEKPublicFromTPM2Tools(t *testing.T) {
	for _, c := range []struct {
		kind    string
		nameAlg uint16
		aes     int
	}{{"rsa", tpmAlgSHA256, 128}, {"ecc384", tpmAlgSHA384, 256}} {
		p := ekFixturePublic(t, "ek-"+c.kind+".pub")
		ek, err := p.EKPublic()
		if err != nil {
			t.Fatalf("%s: %v", c.kind, err)
		}
		if ek.NameAlg != c.nameAlg || ek.SymKeyBits != c.aes {
			t.Errorf("%s: %s AES-%d", c.kind, tpmHashName(ek.NameAlg), ek.SymKeyBits)
		}
		certs, err := ParseEKCertificates(ekFixture(t, "ek-"+c.kind+".der"))
		if err != nil {
			t.Fatal(err)
		}
		fromCert, err := EKPublicFromKey(certs[0].PublicKey)
		if err != nil || fromCert.NameAlg != ek.NameAlg || fromCert.SymKeyBits != ek.SymKeyBits || !SameEKKey(fromCert.Key, ek.Key) {
			t.Errorf("%s: the certificate's EK differs from the public area's: %+v, %v", c.kind, fromCert, err)
		}
		if err := p.CheckAK(); err == nil || !strings.Contains(err.Error(), "sign") {
			t.Errorf("%s: an EK passed as an AK: %v", c.kind, err)
		}
	}
}

// TestCheckAKRefuses: keys that are no AK.
func TestCheckAKRefuses(t *testing.T) {
	if err := ekFixturePublic(t, "unrestricted.pub").CheckAK(); err == nil || !strings.Contains(err.Error(), "lack restricted") {
		t.Errorf("a signing key that is not restricted (made by tpm2_createprimary): %v", err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa3072, _ := rsa.GenerateKey(rand.Reader, 3072)
	for _, c := range []struct {
		name   string
		mutate func(p *TPMPublic)
		want   string
	}{
		{"not fixedTPM", func(p *TPMPublic) { p.Attributes &^= TPMAFixedTPM }, "lack fixedTPM"},
		{"not fixedParent", func(p *TPMPublic) { p.Attributes &^= TPMAFixedParent }, "lack fixedParent"},
		{"imported", func(p *TPMPublic) { p.Attributes &^= TPMASensitiveDataOrigin }, "lack sensitiveDataOrigin"},
		{"not restricted", func(p *TPMPublic) { p.Attributes &^= TPMARestricted }, "lack restricted"},
		{"decrypts", func(p *TPMPublic) { p.Attributes |= TPMADecrypt }, "allow decrypt"},
		{"SHA-1 name", func(p *TPMPublic) { p.NameAlg = tpmAlgSHA1 }, "nameAlg is SHA-1"},
		{"SHA-384 signatures", func(p *TPMPublic) { p.SchemeHash = tpmAlgSHA384 }, "signs with SHA-384"},
		{"ECDH", func(p *TPMPublic) { p.Scheme = tpmAlgECDH }, "not ECDSA"},
		{"P-384", func(p *TPMPublic) {
			q, _ := SimAKPublic(&p384.PublicKey, false)
			*p = *q
		}, "must be NIST P-256"},
		{"RSA-3072", func(p *TPMPublic) {
			q, _ := SimAKPublic(&rsa3072.PublicKey, false)
			*p = *q
		}, "3072-bit"},
		{"point off the curve", func(p *TPMPublic) { p.ECCY = bytes.Repeat([]byte{1}, 32) }, "not on the curve"},
	} {
		p := ekFixturePublic(t, "ak-ecc.pub")
		c.mutate(p)
		q, err := ParseTPMPublic(p.Marshal())
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if err := q.CheckAK(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// TestParseTPMPublicRefusesMalformed: truncations, trailing bytes, other
// object types and unknown algorithms are errors, never panics.
func TestParseTPMPublicRefusesMalformed(t *testing.T) {
	good := ekFixture(t, "ak-rsa.pub")[2:]
	for n := 0; n < len(good); n++ {
		if _, err := ParseTPMPublic(good[:n]); err == nil && n != 0 {
			t.Fatalf("truncated to %d bytes: parsed", n)
		}
	}
	if _, err := ParseTPMPublic(append(slicesClone(good), 0)); err == nil || !strings.Contains(err.Error(), "trailing") {
		t.Errorf("trailing byte: %v", err)
	}
	keyed := slicesClone(good)
	binary.BigEndian.PutUint16(keyed, 0x0008) // TPM_ALG_KEYEDHASH
	if _, err := ParseTPMPublic(keyed); err == nil || !strings.Contains(err.Error(), "not an RSA") {
		t.Errorf("keyed hash object: %v", err)
	}
	if _, err := ParseTPMPublic(make([]byte, MaxTPMPublicBytes+3)); err == nil {
		t.Error("an oversized public area parsed")
	}
}

// TestEKCertificateFromSwtpm: swtpm_localca's EK certificates (a critical
// SAN holding only the TPM's directoryName, the TCG EK OID as extended key
// usage) verify to its root through its issuing CA, as DER, DER padded as
// NV indexes hold it, base64 and PEM; not without the intermediate, not to
// another root.
func TestEKCertificateFromSwtpm(t *testing.T) {
	roots, issuer := ekFixtureRoots(t)
	now := time.Now()
	for _, kind := range []string{"rsa", "ecc384"} {
		der := ekFixture(t, "ek-"+kind+".der")
		pemText := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		for name, form := range map[string][]byte{
			"der":    der,
			"padded": append(slicesClone(der), make([]byte, 100)...),
			"ffpad":  append(slicesClone(der), bytes.Repeat([]byte{0xff}, 7)...),
			"base64": []byte(base64.StdEncoding.EncodeToString(der) + "\n"),
			"pem":    pemText,
		} {
			certs, err := ParseEKCertificates(form)
			if err != nil || len(certs) != 1 || !bytes.Equal(certs[0].Raw, der) {
				t.Fatalf("%s as %s: %v", kind, name, err)
			}
		}
		certs, _ := ParseEKCertificates(der)
		ek, err := VerifyEKCertificate(certs[0], issuer, roots, now)
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if !SameEKKey(ek.Key, certs[0].PublicKey) {
			t.Errorf("%s: the EK is not the certificate's key", kind)
		}
		// the certificate and its chain in one PEM file
		both, err := ParseEKCertificates(append(pemText, ekFixture(t, "issuer.pem")...))
		if err != nil || len(both) != 2 {
			t.Fatalf("PEM with the chain: %d, %v", len(both), err)
		}
		if _, err := VerifyEKCertificate(certs[0], nil, roots, now); err == nil || !strings.Contains(err.Error(), "does not chain") {
			t.Errorf("%s without its intermediate: %v", kind, err)
		}
		other, _ := ekTestCA(t, "another TPM vendor")
		if _, err := VerifyEKCertificate(certs[0], issuer, NewCertPool([]*x509.Certificate{other}), now); err == nil || !strings.Contains(err.Error(), "does not chain") {
			t.Errorf("%s to another root: %v", kind, err)
		}
		if _, err := VerifyEKCertificate(certs[0], issuer, NewCertPool(nil), now); err == nil {
			t.Errorf("%s with no roots: verified", kind)
		}
	}
	if _, err := ParseEKCertificates(append(ekFixture(t, "ek-rsa.der"), 1, 2, 3)); err == nil || !strings.Contains(err.Error(), "not padding") {
		t.Errorf("garbage after the DER: %v", err)
	}
	for _, bad := range []string{"", "not a certificate", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"} {
		if _, err := ParseEKCertificates([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestEKCertificateChecks: EK certificates issued here: a critical
// extension other than the TPM SAN is refused; so is an expired one and a
// CA certificate; an EK certificate whose key is named id-RSAES-OAEP is read.
func TestEKCertificateChecks(t *testing.T) {
	ca, caKey := ekTestCA(t, "Vigil test TPM CA")
	roots := NewCertPool([]*x509.Certificate{ca})
	now := time.Now()
	ek, err := NewSimEK("ecc", ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(ek.Cert.UnhandledCriticalExtensions) != 1 {
		t.Fatalf("the simulated EK certificate's SAN is handled by Go: %v", ek.Cert.UnhandledCriticalExtensions)
	}
	if _, err := VerifyEKCertificate(ek.Cert, nil, roots, now); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyEKCertificate(ek.Cert, nil, roots, now.Add(72*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired: %v", err)
	}
	issue := func(mod func(*x509.Certificate), pub any) *x509.Certificate {
		san, _ := simTPMSAN()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			ExtraExtensions: []pkix.Extension{{Id: oidSubjectAltName, Critical: true, Value: san}}}
		mod(tmpl)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	odd := issue(func(c *x509.Certificate) {
		c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: true, Value: []byte{5, 0}})
	}, &ecKey.PublicKey)
	if _, err := VerifyEKCertificate(odd, nil, roots, now); err == nil || !strings.Contains(err.Error(), "1.3.6.1.4.1.99999.1") {
		t.Errorf("an unknown critical extension: %v", err)
	}
	caCert := issue(func(c *x509.Certificate) { c.BasicConstraintsValid, c.IsCA = true, true }, &ecKey.PublicKey)
	if _, err := VerifyEKCertificate(caCert, nil, roots, now); err == nil || !strings.Contains(err.Error(), "CA certificate") {
		t.Errorf("a CA certificate: %v", err)
	}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	plain := issue(func(c *x509.Certificate) {}, &rsaKey.PublicKey)
	oaep := ekWithRSAESOAEPKey(t, plain, ca, caKey)
	if oaep.PublicKey != nil {
		t.Fatalf("Go parsed an id-RSAES-OAEP key: %T", oaep.PublicKey)
	}
	got, err := VerifyEKCertificate(oaep, nil, roots, now)
	if err != nil || !SameEKKey(got.Key, &rsaKey.PublicKey) {
		t.Fatalf("id-RSAES-OAEP key: %v", err)
	}
}

// ekWithRSAESOAEPKey re-signs c with its SubjectPublicKeyInfo's algorithm
// changed to id-RSAES-OAEP, as some TPMs' EK certificates have it.
func ekWithRSAESOAEPKey(t *testing.T, c *x509.Certificate, ca *x509.Certificate, caKey *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	var tbs struct {
		Raw                asn1.RawContent
		Version            int `asn1:"optional,explicit,default:0,tag:0"`
		SerialNumber       *big.Int
		SignatureAlgorithm pkix.AlgorithmIdentifier
		Issuer             asn1.RawValue
		Validity           asn1.RawValue
		Subject            asn1.RawValue
		PublicKey          struct {
			Algorithm pkix.AlgorithmIdentifier
			PublicKey asn1.BitString
		}
		Extensions []pkix.Extension `asn1:"omitempty,optional,explicit,tag:3"`
	}
	if _, err := asn1.Unmarshal(c.RawTBSCertificate, &tbs); err != nil {
		t.Fatal(err)
	}
	tbs.Raw = nil
	tbs.PublicKey.Algorithm = pkix.AlgorithmIdentifier{Algorithm: oidRSAESOAEP, Parameters: asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true}}
	raw, err := asn1.Marshal(tbs)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(raw)
	sig, err := ecdsa.SignASN1(rand.Reader, caKey, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(struct {
		TBS       asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}{asn1.RawValue{FullBytes: raw}, pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}},
		asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMakeCredentialRoundTrip: for software EKs (RSA-2048, P-256, P-384),
// what MakeCredential makes, the software ActivateCredential recovers for
// the AK's name, through tpm2-tools' file format too; another name, a
// changed byte of the blob or of the encrypted secret are refused.
func TestMakeCredentialRoundTrip(t *testing.T) {
	ca, caKey := ekTestCA(t, "Vigil test TPM CA")
	ak := ekFixturePublic(t, "ak-ecc.pub")
	other := ekFixturePublic(t, "ak-rsa.pub")
	for _, kind := range []string{"rsa", "ecc", "ecc384"} {
		t.Run(kind, func(t *testing.T) {
			ek, err := NewSimEK(kind, ca, caKey)
			if err != nil {
				t.Fatal(err)
			}
			secret := make([]byte, EKCredentialSecretSize)
			rand.Read(secret)
			cred, err := MakeCredential(rand.Reader, ek.Pub, ak.Name(), secret)
			if err != nil {
				t.Fatal(err)
			}
			got, err := SimActivateCredential(ek.Priv, ek.Pub, ak.Name(), cred)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("activated %x, %v", got, err)
			}
			file := cred.TPM2ToolsFile()
			back, err := ParseTPM2ToolsCredential(file)
			if err != nil || !bytes.Equal(back.IDObject, cred.IDObject) || !bytes.Equal(back.EncryptedSecret, cred.EncryptedSecret) {
				t.Fatalf("tpm2-tools file does not round-trip: %v", err)
			}
			if _, err := SimActivateCredential(ek.Priv, ek.Pub, other.Name(), cred); err == nil || !strings.Contains(err.Error(), "integrity") {
				t.Errorf("another AK's name: %v", err)
			}
			for _, part := range []string{"blob", "secret"} {
				for _, i := range []int{2, 3, 10, -1} {
					c := Credential{IDObject: slicesClone(cred.IDObject), EncryptedSecret: slicesClone(cred.EncryptedSecret)}
					b := c.IDObject
					if part == "secret" {
						b = c.EncryptedSecret
					}
					if i < 0 {
						i = len(b) - 1
					}
					b[i] ^= 0x40
					if got, err := SimActivateCredential(ek.Priv, ek.Pub, ak.Name(), c); err == nil {
						t.Errorf("%s byte %d changed: activated %x", part, i, got)
					}
				}
			}
		})
	}
	ek, _ := NewSimEK("rsa", ca, caKey)
	if _, err := MakeCredential(rand.Reader, ek.Pub, ak.Name(), make([]byte, 33)); err == nil {
		t.Error("a secret longer than the EK's digest")
	}
	if _, err := MakeCredential(rand.Reader, ek.Pub, ak.Name()[:10], make([]byte, 32)); err == nil {
		t.Error("a truncated name")
	}
}

// TestTPM2ToolsCredentialFile: the file tpm2_makecredential wrote parses
// and marshals back to the same bytes.
func TestTPM2ToolsCredentialFile(t *testing.T) {
	file := ekFixture(t, "tpm2-tools.cred")
	c, err := ParseTPM2ToolsCredential(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.TPM2ToolsFile(), file) {
		t.Fatal("tpm2-tools' credential file does not round-trip")
	}
	if len(c.EncryptedSecret) != 2+256 || len(c.IDObject) != 2+2+32+2+32 {
		t.Errorf("blob %d bytes, secret %d bytes", len(c.IDObject), len(c.EncryptedSecret))
	}
	bad := slicesClone(file)
	bad[0] = 0
	if _, err := ParseTPM2ToolsCredential(bad); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Errorf("bad magic: %v", err)
	}
	if _, err := ParseTPM2ToolsCredential(file[:len(file)-1]); err == nil {
		t.Error("truncated file parsed")
	}
}

// TestMakeCredentialAgainstTPM2ToolsOffline: tpm2_makecredential without a
// TPM (-T none) for software EKs; the software ActivateCredential recovers
// the secret from tpm2-tools' file, so it is TPM2_ActivateCredential's
// equal and the node tests' stand-in for a TPM is sound.
func TestMakeCredentialAgainstTPM2ToolsOffline(t *testing.T) {
	tpm2NeedTools(t, "tpm2_makecredential")
	ca, caKey := ekTestCA(t, "Vigil test TPM CA")
	ak := ekFixturePublic(t, "ak-rsa.pub")
	dir := t.TempDir()
	for _, kind := range []struct{ kind, alg string }{{"rsa", "rsa"}, {"ecc", "ecc"}} {
		ek, err := NewSimEK(kind.kind, ca, caKey)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKIXPublicKey(ek.Cert.PublicKey)
		secret := make([]byte, 32)
		rand.Read(secret)
		for name, b := range map[string][]byte{"ek.pem": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), "secret": secret} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		out, err := swtpmtest.RunIn(dir, "tpm2_makecredential", "-T", "none", "-G", kind.alg, "-u", "ek.pem", "-s", "secret",
			"-n", hex.EncodeToString(ak.Name()), "-o", "cred")
		if err != nil {
			t.Fatalf("%s: %v\n%s", kind.kind, err, out)
		}
		file, err := os.ReadFile(filepath.Join(dir, "cred"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseTPM2ToolsCredential(file)
		if err != nil {
			t.Fatal(err)
		}
		got, err := SimActivateCredential(ek.Priv, ek.Pub, ak.Name(), c)
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("%s: recovered %x from tpm2-tools' credential, %v", kind.kind, got, err)
		}
	}
}

// TestEKTicket: the id of step 1 opens for its device and key until it
// expires, and accepts only its secret; any change to it is a forgery.
func TestEKTicket(t *testing.T) {
	key := []byte("member key")
	now := time.Unix(1_800_000_000, 0)
	secret := bytes.Repeat([]byte{7}, 32)
	tk := EKTicket{Expires: now.Add(EKCredentialTTL), SecretSHA256: sha256.Sum256(secret), EKCertSHA256: sha256.Sum256([]byte("cert")),
		Prior: [16]byte{1, 2, 3}, AKPublic: ekFixturePublic(t, "ak-ecc.pub").Bytes()}
	id := tk.Seal(key, "slc-1")
	got, err := OpenEKTicket(key, "slc-1", id, now)
	if err != nil || got.Expires != tk.Expires.UTC() || got.SecretSHA256 != tk.SecretSHA256 || got.EKCertSHA256 != tk.EKCertSHA256 ||
		got.Prior != tk.Prior || !bytes.Equal(got.AKPublic, tk.AKPublic) {
		t.Fatalf("opened %+v, %v", got, err)
	}
	if err := got.CheckSecret(secret); err != nil {
		t.Fatal(err)
	}
	if err := got.CheckSecret(bytes.Repeat([]byte{8}, 32)); !errors.Is(err, ErrEKSecret) {
		t.Errorf("wrong secret: %v", err)
	}
	if _, err := OpenEKTicket(key, "slc-1", id, tk.Expires); !errors.Is(err, ErrEKTicketExpired) {
		t.Errorf("at its expiry: %v", err)
	}
	if _, err := OpenEKTicket(key, "slc-2", id, now); !errors.Is(err, ErrEKTicketForged) {
		t.Errorf("another device: %v", err)
	}
	if _, err := OpenEKTicket([]byte("other key"), "slc-1", id, now); !errors.Is(err, ErrEKTicketForged) {
		t.Errorf("another cluster: %v", err)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(id)
	for i := range raw {
		b := slicesClone(raw)
		b[i] ^= 1
		if _, err := OpenEKTicket(key, "slc-1", base64.RawURLEncoding.EncodeToString(b), now); !errors.Is(err, ErrEKTicketForged) {
			t.Fatalf("byte %d changed: %v", i, err)
		}
	}
	for _, bad := range []string{"", "!!!", base64.RawURLEncoding.EncodeToString(raw[:20]), strings.Repeat("A", 5000)} {
		if _, err := OpenEKTicket(key, "slc-1", bad, now); !errors.Is(err, ErrEKTicketForged) {
			t.Errorf("%.20q: %v", bad, err)
		}
	}
}

// TestClassEKRoots: attestation.ekRoots is parsed like diceRoots, and a bad
// entry is reported at its path.
func TestClassEKRoots(t *testing.T) {
	root := strings.ReplaceAll(strings.TrimSpace(string(ekFixture(t, "root.pem"))), "\n", "\n        ")
	doc := func(roots string) []byte {
		return []byte(`apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}]
gateways: [{name: gw-1, zone: north}]
deviceClasses:
  - name: streetlight
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      firmware: [{version: "1", sha256: "` + strings.Repeat("1", 64) + `"}]
      ekRoots:
` + roots + `
devices:
  - {name: slc-1, class: streetlight, gateway: gw-1}
`)
	}
	ix, err := topology.Load(doc("      - |\n        " + root))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := ix.Class("streetlight")
	if len(c.Attestation.EKRoots) != 1 || c.Attestation.EKRoots[0].Subject.CommonName != "swtpm-localca-rootca" {
		t.Fatalf("ekRoots = %v", c.Attestation.EKRoots)
	}
	_, err = topology.Load(doc("      - |\n        " + root + "\n      - not a certificate"))
	var verr *topology.ValidationError
	if !errors.As(err, &verr) || len(verr.Errors) != 1 || verr.Errors[0].Path != "deviceClasses[0].attestation.ekRoots[1]" ||
		!strings.Contains(verr.Errors[0].Message, "PEM CERTIFICATE") {
		t.Fatalf("a bad root: %v", err)
	}
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }
