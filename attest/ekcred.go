package attest

// Enrollment of a TPM attestation key (AK) vouched for by the TPM's
// endorsement key (EK) certificate, through TPM 2.0 credential activation
// (TPM 2.0 Library Part 1, "Credential Protection" and Annex B/C "Secret
// Sharing"; the protocol is in docs/attestation-ek.md):
//
//  1. The device sends its EK certificate and its AK's public area
//     (TPMT_PUBLIC). Vigil checks the certificate chains to a TPM
//     manufacturer's CA of the device's class and that the AK is a
//     restricted signing key that never leaves the TPM, then encrypts a
//     random secret to the EK, bound to the AK's name (MakeCredential).
//  2. Only the TPM holding that EK's private part can recover the secret,
//     and only while the object of that name is loaded in it
//     (TPM2_ActivateCredential); returning the secret proves both.
//
// Everything here is pure: no I/O, no clock but the one passed in, no
// randomness but the reader passed in. The member's side (which class, who
// enrolled, the write) is in node/enrollek.go.

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	_ "crypto/sha1" // SHA-1 names of old objects
	"crypto/sha256"
	_ "crypto/sha512" // SHA-384 and SHA-512 EKs
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"strings"
	"time"
)

// TPM 2.0 algorithm identifiers used by public areas (Part 2, TPM_ALG_ID
// and TPM_ECC_CURVE), beyond those of tpm2.go.
const (
	tpmAlgRSA          = 0x0001
	tpmAlgAES          = 0x0006
	tpmAlgMGF1         = 0x0007
	tpmAlgNull         = 0x0010
	tpmAlgRSAES        = 0x0015
	tpmAlgOAEP         = 0x0017
	tpmAlgECDH         = 0x0019
	tpmAlgECDAA        = 0x001a
	tpmAlgSM2          = 0x001b
	tpmAlgECSchnorr    = 0x001c
	tpmAlgECMQV        = 0x001d
	tpmAlgKDF1SP80056A = 0x0020
	tpmAlgKDF2         = 0x0021
	tpmAlgKDF1SP800108 = 0x0022
	tpmAlgECC          = 0x0023
	tpmAlgCFB          = 0x0043

	tpmECCNistP256 = 0x0003
	tpmECCNistP384 = 0x0004
	tpmECCNistP521 = 0x0005
)

// TPMA_OBJECT bits (Part 2, 8.3).
const (
	TPMAFixedTPM            uint32 = 1 << 1
	TPMAStClear             uint32 = 1 << 2
	TPMAFixedParent         uint32 = 1 << 4
	TPMASensitiveDataOrigin uint32 = 1 << 5
	TPMAUserWithAuth        uint32 = 1 << 6
	TPMAAdminWithPolicy     uint32 = 1 << 7
	TPMANoDA                uint32 = 1 << 10
	TPMARestricted          uint32 = 1 << 16
	TPMADecrypt             uint32 = 1 << 17
	TPMASign                uint32 = 1 << 18
)

// akRequiredAttributes are what make an AK an AK: created in the TPM
// (sensitiveDataOrigin), never to leave it (fixedTPM, fixedParent), and a
// restricted signing key (it signs only what the TPM produced, quotes among
// them, never a digest that looks like one).
var akRequiredAttributes = []struct {
	bit  uint32
	name string
}{
	{TPMAFixedTPM, "fixedTPM"},
	{TPMAFixedParent, "fixedParent"},
	{TPMASensitiveDataOrigin, "sensitiveDataOrigin"},
	{TPMARestricted, "restricted"},
	{TPMASign, "sign"},
}

// Bounds.
const (
	// MaxTPMPublicBytes bounds a marshalled TPMT_PUBLIC (an RSA-4096 key's
	// is about 600 bytes).
	MaxTPMPublicBytes = 1 << 10
	// MaxEKCertBytes bounds an EK certificate and each of its intermediates.
	MaxEKCertBytes = 8 << 10
	// MaxEKChain bounds the intermediates sent with an EK certificate.
	MaxEKChain = 4
	// EKCredentialSecretSize is the size of the secret Vigil encrypts.
	EKCredentialSecretSize = 32
	// EKCredentialTTL is how long a credential may be activated: long
	// enough to carry it to the device and back by hand.
	EKCredentialTTL = 10 * time.Minute
)

// tpmHash maps a TPM hash algorithm to Go's.
func tpmHash(alg uint16) (crypto.Hash, bool) {
	switch alg {
	case tpmAlgSHA1:
		return crypto.SHA1, true
	case tpmAlgSHA256:
		return crypto.SHA256, true
	case tpmAlgSHA384:
		return crypto.SHA384, true
	case tpmAlgSHA512:
		return crypto.SHA512, true
	}
	return 0, false
}

func tpmHashName(alg uint16) string {
	switch alg {
	case tpmAlgSHA1:
		return "SHA-1"
	case tpmAlgSHA256:
		return "SHA-256"
	case tpmAlgSHA384:
		return "SHA-384"
	case tpmAlgSHA512:
		return "SHA-512"
	}
	return fmt.Sprintf("0x%04x", alg)
}

func tpmCurve(id uint16) (elliptic.Curve, bool) {
	switch id {
	case tpmECCNistP256:
		return elliptic.P256(), true
	case tpmECCNistP384:
		return elliptic.P384(), true
	case tpmECCNistP521:
		return elliptic.P521(), true
	}
	return nil, false
}

