package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/vigil-iot/vigil/topology"
)

// eatFirmwareRef is the reference firmware the fixtures' tokens measure.
var eatFirmwareRef = topology.FirmwareRef{Version: "3.1.0", SHA256: strings.Repeat("5a", 32)}

type eatFixture struct {
	key   crypto.Signer
	alg   cose.Algorithm
	pol   Policy
	nonce []byte
	ueid  []byte
	now   time.Time
}

func newEATFixture(t testing.TB, key crypto.Signer, alg cose.Algorithm) *eatFixture {
	t.Helper()
	nonce := make([]byte, NonceSize)
	ueid := make([]byte, 17)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	if _, err := rand.Read(ueid); err != nil {
		t.Fatal(err)
	}
	ueid[0] = 0x01 // RAND
	return &eatFixture{
		key: key, alg: alg, nonce: nonce, ueid: ueid, now: time.Now(),
		pol: Policy{
			Class: "sensor", Formats: []string{topology.AttestEAT},
			Firmware: []topology.FirmwareRef{{Version: "3.0.0", SHA256: strings.Repeat("11", 32)}, eatFirmwareRef},
		},
	}
}

func eatDigest(hexDigest string) []byte {
	b, _ := hex.DecodeString(hexDigest)
	return b
}

func eatCBOR(t testing.TB, v any) []byte {
	t.Helper()
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		t.Fatal(err)
	}
	b, err := em.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// measurement is a Vigil measurements (273) entry.
func (f *eatFixture) measurement(t testing.TB, m map[string]any) []any {
	return []any{eatContentFormatCBOR, eatCBOR(t, m)}
}

// claims are good claims: the nonce, a ueid, iat now, and the reference
// firmware in measurements.
func (f *eatFixture) claims(t testing.TB) map[any]any {
	return map[any]any{
		eatClaimNonce: f.nonce,
		eatClaimUEID:  f.ueid,
		eatClaimIat:   f.now.Unix(),
		eatClaimMeasurements: []any{
			f.measurement(t, map[string]any{"sha256": eatDigest(eatFirmwareRef.SHA256), "version": eatFirmwareRef.Version}),
		},
	}
}

// eatToken shapes one signed token.
type eatToken struct {
	payload     []byte // default: the claims, encoded
	key         crypto.Signer
	alg         cose.Algorithm
	protected   map[any]any
	unprotected map[any]any
	untagged    bool
	cwtTag      bool
}

func (f *eatFixture) sign(t testing.TB, claims map[any]any, o eatToken) []byte {
	t.Helper()
	if o.payload == nil {
		o.payload = eatCBOR(t, claims)
	}
	if o.key == nil {
		o.key, o.alg = f.key, f.alg
	}
	signer, err := cose.NewSigner(o.alg, o.key)
	if err != nil {
		t.Fatal(err)
	}
	msg := cose.Sign1Message{
		Headers: cose.Headers{Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: o.alg}, Unprotected: cose.UnprotectedHeader{}},
		Payload: o.payload,
	}
	for k, v := range o.protected {
		msg.Headers.Protected[k] = v
	}
	for k, v := range o.unprotected {
		msg.Headers.Unprotected[k] = v
	}
	if err := msg.Sign(rand.Reader, nil, signer); err != nil {
		t.Fatal(err)
	}
	var tok []byte
	if o.untagged {
		tok, err = (*cose.UntaggedSign1Message)(&msg).MarshalCBOR()
	} else {
		tok, err = msg.MarshalCBOR()
	}
	if err != nil {
		t.Fatal(err)
	}
	if o.cwtTag {
		tok = append([]byte{0xd8, 0x3d}, tok...)
	}
	return tok
}

func (f *eatFixture) verify(t testing.TB, tok []byte, enrolled crypto.PublicKey) Result {
	t.Helper()
	ev := &Evidence{Format: topology.AttestEAT, Nonce: hex.EncodeToString(f.nonce), EAT: &EATEvidence{Token: tok}}
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return Verify(raw, ev, Enrolled{EATKey: enrolled}, f.pol, f.nonce, f.now)
}

