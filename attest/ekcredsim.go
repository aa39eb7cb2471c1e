package attest

import (
	"crypto"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// The TPM's side of credential activation in software, for tests and
// `vigil dev`: what TPM2_ActivateCredential does with the EK's private key.
// A real TPM also checks that the object of the name is loaded in it; here
// the caller says which name.

// SimActivateCredential recovers the secret of c with the EK's private key
// (an *rsa.PrivateKey or *ecdsa.PrivateKey) for the object named name, as
// TPM2_ActivateCredential does (Part 3, 12.5): it fails when the integrity
// HMAC does not verify (another name, another EK, a tampered credential).
func SimActivateCredential(ekPriv crypto.PrivateKey, ek EKPublic, name []byte, c Credential) ([]byte, error) {
	h, ok := tpmHash(ek.NameAlg)
	if !ok {
		return nil, fmt.Errorf("the EK's name algorithm 0x%04x is unknown", ek.NameAlg)
	}
	r := &tpmReader{what: "the credential blob (TPM2B_ID_OBJECT)", b: c.IDObject}
	idObject := r.tpm2b("credential", 2+maxTPMHashSize+2+maxTPMHashSize)
	if err := r.end(); err != nil {
		return nil, err
	}
	r = &tpmReader{what: "the ID object", b: idObject}
	integrity := r.tpm2b("integrityHMAC", maxTPMHashSize)
	encIdentity := r.b
	if r.err != nil {
		return nil, r.err
	}
	r = &tpmReader{what: "the encrypted secret (TPM2B_ENCRYPTED_SECRET)", b: c.EncryptedSecret}
	encSecret := r.tpm2b("secret", maxRSASigSize)
	if err := r.end(); err != nil {
		return nil, err
	}
	var seed []byte
	switch k := ekPriv.(type) {
	case *rsa.PrivateKey:
		var err error
		if seed, err = rsa.DecryptOAEP(h.New(), nil, k, encSecret, []byte(labelIdentity)); err != nil {
			return nil, fmt.Errorf("decrypting the seed: %w", err)
		}
	case *ecdsa.PrivateKey:
		priv, err := k.ECDH()
		if err != nil {
			return nil, err
		}
		r := &tpmReader{what: "the ephemeral point (TPMS_ECC_POINT)", b: encSecret}
		x, y := r.tpm2b("x", maxECCParamSize), r.tpm2b("y", maxECCParamSize)
		if err := r.end(); err != nil {
			return nil, err
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		pt := append([]byte{4}, leftPad(x, size)...)
		eph, err := priv.Curve().NewPublicKey(append(pt, leftPad(y, size)...))
		if err != nil {
			return nil, fmt.Errorf("the ephemeral point: %w", err)
		}
		z, err := priv.ECDH(eph)
		if err != nil {
			return nil, err
		}
		ekPt := priv.PublicKey().Bytes()
		seed = kdfe(h, z, labelIdentity, leftPad(x, size), ekPt[1:1+size], h.Size()*8)
	default:
		return nil, fmt.Errorf("the EK's private key is a %T", ekPriv)
	}
	m := hmac.New(h.New, kdfa(h, seed, labelIntegrity, nil, nil, h.Size()*8))
	m.Write(encIdentity)
	m.Write(name)
	if !hmac.Equal(m.Sum(nil), integrity) {
		return nil, errors.New("the credential's integrity HMAC does not verify: another name, another EK, or tampered (TPM_RC_INTEGRITY)")
	}
	block, err := aes.NewCipher(kdfa(h, seed, labelStorage, name, nil, ek.SymKeyBits))
	if err != nil {
		return nil, err
	}
	r = &tpmReader{what: "the decrypted credential (TPM2B_DIGEST)", b: cfb(block, encIdentity, true)}
	secret := r.tpm2b("credential", maxTPMHashSize)
	if err := r.end(); err != nil {
		return nil, err
	}
	return secret, nil
}

// SimAKPublic is the TPMT_PUBLIC a TPM would report for key as an AK made
// by `tpm2_createak -g sha256` (fixedTPM, fixedParent,
// sensitiveDataOrigin, userWithAuth, restricted, sign; nameAlg SHA-256):
// ECDSA-SHA256 on P-256, or RSASSA-SHA256 with RSA-2048 (RSAPSS when pss).
func SimAKPublic(key crypto.PublicKey, pss bool) (*TPMPublic, error) {
	p := &TPMPublic{NameAlg: tpmAlgSHA256, SymAlg: tpmAlgNull, SchemeHash: tpmAlgSHA256,
		Attributes: TPMAFixedTPM | TPMAFixedParent | TPMASensitiveDataOrigin | TPMAUserWithAuth | TPMARestricted | TPMASign}
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		pt, err := k.Bytes()
		if err != nil {
			return nil, err
		}
		size := (len(pt) - 1) / 2
		p.Type, p.Scheme, p.KDF = tpmAlgECC, tpmAlgECDSA, tpmAlgNull
		switch k.Curve {
		case elliptic.P256():
			p.Curve = tpmECCNistP256
		case elliptic.P384():
			p.Curve = tpmECCNistP384
		default:
			return nil, fmt.Errorf("curve %s", k.Curve.Params().Name)
		}
		p.ECCX, p.ECCY = pt[1:1+size], pt[1+size:]
	case *rsa.PublicKey:
		p.Type, p.Scheme = tpmAlgRSA, tpmAlgRSASSA
		if pss {
			p.Scheme = tpmAlgRSAPSS
		}
		p.RSABits = uint16(k.N.BitLen())
		if k.E != 65537 {
			p.RSAExponent = uint32(k.E)
		}
		p.RSAModulus = k.N.FillBytes(make([]byte, (k.N.BitLen()+7)/8))
	default:
		return nil, fmt.Errorf("key %T", key)
	}
	return ParseTPMPublic(p.Marshal())
}

// SimEK is a software endorsement key and its certificate, issued by a CA
// the caller holds (a stand-in for a TPM manufacturer's), for tests.
type SimEK struct {
	Priv crypto.PrivateKey
	Pub  EKPublic
	Cert *x509.Certificate
}

// NewSimEK makes an EK of kind "rsa" (RSA-2048), "ecc" (P-256) or "ecc384"
// (P-384) and its certificate, signed by ca with caKey, shaped like a TPM
// manufacturer's: no subject, a critical SAN with the TPM's manufacturer,
// model and version as a directoryName, the TCG EK OID as extended key usage.
func NewSimEK(kind string, ca *x509.Certificate, caKey crypto.Signer) (*SimEK, error) {
	var priv crypto.PrivateKey
	var pub crypto.PublicKey
	var usage x509.KeyUsage
	switch kind {
	case "rsa":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		priv, pub, usage = k, &k.PublicKey, x509.KeyUsageKeyEncipherment
	case "ecc", "ecc384":
		curve := elliptic.P256()
		if kind == "ecc384" {
			curve = elliptic.P384()
		}
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			return nil, err
		}
		priv, pub, usage = k, &k.PublicKey, x509.KeyUsageKeyAgreement
	default:
		return nil, fmt.Errorf("EK kind %q (want rsa, ecc or ecc384)", kind)
	}
	ek, err := EKPublicFromKey(pub)
	if err != nil {
		return nil, err
	}
	cert, err := SimEKCertificate(pub, usage, ca, caKey)
	if err != nil {
		return nil, err
	}
	return &SimEK{Priv: priv, Pub: ek, Cert: cert}, nil
}

// SimEKCertificate issues an EK certificate for pub (see NewSimEK).
func SimEKCertificate(pub crypto.PublicKey, usage x509.KeyUsage, ca *x509.Certificate, caKey crypto.Signer) (*x509.Certificate, error) {
	san, err := simTPMSAN()
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              usage,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{{2, 23, 133, 8, 1}},
		BasicConstraintsValid: true,
		ExtraExtensions:       []pkix.Extension{{Id: oidSubjectAltName, Critical: true, Value: san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// simTPMSAN is a SAN with one directoryName: the TPM's manufacturer,
// model and version (TCG OIDs 2.23.133.2.1, .2, .3).
func simTPMSAN() ([]byte, error) {
	rdn := pkix.RDNSequence{
		{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: "id:56494749"}},
		{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 2}, Value: "vigil-sim"}},
		{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 3}, Value: "id:00010000"}},
	}
	dn, err := asn1.Marshal(rdn)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal([]asn1.RawValue{{Class: 2, Tag: 4, IsCompound: true, Bytes: dn}})
}