// TPMPublic is a parsed TPMT_PUBLIC of an RSA or ECC key (Part 2, 12.2.4),
// as `tpm2_createak -u`, `tpm2_createek -u` and `tpm2_readpublic -o` write
// it (those write a TPM2B_PUBLIC: the same with a 2-byte size first).
type TPMPublic struct {
	Type       uint16 // TPM_ALG_RSA or TPM_ALG_ECC
	NameAlg    uint16
	Attributes uint32 // TPMA_OBJECT
	AuthPolicy []byte
	// Symmetric is TPMT_SYM_DEF_OBJECT: TPM_ALG_NULL, or an algorithm with
	// its key size and mode (a storage key's, e.g. an EK's AES-128-CFB).
	SymAlg, SymKeyBits, SymMode uint16
	// Scheme and SchemeHash are the signing or encryption scheme (a
	// restricted signing key has one: ECDSA, RSASSA or RSAPSS with a hash).
	Scheme, SchemeHash uint16
	// ECDAACount is the count of an ECDAA scheme.
	ECDAACount uint16
	// RSA: keyBits, exponent (0 means 65537) and unique.rsa.
	RSABits     uint16
	RSAExponent uint32
	RSAModulus  []byte
	// ECC: curveID, kdf and unique.ecc.
	Curve        uint16
	KDF, KDFHash uint16
	ECCX, ECCY   []byte
	raw          []byte // the TPMT_PUBLIC as given: its name hashes these bytes
}

