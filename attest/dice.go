package attest

// The dice verifier: a DICE certificate chain (TCG DICE Attestation
// Architecture), leaf (the alias key) first, ending in one of the class's
// DICE roots, and the alias key's signature over the nonce.
//
// What is read and enforced (docs/attestation-eat.md, section DICE):
//   - at most diceMaxCerts certificates of at most diceMaxCertBytes each;
//   - every certificate below the root carries a well-formed TCG DiceTcbInfo
//     extension (OID 2.23.133.5.4.1), parsed here with encoding/asn1 and
//     removed from the certificate's unhandled critical extensions (on a
//     copy) so that x509.Verify accepts it; a well-formed TCG UEID extension
//     (2.23.133.5.4.4) is likewise understood; any other unhandled critical
//     extension refuses the chain;
//   - the chain, exactly as submitted (leaf first, each certificate issued by
//     the next), verifies to one of the class's roots at `now`;
//   - no layer's operational flags say notSecure (bit 1) or debug (bit 3);
//     flagsMask is parsed but never excuses a set flag;
//   - the firmware layer is the alias (leaf) certificate's TcbInfo: one of its
//     fwids with hashAlg SHA-256 must be a class reference value;
//   - the alias key (ECDSA P-256 over SHA-256, P-384 over SHA-384, ASN.1
//     signature; or Ed25519 over the nonce itself) signed the nonce.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Bounds on DICE evidence.
const (
	diceMaxCerts          = 8
	diceMaxCertBytes      = 16 << 10
	diceMaxSignatureBytes = 512
)

var (
	// oidDiceTcbInfo is tcg-dice-TcbInfo.
	oidDiceTcbInfo = asn1.ObjectIdentifier{2, 23, 133, 5, 4, 1}
	// oidDiceUEID is tcg-dice-Ueid.
	oidDiceUEID = asn1.ObjectIdentifier{2, 23, 133, 5, 4, 4}
	// oidSHA256 is id-sha256, the only fwid hash algorithm matched against
	// reference values.
	oidSHA256 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
)

// OperationalFlags bits (TCG DICE Attestation Architecture) that Vigil
// enforces; the others are read but not acted on.
const (
	diceFlagNotSecure = 1
	diceFlagDebug     = 3
)

// diceFWID is FWID ::= SEQUENCE { hashAlg OBJECT IDENTIFIER, digest OCTET STRING }.
type diceFWID struct {
	HashAlg asn1.ObjectIdentifier
	Digest  []byte
}

// diceTcbInfo is DiceTcbInfo (all tags IMPLICIT, all fields OPTIONAL).
// encoding/asn1 tolerates elements appended by later versions of the
// structure after flagsMask.
type diceTcbInfo struct {
	Vendor     string         `asn1:"optional,tag:0,utf8"`
	Model      string         `asn1:"optional,tag:1,utf8"`
	Version    string         `asn1:"optional,tag:2,utf8"`
	SVN        int64          `asn1:"optional,tag:3"`
	Layer      int64          `asn1:"optional,tag:4"`
	Index      int64          `asn1:"optional,tag:5"`
	FWIDs      []diceFWID     `asn1:"optional,tag:6"`
	Flags      asn1.BitString `asn1:"optional,tag:7"`
	VendorInfo []byte         `asn1:"optional,tag:8"`
	Type       []byte         `asn1:"optional,tag:9"`
	FlagsMask  asn1.BitString `asn1:"optional,tag:10"`
}

// diceUEID is TCGUEID ::= SEQUENCE { ueid OCTET STRING }.
type diceUEID struct {
	UEID []byte
}

type diceVerifier struct{}

func init() { register(diceVerifier{}) }

func (diceVerifier) Format() string { return topology.AttestDICE }

