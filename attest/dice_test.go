package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// diceFirmware is the reference firmware the fixtures' alias layers measure.
var diceFirmware = topology.FirmwareRef{Version: "2.4.1", SHA256: strings.Repeat("ab", 32)}

// diceOpts shape a fixture chain; the zero value is a good chain:
// root (P-384) → device ID layer (P-256, TcbInfo of the bootloader) →
// alias (P-256, TcbInfo naming diceFirmware), all TcbInfo critical.
type diceOpts struct {
	rootKey, layerKey, aliasKey crypto.Signer
	layerNoTcb                  bool           // the device ID layer carries no TcbInfo
	aliasFWIDs                  []diceFWID     // default: SHA-256 of diceFirmware
	aliasFlags                  asn1.BitString // operational flags of the alias layer
	aliasTcbDER                 []byte         // raw TcbInfo extension value of the alias
	tcbNotCritical              bool
	aliasExtra                  []pkix.Extension
}

type diceFixture struct {
	root, layer, alias *x509.Certificate
	aliasKey           crypto.Signer
	chain              [][]byte // leaf first, without the root
	pol                Policy
	nonce              []byte
	now                time.Time
}

func diceKey(t testing.TB, curve elliptic.Curve) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func diceEd25519(t testing.TB) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func diceTcbExt(t testing.TB, info diceTcbInfo, critical bool) pkix.Extension {
	t.Helper()
	der, err := asn1.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidDiceTcbInfo, Critical: critical, Value: der}
}

func diceSHA256FWID(hexDigest string) diceFWID {
	d, _ := hex.DecodeString(hexDigest)
	return diceFWID{HashAlg: oidSHA256, Digest: d}
}

var diceSerial int64

func diceCert(t testing.TB, tmpl *x509.Certificate, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	diceSerial++
	tmpl.SerialNumber = big.NewInt(diceSerial)
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newDICEFixture(t testing.TB, o diceOpts) *diceFixture {
	t.Helper()
	if o.rootKey == nil {
		o.rootKey = diceKey(t, elliptic.P384())
	}
	if o.layerKey == nil {
		o.layerKey = diceKey(t, elliptic.P256())
	}
	if o.aliasKey == nil {
		o.aliasKey = diceKey(t, elliptic.P256())
	}
	if o.aliasFWIDs == nil {
		o.aliasFWIDs = []diceFWID{diceSHA256FWID(diceFirmware.SHA256)}
	}
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(24*time.Hour)
	root := diceCert(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "Vendor DICE Root"}, NotBefore: nb, NotAfter: na,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, nil, o.rootKey.Public(), o.rootKey)

	layerTmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: "Device ID", SerialNumber: "dev-1"}, NotBefore: nb, NotAfter: na,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	if !o.layerNoTcb {
		layerTmpl.ExtraExtensions = []pkix.Extension{diceTcbExt(t, diceTcbInfo{
			Vendor: "Example", Model: "Sensor", Layer: 0,
			FWIDs: []diceFWID{diceSHA256FWID(strings.Repeat("0b", 32))},
		}, !o.tcbNotCritical)}
	}
	layer := diceCert(t, layerTmpl, root, o.layerKey.Public(), o.rootKey)

	aliasExt := diceTcbExt(t, diceTcbInfo{
		Vendor: "Example", Model: "Sensor", Version: diceFirmware.Version, SVN: 3, Layer: 1,
		FWIDs: o.aliasFWIDs, Flags: o.aliasFlags,
	}, !o.tcbNotCritical)
	if o.aliasTcbDER != nil {
		aliasExt.Value = o.aliasTcbDER
	}
	alias := diceCert(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "Alias"}, NotBefore: nb, NotAfter: na,
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtraExtensions: append([]pkix.Extension{aliasExt}, o.aliasExtra...),
	}, layer, o.aliasKey.Public(), o.layerKey)

	nonce := make([]byte, NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	return &diceFixture{
		root: root, layer: layer, alias: alias, aliasKey: o.aliasKey,
		chain: [][]byte{alias.Raw, layer.Raw},
		pol: Policy{
			Class: "sensor", Formats: []string{topology.AttestDICE},
			DICERoots: NewCertPool([]*x509.Certificate{root}),
			Firmware:  []topology.FirmwareRef{{Version: "2.3.0", SHA256: strings.Repeat("cd", 32)}, diceFirmware},
		},
		nonce: nonce, now: now,
	}
}