// ParseTPMPublic parses a TPMT_PUBLIC of an RSA or ECC key, or a
// TPM2B_PUBLIC (the same preceded by its size, as tpm2-tools write it):
// the TPMT_PUBLIC of a usable key cannot start with its own length minus
// two (its type, 0x0001 or 0x0023), so the two are told apart without a
// flag. Nothing may follow it.
func ParseTPMPublic(b []byte) (*TPMPublic, error) {
	if len(b) > MaxTPMPublicBytes+2 {
		return nil, fmt.Errorf("the public area is %d bytes; at most %d are accepted", len(b), MaxTPMPublicBytes)
	}
	if len(b) >= 2 && int(binary.BigEndian.Uint16(b)) == len(b)-2 {
		b = b[2:] // TPM2B_PUBLIC
	}
	r := &tpmReader{what: "the public area (TPMT_PUBLIC)", b: b}
	p := &TPMPublic{raw: slices.Clone(b)}
	p.Type = r.u16("type")
	p.NameAlg = r.u16("nameAlg")
	p.Attributes = r.u32("objectAttributes")
	p.AuthPolicy = r.tpm2b("authPolicy", maxTPMHashSize)
	if r.err != nil {
		return nil, r.err
	}
	if p.Type != tpmAlgRSA && p.Type != tpmAlgECC {
		return nil, fmt.Errorf("the public area's type is 0x%04x, not an RSA (0x%04x) or ECC (0x%04x) key", p.Type, tpmAlgRSA, tpmAlgECC)
	}
	if _, ok := tpmHash(p.NameAlg); !ok {
		return nil, fmt.Errorf("the public area's nameAlg is 0x%04x, not SHA-1, SHA-256, SHA-384 or SHA-512", p.NameAlg)
	}
	p.SymAlg = r.u16("parameters.symmetric.algorithm")
	if p.SymAlg != tpmAlgNull {
		p.SymKeyBits = r.u16("parameters.symmetric.keyBits")
		p.SymMode = r.u16("parameters.symmetric.mode")
	}
	p.Scheme = r.u16("parameters.scheme.scheme")
	if r.err != nil {
		return nil, r.err
	}
	switch p.Type {
	case tpmAlgRSA:
		switch p.Scheme {
		case tpmAlgNull, tpmAlgRSAES:
		case tpmAlgRSASSA, tpmAlgRSAPSS, tpmAlgOAEP:
			p.SchemeHash = r.u16("parameters.scheme.details.hashAlg")
		default:
			return nil, fmt.Errorf("the public area's RSA scheme 0x%04x is unknown", p.Scheme)
		}
		p.RSABits = r.u16("parameters.keyBits")
		p.RSAExponent = r.u32("parameters.exponent")
		p.RSAModulus = r.tpm2b("unique.rsa", maxRSASigSize)
	case tpmAlgECC:
		switch p.Scheme {
		case tpmAlgNull:
		case tpmAlgECDSA, tpmAlgECDH, tpmAlgSM2, tpmAlgECSchnorr, tpmAlgECMQV:
			p.SchemeHash = r.u16("parameters.scheme.details.hashAlg")
		case tpmAlgECDAA:
			p.SchemeHash = r.u16("parameters.scheme.details.hashAlg")
			p.ECDAACount = r.u16("parameters.scheme.details.count")
		default:
			return nil, fmt.Errorf("the public area's ECC scheme 0x%04x is unknown", p.Scheme)
		}
		p.Curve = r.u16("parameters.curveID")
		p.KDF = r.u16("parameters.kdf.scheme")
		switch p.KDF {
		case tpmAlgNull:
		case tpmAlgMGF1, tpmAlgKDF1SP80056A, tpmAlgKDF2, tpmAlgKDF1SP800108:
			p.KDFHash = r.u16("parameters.kdf.details.hashAlg")
		default:
			if r.err == nil {
				return nil, fmt.Errorf("the public area's KDF 0x%04x is unknown", p.KDF)
			}
		}
		p.ECCX = r.tpm2b("unique.ecc.x", maxECCParamSize)
		p.ECCY = r.tpm2b("unique.ecc.y", maxECCParamSize)
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	return p, nil
}

// Bytes is the marshalled TPMT_PUBLIC (as parsed, or as Marshal builds it).
func (p *TPMPublic) Bytes() []byte {
	if p.raw != nil {
		return slices.Clone(p.raw)
	}
	return p.Marshal()
}

// Marshal builds the TPMT_PUBLIC from the fields.
func (p *TPMPublic) Marshal() []byte {
	b := binary.BigEndian.AppendUint16(nil, p.Type)
	b = binary.BigEndian.AppendUint16(b, p.NameAlg)
	b = binary.BigEndian.AppendUint32(b, p.Attributes)
	b = appendTPM2B(b, p.AuthPolicy)
	b = binary.BigEndian.AppendUint16(b, p.SymAlg)
	if p.SymAlg != tpmAlgNull {
		b = binary.BigEndian.AppendUint16(b, p.SymKeyBits)
		b = binary.BigEndian.AppendUint16(b, p.SymMode)
	}
	b = binary.BigEndian.AppendUint16(b, p.Scheme)
	switch p.Type {
	case tpmAlgRSA:
		if p.Scheme != tpmAlgNull && p.Scheme != tpmAlgRSAES {
			b = binary.BigEndian.AppendUint16(b, p.SchemeHash)
		}
		b = binary.BigEndian.AppendUint16(b, p.RSABits)
		b = binary.BigEndian.AppendUint32(b, p.RSAExponent)
		return appendTPM2B(b, p.RSAModulus)
	default:
		if p.Scheme != tpmAlgNull {
			b = binary.BigEndian.AppendUint16(b, p.SchemeHash)
			if p.Scheme == tpmAlgECDAA {
				b = binary.BigEndian.AppendUint16(b, p.ECDAACount)
			}
		}
		b = binary.BigEndian.AppendUint16(b, p.Curve)
		b = binary.BigEndian.AppendUint16(b, p.KDF)
		if p.KDF != tpmAlgNull {
			b = binary.BigEndian.AppendUint16(b, p.KDFHash)
		}
		return appendTPM2B(appendTPM2B(b, p.ECCX), p.ECCY)
	}
}

// Name is the object's TPM name: nameAlg ‖ H_nameAlg(TPMT_PUBLIC), what
// `tpm2_createak -n` writes and what a credential is bound to.
func (p *TPMPublic) Name() []byte {
	h, _ := tpmHash(p.NameAlg)
	d := h.New()
	d.Write(p.Bytes())
	return d.Sum(binary.BigEndian.AppendUint16(nil, p.NameAlg))
}

// PublicKey is the key as Go's *rsa.PublicKey or *ecdsa.PublicKey.
func (p *TPMPublic) PublicKey() (crypto.PublicKey, error) {
	switch p.Type {
	case tpmAlgRSA:
		if p.RSABits < 1024 || p.RSABits%8 != 0 || len(p.RSAModulus) != int(p.RSABits)/8 {
			return nil, fmt.Errorf("the RSA modulus is %d bytes for a %d-bit key", len(p.RSAModulus), p.RSABits)
		}
		n := new(big.Int).SetBytes(p.RSAModulus)
		if n.BitLen() != int(p.RSABits) {
			return nil, fmt.Errorf("the RSA modulus has %d bits, not %d", n.BitLen(), p.RSABits)
		}
		e := int(p.RSAExponent)
		if p.RSAExponent == 0 {
			e = 65537
		}
		if e < 3 || e&1 == 0 || p.RSAExponent > 1<<31-1 {
			return nil, fmt.Errorf("the RSA exponent %d is not valid", p.RSAExponent)
		}
		return &rsa.PublicKey{N: n, E: e}, nil
	case tpmAlgECC:
		curve, ok := tpmCurve(p.Curve)
		if !ok {
			return nil, fmt.Errorf("the ECC curve 0x%04x is not NIST P-256, P-384 or P-521", p.Curve)
		}
		size := (curve.Params().BitSize + 7) / 8
		if len(p.ECCX) == 0 || len(p.ECCY) == 0 || len(p.ECCX) > size || len(p.ECCY) > size {
			return nil, fmt.Errorf("the ECC point's coordinates (%d and %d bytes) do not fit the %d-byte curve", len(p.ECCX), len(p.ECCY), size)
		}
		pt := append([]byte{4}, leftPad(p.ECCX, size)...)
		pt = append(pt, leftPad(p.ECCY, size)...)
		k, err := ecdsa.ParseUncompressedPublicKey(curve, pt)
		if err != nil {
			return nil, fmt.Errorf("the ECC point is not on the curve: %v", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("type 0x%04x is not an RSA or ECC key", p.Type)
}

func leftPad(b []byte, size int) []byte {
	if len(b) >= size {
		return b
	}
	return append(make([]byte, size-len(b)), b...)
}

// PKIXPublicKey is the key in PKIX DER (what `tpm2_createak -f pem` writes
// in PEM) and as Go's key.
func (p *TPMPublic) PKIXPublicKey() ([]byte, crypto.PublicKey, error) {
	k, err := p.PublicKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(k)
	return der, k, err
}

// CheckAK checks that p is an attestation key Vigil enrolls: created in the
// TPM and bound to it (fixedTPM, fixedParent, sensitiveDataOrigin), a
// restricted signing key that cannot decrypt, ECC P-256 or RSA-2048, signing
// with ECDSA, RSASSA or RSAPSS over SHA-256 (what the tpm2-quote verifier
// checks), named with SHA-256 or stronger.
func (p *TPMPublic) CheckAK() error {
	var missing []string
	for _, a := range akRequiredAttributes {
		if p.Attributes&a.bit == 0 {
			missing = append(missing, a.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the AK is not a restricted signing key bound to its TPM: objectAttributes 0x%08x lack %s", p.Attributes, strings.Join(missing, ", "))
	}
	if p.Attributes&TPMADecrypt != 0 {
		return fmt.Errorf("the AK's objectAttributes 0x%08x allow decrypt: an AK only signs", p.Attributes)
	}
	if p.NameAlg == tpmAlgSHA1 {
		return errors.New("the AK's nameAlg is SHA-1; SHA-256, SHA-384 or SHA-512 are accepted")
	}
	if p.SymAlg != tpmAlgNull {
		return fmt.Errorf("the AK has a symmetric algorithm (0x%04x); a signing key has none", p.SymAlg)
	}
	switch p.Type {
	case tpmAlgECC:
		if p.Curve != tpmECCNistP256 {
			return fmt.Errorf("the AK's curve is 0x%04x; ECC keys must be NIST P-256 (0x%04x)", p.Curve, tpmECCNistP256)
		}
		if p.Scheme != tpmAlgECDSA {
			return fmt.Errorf("the AK's scheme is 0x%04x, not ECDSA (0x%04x)", p.Scheme, tpmAlgECDSA)
		}
	case tpmAlgRSA:
		if p.RSABits != 2048 {
			return fmt.Errorf("the AK is a %d-bit RSA key; RSA keys must be 2048 bits", p.RSABits)
		}
		if p.Scheme != tpmAlgRSASSA && p.Scheme != tpmAlgRSAPSS {
			return fmt.Errorf("the AK's scheme is 0x%04x, not RSASSA (0x%04x) or RSAPSS (0x%04x)", p.Scheme, tpmAlgRSASSA, tpmAlgRSAPSS)
		}
	}
	if p.SchemeHash != tpmAlgSHA256 {
		return fmt.Errorf("the AK signs with %s; quotes are verified with SHA-256", tpmHashName(p.SchemeHash))
	}
	if _, err := p.PublicKey(); err != nil {
		return fmt.Errorf("the AK's key: %w", err)
	}
	return nil
}

// EKPublic is the endorsement key a credential is encrypted to: its public
// key and what its TPM template fixes for MakeCredential, its name
// algorithm (the KDFs' and HMAC's hash, and RSA-OAEP's) and the AES key size
// of its symmetric definition (which encrypts the credential).
type EKPublic struct {
	Key        crypto.PublicKey // *rsa.PublicKey or *ecdsa.PublicKey
	NameAlg    uint16
	SymKeyBits int // 128 or 256 (AES, CFB)
}

// EKPublicFromKey is the EK of the TCG default EK templates (TCG EK
// Credential Profile 2.x, B.3 and B.4) for key: RSA-2048 and ECC P-256
// (templates L-1, L-2, H-1, H-2) name with SHA-256 and encrypt with
// AES-128; ECC P-384 (H-3) with SHA-384 and AES-256, P-521 (H-4) with
// SHA-512 and AES-256, RSA-3072 and RSA-4096 (H-6, H-7) with SHA-384 and
// AES-256. An EK made from another template needs its public area
// (TPMPublic.EKPublic).
func EKPublicFromKey(key crypto.PublicKey) (EKPublic, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return EKPublic{Key: k, NameAlg: tpmAlgSHA256, SymKeyBits: 128}, nil
		case 3072, 4096:
			return EKPublic{Key: k, NameAlg: tpmAlgSHA384, SymKeyBits: 256}, nil
		}
		return EKPublic{}, fmt.Errorf("the EK is a %d-bit RSA key; 2048, 3072 and 4096 bits are accepted", k.N.BitLen())
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return EKPublic{Key: k, NameAlg: tpmAlgSHA256, SymKeyBits: 128}, nil
		case elliptic.P384():
			return EKPublic{Key: k, NameAlg: tpmAlgSHA384, SymKeyBits: 256}, nil
		case elliptic.P521():
			return EKPublic{Key: k, NameAlg: tpmAlgSHA512, SymKeyBits: 256}, nil
		}
		return EKPublic{}, fmt.Errorf("the EK is an ECC key on %s; NIST P-256, P-384 and P-521 are accepted", k.Curve.Params().Name)
	case nil:
		return EKPublic{}, errors.New("no EK public key")
	}
	return EKPublic{}, fmt.Errorf("the EK is a %T; RSA and ECC keys are accepted", key)
}

// EKPublic reads p as an endorsement key: a restricted decryption (storage)
// key with an AES-CFB symmetric definition.
func (p *TPMPublic) EKPublic() (EKPublic, error) {
	if p.Attributes&(TPMARestricted|TPMADecrypt) != TPMARestricted|TPMADecrypt || p.Attributes&TPMASign != 0 {
		return EKPublic{}, fmt.Errorf("the EK's objectAttributes 0x%08x are not those of a restricted decryption key", p.Attributes)
	}
	if p.NameAlg == tpmAlgSHA1 {
		return EKPublic{}, errors.New("the EK's nameAlg is SHA-1; SHA-256 or stronger is accepted")
	}
	if p.SymAlg != tpmAlgAES || p.SymMode != tpmAlgCFB || (p.SymKeyBits != 128 && p.SymKeyBits != 256) {
		return EKPublic{}, fmt.Errorf("the EK's symmetric definition (0x%04x, %d bits, mode 0x%04x) is not AES-128 or AES-256 in CFB mode", p.SymAlg, p.SymKeyBits, p.SymMode)
	}
	k, err := p.PublicKey()
	if err != nil {
		return EKPublic{}, fmt.Errorf("the EK's key: %w", err)
	}
	return EKPublic{Key: k, NameAlg: p.NameAlg, SymKeyBits: int(p.SymKeyBits)}, nil
}

// Credential is what TPM2_MakeCredential produces, each a marshalled TPM2B
// (a 2-byte size first), as TPM2_ActivateCredential takes them.
type Credential struct {
	// IDObject is the TPM2B_ID_OBJECT (credentialBlob): the HMAC over the
	// encrypted credential and the AK's name, and the encrypted credential.
	IDObject []byte
	// EncryptedSecret is the TPM2B_ENCRYPTED_SECRET (secret): the seed,
	// RSA-OAEP encrypted to the EK, or the ephemeral ECDH point.
	EncryptedSecret []byte
}

// tpm2-tools' credential file (tpm2_makecredential -o, read by
// tpm2_activatecredential -i): magic, version, then the two TPM2Bs.
const (
	tpm2ToolsCredMagic   = 0xBADCC0DE
	tpm2ToolsCredVersion = 1
)

// TPM2ToolsFile is the credential as `tpm2_makecredential -o` writes it and
// `tpm2_activatecredential -i` reads it: 0xBADCC0DE, version 1 (both
// 4 bytes, big-endian), the TPM2B_ID_OBJECT, the TPM2B_ENCRYPTED_SECRET.
func (c Credential) TPM2ToolsFile() []byte {
	b := binary.BigEndian.AppendUint32(nil, tpm2ToolsCredMagic)
	b = binary.BigEndian.AppendUint32(b, tpm2ToolsCredVersion)
	b = append(b, c.IDObject...)
	return append(b, c.EncryptedSecret...)
}

// ParseTPM2ToolsCredential reads a tpm2-tools credential file.
func ParseTPM2ToolsCredential(b []byte) (Credential, error) {
	r := &tpmReader{what: "the tpm2-tools credential file", b: b}
	if m := r.u32("magic"); r.err == nil && m != tpm2ToolsCredMagic {
		return Credential{}, fmt.Errorf("the credential file's magic is 0x%08x, not 0x%08x", m, uint32(tpm2ToolsCredMagic))
	}
	if v := r.u32("version"); r.err == nil && v != tpm2ToolsCredVersion {
		return Credential{}, fmt.Errorf("the credential file's version is %d, not %d", v, tpm2ToolsCredVersion)
	}
	id := r.tpm2b("credentialBlob", 2+maxTPMHashSize+2+maxTPMHashSize)
	secret := r.tpm2b("secret", maxRSASigSize)
	if err := r.end(); err != nil {
		return Credential{}, err
	}
	return Credential{IDObject: appendTPM2B(nil, id), EncryptedSecret: appendTPM2B(nil, secret)}, nil
}

// Labels of TPM 2.0's secret sharing (Part 1, 11.4.10 and 24), each with
// its terminating NUL, which the KDFs and OAEP include.
const (
	labelIdentity  = "IDENTITY\x00"
	labelStorage   = "STORAGE\x00"
	labelIntegrity = "INTEGRITY\x00"
)

// kdfa is TPM 2.0's KDFa (Part 1, 11.4.10.2): SP 800-108 in counter mode
// with HMAC; label includes its NUL.
func kdfa(h crypto.Hash, key []byte, label string, contextU, contextV []byte, bits int) []byte {
	out := make([]byte, 0, (bits+7)/8+h.Size())
	for i := uint32(1); len(out)*8 < bits; i++ {
		m := hmac.New(h.New, key)
		m.Write(binary.BigEndian.AppendUint32(nil, i))
		m.Write([]byte(label))
		m.Write(contextU)
		m.Write(contextV)
		m.Write(binary.BigEndian.AppendUint32(nil, uint32(bits)))
		out = m.Sum(out)
	}
	return out[:(bits+7)/8]
}

// kdfe is TPM 2.0's KDFe (Part 1, 11.4.10.3): SP 800-56A's concatenation
// KDF; label includes its NUL.
func kdfe(h crypto.Hash, z []byte, label string, partyU, partyV []byte, bits int) []byte {
	out := make([]byte, 0, (bits+7)/8+h.Size())
	for i := uint32(1); len(out)*8 < bits; i++ {
		d := h.New()
		d.Write(binary.BigEndian.AppendUint32(nil, i))
		d.Write(z)
		d.Write([]byte(label))
		d.Write(partyU)
		d.Write(partyV)
		out = d.Sum(out)
	}
	return out[:(bits+7)/8]
}

// cfb is AES in CFB mode with full-block feedback and a zero IV, as TPM 2.0
// encrypts (decrypt false) or decrypts a credential.
func cfb(block cipher.Block, data []byte, decrypt bool) []byte {
	out := make([]byte, len(data))
	iv := make([]byte, block.BlockSize())
	ks := make([]byte, block.BlockSize())
	for i := 0; i < len(data); i += len(iv) {
		block.Encrypt(ks, iv)
		n := min(len(iv), len(data)-i)
		subtle.XORBytes(out[i:i+n], data[i:i+n], ks[:n])
		if decrypt {
			copy(iv, data[i:i+n])
		} else {
			copy(iv, out[i:i+n])
		}
	}
	return out
}

// checkName checks a TPM name: a hash algorithm and a digest of its size.
func checkName(name []byte) (crypto.Hash, error) {
	if len(name) < 2 {
		return 0, fmt.Errorf("a name is 2 bytes of algorithm and a digest; this one is %d bytes", len(name))
	}
	h, ok := tpmHash(binary.BigEndian.Uint16(name))
	if !ok || len(name) != 2+h.Size() {
		return 0, fmt.Errorf("the name %x is not a hash algorithm followed by its digest", name)
	}
	return h, nil
}

// MakeCredential is TPM2_MakeCredential in software (Part 3, 12.6; Part 1,
// 24): secret (at most the EK name algorithm's digest size) encrypted so
// that only the TPM holding ek's private key can recover it, and only for
// the loaded object named name. A seed is shared with the EK — RSA: random,
// encrypted with RSA-OAEP (the EK's name algorithm, label "IDENTITY\0");
// ECC: KDFe over an ephemeral ECDH exchange — from which KDFa derives the
// AES key that encrypts the credential ("STORAGE", bound to name) and the
// HMAC key that protects it with name ("INTEGRITY"). rng is crypto/rand's
// Reader in production.
func MakeCredential(rng io.Reader, ek EKPublic, name, secret []byte) (Credential, error) {
	h, ok := tpmHash(ek.NameAlg)
	if !ok || ek.NameAlg == tpmAlgSHA1 {
		return Credential{}, fmt.Errorf("the EK's name algorithm 0x%04x is not SHA-256, SHA-384 or SHA-512", ek.NameAlg)
	}
	if ek.SymKeyBits != 128 && ek.SymKeyBits != 256 {
		return Credential{}, fmt.Errorf("the EK's AES key size %d is not 128 or 256", ek.SymKeyBits)
	}
	if _, err := checkName(name); err != nil {
		return Credential{}, err
	}
	if len(secret) == 0 || len(secret) > h.Size() {
		return Credential{}, fmt.Errorf("the secret is %d bytes; 1 to %d (the EK's name digest size) are accepted", len(secret), h.Size())
	}
	var seed, encSecret []byte
	switch k := ek.Key.(type) {
	case *rsa.PublicKey:
		seed = make([]byte, h.Size())
		if _, err := io.ReadFull(rng, seed); err != nil {
			return Credential{}, fmt.Errorf("make credential: %w", err)
		}
		var err error
		encSecret, err = rsa.EncryptOAEP(h.New(), rng, k, seed, []byte(labelIdentity))
		if err != nil {
			return Credential{}, fmt.Errorf("make credential: encrypting the seed to the EK: %w", err)
		}
	case *ecdsa.PublicKey:
		ekECDH, err := k.ECDH()
		if err != nil {
			return Credential{}, fmt.Errorf("make credential: the EK: %w", err)
		}
		eph, err := ekECDH.Curve().GenerateKey(rng)
		if err != nil {
			return Credential{}, fmt.Errorf("make credential: %w", err)
		}
		z, err := eph.ECDH(ekECDH)
		if err != nil {
			return Credential{}, fmt.Errorf("make credential: ECDH: %w", err)
		}
		ephPt, ekPt := eph.PublicKey().Bytes(), ekECDH.Bytes() // 04 ‖ x ‖ y
		size := (len(ephPt) - 1) / 2
		ephX, ephY, ekX := ephPt[1:1+size], ephPt[1+size:], ekPt[1:1+size]
		seed = kdfe(h, z, labelIdentity, ephX, ekX, h.Size()*8)
		encSecret = appendTPM2B(appendTPM2B(nil, ephX), ephY) // TPMS_ECC_POINT
	default:
		return Credential{}, fmt.Errorf("the EK is a %T, not an RSA or ECC public key", ek.Key)
	}
	symKey := kdfa(h, seed, labelStorage, name, nil, ek.SymKeyBits)
	block, err := aes.NewCipher(symKey)
	if err != nil {
		return Credential{}, err
	}
	encIdentity := cfb(block, appendTPM2B(nil, secret), false)
	m := hmac.New(h.New, kdfa(h, seed, labelIntegrity, nil, nil, h.Size()*8))
	m.Write(encIdentity)
	m.Write(name)
	idObject := append(appendTPM2B(nil, m.Sum(nil)), encIdentity...)
	return Credential{IDObject: appendTPM2B(nil, idObject), EncryptedSecret: appendTPM2B(nil, encSecret)}, nil
}

// EK certificates.

var (
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidRSAESOAEP      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
)

// ParseEKCertificates reads an EK certificate and any certificates after it
// (intermediates): PEM (one or more CERTIFICATE blocks), base64 of DER, or
// DER. DER may be followed by padding of zeros or 0xff bytes, as TPM NV
// indexes hold it (`tpm2_nvread` reads the whole index).
func ParseEKCertificates(b []byte) ([]*x509.Certificate, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errors.New("no certificate")
	}
	if t := bytes.TrimSpace(b); bytes.HasPrefix(t, []byte("-----BEGIN")) {
		var out []*x509.Certificate
		for rest := t; len(bytes.TrimSpace(rest)) > 0; {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				return nil, errors.New("the PEM text has something other than CERTIFICATE blocks")
			}
			if blk.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("a PEM %q block is not a CERTIFICATE", blk.Type)
			}
			c, err := parseEKCertDER(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certificate %d: %w", len(out), err)
			}
			out = append(out, c)
		}
		return out, nil
	}
	if len(b) > 0 && b[0] != 0x30 { // not DER: base64 of it
		der, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, errors.New("the certificate is neither PEM, DER nor base64 of DER")
		}
		b = der
	}
	c, err := parseEKCertDER(b)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{c}, nil
}