func eatECDSA(t testing.TB, c elliptic.Curve) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func eatEd25519(t testing.TB) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestEATVerify(t *testing.T) {
	type mut struct {
		claims func(f *eatFixture, c map[any]any)
		token  func(t *testing.T, f *eatFixture, o *eatToken)
		after  func(t *testing.T, f *eatFixture, tok []byte) []byte
		key    func(t *testing.T, f *eatFixture) crypto.PublicKey // the enrolled key; default f.key's
	}
	cases := []struct {
		name string
		key  func(t *testing.T) (crypto.Signer, cose.Algorithm)
		m    mut
		want string // "" passes; else a substring of a reason
	}{
		{name: "good ES256 tagged"},
		{name: "good ES384 untagged", key: func(t *testing.T) (crypto.Signer, cose.Algorithm) {
			return eatECDSA(t, elliptic.P384()), cose.AlgorithmES384
		}, m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) { o.untagged = true }}},
		{name: "good EdDSA in a CWT tag", key: func(t *testing.T) (crypto.Signer, cose.Algorithm) {
			return eatEd25519(t), cose.AlgorithmEdDSA
		}, m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) { o.cwtTag = true }}},
		{name: "good private firmware claim", m: mut{claims: func(f *eatFixture, c map[any]any) {
			delete(c, eatClaimMeasurements)
			c[eatClaimVigilFirmware] = map[any]any{1: eatDigest(eatFirmwareRef.SHA256), 2: eatFirmwareRef.Version}
		}}},
		{name: "good private firmware claim without version", m: mut{claims: func(f *eatFixture, c map[any]any) {
			delete(c, eatClaimMeasurements)
			c[eatClaimVigilFirmware] = map[any]any{1: eatDigest(eatFirmwareRef.SHA256)}
		}}},
		{name: "good nonce array", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimNonce] = []any{bytes.Repeat([]byte{1}, 16), f.nonce}
		}}},
		{name: "good without iat", m: mut{claims: func(f *eatFixture, c map[any]any) { delete(c, eatClaimIat) }}},
		{name: "good iat within the skew", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimIat] = f.now.Add(4 * time.Minute).Unix()
		}}},
		{name: "good float iat and future exp", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimIat] = float64(f.now.Unix()) + 0.5
			c[eatClaimExp] = f.now.Add(time.Hour).Unix()
		}}},
		{name: "good with other claims and measurements", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c["vendor-note"] = "hello"
			c[eatClaimDbgStat] = 3 // disabled permanently
			c[eatClaimMeasurements] = []any{
				[]any{258, []byte{0xa0}}, // not Vigil's content-format: ignored
				f.measurement(t, map[string]any{"sha256": eatDigest(strings.Repeat("77", 32))}),
				f.measurement(t, map[string]any{"sha256": eatDigest(eatFirmwareRef.SHA256), "version": eatFirmwareRef.Version, "name": "app"}),
			}
		}}},
		{name: "good crit naming alg", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			o.protected = map[any]any{cose.HeaderLabelCritical: []any{cose.HeaderLabelAlgorithm}}
		}}},
		{name: "good with kid", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			o.unprotected = map[any]any{cose.HeaderLabelKeyID: []byte("dev-1")}
		}}},

		{name: "bad COSE signature", m: mut{after: func(t *testing.T, f *eatFixture, tok []byte) []byte {
			tok = bytes.Clone(tok)
			tok[len(tok)-1] ^= 0x01
			return tok
		}}, want: "the token's COSE signature does not verify with the enrolled EAT key"},
		{name: "signed by another key", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			o.key, o.alg = eatECDSA(t, elliptic.P256()), cose.AlgorithmES256
		}}, want: "COSE signature does not verify"},
		{name: "wrong eat_nonce", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimNonce] = bytes.Repeat([]byte{9}, NonceSize)
		}}, want: "eat_nonce (10) is not the nonce issued for this attestation"},
		{name: "nonce array without the nonce", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimNonce] = []any{bytes.Repeat([]byte{1}, 16)}
		}}, want: "eat_nonce (10) is not the nonce"},
		{name: "nonce of the wrong type", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimNonce] = hex.EncodeToString(f.nonce)
		}}, want: "eat_nonce (10) is neither a bstr nor a non-empty array of bstr"},
		{name: "missing eat_nonce", m: mut{claims: func(f *eatFixture, c map[any]any) { delete(c, eatClaimNonce) }},
			want: "the token has no eat_nonce (10)"},
		{name: "missing ueid", m: mut{claims: func(f *eatFixture, c map[any]any) { delete(c, eatClaimUEID) }},
			want: "the token has no ueid (256)"},
		{name: "short ueid", m: mut{claims: func(f *eatFixture, c map[any]any) { c[eatClaimUEID] = []byte{1, 2, 3} }},
			want: "ueid (256) must be a bstr of 7 to 33 bytes"},
		{name: "unknown firmware", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimMeasurements] = []any{f.measurement(t, map[string]any{"sha256": eatDigest(strings.Repeat("ee", 32))})}
		}}, want: "no firmware digest in the token is one of class sensor's reference values (seen: measurements[0]=" + strings.Repeat("ee", 32) + ")"},
		{name: "no firmware", m: mut{claims: func(f *eatFixture, c map[any]any) { delete(c, eatClaimMeasurements) }},
			want: "the token carries no firmware digest"},
		{name: "only foreign measurements", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimMeasurements] = []any{[]any{258, []byte{0xa0}}}
		}}, want: "the token carries no firmware digest"},
		{name: "short firmware digest", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimMeasurements] = []any{f.measurement(t, map[string]any{"sha256": make([]byte, 31)})}
		}}, want: "measurements[0]: sha256 must be a bstr of 32 bytes"},
		{name: "malformed measurements", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimMeasurements] = []any{[]any{60}}
		}}, want: "measurements[0] is not an array [content-format, bstr]"},
		{name: "firmware version mismatch", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimMeasurements] = []any{f.measurement(t, map[string]any{"sha256": eatDigest(eatFirmwareRef.SHA256), "version": "9.9.9"})}
		}}, want: `measurements[0] names version "9.9.9" for the digest of reference version "3.1.0"`},
		{name: "iat in the future", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimIat] = f.now.Add(10 * time.Minute).Unix()
		}}, want: "more than 5m0s after now"},
		{name: "iat not a date", m: mut{claims: func(f *eatFixture, c map[any]any) { c[eatClaimIat] = "yesterday" }},
			want: "iat (6) is not a NumericDate"},
		{name: "expired", m: mut{claims: func(f *eatFixture, c map[any]any) {
			c[eatClaimExp] = f.now.Add(-time.Hour).Unix()
		}}, want: "the token expired at"},
		{name: "debug enabled", m: mut{claims: func(f *eatFixture, c map[any]any) { c[eatClaimDbgStat] = 0 }},
			want: "dbgstat (263) says debug is enabled"},
		{name: "alg/key mismatch", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			o.key, o.alg = eatEd25519(t), cose.AlgorithmEdDSA
		}}, want: "the token is signed with alg EdDSA but the enrolled EAT key signs with ES256"},
		{name: "ES384 header with a P-256 key", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			o.key, o.alg = eatECDSA(t, elliptic.P384()), cose.AlgorithmES384
		}}, want: "signed with alg ES384 but the enrolled EAT key signs with ES256"},
		{name: "truncated token", m: mut{after: func(t *testing.T, f *eatFixture, tok []byte) []byte {
			return tok[:len(tok)-10]
		}}, want: "the token is not a well-formed COSE_Sign1"},
		{name: "trailing bytes", m: mut{after: func(t *testing.T, f *eatFixture, tok []byte) []byte {
			return append(bytes.Clone(tok), 0x00)
		}}, want: "the token is not a well-formed COSE_Sign1"},
		{name: "not COSE", m: mut{after: func(t *testing.T, f *eatFixture, tok []byte) []byte {
			return []byte{0xa0}
		}}, want: "the token is not a COSE_Sign1"},
		{name: "empty token", m: mut{after: func(t *testing.T, f *eatFixture, tok []byte) []byte { return nil }},
			want: "the EAT evidence carries no token"},
		{name: "oversized token", m: mut{after: func(t *testing.T, f *eatFixture, tok []byte) []byte {
			return make([]byte, eatMaxTokenBytes+1)
		}}, want: "at most 65536 are accepted"},
		{name: "CWT tag around an untagged COSE_Sign1", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			o.untagged = true
		}, after: func(t *testing.T, f *eatFixture, tok []byte) []byte {
			return append([]byte{0xd8, 0x3d}, tok...)
		}}, want: "does not wrap a tagged COSE_Sign1"},
		{name: "no enrolled key", m: mut{key: func(t *testing.T, f *eatFixture) crypto.PublicKey { return nil }},
			want: "the device has no enrolled EAT key"},
		{name: "enrolled P-521 key", m: mut{key: func(t *testing.T, f *eatFixture) crypto.PublicKey {
			return eatECDSA(t, elliptic.P521()).Public()
		}}, want: "the enrolled EAT key is ECDSA on P-521"},
		{name: "unknown critical header", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			o.protected = map[any]any{cose.HeaderLabelCritical: []any{int64(99)}, int64(99): "x"}
		}}, want: "the token marks header 99 critical, which Vigil does not understand"},
		{name: "alg unprotected", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			o.unprotected = map[any]any{cose.HeaderLabelAlgorithm: cose.AlgorithmES256}
		}}, want: "alg must be protected"},
		{name: "duplicate claim", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			// {10: nonce, 10: nonce, ...}: a map of 5 pairs with eat_nonce twice.
			good := eatCBOR(t, f.claims(t))
			dup := append([]byte{0xa5}, good[1:]...)
			o.payload = append(dup, eatCBOR(t, eatClaimNonce)...)
			o.payload = append(o.payload, eatCBOR(t, f.nonce)...)
		}}, want: "the token's payload is not a CBOR map of claims"},
		{name: "payload not a map", m: mut{token: func(t *testing.T, f *eatFixture, o *eatToken) {
			o.payload = eatCBOR(t, []any{1, 2})
		}}, want: "the token's payload is not a CBOR map of claims"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key, alg := eatECDSA(t, elliptic.P256()), cose.AlgorithmES256
			if tc.key != nil {
				key, alg = tc.key(t)
			}
			f := newEATFixture(t, key, alg)
			claims := f.claims(t)
			if tc.m.claims != nil {
				tc.m.claims(f, claims)
			}
			var o eatToken
			if tc.m.token != nil {
				tc.m.token(t, f, &o)
			}
			tok := f.sign(t, claims, o)
			if tc.m.after != nil {
				tok = tc.m.after(t, f, tok)
			}
			enrolled := f.key.Public()
			if tc.m.key != nil {
				enrolled = tc.m.key(t, f)
			}
			r := f.verify(t, tok, enrolled)
			if tc.want == "" {
				if !r.Passed() {
					t.Fatalf("failed: %q", r.Reasons)
				}
				if r.FirmwareVersion != eatFirmwareRef.Version || r.FirmwareSHA256 != eatFirmwareRef.SHA256 || r.Format != topology.AttestEAT || len(r.Reasons) != 0 {
					t.Fatalf("result %+v", r)
				}
				return
			}
			if r.Passed() || r.Status != StatusFailed {
				t.Fatalf("passed, want a failure with %q", tc.want)
			}
			if !strings.Contains(strings.Join(r.Reasons, "\n"), tc.want) {
				t.Fatalf("reasons %q, want one containing %q", r.Reasons, tc.want)
			}
		})
	}
}

