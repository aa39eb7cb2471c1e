package attest

// The eat verifier: an RFC 9711 Entity Attestation Token, a CWT in a
// COSE_Sign1, signed by the device's enrolled EAT key. The profile Vigil
// accepts is written down in docs/attestation-eat.md; in short:
//
//   - the token is at most eatMaxTokenBytes, a COSE_Sign1 tagged 18 or
//     untagged (optionally inside the CWT tag 61), with an attached payload;
//   - the protected header names alg, and only there: ES256 for a P-256 key,
//     ES384 for a P-384 key, EdDSA for an Ed25519 key; a crit header may list
//     only alg (1), content type (3), kid (4) and typ (16);
//   - the payload is a CBOR map of claims (definite lengths, no duplicate
//     keys): eat_nonce (10) is the nonce, or an array holding it; ueid (256)
//     is a bstr of 7 to 33 bytes; iat (6) and nbf (5), if present, are at
//     most eatClockSkew ahead of now; exp (4), if present, is not more than
//     eatClockSkew behind now; dbgstat (263), if present, is not 0 (enabled);
//   - the firmware digest comes from measurements (273), entries
//     [60 (application/cbor), bstr .cbor {"sha256": bstr .size 32,
//     ? "version": tstr}], or from Vigil's private claim -70001
//     {1: bstr .size 32, ? 2: tstr}; one of them must be a class reference
//     value, and a version given with it must be that reference's version.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/vigil-iot/vigil/topology"
)

// Bounds and constants of the EAT profile.
const (
	eatMaxTokenBytes = 64 << 10
	eatClockSkew     = 5 * time.Minute

	// Claim keys (RFC 8392 CWT, RFC 9711 EAT, Vigil private).
	eatClaimExp           = 4
	eatClaimNbf           = 5
	eatClaimIat           = 6
	eatClaimNonce         = 10
	eatClaimUEID          = 256
	eatClaimDbgStat       = 263
	eatClaimMeasurements  = 273
	eatClaimVigilFirmware = -70001

	// eatContentFormatCBOR is the CoAP content-format of application/cbor,
	// the only measurements entry Vigil reads.
	eatContentFormatCBOR = 60

	eatUEIDMin = 7
	eatUEIDMax = 33
)

// CBOR tags around the COSE_Sign1.
var (
	eatTagCWT   = []byte{0xd8, 0x3d} // #6.61
	eatTagSign1 = byte(0xd2)         // #6.18
	eatArray4   = byte(0x84)         // untagged COSE_Sign1: array of 4
)

// eatDec decodes claims: no duplicate map keys, no indefinite lengths,
// integers as int64 (failing beyond), valid UTF-8, shallow nesting.
var eatDec = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		IntDec:           cbor.IntDecConvertSignedOrFail,
		MaxNestedLevels:  16,
		MaxArrayElements: 1024,
		MaxMapPairs:      1024,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// eatUnderstoodCrit are the protected header labels a crit header may list.
var eatUnderstoodCrit = map[int64]bool{
	cose.HeaderLabelAlgorithm:   true,
	cose.HeaderLabelContentType: true,
	cose.HeaderLabelKeyID:       true,
	cose.HeaderLabelType:        true,
}

type eatVerifier struct{}

func init() { register(eatVerifier{}) }

func (eatVerifier) Format() string { return topology.AttestEAT }

func (eatVerifier) Verify(ev *Evidence, key Enrolled, pol Policy, nonce []byte, now time.Time) Result {
	failed := func(reasons ...string) Result { return Result{Status: StatusFailed, Reasons: reasons} }
	if ev == nil || ev.EAT == nil || len(ev.EAT.Token) == 0 {
		return failed("the EAT evidence carries no token")
	}
	if len(ev.EAT.Token) > eatMaxTokenBytes {
		return failed(fmt.Sprintf("the token is %d bytes; at most %d are accepted", len(ev.EAT.Token), eatMaxTokenBytes))
	}
	pub, wantAlg, err := eatKeyAlg(key.EATKey)
	if err != nil {
		return failed(err.Error())
	}
	msg, err := eatDecodeSign1(ev.EAT.Token)
	if err != nil {
		return failed(err.Error())
	}
	if err := eatCheckHeaders(&msg.Headers, wantAlg); err != nil {
		return failed(err.Error())
	}
	v, err := cose.NewVerifier(wantAlg, pub)
	if err != nil {
		return failed(fmt.Sprintf("the enrolled EAT key cannot verify %v: %v", wantAlg, err))
	}
	if err := msg.Verify(nil, v); err != nil {
		return failed(fmt.Sprintf("the token's COSE signature does not verify with the enrolled EAT key: %v", err))
	}

	claims, err := eatDecodeClaims(msg.Payload)
	if err != nil {
		return failed(err.Error())
	}
	reasons := claims.check(nonce, now)
	res, why := claims.firmware(pol)
	reasons = append(reasons, why...)
	if len(reasons) > 0 {
		return failed(reasons...)
	}
	res.Status = StatusPassed
	return res
}