// parseEKCertDER parses one DER certificate, allowing NV padding after it.
func parseEKCertDER(der []byte) (*x509.Certificate, error) {
	if len(der) > MaxEKCertBytes {
		return nil, fmt.Errorf("the certificate is %d bytes; at most %d are accepted", len(der), MaxEKCertBytes)
	}
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(der, &raw)
	if err != nil {
		return nil, fmt.Errorf("not a DER certificate: %v", err)
	}
	for _, c := range rest {
		if c != 0 && c != 0xff {
			return nil, fmt.Errorf("%d bytes that are not padding follow the certificate", len(rest))
		}
	}
	c, err := x509.ParseCertificate(der[:len(der)-len(rest)])
	if err != nil {
		return nil, fmt.Errorf("not an X.509 certificate: %v", err)
	}
	return c, nil
}

// EKCertificatePublicKey is the EK certificate's key. Some TPMs' EK
// certificates name it with id-RSAES-OAEP (1.2.840.113549.1.1.7), which Go
// leaves unparsed; the key itself is an ordinary PKCS #1 RSA key.
func EKCertificatePublicKey(c *x509.Certificate) (crypto.PublicKey, error) {
	if c.PublicKey != nil {
		return c.PublicKey, nil
	}
	var spki struct {
		Algorithm struct {
			Algorithm  asn1.ObjectIdentifier
			Parameters asn1.RawValue `asn1:"optional"`
		}
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(c.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil, fmt.Errorf("the EK certificate's public key: %v", err)
	}
	if !spki.Algorithm.Algorithm.Equal(oidRSAESOAEP) {
		return nil, fmt.Errorf("the EK certificate's public key algorithm %s is not RSA or ECC", spki.Algorithm.Algorithm)
	}
	k, err := x509.ParsePKCS1PublicKey(spki.PublicKey.RightAlign())
	if err != nil {
		return nil, fmt.Errorf("the EK certificate's RSAES-OAEP public key: %v", err)
	}
	return k, nil
}

// ekUnderstood returns a copy of c whose unhandled critical extensions no
// longer list a subject alternative name made only of directoryNames: TPM
// EK certificates have no subject, so their SAN (critical) names the TPM's
// manufacturer, model and version (TCG EK Credential Profile, 3.2.9), and
// Go does not handle a SAN without DNS names, e-mail addresses, IPs or URIs.
// Any other unhandled critical extension stays and is refused.
func ekUnderstood(c *x509.Certificate) (*x509.Certificate, error) {
	if len(c.UnhandledCriticalExtensions) == 0 {
		return c, nil
	}
	cp := *c
	cp.UnhandledCriticalExtensions = nil
	var unknown []string
	for _, oid := range c.UnhandledCriticalExtensions {
		if oid.Equal(oidSubjectAltName) && sanOnlyDirectoryNames(c) {
			continue
		}
		cp.UnhandledCriticalExtensions = append(cp.UnhandledCriticalExtensions, oid)
		unknown = append(unknown, oid.String())
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("certificate %q has critical extensions Vigil does not understand: %s", c.Subject.String(), strings.Join(unknown, ", "))
	}
	return &cp, nil
}

// sanOnlyDirectoryNames reports whether c's SAN holds only well-formed
// directoryNames ([4] Name).
func sanOnlyDirectoryNames(c *x509.Certificate) bool {
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var seq asn1.RawValue
		if rest, err := asn1.Unmarshal(ext.Value, &seq); err != nil || len(rest) > 0 || seq.Tag != asn1.TagSequence || !seq.IsCompound {
			return false
		}
		names := 0
		for rest := seq.Bytes; len(rest) > 0; names++ {
			var gn asn1.RawValue
			var err error
			if rest, err = asn1.Unmarshal(rest, &gn); err != nil || gn.Class != asn1.ClassContextSpecific || gn.Tag != 4 || !gn.IsCompound {
				return false
			}
			var dn asn1.RawValue // a Name: an RDNSequence
			if r, err := asn1.Unmarshal(gn.Bytes, &dn); err != nil || len(r) > 0 || dn.Tag != asn1.TagSequence {
				return false
			}
		}
		return names > 0
	}
	return false
}