func TestEATRegistered(t *testing.T) {
	if v, ok := verifiers[topology.AttestEAT]; !ok || v.Format() != "eat" {
		t.Fatalf("eat verifier not registered: %v", verifiers)
	}
}

// The example of docs/attestation-eat.md, rebuilt: an Ed25519 key from a
// fixed seed signs fixed claims, so the token is deterministic.
var (
	eatExampleSeed  = bytes.Repeat([]byte{0x42}, ed25519.SeedSize)
	eatExampleNonce = eatDigest("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
	eatExampleUEID  = eatDigest("0198f4c2a1d3e5b7a9c8e6f4d2b0a19283")
	eatExampleFW    = topology.FirmwareRef{Version: "3.1.0", SHA256: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}
	eatExampleIat   = int64(1767225600) // 2026-01-01T00:00:00Z
)

func eatExampleClaims(t testing.TB) []byte {
	fw := eatCBOR(t, map[string]any{"sha256": eatDigest(eatExampleFW.SHA256), "version": eatExampleFW.Version})
	return eatCBOR(t, map[any]any{
		eatClaimIat:          eatExampleIat,
		eatClaimNonce:        eatExampleNonce,
		eatClaimUEID:         eatExampleUEID,
		eatClaimMeasurements: []any{[]any{eatContentFormatCBOR, fw}},
	})
}

// TestEATDocExample checks that the example in docs/attestation-eat.md is
// the token this profile accepts, byte for byte; VIGIL_UPDATE_TESTDATA=1
// rewrites attest/testdata/eat/.
func TestEATDocExample(t *testing.T) {
	key := ed25519.NewKeyFromSeed(eatExampleSeed)
	payload := eatExampleClaims(t)
	f := &eatFixture{key: key, alg: cose.AlgorithmEdDSA, nonce: eatExampleNonce, now: time.Unix(eatExampleIat+60, 0),
		pol: Policy{Class: "sensor", Formats: []string{topology.AttestEAT}, Firmware: []topology.FirmwareRef{eatExampleFW}}}
	tok := f.sign(t, nil, eatToken{payload: payload})

	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	dm, err := cbor.DiagOptions{ByteStringEmbeddedCBOR: true}.DiagMode()
	if err != nil {
		t.Fatal(err)
	}
	diag, err := dm.Diagnose(payload)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"example-token.hex":   []byte(hex.EncodeToString(tok) + "\n"),
		"example-claims.diag": []byte(diag + "\n"),
		"example-key.pem":     pubPEM,
	}
	dir := filepath.Join("testdata", "eat")
	for name, want := range files {
		p := filepath.Join(dir, name)
		if os.Getenv("VIGIL_UPDATE_TESTDATA") != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale:\n%s\nwant\n%s", p, got, want)
		}
	}

	// The stored token verifies with the stored key.
	stored, err := hex.DecodeString(strings.TrimSpace(string(files["example-token.hex"])))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(files["example-key.pem"])
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if r := f.verify(t, stored, pub); !r.Passed() || r.FirmwareVersion != "3.1.0" {
		t.Fatalf("the example does not pass: %+v", r)
	}

	// The document shows the same claims, key and token.
	doc, err := os.ReadFile(filepath.Join("..", "docs", "attestation-eat.md"))
	if err != nil {
		t.Fatal(err)
	}
	squash := func(s string) string { return strings.Join(strings.Fields(s), "") }
	for name, want := range files {
		if !strings.Contains(squash(string(doc)), squash(string(want))) {
			t.Errorf("docs/attestation-eat.md does not show %s:\n%s", name, want)
		}
	}
}