// eatKeyAlg names the COSE algorithm the enrolled key signs with.
func eatKeyAlg(k crypto.PublicKey) (crypto.PublicKey, cose.Algorithm, error) {
	switch k := k.(type) {
	case nil:
		return nil, 0, errors.New("the device has no enrolled EAT key (vigil device enroll NAME --eat-key key.pem)")
	case *ecdsa.PublicKey:
		if k == nil {
			return nil, 0, errors.New("the device has no enrolled EAT key (vigil device enroll NAME --eat-key key.pem)")
		}
		switch k.Curve {
		case elliptic.P256():
			return k, cose.AlgorithmES256, nil
		case elliptic.P384():
			return k, cose.AlgorithmES384, nil
		}
		return nil, 0, fmt.Errorf("the enrolled EAT key is ECDSA on %s; P-256 (ES256), P-384 (ES384) and Ed25519 (EdDSA) are accepted", k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return nil, 0, fmt.Errorf("the enrolled Ed25519 EAT key is %d bytes, not %d", len(k), ed25519.PublicKeySize)
		}
		return k, cose.AlgorithmEdDSA, nil
	case *ed25519.PublicKey:
		if k == nil {
			return nil, 0, errors.New("the device has no enrolled EAT key (vigil device enroll NAME --eat-key key.pem)")
		}
		return eatKeyAlg(*k)
	}
	return nil, 0, fmt.Errorf("the enrolled EAT key is a %T; P-256 (ES256), P-384 (ES384) and Ed25519 (EdDSA) are accepted", k)
}

// eatDecodeSign1 decodes a COSE_Sign1, tagged 18 or untagged, optionally
// inside the CWT tag 61. Nothing may follow it.
func eatDecodeSign1(tok []byte) (*cose.Sign1Message, error) {
	if bytes.HasPrefix(tok, eatTagCWT) {
		tok = tok[len(eatTagCWT):]
		if len(tok) == 0 || tok[0] != eatTagSign1 {
			return nil, errors.New("the token's CWT tag 61 does not wrap a tagged COSE_Sign1 (tag 18)")
		}
	}
	var msg cose.Sign1Message
	var err error
	switch {
	case len(tok) > 0 && tok[0] == eatTagSign1:
		err = msg.UnmarshalCBOR(tok)
	case len(tok) > 0 && tok[0] == eatArray4:
		err = (*cose.UntaggedSign1Message)(&msg).UnmarshalCBOR(tok)
	default:
		return nil, errors.New("the token is not a COSE_Sign1 (tag 18, or an untagged array of 4)")
	}
	if err != nil {
		return nil, fmt.Errorf("the token is not a well-formed COSE_Sign1: %v", err)
	}
	if msg.Payload == nil {
		return nil, errors.New("the token's COSE_Sign1 has no payload (detached content is not accepted)")
	}
	return &msg, nil
}

// eatCheckHeaders checks alg against the key and refuses critical headers
// Vigil does not understand.
func eatCheckHeaders(h *cose.Headers, want cose.Algorithm) error {
	if _, ok := eatLabel(h.Unprotected, cose.HeaderLabelAlgorithm); ok {
		return errors.New("the token names alg in its unprotected header; alg must be protected")
	}
	if _, ok := eatLabel(h.Unprotected, cose.HeaderLabelCritical); ok {
		return errors.New("the token names crit in its unprotected header")
	}
	alg, err := h.Protected.Algorithm()
	if err != nil {
		return fmt.Errorf("the token's protected header names no usable alg: %v", err)
	}
	if alg != want {
		return fmt.Errorf("the token is signed with alg %v but the enrolled EAT key signs with %v", alg, want)
	}
	crit, err := h.Protected.Critical()
	if err != nil {
		return fmt.Errorf("the token's crit header is malformed: %v", err)
	}
	for _, l := range crit {
		if n, ok := eatInt(l); !ok || !eatUnderstoodCrit[n] {
			return fmt.Errorf("the token marks header %v critical, which Vigil does not understand", l)
		}
	}
	return nil
}

// eatLabel looks a header label up whatever integer type it decoded to.
func eatLabel(h map[any]any, label int64) (any, bool) {
	for k, v := range h {
		if n, ok := eatInt(k); ok && n == label {
			return v, true
		}
	}
	return nil, false
}

// eatInt reads a CBOR integer decoded to any Go integer type.
func eatInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int:
		return int64(n), true
	case uint64:
		if n <= math.MaxInt64 {
			return int64(n), true
		}
	case cose.Algorithm:
		return int64(n), true
	}
	return 0, false
}