// VerifyEKCertificate checks that the EK certificate chains, through
// intermediates, to one of roots (a class's ekRoots) at now, and returns its
// key as the EK (TCG default templates; EKPublicFromKey). Any extended key
// usage is accepted (EK certificates carry the TCG EK OID 2.23.133.8.1, or
// none); the certificate must not be a CA's.
func VerifyEKCertificate(cert *x509.Certificate, intermediates []*x509.Certificate, roots *CertPool, now time.Time) (EKPublic, error) {
	if roots.Len() == 0 {
		return EKPublic{}, errors.New("no EK roots to verify the EK certificate with")
	}
	if len(intermediates) > MaxEKChain {
		return EKPublic{}, fmt.Errorf("%d intermediate certificates; at most %d are accepted", len(intermediates), MaxEKChain)
	}
	if cert.BasicConstraintsValid && cert.IsCA {
		return EKPublic{}, errors.New("the EK certificate is a CA certificate")
	}
	leaf, err := ekUnderstood(cert)
	if err != nil {
		return EKPublic{}, err
	}
	pool := x509.NewCertPool()
	for _, c := range intermediates {
		ic, err := ekUnderstood(c)
		if err != nil {
			return EKPublic{}, err
		}
		pool.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots.Pool(),
		Intermediates: pool,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return EKPublic{}, fmt.Errorf("the EK certificate does not chain to an EK root: %v", err)
	}
	key, err := EKCertificatePublicKey(cert)
	if err != nil {
		return EKPublic{}, err
	}
	return EKPublicFromKey(key)
}