func (diceVerifier) Verify(ev *Evidence, _ Enrolled, pol Policy, nonce []byte, now time.Time) Result {
	failed := func(reasons ...string) Result { return Result{Status: StatusFailed, Reasons: reasons} }
	if ev == nil || ev.DICE == nil || len(ev.DICE.Chain) == 0 {
		return failed("the DICE evidence carries no certificate chain")
	}
	d := ev.DICE
	if len(d.Chain) > diceMaxCerts {
		return failed(fmt.Sprintf("the DICE chain has %d certificates; at most %d are accepted", len(d.Chain), diceMaxCerts))
	}
	if len(d.Signature) == 0 || len(d.Signature) > diceMaxSignatureBytes {
		return failed(fmt.Sprintf("the signature over the nonce is %d bytes; 1 to %d are accepted", len(d.Signature), diceMaxSignatureBytes))
	}
	certs := make([]*x509.Certificate, len(d.Chain))
	for i, der := range d.Chain {
		if len(der) > diceMaxCertBytes {
			return failed(fmt.Sprintf("chain[%d] is %d bytes; at most %d are accepted", i, len(der), diceMaxCertBytes))
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return failed(fmt.Sprintf("chain[%d] is not a DER X.509 certificate: %v", i, err))
		}
		certs[i] = c
	}
	if pol.DICERoots.Len() == 0 {
		return failed(fmt.Sprintf("class %s has no DICE roots", pol.Class))
	}

	// The submitted chain may end in the root itself; that certificate needs
	// no TcbInfo. The others are layers, numbered from the root up.
	layers := len(certs)
	if diceIsRoot(pol.DICERoots, certs[layers-1]) {
		layers--
	}
	if layers == 0 {
		return failed("the DICE chain is only a root certificate; the alias certificate is missing")
	}
	layerName := func(i int) string {
		return fmt.Sprintf("layer %d (chain[%d], subject %q)", layers-1-i, i, certs[i].Subject.String())
	}

	var reasons []string
	infos := make([]*diceTcbInfo, len(certs))
	clean := make([]*x509.Certificate, len(certs))
	unhandled := false
	for i, c := range certs {
		info, cp, errs := diceReadExtensions(c)
		infos[i], clean[i] = info, cp
		for _, err := range errs {
			reasons = append(reasons, fmt.Sprintf("%s: %v", layerName(i), err))
		}
		if i < layers && info == nil && len(errs) == 0 {
			reasons = append(reasons, layerName(i)+" carries no DiceTcbInfo")
		}
		if info != nil {
			if info.Flags.At(diceFlagNotSecure) == 1 {
				reasons = append(reasons, layerName(i)+" is flagged notSecure in its DiceTcbInfo")
			}
			if info.Flags.At(diceFlagDebug) == 1 {
				reasons = append(reasons, layerName(i)+" is flagged debug in its DiceTcbInfo")
			}
		}
		if len(cp.UnhandledCriticalExtensions) > 0 {
			unhandled = true // x509.Verify would refuse it anyway
			var oids []string
			for _, o := range cp.UnhandledCriticalExtensions {
				if !o.Equal(oidDiceTcbInfo) && !o.Equal(oidDiceUEID) { // malformed: reported above
					oids = append(oids, o.String())
				}
			}
			if len(oids) > 0 {
				reasons = append(reasons, fmt.Sprintf("%s has critical extensions Vigil does not understand: %s", layerName(i), strings.Join(oids, ", ")))
			}
		}
	}

	if !unhandled {
		inter := x509.NewCertPool()
		for _, c := range clean[1:] {
			inter.AddCert(c)
		}
		chains, err := clean[0].Verify(x509.VerifyOptions{
			Roots:         pol.DICERoots.Pool(),
			Intermediates: inter,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		switch {
		case err != nil:
			reasons = append(reasons, fmt.Sprintf("the DICE chain does not verify to a DICE root of class %s: %v", pol.Class, err))
		case !diceChainAsSubmitted(chains, certs):
			reasons = append(reasons, "the DICE chain is not in order: leaf first, each certificate issued by the next, nothing else")
		}
	}

	// The firmware layer: the alias certificate's TcbInfo.
	var res Result
	if info := infos[0]; info != nil {
		var seen []string
		for _, f := range info.FWIDs {
			if !f.HashAlg.Equal(oidSHA256) {
				seen = append(seen, f.HashAlg.String()+":"+hex.EncodeToString(f.Digest))
				continue
			}
			sha := hex.EncodeToString(f.Digest)
			seen = append(seen, "sha256:"+sha)
			if len(f.Digest) != sha256.Size || res.FirmwareVersion != "" {
				continue
			}
			if ref, ok := firmwareRef(pol, sha); ok {
				res.FirmwareVersion, res.FirmwareSHA256 = ref.Version, sha
			}
		}
		if res.FirmwareVersion == "" {
			if len(seen) == 0 {
				seen = []string{"none"}
			}
			reasons = append(reasons, fmt.Sprintf("the firmware %s names no firmware of class %s's reference values (fwids: %s)", layerName(0), pol.Class, strings.Join(seen, ", ")))
		}
	}

	if err := diceCheckNonceSignature(certs[0], nonce, d.Signature); err != nil {
		reasons = append(reasons, err.Error())
	}

	if len(reasons) > 0 {
		return failed(reasons...)
	}
	res.Status = StatusPassed
	return res
}

// diceReadExtensions parses the TCG DICE extensions of c and returns a copy
// of c whose unhandled critical extensions no longer list the ones that
// parsed. A malformed extension stays unhandled and is reported.
func diceReadExtensions(c *x509.Certificate) (*diceTcbInfo, *x509.Certificate, []error) {
	var (
		info    *diceTcbInfo
		errs    []error
		handled []asn1.ObjectIdentifier
	)
	for _, ext := range c.Extensions {
		switch {
		case ext.Id.Equal(oidDiceTcbInfo):
			var ti diceTcbInfo
			rest, err := asn1.Unmarshal(ext.Value, &ti)
			if err == nil && len(rest) > 0 {
				err = fmt.Errorf("%d bytes after the structure", len(rest))
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("malformed DiceTcbInfo: %v", err))
				continue
			}
			info = &ti
			handled = append(handled, ext.Id)
		case ext.Id.Equal(oidDiceUEID):
			var u diceUEID
			rest, err := asn1.Unmarshal(ext.Value, &u)
			if err == nil && len(rest) > 0 {
				err = fmt.Errorf("%d bytes after the structure", len(rest))
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("malformed TCG UEID extension: %v", err))
				continue
			}
			handled = append(handled, ext.Id)
		}
	}
	cp := *c
	cp.UnhandledCriticalExtensions = slices.DeleteFunc(slices.Clone(c.UnhandledCriticalExtensions), func(o asn1.ObjectIdentifier) bool {
		return slices.ContainsFunc(handled, o.Equal)
	})
	return info, &cp, errs
}

