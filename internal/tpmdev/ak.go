package tpmdev

import (
	"crypto"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// AK is an attestation key found at its persistent handle.
type AK struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public tpm2.TPMTPublic
	pub    crypto.PublicKey
	// scheme is what Quote's inScheme must say: TPM_ALG_NULL when the key
	// has its own scheme.
	scheme tpm2.TPMTSigScheme
}

// Handle is the AK's persistent handle.
func (ak *AK) Handle() tpm2.TPMHandle { return ak.handle }

// PublicKey is the AK's public key (*ecdsa.PublicKey or *rsa.PublicKey).
func (ak *AK) PublicKey() crypto.PublicKey { return ak.pub }

// AKTemplate is the AK EnsureAK creates: ECDSA P-256 restricted signing
// with SHA-256, no authorization value (noDA), fixed to this TPM.
func AKTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
			NoDA: true, Restricted: true, SignEncrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}

// tpmErr explains the TPM errors a user can do something about.
func tpmErr(what string, err error) error {
	switch {
	case errors.Is(err, tpm2.TPMRCObjectMemory), errors.Is(err, tpm2.TPMRCSessionMemory):
		return fmt.Errorf("%s: %w: the TPM has no free slot; without a resource manager transient objects and sessions stay loaded: flush them (tpm2_flushcontext -t; -s) or use /dev/tpmrm0", what, err)
	case errors.Is(err, tpm2.TPMRCBadAuth), errors.Is(err, tpm2.TPMRCAuthFail):
		return fmt.Errorf("%s: %w: vigil attest tpm uses empty authorization values", what, err)
	case errors.Is(err, tpm2.TPMRCLockout):
		return fmt.Errorf("%s: %w: the TPM is in dictionary-attack lockout", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// ReadAK reads the key at handle and checks that it can be an AK Vigil
// verifies; it returns nil, nil when the handle is empty (NoAKError says
// so to a user).
func ReadAK(t transport.TPM, handle tpm2.TPMHandle) (*AK, error) {
	rsp, err := tpm2.ReadPublic{ObjectHandle: handle}.Execute(t)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, tpmErr(fmt.Sprintf("reading the key at 0x%08x", uint32(handle)), err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("the key at 0x%08x: its public area: %w", uint32(handle), err)
	}
	ak := &AK{handle: handle, name: rsp.Name, public: *pub}
	notAK := func(why string, args ...any) error {
		return fmt.Errorf("the key at persistent handle 0x%08x is not an attestation key Vigil can verify: %s; pick a free handle with --ak-handle (0x81010002 is also where TPM makers put an ECC endorsement key), or evict this one (tpm2_evictcontrol -c 0x%08x)",
			uint32(handle), fmt.Sprintf(why, args...), uint32(handle))
	}
	a := pub.ObjectAttributes
	if !a.SignEncrypt || !a.Restricted || a.Decrypt {
		return nil, notAK("it is not a restricted signing key (sign %v, restricted %v, decrypt %v)", a.SignEncrypt, a.Restricted, a.Decrypt)
	}
	if !a.FixedTPM {
		return nil, notAK("it is not fixedTPM: it could have been made outside this TPM")
	}
	if !a.UserWithAuth {
		return nil, notAK("its use needs a policy (userWithAuth is clear)")
	}
	var scheme tpm2.TPMAlgID
	var hash tpm2.TPMIAlgHash
	switch pub.Type {
	case tpm2.TPMAlgECC:
		p, err := pub.Parameters.ECCDetail()
		if err != nil {
			return nil, notAK("%v", err)
		}
		switch p.CurveID {
		case tpm2.TPMECCNistP256, tpm2.TPMECCNistP384, tpm2.TPMECCNistP521:
		default:
			return nil, notAK("its curve 0x%04x is not a NIST curve", uint16(p.CurveID))
		}
		scheme = p.Scheme.Scheme
		if scheme == tpm2.TPMAlgECDSA {
			d, _ := p.Scheme.Details.ECDSA()
			hash = d.HashAlg
		} else if scheme != tpm2.TPMAlgNull {
			return nil, notAK("its scheme 0x%04x is not ECDSA", uint16(scheme))
		}
	case tpm2.TPMAlgRSA:
		p, err := pub.Parameters.RSADetail()
		if err != nil {
			return nil, notAK("%v", err)
		}
		if p.KeyBits < 2048 {
			return nil, notAK("it is a %d-bit RSA key (2048 bits at least)", p.KeyBits)
		}
		switch scheme = p.Scheme.Scheme; scheme {
		case tpm2.TPMAlgRSASSA:
			d, _ := p.Scheme.Details.RSASSA()
			hash = d.HashAlg
		case tpm2.TPMAlgRSAPSS:
			d, _ := p.Scheme.Details.RSAPSS()
			hash = d.HashAlg
		case tpm2.TPMAlgNull:
		default:
			return nil, notAK("its scheme 0x%04x is not RSASSA or RSAPSS", uint16(scheme))
		}
	default:
		return nil, notAK("its type 0x%04x is neither ECC nor RSA", uint16(pub.Type))
	}
	if scheme != tpm2.TPMAlgNull && hash != tpm2.TPMAlgSHA256 {
		return nil, notAK("it signs with hash algorithm 0x%04x, and Vigil verifies SHA-256 signatures", uint16(hash))
	}
	if ak.pub, err = tpm2.Pub(*pub); err != nil {
		return nil, notAK("%v", err)
	}
	ak.scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}
	if scheme == tpm2.TPMAlgNull {
		// The key has no scheme of its own: the quote names one.
		alg := tpm2.TPMAlgECDSA
		if pub.Type == tpm2.TPMAlgRSA {
			alg = tpm2.TPMAlgRSASSA
		}
		ak.scheme = tpm2.TPMTSigScheme{Scheme: alg, Details: tpm2.NewTPMUSigScheme(alg, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})}
	}
	return ak, nil
}

// EnsureAK returns the AK at handle, creating it there if the handle is
// empty: a primary key of the owner hierarchy from AKTemplate, made
// persistent, its transient copy flushed.
func EnsureAK(t transport.TPM, handle tpm2.TPMHandle) (ak *AK, created bool, err error) {
	if ak, err := ReadAK(t, handle); err != nil || ak != nil {
		return ak, false, err
	}
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	prim, err := tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(AKTemplate())}.Execute(t)
	if err != nil {
		return nil, false, tpmErr("creating the attestation key (TPM2_CreatePrimary in the owner hierarchy)", err)
	}
	defer func() {
		if _, ferr := (tpm2.FlushContext{FlushHandle: prim.ObjectHandle}).Execute(t); ferr != nil && err == nil {
			err = tpmErr(fmt.Sprintf("flushing the transient key 0x%08x", uint32(prim.ObjectHandle)), ferr)
		}
	}()
	_, err = tpm2.EvictControl{Auth: owner, ObjectHandle: &tpm2.NamedHandle{Handle: prim.ObjectHandle, Name: prim.Name},
		PersistentHandle: handle}.Execute(t)
	if errors.Is(err, tpm2.TPMRCNVDefined) {
		// made there meanwhile by another process
		ak, err := ReadAK(t, handle)
		return ak, false, err
	}
	if err != nil {
		return nil, false, tpmErr(fmt.Sprintf("making the attestation key persistent at 0x%08x (TPM2_EvictControl)", uint32(handle)), err)
	}
	ak, err = ReadAK(t, handle)
	if err == nil && ak == nil {
		err = fmt.Errorf("the attestation key made persistent at 0x%08x is not there", uint32(handle))
	}
	return ak, err == nil, err
}