// eatClaims are the claims Vigil reads, still encoded.
type eatClaims map[int64]cbor.RawMessage

func eatDecodeClaims(payload []byte) (eatClaims, error) {
	var m map[any]cbor.RawMessage
	if err := eatDec.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("the token's payload is not a CBOR map of claims: %v", err)
	}
	if m == nil {
		return nil, errors.New("the token's payload is not a CBOR map of claims")
	}
	c := eatClaims{}
	for k, v := range m {
		switch k := k.(type) {
		case int64:
			c[k] = v
		case string: // text claim names are allowed and ignored
		default:
			return nil, fmt.Errorf("the token's claims have a key of type %T; only integers and text are allowed", k)
		}
	}
	return c, nil
}

// value decodes one claim to a generic value.
func (c eatClaims) value(key int64) (any, bool, error) {
	raw, ok := c[key]
	if !ok {
		return nil, false, nil
	}
	var v any
	if err := eatDec.Unmarshal(raw, &v); err != nil {
		return nil, true, err
	}
	return v, true, nil
}

// check verifies eat_nonce, ueid, the times and dbgstat.
func (c eatClaims) check(nonce []byte, now time.Time) []string {
	var reasons []string
	switch v, ok, err := c.value(eatClaimNonce); {
	case err != nil:
		reasons = append(reasons, fmt.Sprintf("eat_nonce (10) is malformed: %v", err))
	case !ok:
		reasons = append(reasons, "the token has no eat_nonce (10)")
	default:
		var got [][]byte
		switch v := v.(type) {
		case []byte:
			got = [][]byte{v}
		case []any:
			for _, e := range v {
				b, isBstr := e.([]byte)
				if !isBstr {
					got = nil
					break
				}
				got = append(got, b)
			}
		}
		if len(got) == 0 {
			reasons = append(reasons, "eat_nonce (10) is neither a bstr nor a non-empty array of bstr")
			break
		}
		match := 0
		for _, g := range got {
			match |= subtle.ConstantTimeCompare(g, nonce)
		}
		if match != 1 {
			reasons = append(reasons, "eat_nonce (10) is not the nonce issued for this attestation")
		}
	}

	switch v, ok, err := c.value(eatClaimUEID); {
	case err != nil:
		reasons = append(reasons, fmt.Sprintf("ueid (256) is malformed: %v", err))
	case !ok:
		reasons = append(reasons, "the token has no ueid (256)")
	default:
		b, isBstr := v.([]byte)
		if !isBstr || len(b) < eatUEIDMin || len(b) > eatUEIDMax {
			reasons = append(reasons, fmt.Sprintf("ueid (256) must be a bstr of %d to %d bytes", eatUEIDMin, eatUEIDMax))
		}
	}

	for _, t := range []struct {
		key  int64
		name string
	}{{eatClaimIat, "iat (6)"}, {eatClaimNbf, "nbf (5)"}, {eatClaimExp, "exp (4)"}} {
		v, ok, err := c.value(t.key)
		if !ok {
			continue
		}
		at, good := eatNumericDate(v)
		if err != nil || !good {
			reasons = append(reasons, t.name+" is not a NumericDate (an integer or float of seconds since 1970)")
			continue
		}
		switch t.key {
		case eatClaimIat, eatClaimNbf:
			if at.After(now.Add(eatClockSkew)) {
				reasons = append(reasons, fmt.Sprintf("%s is %s, more than %v after now (%s)", t.name, at.UTC().Format(time.RFC3339), eatClockSkew, now.UTC().Format(time.RFC3339)))
			}
		case eatClaimExp:
			if !at.After(now.Add(-eatClockSkew)) {
				reasons = append(reasons, fmt.Sprintf("the token expired at %s (exp (4)); now is %s", at.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)))
			}
		}
	}

	switch v, ok, err := c.value(eatClaimDbgStat); {
	case !ok:
	case err != nil:
		reasons = append(reasons, fmt.Sprintf("dbgstat (263) is malformed: %v", err))
	default:
		n, isInt := eatInt(v)
		switch {
		case !isInt || n < 0 || n > 4:
			reasons = append(reasons, "dbgstat (263) must be an integer from 0 to 4")
		case n == 0:
			reasons = append(reasons, "dbgstat (263) says debug is enabled")
		}
	}
	return reasons
}

// eatNumericDate reads a CWT NumericDate (RFC 8392): an integer or a finite
// float of seconds since the epoch, untagged.
func eatNumericDate(v any) (time.Time, bool) {
	const bound = 1 << 40 // far beyond any real date, keeps time arithmetic safe
	switch n := v.(type) {
	case int64:
		if n > -bound && n < bound {
			return time.Unix(n, 0), true
		}
	case float64:
		if !math.IsNaN(n) && n > -bound && n < bound {
			sec, frac := math.Modf(n)
			return time.Unix(int64(sec), int64(frac*1e9)), true
		}
	}
	return time.Time{}, false
}

