package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Set VIGIL_TPM2_UPDATE_TESTDATA=1 to rewrite testdata/tpm2 (the simulator's
// fixtures here; the real swtpm's in tpm2_swtpm_test.go).
const tpm2UpdateEnv = "VIGIL_TPM2_UPDATE_TESTDATA"

var (
	tpm2Firmware      = topology.FirmwareRef{Version: "1.4.2", SHA256: tpm2Hex("vigil test firmware 1.4.2")}
	tpm2OtherFirmware = topology.FirmwareRef{Version: "9.9.9", SHA256: tpm2Hex("vigil test firmware 9.9.9")}
	tpm2Now           = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
)

func tpm2Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func tpm2Unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tpm2Policy() Policy {
	return Policy{Class: "camera", Formats: []string{topology.AttestTPM2Quote}, PCRs: []int{16}, Firmware: []topology.FirmwareRef{tpm2Firmware}}
}

func tpm2Nonce(t testing.TB) []byte {
	n := make([]byte, NonceSize)
	if _, err := rand.Read(n); err != nil {
		t.Fatal(err)
	}
	return n
}

// tpm2Keys are the simulator's AKs of testdata/tpm2 (test keys, nothing else).
var tpm2Keys = struct {
	sync.Mutex
	m map[string]crypto.Signer
}{m: map[string]crypto.Signer{}}

func tpm2Key(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	tpm2Keys.Lock()
	defer tpm2Keys.Unlock()
	if k, ok := tpm2Keys.m[kind]; ok {
		return k
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "tpm2", "sim-"+kind+"-ak.key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil {
		t.Fatalf("sim-%s-ak.key: no PEM", kind)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	tpm2Keys.m[kind] = k.(crypto.Signer)
	return k.(crypto.Signer)
}

// tpm2Sim is a simulated TPM with a testdata AK ("ecdsa" or "rsa").
func tpm2Sim(t testing.TB, kind string) *SimTPM {
	t.Helper()
	s, err := NewSimTPMWithKey(tpm2Key(t, kind))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tpm2Verify submits the evidence as a device does (JSON, ParseEvidence,
// Verify); evidence ParseEvidence refuses is verified as is.
func tpm2Verify(t testing.TB, ev *Evidence, key Enrolled, pol Policy, nonce []byte) Result {
	t.Helper()
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if parsed, err := ParseEvidence(raw); err == nil {
		ev = parsed
	}
	return Verify(raw, ev, key, pol, nonce, tpm2Now)
}

// tpm2Resign replaces the quote by edit's and signs it with the sim's AK, so
// that a check after the signature's is what fails.
func tpm2Resign(t testing.TB, s *SimTPM, ev *Evidence, edit func(q []byte) []byte) {
	t.Helper()
	q := edit(slices.Clone(ev.TPM2.Quote))
	sig, err := s.sign(q)
	if err != nil {
		t.Fatal(err)
	}
	ev.TPM2.Quote, ev.TPM2.Signature = q, sig
}

// tpm2Requote edits the parsed quote, marshals and signs it.
func tpm2Requote(t testing.TB, s *SimTPM, ev *Evidence, edit func(q *tpmsAttest)) {
	t.Helper()
	tpm2Resign(t, s, ev, func(b []byte) []byte {
		q, err := parseTPMSAttest(b)
		if err != nil {
			t.Fatal(err)
		}
		edit(q)
		return q.marshal()
	})
}

func tpm2Measure(t testing.TB, s *SimTPM, pcr int, sha, typ string) {
	t.Helper()
	if err := s.Extend(pcr, tpm2Unhex(t, sha), typ); err != nil {
		t.Fatal(err)
	}
}

func TestTPM2Verify(t *testing.T) {
	otherAK, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	type env struct {
		s     *SimTPM
		ev    *Evidence
		key   *Enrolled
		pol   *Policy
		nonce *[]byte // the nonce Verify is given (the one issued)
	}
	cases := []struct {
		name   string
		kind   string // AK: "ecdsa" (default), "rsa"
		pss    bool
		boot   func(t *testing.T, s *SimTPM) // default: the firmware into PCR 16
		pcrs   []int                         // quoted; default 16
		mutate func(t *testing.T, e env)
		want   string // a reason's substring; "" passes
	}{
		{name: "ecdsa AK passes"},
		{name: "rsa AK (RSASSA) passes", kind: "rsa"},
		{name: "rsa AK (RSAPSS) passes", kind: "rsa", pss: true},
		{name: "other events and PCRs pass", pcrs: []int{0, 7, 16, 23}, boot: func(t *testing.T, s *SimTPM) {
			tpm2Measure(t, s, 0, tpm2Hex("crtm"), "crtm")
			tpm2Measure(t, s, 16, tpm2Hex("bootloader"), "bootloader")
			tpm2Measure(t, s, 16, tpm2Firmware.SHA256, EventFirmware)
			tpm2Measure(t, s, 7, tpm2Hex("config"), "config")
			tpm2Measure(t, s, 16, tpm2Hex("app"), "app")
		}},
		{name: "a firmware event outside the class's PCRs is not counted", boot: func(t *testing.T, s *SimTPM) {
			tpm2Measure(t, s, 15, tpm2OtherFirmware.SHA256, EventFirmware)
			tpm2Measure(t, s, 16, tpm2Firmware.SHA256, EventFirmware)
		}},
		{name: "binary event log passes", mutate: func(t *testing.T, e env) {
			e.ev.TPM2.BinaryEventLog, e.ev.TPM2.EventLog = e.s.BinaryEventLog(), nil
		}},
		{name: "binary event log of rsa AK passes", kind: "rsa", mutate: func(t *testing.T, e env) {
			e.ev.TPM2.BinaryEventLog, e.ev.TPM2.EventLog = e.s.BinaryEventLog(), nil
		}},
		{name: "JSON event log wins over the binary one", mutate: func(t *testing.T, e env) {
			e.ev.TPM2.BinaryEventLog = []byte("not a log")
		}},
		{name: "sha1 and sha256 banks pass", mutate: func(t *testing.T, e env) {
			// a quote of sha1:16 then sha256:16: pcrDigest covers both, in selection order
			sha1v := bytes.Repeat([]byte{0x5a}, sha1.Size)
			sha256v := tpm2Unhex(t, e.ev.TPM2.PCRs["sha256"]["16"])
			e.ev.TPM2.PCRs["sha1"] = map[string]string{"16": hex.EncodeToString(sha1v)}
			tpm2Requote(t, e.s, e.ev, func(q *tpmsAttest) {
				q.PCRSelect = []tpmsPCRSelection{{Hash: tpmAlgSHA1, Select: []byte{0, 0, 1}}, q.PCRSelect[0]}
				sum := sha256.Sum256(append(sha1v, sha256v...))
				q.PCRDigest = sum[:]
			})
		}},
		{name: "counters of the last quote pass", mutate: func(t *testing.T, e env) {
			e.key.Clock = &TPMClock{}
		}},
		{name: "counters after a reboot pass", boot: func(t *testing.T, s *SimTPM) {
			s.Reboot()
			s.Reboot()
			tpm2Measure(t, s, 16, tpm2Firmware.SHA256, EventFirmware)
		}, mutate: func(t *testing.T, e env) { e.key.Clock = &TPMClock{ResetCount: 1, RestartCount: 7} }},
		{name: "counters after a restart pass", boot: func(t *testing.T, s *SimTPM) {
			tpm2Measure(t, s, 16, tpm2Firmware.SHA256, EventFirmware)
			s.Restart()
		}, mutate: func(t *testing.T, e env) { e.key.Clock = &TPMClock{ResetCount: 0, RestartCount: 0} }},

		{name: "no tpm2 section", mutate: func(t *testing.T, e env) { e.ev.TPM2 = nil }, want: "has no tpm2 section"},
		{name: "wrong nonce", mutate: func(t *testing.T, e env) { *e.nonce = tpm2Nonce(t) },
			want: "another nonce than the one issued"},
		{name: "quote of another nonce", mutate: func(t *testing.T, e env) {
			q, err := e.s.Quote(tpm2Nonce(t), []int{16})
			if err != nil {
				t.Fatal(err)
			}
			e.ev.TPM2 = q
		}, want: "extraData is not the nonce issued"},
		{name: "no AK enrolled", mutate: func(t *testing.T, e env) { e.key.AK = nil },
			want: "no TPM attestation key is enrolled for this device"},
		{name: "wrong AK", mutate: func(t *testing.T, e env) { e.key.AK = otherAK.Public() },
			want: "ECDSA signature does not verify with the enrolled AK"},
		{name: "wrong AK (rsa)", kind: "rsa", mutate: func(t *testing.T, e env) { e.key.AK = &tpm2Key(t, "rsa2").(*rsa.PrivateKey).PublicKey },
			want: "RSA signature does not verify with the enrolled AK"},
		{name: "AK of another type", mutate: func(t *testing.T, e env) { e.key.AK = tpm2Key(t, "rsa").Public() },
			want: "the enrolled AK is an RSA key"},
		{name: "AK of an unknown type", mutate: func(t *testing.T, e env) { e.key.AK = "a key" },
			want: "not an ECDSA or RSA public key"},
		{name: "bad signature", mutate: func(t *testing.T, e env) { e.ev.TPM2.Signature[10] ^= 1 },
			want: "ECDSA signature does not verify"},
		{name: "bad signature (rsa)", kind: "rsa", mutate: func(t *testing.T, e env) { e.ev.TPM2.Signature[100] ^= 1 },
			want: "RSA signature does not verify"},
		{name: "signature with trailing bytes", mutate: func(t *testing.T, e env) { e.ev.TPM2.Signature = append(e.ev.TPM2.Signature, 0) },
			want: "signature (TPMT_SIGNATURE) has 1 trailing bytes"},
		{name: "truncated signature", mutate: func(t *testing.T, e env) { e.ev.TPM2.Signature = e.ev.TPM2.Signature[:40] },
			want: "signature (TPMT_SIGNATURE) is truncated"},
		{name: "signature over SHA-1", mutate: func(t *testing.T, e env) { binary.BigEndian.PutUint16(e.ev.TPM2.Signature[2:], tpmAlgSHA1) },
			want: "hash algorithm is 0x0004, not SHA-256"},
		{name: "signature of an unknown algorithm", mutate: func(t *testing.T, e env) { binary.BigEndian.PutUint16(e.ev.TPM2.Signature, 0x001c) },
			want: "algorithm is 0x001c, not ECDSA"},
		{name: "oversized signature", mutate: func(t *testing.T, e env) { e.ev.TPM2.Signature = make([]byte, MaxTPM2SignatureBytes+1) },
			want: "the signature is 1025 bytes; at most 1024"},
		{name: "bad magic", mutate: func(t *testing.T, e env) { tpm2Requote(t, e.s, e.ev, func(q *tpmsAttest) { q.Magic = 0xff544348 }) },
			want: "magic is 0xff544348, not TPM_GENERATED_VALUE"},
		{name: "wrong type", mutate: func(t *testing.T, e env) { tpm2Requote(t, e.s, e.ev, func(q *tpmsAttest) { q.Type = 0x8017 }) },
			want: "type is 0x8017, not TPM_ST_ATTEST_QUOTE"},
		{name: "trailing bytes", mutate: func(t *testing.T, e env) {
			tpm2Resign(t, e.s, e.ev, func(q []byte) []byte { return append(q, 0, 0) })
		}, want: "quote (TPMS_ATTEST) has 2 trailing bytes"},
		{name: "truncated quote", mutate: func(t *testing.T, e env) {
			tpm2Resign(t, e.s, e.ev, func(q []byte) []byte { return q[:len(q)-1] })
		}, want: "quote (TPMS_ATTEST) is truncated: pcrDigest needs 32 bytes, 31 are left"},
		{name: "quote cut in its header", mutate: func(t *testing.T, e env) { e.ev.TPM2.Quote = e.ev.TPM2.Quote[:5] },
			want: "is truncated: type needs 2 bytes"},
		{name: "oversized quote", mutate: func(t *testing.T, e env) { e.ev.TPM2.Quote = make([]byte, MaxTPM2QuoteBytes+1) },
			want: "the quote is 4097 bytes; at most 4096"},
		{name: "clock safe is not yes or no", mutate: func(t *testing.T, e env) { tpm2Requote(t, e.s, e.ev, func(q *tpmsAttest) { q.Safe = 2 }) },
			want: "clockInfo.safe is 2"},
		{name: "PCR missing from selection", pcrs: []int{15}, want: "does not cover sha256 PCR 16, which class camera requires"},
		{name: "policy PCR missing from selection", mutate: func(t *testing.T, e env) { e.pol.PCRs = []int{7, 16} },
			want: "does not cover sha256 PCR 7"},
		{name: "selection of an unknown bank", mutate: func(t *testing.T, e env) {
			tpm2Requote(t, e.s, e.ev, func(q *tpmsAttest) { q.PCRSelect[0].Hash = 0x0099 })
		}, want: "unknown hash algorithm 0x0099"},
		{name: "selected PCR missing from the evidence", mutate: func(t *testing.T, e env) { delete(e.ev.TPM2.PCRs["sha256"], "16") },
			want: "covers PCR sha256:16 but the evidence has no value for it"},
		{name: "PCR value not hex", mutate: func(t *testing.T, e env) { e.ev.TPM2.PCRs["sha256"]["16"] = "xyz" },
			want: "value of PCR sha256:16 is not 32 bytes of hex"},
		{name: "PCR value mismatch vs digest", mutate: func(t *testing.T, e env) {
			// the value the log replays to, but not what the TPM quoted
			e.ev.TPM2.PCRs["sha256"]["16"] = tpm2Hex("another value")
		}, want: "pcrDigest"},
		{name: "pcrDigest of another size", mutate: func(t *testing.T, e env) {
			tpm2Requote(t, e.s, e.ev, func(q *tpmsAttest) { q.PCRDigest = q.PCRDigest[:20] })
		}, want: "is not the SHA-256 of the evidence's PCR values"},
		{name: "event log that does not replay", mutate: func(t *testing.T, e env) {
			e.ev.TPM2.EventLog = append(e.ev.TPM2.EventLog, Event{PCR: 16, SHA256: tpm2Hex("hidden"), Type: "app"})
		}, want: "the event log does not replay to PCR 16"},
		{name: "event log missing an event", boot: func(t *testing.T, s *SimTPM) {
			tpm2Measure(t, s, 16, tpm2Firmware.SHA256, EventFirmware)
			tpm2Measure(t, s, 16, tpm2Hex("app"), "app")
		}, mutate: func(t *testing.T, e env) { e.ev.TPM2.EventLog = e.ev.TPM2.EventLog[:1] },
			want: "the event log does not replay to PCR 16"},
		{name: "binary event log that does not replay", mutate: func(t *testing.T, e env) {
			e.s.Extend(16, tpm2Unhex(t, tpm2Hex("later")), "app")
			e.ev.TPM2.BinaryEventLog, e.ev.TPM2.EventLog = e.s.BinaryEventLog(), nil
		}, want: "the event log does not replay to PCR 16"},
		{name: "malformed binary event log", mutate: func(t *testing.T, e env) {
			e.ev.TPM2.BinaryEventLog, e.ev.TPM2.EventLog = e.s.BinaryEventLog()[:60], nil
		}, want: "binary event log"},
		{name: "no event log", mutate: func(t *testing.T, e env) { e.ev.TPM2.EventLog = nil }, want: "the evidence has no event log"},
		{name: "event of a PCR that does not exist", mutate: func(t *testing.T, e env) {
			e.ev.TPM2.EventLog = append(e.ev.TPM2.EventLog, Event{PCR: 24, SHA256: tpm2Hex("x")})
		}, want: "event 1 of the event log names PCR 24"},
		{name: "event digest not hex", mutate: func(t *testing.T, e env) { e.ev.TPM2.EventLog[0].SHA256 = "abc" },
			want: "event 0 of the event log: sha256 is not 64 hex digits"},
		{name: "too many events", mutate: func(t *testing.T, e env) {
			for len(e.ev.TPM2.EventLog) <= MaxTPM2Events {
				e.ev.TPM2.EventLog = append(e.ev.TPM2.EventLog, e.ev.TPM2.EventLog[0])
			}
		}, want: "at most 1024 are accepted"},
		{name: "no firmware event", boot: func(t *testing.T, s *SimTPM) { tpm2Measure(t, s, 16, tpm2Firmware.SHA256, "app") },
			want: "the event log has no firmware event in the class's PCRs [16]"},
		{name: "no firmware event in the class's PCRs", pcrs: []int{15, 16}, boot: func(t *testing.T, s *SimTPM) {
			tpm2Measure(t, s, 15, tpm2Firmware.SHA256, EventFirmware)
		}, want: "no firmware event in the class's PCRs"},
		{name: "two firmware events", boot: func(t *testing.T, s *SimTPM) {
			tpm2Measure(t, s, 16, tpm2Firmware.SHA256, EventFirmware)
			tpm2Measure(t, s, 16, tpm2Firmware.SHA256, EventFirmware)
		}, want: "2 firmware events in the class's PCRs [16]; exactly one is accepted"},
		{name: "unknown firmware", mutate: func(t *testing.T, e env) { e.pol.Firmware = []topology.FirmwareRef{tpm2OtherFirmware} },
			want: "firmware " + tpm2Firmware.SHA256 + " is not a reference value of class camera"},
		{name: "unknown firmware (binary event log)", mutate: func(t *testing.T, e env) {
			e.pol.Firmware = []topology.FirmwareRef{tpm2OtherFirmware}
			e.ev.TPM2.BinaryEventLog, e.ev.TPM2.EventLog = e.s.BinaryEventLog(), nil
		}, want: "firmware " + tpm2Firmware.SHA256 + " is not a reference value of class camera"},
		{name: "counters going back: resetCount", mutate: func(t *testing.T, e env) { e.key.Clock = &TPMClock{ResetCount: 1} },
			want: "TPM counters went back: resetCount 0 (last accepted 1) restartCount 0 (last accepted 0): a replayed or rolled-back quote"},
		{name: "counters going back: restartCount", boot: func(t *testing.T, s *SimTPM) {
			s.Reboot()
			s.Restart()
			tpm2Measure(t, s, 16, tpm2Firmware.SHA256, EventFirmware)
		}, mutate: func(t *testing.T, e env) { e.key.Clock = &TPMClock{ResetCount: 1, RestartCount: 2} },
			want: "TPM counters went back: resetCount 1 (last accepted 1) restartCount 1 (last accepted 2)"},
		{name: "class PCR that does not exist", mutate: func(t *testing.T, e env) { e.pol.PCRs = []int{24} },
			want: "class camera requires PCR 24, which does not exist"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kind := c.kind
			if kind == "" {
				kind = "ecdsa"
			}
			s := tpm2Sim(t, kind)
			s.SetRSAPSS(c.pss)
			if c.boot != nil {
				c.boot(t, s)
			} else if err := s.MeasureFirmware(tpm2Firmware.SHA256); err != nil {
				t.Fatal(err)
			}
			pcrs := c.pcrs
			if pcrs == nil {
				pcrs = []int{16}
			}
			nonce := tpm2Nonce(t)
			ev, err := s.Evidence(nonce, pcrs)
			if err != nil {
				t.Fatal(err)
			}
			key, pol := Enrolled{AK: s.AKPublic()}, tpm2Policy()
			if c.mutate != nil {
				c.mutate(t, env{s: s, ev: ev, key: &key, pol: &pol, nonce: &nonce})
			}
			r := tpm2Verify(t, ev, key, pol, nonce)
			if r.Format != topology.AttestTPM2Quote || r.EvidenceDigest == "" {
				t.Errorf("format %q, evidence digest %q", r.Format, r.EvidenceDigest)
			}
			if c.want == "" {
				if !r.Passed() || len(r.Reasons) != 0 {
					t.Fatalf("failed: %q", r.Reasons)
				}
				if r.FirmwareVersion != tpm2Firmware.Version || r.FirmwareSHA256 != tpm2Firmware.SHA256 {
					t.Errorf("firmware %q %q; want %q %q", r.FirmwareVersion, r.FirmwareSHA256, tpm2Firmware.Version, tpm2Firmware.SHA256)
				}
				if want := s.Clock(); r.Clock == nil || *r.Clock != want {
					t.Errorf("clock %+v; want %+v", r.Clock, want)
				}
				return
			}
			if r.Passed() || r.Status != StatusFailed {
				t.Fatalf("status %q; want failed with %q", r.Status, c.want)
			}
			if r.FirmwareVersion != "" || r.FirmwareSHA256 != "" {
				t.Errorf("a failed result names firmware %q %q", r.FirmwareVersion, r.FirmwareSHA256)
			}
			found := false
			for _, reason := range r.Reasons {
				found = found || strings.Contains(reason, c.want)
			}
			if !found {
				t.Errorf("reasons %q; want one containing %q", r.Reasons, c.want)
			}
		})
	}
}

// TestTPM2ClockOnlyWhenSigned: counters of a quote whose signature does not
// verify are not reported for recording.
func TestTPM2ClockOnlyWhenSigned(t *testing.T) {
	s := tpm2Sim(t, "ecdsa")
	s.MeasureFirmware(tpm2Firmware.SHA256)
	nonce := tpm2Nonce(t)
	ev, err := s.Evidence(nonce, []int{16})
	if err != nil {
		t.Fatal(err)
	}
	ev.TPM2.Signature[8] ^= 0x80
	r := tpm2Verify(t, ev, Enrolled{AK: s.AKPublic()}, tpm2Policy(), nonce)
	if r.Passed() || r.Clock != nil {
		t.Errorf("status %s, clock %+v; want failed without clock", r.Status, r.Clock)
	}
	// failed for another reason, but signed: the counters are the TPM's
	ev, _ = s.Evidence(nonce, []int{16})
	pol := tpm2Policy()
	pol.Firmware = nil
	r = tpm2Verify(t, ev, Enrolled{AK: s.AKPublic()}, pol, nonce)
	if r.Passed() || r.Clock == nil {
		t.Errorf("status %s, clock %+v; want failed with clock", r.Status, r.Clock)
	}
}

func TestTPM2Registered(t *testing.T) {
	if v, ok := verifiers[topology.AttestTPM2Quote]; !ok || v.Format() != "tpm2-quote" {
		t.Fatalf("tpm2-quote verifier: %v %v", v, ok)
	}
}

func TestTPM2SimQuoteRoundTrip(t *testing.T) {
	for _, kind := range []string{"ecdsa", "rsa"} {
		s := tpm2Sim(t, kind)
		s.MeasureFirmware(tpm2Firmware.SHA256)
		q, err := s.Quote(bytes.Repeat([]byte{7}, 32), []int{16, 0, 16, 23})
		if err != nil {
			t.Fatal(err)
		}
		a, err := parseTPMSAttest(q.Quote)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.marshal(), q.Quote) {
			t.Errorf("%s: quote does not round-trip", kind)
		}
		if got := a.PCRSelect[0].indices(); !slices.Equal(got, []int{0, 16, 23}) || len(q.PCRs["sha256"]) != 3 {
			t.Errorf("%s: selection %v, values %v", kind, got, q.PCRs)
		}
		sig, err := parseTPMTSignature(q.Signature)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sig.marshal(), q.Signature) {
			t.Errorf("%s: signature does not round-trip", kind)
		}
	}
	s := tpm2Sim(t, "ecdsa")
	for _, bad := range [][]int{nil, {24}, {-1}} {
		if _, err := s.Quote(nil, bad); err == nil {
			t.Errorf("quote of PCRs %v: no error", bad)
		}
	}
	if err := s.Extend(3, []byte{1}, "x"); err == nil {
		t.Error("extending a short digest: no error")
	}
	pemText, err := s.AKPublicPEM()
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemText)
	if pub, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil || !pub.(*ecdsa.PublicKey).Equal(s.AKPublic()) {
		t.Errorf("AK PEM: %v", err)
	}
	if s2, err := NewSimTPM(false); err != nil || s2.AKPublic().(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("NewSimTPM(false): %v", err)
	}
}