// SameEKKey reports whether an EK's public area holds the certificate's key.
func SameEKKey(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// EK credential tickets: the opaque id of step 1, which the member does
// not store. Any member can check one another member issued (the key is
// derived from the cluster key), as with nonces (nonce.go):
//
//	id  = base64url(1 ‖ expiry (4, Unix seconds) ‖ SHA-256(secret) (32) ‖
//	      SHA-256(EK certificate) (32) ‖ prior (16) ‖ AK TPMT_PUBLIC ‖ MAC (16))
//	MAC = HMAC-SHA-256(key, "vigil ek credential v1\n" ‖ device ‖ "\n" ‖ all before it)[:16]
//
// The AK's public area fixes its name, so the ticket names the AK the
// credential was bound to. prior is a digest of the device's enrollment
// when the credential was made: activating changes the enrollment, so a
// ticket activates once.

const (
	ekTicketVersion = 1
	ekTicketDomain  = "vigil ek credential v1\n"
	ekTicketHead    = 1 + 4 + 32 + 32 + 16
	ekTicketMAC     = 16
)

// EKTicket is what an EK credential's id vouches for.
type EKTicket struct {
	Expires      time.Time
	SecretSHA256 [32]byte
	EKCertSHA256 [32]byte
	// Prior is the digest of the device's enrollment at step 1
	// (EnrollmentDigest); the ticket is good only while it is unchanged.
	Prior    [16]byte
	AKPublic []byte // TPMT_PUBLIC
}

// Errors of OpenEKTicket and EKTicket.CheckSecret.
var (
	ErrEKTicketForged  = errors.New("the id was not issued by this cluster for this device")
	ErrEKTicketExpired = errors.New("the credential has expired")
	ErrEKSecret        = errors.New("the secret is not the credential's: the TPM holding the EK did not activate it for this AK")
)

// Seal makes the ticket's id for device under key.
func (t EKTicket) Seal(key []byte, device string) string {
	b := []byte{ekTicketVersion}
	b = binary.BigEndian.AppendUint32(b, uint32(t.Expires.Unix()))
	b = append(b, t.SecretSHA256[:]...)
	b = append(b, t.EKCertSHA256[:]...)
	b = append(b, t.Prior[:]...)
	b = append(b, t.AKPublic...)
	b = append(b, ekTicketMACOf(key, device, b)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// OpenEKTicket checks that id was sealed for device under key and has not
// expired at now.
func OpenEKTicket(key []byte, device, id string, now time.Time) (*EKTicket, error) {
	id = strings.TrimSpace(id)
	if len(id) > base64.RawURLEncoding.EncodedLen(ekTicketHead+MaxTPMPublicBytes+ekTicketMAC) {
		return nil, ErrEKTicketForged
	}
	b, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil || len(b) < ekTicketHead+ekTicketMAC || b[0] != ekTicketVersion {
		return nil, ErrEKTicketForged
	}
	body, mac := b[:len(b)-ekTicketMAC], b[len(b)-ekTicketMAC:]
	if subtle.ConstantTimeCompare(mac, ekTicketMACOf(key, device, body)) != 1 {
		return nil, ErrEKTicketForged
	}
	t := &EKTicket{Expires: time.Unix(int64(binary.BigEndian.Uint32(body[1:5])), 0).UTC()}
	copy(t.SecretSHA256[:], body[5:37])
	copy(t.EKCertSHA256[:], body[37:69])
	copy(t.Prior[:], body[69:85])
	t.AKPublic = slices.Clone(body[85:])
	if !now.Before(t.Expires) {
		return t, fmt.Errorf("%w (at %s): make a new one", ErrEKTicketExpired, t.Expires.Format(time.RFC3339))
	}
	return t, nil
}

// CheckSecret checks that secret is the one the credential carried.
func (t *EKTicket) CheckSecret(secret []byte) error {
	h := sha256.Sum256(secret)
	if subtle.ConstantTimeCompare(h[:], t.SecretSHA256[:]) != 1 {
		return ErrEKSecret
	}
	return nil
}

func ekTicketMACOf(key []byte, device string, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(ekTicketDomain))
	m.Write([]byte(device))
	m.Write([]byte{'\n'})
	m.Write(body)
	return m.Sum(nil)[:ekTicketMAC]
}