// diceSign signs msg with the alias key as the dice format wants.
func diceSign(t testing.TB, k crypto.Signer, msg []byte) []byte {
	t.Helper()
	var sig []byte
	var err error
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		var h []byte
		if k.Curve == elliptic.P384() {
			s := sha512.Sum384(msg)
			h = s[:]
		} else {
			s := sha256.Sum256(msg)
			h = s[:]
		}
		sig, err = ecdsa.SignASN1(rand.Reader, k, h)
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, msg)
	default:
		t.Fatalf("unexpected key %T", k)
	}
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func (f *diceFixture) evidence(t testing.TB) *Evidence {
	return &Evidence{Format: topology.AttestDICE, Nonce: hex.EncodeToString(f.nonce),
		DICE: &DICEEvidence{Chain: f.chain, Signature: diceSign(t, f.aliasKey, f.nonce)}}
}

func (f *diceFixture) verify(t testing.TB, ev *Evidence) Result {
	t.Helper()
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return Verify(raw, ev, Enrolled{}, f.pol, f.nonce, f.now)
}

func TestDICEVerify(t *testing.T) {
	unknownCritical := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: true, Value: []byte{0x05, 0x00}}
	cases := []struct {
		name string
		opts diceOpts
		// mutate changes the fixture or the evidence before verification.
		mutate func(t *testing.T, f *diceFixture, ev *Evidence)
		want   string // "" passes; else a substring of a reason
	}{
		{name: "good P-256 alias"},
		{name: "good P-384 alias", opts: diceOpts{aliasKey: diceKey(t, elliptic.P384())}},
		{name: "good Ed25519 alias", opts: diceOpts{aliasKey: diceEd25519(t), layerKey: diceEd25519(t), rootKey: diceEd25519(t)}},
		{name: "good with the root in the chain", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			ev.DICE.Chain = append(ev.DICE.Chain, f.root.Raw)
		}},
		{name: "good with non-critical TcbInfo", opts: diceOpts{tcbNotCritical: true}},
		{name: "good with several fwids", opts: diceOpts{aliasFWIDs: []diceFWID{
			{HashAlg: asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}, Digest: bytes.Repeat([]byte{1}, 48)},
			diceSHA256FWID(strings.Repeat("ee", 32)),
			diceSHA256FWID(diceFirmware.SHA256),
		}}},
		{name: "good with flags other than notSecure and debug", opts: diceOpts{aliasFlags: asn1.BitString{Bytes: []byte{0x20}, BitLength: 3}}}, // recovery (bit 2)

		{name: "chain to a foreign root", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			other := newDICEFixture(t, diceOpts{})
			f.pol.DICERoots = other.pol.DICERoots
		}, want: "does not verify to a DICE root of class sensor"},
		{name: "foreign root in the chain", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			other := newDICEFixture(t, diceOpts{})
			f.pol.DICERoots = other.pol.DICERoots
			ev.DICE.Chain = append(ev.DICE.Chain, f.root.Raw)
		}, want: "does not verify to a DICE root"},
		{name: "TcbInfo missing on a layer", opts: diceOpts{layerNoTcb: true},
			want: `layer 0 (chain[1], subject "SERIALNUMBER=dev-1,CN=Device ID") carries no DiceTcbInfo`},
		{name: "unknown firmware fwid", opts: diceOpts{aliasFWIDs: []diceFWID{diceSHA256FWID(strings.Repeat("ee", 32))}},
			want: "names no firmware of class sensor's reference values (fwids: sha256:" + strings.Repeat("ee", 32) + ")"},
		{name: "firmware only as SHA-384", opts: diceOpts{aliasFWIDs: []diceFWID{{HashAlg: asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}, Digest: bytes.Repeat([]byte{1}, 48)}}},
			want: "(fwids: 2.16.840.1.101.3.4.2.2:"},
		{name: "no fwids", opts: diceOpts{aliasFWIDs: []diceFWID{}}, want: "(fwids: none)"},
		{name: "bad nonce signature", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			ev.DICE.Signature = diceSign(t, f.aliasKey, []byte("another nonce"))
		}, want: "the signature over the nonce does not verify with the alias key"},
		{name: "signature by another key", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			ev.DICE.Signature = diceSign(t, diceKey(t, elliptic.P256()), f.nonce)
		}, want: "the signature over the nonce does not verify"},
		{name: "malformed DER", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			ev.DICE.Chain[1] = ev.DICE.Chain[1][:len(ev.DICE.Chain[1])-7]
		}, want: "chain[1] is not a DER X.509 certificate"},
		{name: "empty chain", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			ev.DICE.Chain = nil
		}, want: "carries no certificate chain"},
		{name: "too many certificates", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			for len(ev.DICE.Chain) <= diceMaxCerts {
				ev.DICE.Chain = append(ev.DICE.Chain, f.layer.Raw)
			}
		}, want: "at most 8 are accepted"},
		{name: "oversized certificate", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			ev.DICE.Chain[0] = make([]byte, diceMaxCertBytes+1)
		}, want: "chain[0] is 16385 bytes"},
		{name: "no signature", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			ev.DICE.Signature = nil
		}, want: "the signature over the nonce is 0 bytes"},
		{name: "chain out of order", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			ev.DICE.Chain = [][]byte{f.alias.Raw, f.root.Raw, f.layer.Raw}
		}, want: "the DICE chain is not in order"},
		{name: "extra certificate", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			other := newDICEFixture(t, diceOpts{})
			ev.DICE.Chain = append(ev.DICE.Chain, other.layer.Raw)
		}, want: "the DICE chain is not in order"},
		{name: "only the root", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			ev.DICE.Chain = [][]byte{f.root.Raw}
		}, want: "the alias certificate is missing"},
		{name: "class without roots", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			f.pol.DICERoots = nil
		}, want: "class sensor has no DICE roots"},
		{name: "debug flag", opts: diceOpts{aliasFlags: asn1.BitString{Bytes: []byte{0x10}, BitLength: 4}},
			want: `layer 1 (chain[0], subject "CN=Alias") is flagged debug`},
		{name: "notSecure flag", opts: diceOpts{aliasFlags: asn1.BitString{Bytes: []byte{0x40}, BitLength: 2}},
			want: "is flagged notSecure"},
		{name: "malformed TcbInfo", opts: diceOpts{aliasTcbDER: []byte{0x30, 0x03, 0x80, 0x05, 0x41}},
			want: `layer 1 (chain[0], subject "CN=Alias"): malformed DiceTcbInfo`},
		{name: "unknown critical extension", opts: diceOpts{aliasExtra: []pkix.Extension{unknownCritical}},
			want: "has critical extensions Vigil does not understand: 1.3.6.1.4.1.99999.1"},
		{name: "nonce of another attestation", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			f.nonce = bytes.Repeat([]byte{7}, NonceSize)
		}, want: "another nonce"},
		{name: "expired chain", mutate: func(t *testing.T, f *diceFixture, ev *Evidence) {
			f.now = f.now.Add(48 * time.Hour)
		}, want: "does not verify to a DICE root"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newDICEFixture(t, tc.opts)
			ev := f.evidence(t)
			if tc.mutate != nil {
				tc.mutate(t, f, ev)
			}
			r := f.verify(t, ev)
			if tc.want == "" {
				if !r.Passed() {
					t.Fatalf("failed: %q", r.Reasons)
				}
				if r.FirmwareVersion != diceFirmware.Version || r.FirmwareSHA256 != diceFirmware.SHA256 || r.Format != topology.AttestDICE || len(r.Reasons) != 0 {
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

// TestDICETcbInfoDER parses a DiceTcbInfo encoded by hand from the TCG
// ASN.1 module (all tags IMPLICIT), so that the struct tags are checked
// against the specification rather than against encoding/asn1 itself.
func TestDICETcbInfoDER(t *testing.T) {
	digest := strings.Repeat("ab", 32)
	der, _ := hex.DecodeString("" +
		"3057" + // SEQUENCE
		"8007" + hex.EncodeToString([]byte("Example")) + // vendor [0] UTF8String
		"8106" + hex.EncodeToString([]byte("Sensor")) + // model [1]
		"8205" + hex.EncodeToString([]byte("2.4.1")) + // version [2]
		"830103" + // svn [3] INTEGER 3
		"840101" + // layer [4] INTEGER 1
		"a62f" + // fwids [6] IMPLICIT SEQUENCE OF
		"302d" + "0609608648016503040201" + "0420" + digest + // FWID { sha256, digest }
		"87020410" + // flags [7] BIT STRING, 4 bits used: debug (bit 3)
		"8a0204f0") // flagsMask [10]: bits 0-3
	var info diceTcbInfo
	rest, err := asn1.Unmarshal(der, &info)
	if err != nil || len(rest) != 0 {
		t.Fatalf("unmarshal: %v (%d bytes left)", err, len(rest))
	}
	if info.Vendor != "Example" || info.Model != "Sensor" || info.Version != "2.4.1" || info.SVN != 3 || info.Layer != 1 {
		t.Fatalf("fields: %+v", info)
	}
	if len(info.FWIDs) != 1 || !info.FWIDs[0].HashAlg.Equal(oidSHA256) || hex.EncodeToString(info.FWIDs[0].Digest) != digest {
		t.Fatalf("fwids: %+v", info.FWIDs)
	}
	if info.Flags.At(diceFlagDebug) != 1 || info.Flags.At(diceFlagNotSecure) != 0 || info.FlagsMask.BitLength != 4 {
		t.Fatalf("flags: %+v mask %+v", info.Flags, info.FlagsMask)
	}
	// What the fixtures marshal is the same encoding.
	again, err := asn1.Marshal(info)
	if err != nil || !bytes.Equal(again, der) {
		t.Fatalf("marshal: %x, %v; want %x", again, err, der)
	}
}

func TestDICERegistered(t *testing.T) {
	if v, ok := verifiers[topology.AttestDICE]; !ok || v.Format() != "dice" {
		t.Fatalf("dice verifier not registered: %v", verifiers)
	}
}

// diceSplit cuts concatenated DER elements apart (the fuzz input's chain).
func diceSplit(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 && len(out) <= diceMaxCerts {
		var rv asn1.RawValue
		rest, err := asn1.Unmarshal(b, &rv)
		if err != nil {
			return append(out, b)
		}
		out = append(out, rv.FullBytes)
		b = rest
	}
	return out
}

func FuzzDICE(f *testing.F) {
	// Ed25519 everywhere: its signatures are not malleable, so any mutated
	// input that passes is a bug.
	fx := newDICEFixture(f, diceOpts{rootKey: diceEd25519(f), layerKey: diceEd25519(f), aliasKey: diceEd25519(f)})
	sig := diceSign(f, fx.aliasKey, fx.nonce)
	good := bytes.Join(fx.chain, nil)
	f.Add(good, sig)
	f.Add(fx.chain[0], sig)
	f.Add(append(bytes.Clone(good), fx.root.Raw[:40]...), sig)
	f.Add([]byte{0x30, 0x80}, []byte{})
	f.Fuzz(func(t *testing.T, chain, sig []byte) {
		certs := diceSplit(chain)
		ev := &Evidence{Format: topology.AttestDICE, DICE: &DICEEvidence{Chain: certs, Signature: sig}}
		r := diceVerifier{}.Verify(ev, Enrolled{}, fx.pol, fx.nonce, fx.now)
		if !r.Passed() {
			if len(r.Reasons) == 0 {
				t.Fatal("failed without a reason")
			}
			return
		}
		if len(r.Reasons) != 0 || len(certs) != len(fx.chain) || !bytes.Equal(sig, diceSign(t, fx.aliasKey, fx.nonce)) {
			t.Fatalf("mutated evidence passed: %d certs, sig %x", len(certs), sig)
		}
		for i := range certs {
			if !bytes.Equal(certs[i], fx.chain[i]) {
				t.Fatalf("mutated chain[%d] passed", i)
			}
		}
	})
}

// TestDICEMutatedEvidence flips every byte of a good chain and signature,
// and cuts each certificate short: none of it may pass.
func TestDICEMutatedEvidence(t *testing.T) {
	fx := newDICEFixture(t, diceOpts{rootKey: diceEd25519(t), layerKey: diceEd25519(t), aliasKey: diceEd25519(t)})
	sig := diceSign(t, fx.aliasKey, fx.nonce)
	check := func(what string, chain [][]byte, sig []byte) {
		ev := &Evidence{Format: topology.AttestDICE, DICE: &DICEEvidence{Chain: chain, Signature: sig}}
		if r := (diceVerifier{}).Verify(ev, Enrolled{}, fx.pol, fx.nonce, fx.now); r.Passed() || len(r.Reasons) == 0 {
			t.Fatalf("%s: %+v", what, r)
		}
	}
	if r := (diceVerifier{}).Verify(&Evidence{DICE: &DICEEvidence{Chain: fx.chain, Signature: sig}}, Enrolled{}, fx.pol, fx.nonce, fx.now); !r.Passed() {
		t.Fatalf("the unmutated evidence fails: %q", r.Reasons)
	}
	for i := range fx.chain {
		for j := range fx.chain[i] {
			chain := slicesCloneAll(fx.chain)
			chain[i][j] ^= 0xff
			check(fmt.Sprintf("chain[%d][%d] flipped", i, j), chain, sig)
		}
		for _, n := range []int{0, 1, len(fx.chain[i]) / 2, len(fx.chain[i]) - 1} {
			chain := slicesCloneAll(fx.chain)
			chain[i] = chain[i][:n]
			check(fmt.Sprintf("chain[%d] cut to %d bytes", i, n), chain, sig)
		}
	}
	for j := range sig {
		s := bytes.Clone(sig)
		s[j] ^= 0xff
		check(fmt.Sprintf("signature[%d] flipped", j), fx.chain, s)
	}
	check("signature cut", fx.chain, sig[:len(sig)-1])
}

func slicesCloneAll(in [][]byte) [][]byte {
	out := make([][]byte, len(in))
	for i, b := range in {
		out[i] = bytes.Clone(b)
	}
	return out
}