// eatSigned is what a signature covers: the protected header, the payload,
// and the signature itself.
type eatSigned struct{ protected, payload, signature string }

func eatSignedParts(tok []byte) (eatSigned, bool) {
	msg, err := eatDecodeSign1(tok)
	if err != nil {
		return eatSigned{}, false
	}
	var prot []byte
	if err := cbor.Unmarshal(msg.Headers.RawProtected, &prot); err != nil {
		return eatSigned{}, false
	}
	return eatSigned{string(prot), string(msg.Payload), string(msg.Signature)}, true
}

func FuzzEAT(f *testing.F) {
	// Ed25519: its signatures are not malleable, so a token that passes
	// must carry exactly what was signed (the unprotected header and the
	// tags around the COSE_Sign1 are not signed and may change).
	fx := newEATFixture(f, eatEd25519(f), cose.AlgorithmEdDSA)
	enrolled := fx.key.Public()
	signed := map[eatSigned]bool{}
	add := func(tok []byte) {
		p, ok := eatSignedParts(tok)
		if !ok {
			f.Fatal("seed does not decode")
		}
		signed[p] = true
		f.Add(tok)
	}
	c := fx.claims(f)
	add(fx.sign(f, c, eatToken{}))
	add(fx.sign(f, c, eatToken{untagged: true}))
	add(fx.sign(f, c, eatToken{cwtTag: true, unprotected: map[any]any{cose.HeaderLabelKeyID: []byte("k")}}))
	c2 := fx.claims(f)
	delete(c2, eatClaimMeasurements)
	c2[eatClaimVigilFirmware] = map[any]any{1: eatDigest(eatFirmwareRef.SHA256), 2: eatFirmwareRef.Version}
	c2[eatClaimNonce] = []any{fx.nonce, []byte("another-nonce")}
	add(fx.sign(f, c2, eatToken{protected: map[any]any{cose.HeaderLabelCritical: []any{cose.HeaderLabelAlgorithm}}}))
	f.Add([]byte{0xd2, 0x84, 0x40, 0xa0, 0xf6, 0x40})
	f.Fuzz(func(t *testing.T, tok []byte) {
		ev := &Evidence{Format: topology.AttestEAT, EAT: &EATEvidence{Token: tok}}
		r := eatVerifier{}.Verify(ev, Enrolled{EATKey: enrolled}, fx.pol, fx.nonce, fx.now)
		if !r.Passed() {
			if len(r.Reasons) == 0 {
				t.Fatal("failed without a reason")
			}
			return
		}
		p, ok := eatSignedParts(tok)
		if len(r.Reasons) != 0 || !ok || !signed[p] {
			t.Fatalf("a mutated token passed: %x", tok)
		}
	})
}