// diceChainAsSubmitted reports whether one of the verified chains is the
// submitted one, certificate for certificate, possibly followed by the root.
func diceChainAsSubmitted(chains [][]*x509.Certificate, submitted []*x509.Certificate) bool {
	for _, ch := range chains {
		if len(ch) != len(submitted) && len(ch) != len(submitted)+1 {
			continue
		}
		same := true
		for i, c := range submitted {
			if !bytes.Equal(ch[i].Raw, c.Raw) {
				same = false
				break
			}
		}
		if same {
			return true
		}
	}
	return false
}

// diceCheckNonceSignature checks the alias key's signature over the nonce.
func diceCheckNonceSignature(alias *x509.Certificate, nonce, sig []byte) error {
	if alias.KeyUsage != 0 && alias.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return fmt.Errorf("the alias certificate (subject %q) does not allow digitalSignature", alias.Subject.String())
	}
	ok := false
	switch k := alias.PublicKey.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			h := sha256.Sum256(nonce)
			ok = ecdsa.VerifyASN1(k, h[:], sig)
		case elliptic.P384():
			h := sha512.Sum384(nonce)
			ok = ecdsa.VerifyASN1(k, h[:], sig)
		default:
			return fmt.Errorf("the alias key is ECDSA on %s; P-256 and P-384 are accepted", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		ok = len(k) == ed25519.PublicKeySize && ed25519.Verify(k, nonce, sig)
	default:
		return fmt.Errorf("the alias key is a %T; ECDSA P-256/P-384 and Ed25519 are accepted", alias.PublicKey)
	}
	if !ok {
		return fmt.Errorf("the signature over the nonce does not verify with the alias key (subject %q)", alias.Subject.String())
	}
	return nil
}

// diceIsRoot reports whether c is one of the roots of p.
func diceIsRoot(p *CertPool, c *x509.Certificate) bool {
	if p == nil {
		return false
	}
	for _, r := range p.certs {
		if r != nil && bytes.Equal(r.Raw, c.Raw) {
			return true
		}
	}
	return false
}