// eatFirmware is one firmware measurement the token carries.
type eatFirmware struct {
	where   string
	sha256  []byte
	version string
}

// firmware finds the token's firmware measurements and matches them
// against the class's reference values.
func (c eatClaims) firmware(pol Policy) (Result, []string) {
	found, reasons := c.firmwareMeasurements()
	if len(reasons) > 0 {
		return Result{}, reasons
	}
	if len(found) == 0 {
		return Result{}, []string{fmt.Sprintf("the token carries no firmware digest (a measurements (273) entry of content-format %d, or claim %d)", eatContentFormatCBOR, eatClaimVigilFirmware)}
	}
	var seen []string
	for _, f := range found {
		sha := hex.EncodeToString(f.sha256)
		seen = append(seen, f.where+"="+sha)
		ref, ok := firmwareRef(pol, sha)
		if !ok {
			continue
		}
		if f.version != "" && f.version != ref.Version {
			return Result{}, []string{fmt.Sprintf("%s names version %q for the digest of reference version %q", f.where, f.version, ref.Version)}
		}
		return Result{FirmwareVersion: ref.Version, FirmwareSHA256: sha}, nil
	}
	return Result{}, []string{fmt.Sprintf("no firmware digest in the token is one of class %s's reference values (seen: %s)", pol.Class, strings.Join(seen, ", "))}
}

// firmwareMeasurements reads the measurements claim and the private claim.
func (c eatClaims) firmwareMeasurements() ([]eatFirmware, []string) {
	var found []eatFirmware
	var reasons []string
	if raw, ok := c[eatClaimMeasurements]; ok {
		var entries []cbor.RawMessage
		if err := eatDec.Unmarshal(raw, &entries); err != nil || len(entries) == 0 {
			reasons = append(reasons, "measurements (273) is not a non-empty array")
		}
		for i, e := range entries {
			where := fmt.Sprintf("measurements[%d]", i)
			var pair []cbor.RawMessage
			if err := eatDec.Unmarshal(e, &pair); err != nil || len(pair) != 2 {
				reasons = append(reasons, where+" is not an array [content-format, bstr]")
				continue
			}
			var cf any
			var payload any
			errCF := eatDec.Unmarshal(pair[0], &cf)
			errP := eatDec.Unmarshal(pair[1], &payload)
			n, isInt := eatInt(cf)
			b, isBstr := payload.([]byte)
			if errCF != nil || errP != nil || !isInt || n < 0 || n > 65535 || !isBstr {
				reasons = append(reasons, where+" is not an array [content-format (uint), bstr]")
				continue
			}
			if n != eatContentFormatCBOR {
				continue // another kind of measurement: not Vigil's to read
			}
			var m map[string]cbor.RawMessage
			if err := eatDec.Unmarshal(b, &m); err != nil || m == nil {
				reasons = append(reasons, fmt.Sprintf("%s (content-format %d) is not a CBOR map with text keys", where, eatContentFormatCBOR))
				continue
			}
			f, err := eatReadFirmware(where, m["sha256"], m["version"])
			if err != nil {
				reasons = append(reasons, err.Error())
				continue
			}
			found = append(found, f)
		}
	}
	if raw, ok := c[eatClaimVigilFirmware]; ok {
		where := fmt.Sprintf("claim %d", eatClaimVigilFirmware)
		var m map[int64]cbor.RawMessage
		if err := eatDec.Unmarshal(raw, &m); err != nil || m == nil {
			reasons = append(reasons, where+" is not a CBOR map with integer keys")
		} else if f, err := eatReadFirmware(where, m[1], m[2]); err != nil {
			reasons = append(reasons, err.Error())
		} else {
			found = append(found, f)
		}
	}
	return found, reasons
}

// eatReadFirmware reads a firmware measurement: a 32-byte SHA-256 and an
// optional version.
func eatReadFirmware(where string, shaRaw, versionRaw cbor.RawMessage) (eatFirmware, error) {
	f := eatFirmware{where: where}
	var sha, version any
	if shaRaw == nil || eatDec.Unmarshal(shaRaw, &sha) != nil {
		return f, fmt.Errorf("%s has no sha256", where)
	}
	b, ok := sha.([]byte)
	if !ok || len(b) != sha256.Size {
		return f, fmt.Errorf("%s: sha256 must be a bstr of %d bytes", where, sha256.Size)
	}
	f.sha256 = b
	if versionRaw != nil {
		err := eatDec.Unmarshal(versionRaw, &version)
		s, isText := version.(string)
		if err != nil || !isText {
			return f, fmt.Errorf("%s: version must be a tstr", where)
		}
		f.version = s
	}
	return f, nil
}