// tpm2Fixture is testdata/tpm2/sim-KIND.json: a valid quote of the
// simulator's testdata AK for a fixed nonce, with both event logs.
func tpm2Fixture(t testing.TB, kind string) *Evidence {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "tpm2", "sim-"+kind+".json"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := ParseEvidence(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// TestTPM2SimFixtures checks the fixtures the fuzz targets start from (and,
// with VIGIL_TPM2_UPDATE_TESTDATA=1, writes them first).
func TestTPM2SimFixtures(t *testing.T) {
	for _, kind := range []string{"ecdsa", "rsa"} {
		if os.Getenv(tpm2UpdateEnv) == "1" {
			tpm2WriteSimFixture(t, kind)
		}
		ev := tpm2Fixture(t, kind)
		nonce := tpm2Unhex(t, ev.Nonce)
		key := Enrolled{AK: tpm2Key(t, kind).Public()}
		if r := tpm2Verify(t, ev, key, tpm2Policy(), nonce); !r.Passed() {
			t.Errorf("%s fixture: %q", kind, r.Reasons)
		}
		ev.TPM2.EventLog = nil
		if r := tpm2Verify(t, ev, key, tpm2Policy(), nonce); !r.Passed() {
			t.Errorf("%s fixture, binary event log: %q", kind, r.Reasons)
		}
	}
}

func tpm2WriteSimFixture(t *testing.T, kind string) {
	dir := filepath.Join("testdata", "tpm2")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "sim-"+kind+"-ak.key")
	if _, err := os.Stat(keyFile); err != nil {
		var k crypto.Signer
		if kind == "rsa" || kind == "rsa2" {
			k, err = rsa.GenerateKey(rand.Reader, 2048)
		} else {
			k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if kind == "rsa" {
		tpm2WriteSimFixture(t, "rsa2") // the "wrong AK" of TestTPM2Verify
	}
	if kind == "rsa2" {
		return
	}
	s := tpm2Sim(t, kind)
	s.MeasureFirmware(tpm2Firmware.SHA256)
	nonce := sha256.Sum256([]byte("vigil tpm2 fixture nonce"))
	for {
		ev, err := s.Evidence(nonce[:], []int{16})
		if err != nil {
			t.Fatal(err)
		}
		// no leading zero in r or s, so that no shorter encoding of the same
		// signature exists (FuzzTPM2Quote: only the exact bytes pass)
		if sig, _ := parseTPMTSignature(ev.TPM2.Signature); sig.Alg == tpmAlgECDSA && (sig.R[0] == 0 || sig.S[0] == 0) {
			continue
		}
		ev.TPM2.BinaryEventLog = s.BinaryEventLog()
		raw, err := json.MarshalIndent(ev, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "sim-"+kind+".json"), append(raw, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
}

// tpm2LogBuilder writes crypto-agile binary logs for the parser's tests.
type tpm2LogBuilder struct {
	algs   []tcgAlg
	header func(spec []byte) []byte // edits the Spec ID event
	b      []byte
}

func newTPM2Log(algs ...tcgAlg) *tpm2LogBuilder {
	if algs == nil {
		algs = []tcgAlg{{tpmAlgSHA1, 20}, {tpmAlgSHA256, 32}}
	}
	return &tpm2LogBuilder{algs: algs}
}

func (l *tpm2LogBuilder) bytes() []byte {
	le := binary.LittleEndian
	spec := []byte(tcgSpecIDSignature)
	spec = le.AppendUint32(spec, 0)
	spec = append(spec, 0, 2, 0, 2)
	spec = le.AppendUint32(spec, uint32(len(l.algs)))
	for _, a := range l.algs {
		spec = le.AppendUint16(spec, a.ID)
		spec = le.AppendUint16(spec, uint16(a.Size))
	}
	spec = append(spec, 3, 'v', 'n', 'd')
	if l.header != nil {
		spec = l.header(spec)
	}
	b := le.AppendUint32(nil, 0)
	b = le.AppendUint32(b, tcgEVNoAction)
	b = append(b, make([]byte, 20)...)
	b = le.AppendUint32(b, uint32(len(spec)))
	return append(append(b, spec...), l.b...)
}

// event appends an event with a digest per algorithm of the log (each
// digest is fill repeated), sha256's being sha when given.
func (l *tpm2LogBuilder) event(pcr int, typ uint32, sha []byte, data []byte) *tpm2LogBuilder {
	le := binary.LittleEndian
	l.b = le.AppendUint32(l.b, uint32(pcr))
	l.b = le.AppendUint32(l.b, typ)
	l.b = le.AppendUint32(l.b, uint32(len(l.algs)))
	for _, a := range l.algs {
		l.b = le.AppendUint16(l.b, a.ID)
		if a.ID == tpmAlgSHA256 && sha != nil {
			l.b = append(l.b, sha...)
		} else {
			l.b = append(l.b, bytes.Repeat([]byte{0xee}, a.Size)...)
		}
	}
	l.b = le.AppendUint32(l.b, uint32(len(data)))
	l.b = append(l.b, data...)
	return l
}

func (l *tpm2LogBuilder) raw(b ...byte) *tpm2LogBuilder { l.b = append(l.b, b...); return l }

func TestTPM2BinaryEventLog(t *testing.T) {
	d := func(s string) []byte { sum := sha256.Sum256([]byte(s)); return sum[:] }
	fw := tpm2Unhex(t, tpm2Firmware.SHA256)
	locality := append([]byte(tcgStartupLocalitySignature), 3)

	// a UEFI-like log: startup locality 3, PCR 0 measurements, a separator,
	// an EV_NO_ACTION that is not extended, the firmware blob in PCR 16
	l := newTPM2Log().
		event(0, tcgEVNoAction, make([]byte, 32), locality).
		event(0, 0x00000008, d("s-crtm version"), []byte("1.0")).
		event(0, tcgEVNoAction, make([]byte, 32), []byte("ignored")).
		event(16, tcgEVEFIPlatformFirmwareBlob, fw, make([]byte, 16)).
		event(0, 0x00000004, d("separator"), []byte{0, 0, 0, 0}).
		bytes()
	log, err := parseTCGEventLog(l)
	if err != nil {
		t.Fatal(err)
	}
	if len(log.Events) != 5 || log.Locality != 3 || len(log.Algs) != 2 {
		t.Fatalf("events %d, locality %d, algs %v", len(log.Events), log.Locality, log.Algs)
	}
	pcrs := tpm2Replay(log.replayEvents())
	want0 := make([]byte, 32)
	want0[31] = 3
	for _, e := range []string{"s-crtm version", "separator"} {
		sum := sha256.Sum256(append(want0, d(e)...))
		want0 = sum[:]
	}
	want16 := sha256.Sum256(append(make([]byte, 32), fw...))
	if !bytes.Equal(pcrs[0][:], want0) || pcrs[16] != want16 {
		t.Errorf("replay: PCR 0 %x (want %x), PCR 16 %x (want %x)", pcrs[0], want0, pcrs[16], want16)
	}
	var firmware []int
	for _, e := range log.replayEvents() {
		if e.Firmware {
			firmware = append(firmware, e.PCR)
		}
	}
	if !slices.Equal(firmware, []int{16}) {
		t.Errorf("firmware events in PCRs %v; want [16]", firmware)
	}
	for _, typ := range []uint32{tcgEVPostCode, tcgEVEFIPlatformFirmwareBlob, tcgEVEFIPlatformFirmwareBlob2} {
		if !tcgIsFirmware(typ) {
			t.Errorf("type 0x%x is not firmware", typ)
		}
	}

	many := newTPM2Log()
	for range MaxTPM2Events + 1 {
		many.event(16, tcgEVIPL, nil, nil)
	}
	bad := []struct {
		name string
		log  []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"oversized", make([]byte, MaxTPM2BinaryEventLogBytes+1), "at most 1048576"},
		{"header only partly", newTPM2Log().bytes()[:30], "truncated"},
		{"not a Spec ID event", append([]byte{1, 0, 0, 0}, newTPM2Log().bytes()[4:]...), "does not start with a Spec ID event"},
		{"SHA-1 log", func() []byte {
			l := newTPM2Log()
			l.header = func(s []byte) []byte { copy(s, "Spec ID Event02"); return s }
			return l.bytes()
		}(), "not crypto-agile"},
		{"Spec ID event too large", func() []byte {
			b := newTPM2Log().bytes()
			binary.LittleEndian.PutUint32(b[28:], 1<<31)
			return b
		}(), "does not fit"},
		{"Spec ID event with trailing bytes", func() []byte {
			l := newTPM2Log()
			l.header = func(s []byte) []byte { return append(s, 0) }
			return l.bytes()
		}(), "after its vendorInfo"},
		{"no sha256", newTPM2Log(tcgAlg{tpmAlgSHA1, 20}).bytes(), "no SHA-256 digests"},
		{"algorithm of digest size 0", newTPM2Log(tcgAlg{tpmAlgSHA256, 32}, tcgAlg{0x0099, 0}).bytes(), "digest size of 0"},
		{"no algorithms", func() []byte {
			l := newTPM2Log()
			l.header = func(s []byte) []byte { binary.LittleEndian.PutUint32(s[24:], 0); return s }
			return l.bytes()
		}(), "names 0 digest algorithms"},
		{"wrong digest size", newTPM2Log(tcgAlg{tpmAlgSHA256, 20}).bytes(), "digest size of 20"},
		{"algorithm twice", newTPM2Log(tcgAlg{tpmAlgSHA256, 32}, tcgAlg{tpmAlgSHA256, 32}).bytes(), "twice"},
		{"too many algorithms", func() []byte {
			l := newTPM2Log()
			l.header = func(s []byte) []byte { binary.LittleEndian.PutUint32(s[24:], 1000); return s }
			return l.bytes()
		}(), "names 1000 digest algorithms"},
		{"PCR 24", newTPM2Log().event(24, tcgEVIPL, nil, nil).bytes(), "names PCR 24"},
		{"event truncated", newTPM2Log().event(16, tcgEVIPL, nil, []byte("data")).bytes()[:100], "truncated"},
		{"event data beyond the end", func() []byte {
			b := newTPM2Log().event(16, tcgEVIPL, nil, []byte("data")).bytes()
			binary.LittleEndian.PutUint32(b[len(b)-8:], 0xffffffff)
			return b
		}(), "truncated"},
		{"partial entry at the end", newTPM2Log().event(16, tcgEVIPL, nil, nil).raw(16, 0).bytes(), "truncated"},
		{"no sha256 digest in an event", func() []byte {
			l := newTPM2Log()
			l.b = binary.LittleEndian.AppendUint32(l.b, 16)
			l.b = binary.LittleEndian.AppendUint32(l.b, tcgEVIPL)
			l.b = binary.LittleEndian.AppendUint32(l.b, 1)
			l.b = binary.LittleEndian.AppendUint16(l.b, tpmAlgSHA1)
			l.b = append(l.b, make([]byte, 20+4)...)
			return l.bytes()
		}(), "no SHA-256 digest"},
		{"digest of an algorithm not in the header", func() []byte {
			l := newTPM2Log(tcgAlg{tpmAlgSHA256, 32})
			l.b = binary.LittleEndian.AppendUint32(l.b, 16)
			l.b = binary.LittleEndian.AppendUint32(l.b, tcgEVIPL)
			l.b = binary.LittleEndian.AppendUint32(l.b, 1)
			l.b = binary.LittleEndian.AppendUint16(l.b, tpmAlgSHA384)
			l.b = append(l.b, make([]byte, 48+4)...)
			return l.bytes()
		}(), "has a digest of algorithm 0x000c, which its header does not name"},
		{"more digests than algorithms", func() []byte {
			l := newTPM2Log()
			l.event(16, tcgEVIPL, nil, nil)
			binary.LittleEndian.PutUint32(l.b[8:], 3)
			return l.bytes()
		}(), "has 3 digests"},
		{"two sha256 digests", func() []byte {
			l := newTPM2Log(tcgAlg{tpmAlgSHA256, 32}, tcgAlg{tpmAlgSHA1, 20})
			l.event(16, tcgEVIPL, nil, nil)
			binary.LittleEndian.PutUint16(l.b[12+2+32:], tpmAlgSHA256) // sha1's slot now says sha256
			return l.bytes()
		}(), "two digests of algorithm 0x000b"},
		{"locality after PCR 0", newTPM2Log().event(0, 8, nil, nil).event(0, tcgEVNoAction, nil, locality).bytes(), "startup locality after"},
		{"locality 9", newTPM2Log().event(0, tcgEVNoAction, nil, append([]byte(tcgStartupLocalitySignature), 9)).bytes(), "startup locality 9"},
		{"too many events", many.bytes(), "more than 1024 events"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			log, err := parseTCGEventLog(c.log)
			if err == nil {
				t.Fatalf("parsed: %d events", len(log.Events))
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q; want %q", err, c.want)
			}
		})
	}
}

// FuzzTPM2Quote mutates the quote, the signature and the binary event log of
// a valid fixture: no panic, and never a pass unless the quote and the
// signature are the fixture's exact bytes (the binary log's unmeasured
// parts, such as event data, may change: only its digests are verified).
func FuzzTPM2Quote(f *testing.F) {
	fixtures := map[bool]*Evidence{false: tpm2Fixture(f, "ecdsa"), true: tpm2Fixture(f, "rsa")}
	keys := map[bool]crypto.PublicKey{false: tpm2Key(f, "ecdsa").Public(), true: tpm2Key(f, "rsa").Public()}
	for _, rsaAK := range []bool{false, true} {
		ev := fixtures[rsaAK].TPM2
		f.Add(rsaAK, ev.Quote, ev.Signature, ev.BinaryEventLog)
		f.Add(rsaAK, ev.Quote[:len(ev.Quote)-1], ev.Signature, ev.BinaryEventLog)
		f.Add(rsaAK, append(slices.Clone(ev.Quote), 0), ev.Signature, ev.BinaryEventLog[:40])
		f.Add(rsaAK, ev.Quote, ev.Signature[:len(ev.Signature)/2], []byte{})
	}
	pol := tpm2Policy()
	f.Fuzz(func(t *testing.T, rsaAK bool, quote, sig, binlog []byte) {
		fix := fixtures[rsaAK]
		nonce, _ := hex.DecodeString(fix.Nonce)
		ev := &Evidence{Format: fix.Format, Nonce: fix.Nonce, TPM2: &TPM2Evidence{
			Quote: quote, Signature: sig, PCRs: fix.TPM2.PCRs, BinaryEventLog: binlog}}
		r := Verify(nil, ev, Enrolled{AK: keys[rsaAK], Clock: &TPMClock{}}, pol, nonce, tpm2Now)
		if r.Passed() {
			if !bytes.Equal(quote, fix.TPM2.Quote) || !bytes.Equal(sig, fix.TPM2.Signature) {
				t.Fatalf("mutated evidence passed: quote %x signature %x", quote, sig)
			}
			if r.FirmwareVersion != tpm2Firmware.Version {
				t.Fatalf("passed with firmware %q", r.FirmwareVersion)
			}
		}
		if q, err := parseTPMSAttest(quote); err == nil && !bytes.Equal(q.marshal(), quote) {
			t.Fatalf("quote %x parses but does not round-trip", quote)
		}
		if s, err := parseTPMTSignature(sig); err == nil && !bytes.Equal(s.marshal(), sig) {
			t.Fatalf("signature %x parses but does not round-trip", sig)
		}
	})
}

// FuzzTPM2BinaryEventLog: no panic, the bounds hold, and a parsed log
// replays.
func FuzzTPM2BinaryEventLog(f *testing.F) {
	f.Add(tpm2Fixture(f, "ecdsa").TPM2.BinaryEventLog)
	f.Add(newTPM2Log().event(0, tcgEVNoAction, nil, append([]byte(tcgStartupLocalitySignature), 3)).
		event(0, tcgEVPostCode, nil, []byte("x")).event(16, tcgEVEFIPlatformFirmwareBlob2, nil, nil).bytes())
	f.Add(newTPM2Log(tcgAlg{tpmAlgSHA256, 32}, tcgAlg{tpmAlgSHA384, 48}, tcgAlg{0x0099, 7}).event(7, 1, nil, []byte("abc")).bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		log, err := parseTCGEventLog(b)
		if err != nil {
			if log != nil {
				t.Fatal("a log and an error")
			}
			return
		}
		if len(log.Events) > MaxTPM2Events || len(log.Algs) == 0 || len(log.Algs) > maxTCGAlgorithms || log.Locality > tcgMaxStartupLocality {
			t.Fatalf("bounds: %d events, %d algorithms, locality %d", len(log.Events), len(log.Algs), log.Locality)
		}
		for _, e := range log.replayEvents() {
			if e.PCR < 0 || e.PCR >= TPM2PCRs {
				t.Fatalf("event of PCR %d", e.PCR)
			}
		}
		tpm2Replay(log.replayEvents())
	})
}