// TestEATMutatedToken flips every byte of good tokens and cuts them at every
// length: a mutated token may pass only if what its signature covers is
// unchanged (a change in the unsigned unprotected header).
func TestEATMutatedToken(t *testing.T) {
	for _, k := range []struct {
		key crypto.Signer
		alg cose.Algorithm
	}{{eatEd25519(t), cose.AlgorithmEdDSA}, {eatECDSA(t, elliptic.P256()), cose.AlgorithmES256}} {
		fx := newEATFixture(t, k.key, k.alg)
		tok := fx.sign(t, fx.claims(t), eatToken{})
		want, _ := eatSignedParts(tok)
		check := func(what string, tok []byte) {
			ev := &Evidence{Format: topology.AttestEAT, EAT: &EATEvidence{Token: tok}}
			r := eatVerifier{}.Verify(ev, Enrolled{EATKey: fx.key.Public()}, fx.pol, fx.nonce, fx.now)
			if !r.Passed() {
				if len(r.Reasons) == 0 {
					t.Fatalf("%v %s: failed without a reason", k.alg, what)
				}
				return
			}
			if got, ok := eatSignedParts(tok); !ok || got != want {
				t.Fatalf("%v %s: a mutated token passed", k.alg, what)
			}
		}
		check("unmutated", tok)
		for j := range tok {
			m := bytes.Clone(tok)
			m[j] ^= 0xff
			check(fmt.Sprintf("byte %d flipped", j), m)
			m[j] ^= 0xfe // the lowest bit flipped instead
			check(fmt.Sprintf("bit 0 of byte %d flipped", j), m)
			check(fmt.Sprintf("cut to %d bytes", j), tok[:j])
		}
	}
}
