package attest

// The verifier against a real TPM 2.0 implementation: swtpm (libtpms) driven
// by tpm2-tools, and the simulator's output checked by tpm2-tools' own
// verifier and event log parser. Both are Debian packages (.ci/run installs
// them: swtpm, tpm2-tools); the tests skip when they are missing.
//
// With VIGIL_TPM2_UPDATE_TESTDATA=1, TestTPM2Swtpm also writes what swtpm
// produced to testdata/tpm2/swtpm-KIND/, which TestTPM2SwtpmFixtures checks
// on every machine.

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-iot/vigil/internal/swtpmtest"
	"github.com/vigil-iot/vigil/topology"
)

// tpm2ToolTimeout bounds one tpm2-tools command.
const tpm2ToolTimeout = swtpmtest.ToolTimeout

// tpm2NeedTools skips the test when one of tools is not on PATH.
func tpm2NeedTools(t *testing.T, tools ...string) {
	t.Helper()
	swtpmtest.Require(t, tools...)
}

// tpm2Swtpm is a running swtpm and the directory tpm2-tools work in.
type tpm2Swtpm struct{ *swtpmtest.TPM }

// tpm2StartSwtpm starts swtpm (with startup-clear) for the test.
func tpm2StartSwtpm(t *testing.T, opts ...swtpmtest.Option) *tpm2Swtpm {
	t.Helper()
	return &tpm2Swtpm{swtpmtest.Start(t, opts...)}
}

// flush flushes transient objects and sessions: without a resource manager
// the TPM's few slots fill up (0x902).
func (sw *tpm2Swtpm) flush(t *testing.T) {
	t.Helper()
	sw.Tool(t, "tpm2_flushcontext", "-t")
	sw.Tool(t, "tpm2_flushcontext", "-s")
}

func (sw *tpm2Swtpm) read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sw.Dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tpm2ParseAKPEM reads an AK as `tpm2_createak -f pem` writes it.
func tpm2ParseAKPEM(t testing.TB, b []byte) any {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		t.Fatalf("AK PEM: no PUBLIC KEY block in %q", b)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// tpm2RealEvidence is what a device with a real TPM submits.
type tpm2RealEvidence struct {
	ak, quote, sig, pcr16 []byte
	nonce                 []byte
	firmware              string
}

func (r tpm2RealEvidence) evidence() *Evidence {
	return &Evidence{Format: topology.AttestTPM2Quote, Nonce: hex.EncodeToString(r.nonce), TPM2: &TPM2Evidence{
		Quote:     r.quote,
		Signature: r.sig,
		PCRs:      map[string]map[string]string{"sha256": {"16": hex.EncodeToString(r.pcr16)}},
		EventLog:  []Event{{PCR: 16, SHA256: r.firmware, Type: EventFirmware}},
	}}
}

// check: passes; fails with another nonce (issued or quoted); fails when
// the firmware is not a reference value; passes with the binary event log.
func (r tpm2RealEvidence) check(t *testing.T) {
	t.Helper()
	key := Enrolled{AK: tpm2ParseAKPEM(t, r.ak), Clock: &TPMClock{}}
	pol := tpm2Policy()
	pol.Firmware = []topology.FirmwareRef{tpm2OtherFirmware, {Version: "7.1.0", SHA256: r.firmware}}

	res := tpm2Verify(t, r.evidence(), key, pol, r.nonce)
	if !res.Passed() || res.FirmwareVersion != "7.1.0" || res.FirmwareSHA256 != r.firmware || res.Clock == nil {
		t.Fatalf("the real TPM's quote: %s %q, firmware %q, clock %+v", res.Status, res.Reasons, res.FirmwareVersion, res.Clock)
	}
	t.Logf("passed: firmware %s, resetCount %d restartCount %d", res.FirmwareVersion, res.Clock.ResetCount, res.Clock.RestartCount)

	other := make([]byte, NonceSize)
	rand.Read(other)
	if res := tpm2Verify(t, r.evidence(), key, pol, other); res.Passed() {
		t.Error("passed with another nonce issued")
	}
	ev := r.evidence()
	ev.Nonce = hex.EncodeToString(other) // the device claims the other nonce; the TPM quoted r.nonce
	if res := tpm2Verify(t, ev, key, pol, other); res.Passed() || !tpm2HasReason(res, "extraData is not the nonce") {
		t.Errorf("another nonce in the evidence: %s %q", res.Status, res.Reasons)
	}

	pol.Firmware = []topology.FirmwareRef{tpm2OtherFirmware}
	if res := tpm2Verify(t, r.evidence(), key, pol, r.nonce); res.Passed() || !tpm2HasReason(res, "firmware "+r.firmware+" is not a reference value") {
		t.Errorf("unknown firmware: %s %q", res.Status, res.Reasons)
	}

	pol = tpm2Policy()
	pol.Firmware = []topology.FirmwareRef{{Version: "7.1.0", SHA256: r.firmware}}
	ev = r.evidence()
	ev.TPM2.BinaryEventLog, ev.TPM2.EventLog = appendTCGEventLog(nil, ev.TPM2.EventLog), nil
	if res := tpm2Verify(t, ev, key, pol, r.nonce); !res.Passed() {
		t.Errorf("binary event log: %q", res.Reasons)
	}

	key.Clock = &TPMClock{ResetCount: res.Clock.ResetCount + 1}
	if res := tpm2Verify(t, r.evidence(), key, pol, r.nonce); res.Passed() || !tpm2HasReason(res, "TPM counters went back") {
		t.Errorf("counters going back: %s %q", res.Status, res.Reasons)
	}
}

func tpm2HasReason(r Result, s string) bool {
	for _, reason := range r.Reasons {
		if strings.Contains(reason, s) {
			return true
		}
	}
	return false
}

// TestTPM2Swtpm: an EK and an AK (ECDSA, RSASSA, RSAPSS) made by swtpm,
// the firmware digest extended into PCR 16, a quote by tpm2_quote; the
// verifier accepts it with the AK's PEM and refuses it with another nonce or
// when the firmware is not a reference value.
func TestTPM2Swtpm(t *testing.T) {
	tpm2NeedTools(t, "swtpm", "tpm2_createek", "tpm2_createak", "tpm2_flushcontext", "tpm2_pcrextend", "tpm2_quote", "tpm2_pcrread")
	sw := tpm2StartSwtpm(t)
	firmware := tpm2Hex("vigil swtpm firmware 7.1.0")

	sw.Tool(t, "tpm2_createek", "-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub")
	sw.flush(t)
	sw.Tool(t, "tpm2_pcrextend", "16:sha256="+firmware)

	for _, kind := range []struct{ name, alg, scheme string }{
		{"ecdsa", "ecc", "ecdsa"},
		{"rsassa", "rsa", "rsassa"},
		{"rsapss", "rsa", "rsapss"},
	} {
		t.Run(kind.name, func(t *testing.T) {
			ak := "ak-" + kind.name
			sw.Tool(t, "tpm2_createak", "-C", "ek.ctx", "-c", ak+".ctx", "-G", kind.alg, "-g", "sha256", "-s", kind.scheme,
				"-u", ak+".pem", "-f", "pem", "-n", ak+".name", "-p", "ak-secret")
			sw.flush(t)
			nonce := make([]byte, NonceSize)
			rand.Read(nonce)
			sw.Tool(t, "tpm2_quote", "-c", ak+".ctx", "-p", "ak-secret", "-l", "sha256:16", "-q", hex.EncodeToString(nonce),
				"-m", ak+".quote", "-s", ak+".sig", "-g", "sha256", "--scheme", kind.scheme)
			sw.flush(t)
			sw.Tool(t, "tpm2_pcrread", "sha256:16", "-o", ak+".pcr16")
			real := tpm2RealEvidence{
				ak: sw.read(t, ak+".pem"), quote: sw.read(t, ak+".quote"), sig: sw.read(t, ak+".sig"),
				pcr16: sw.read(t, ak+".pcr16"), nonce: nonce, firmware: firmware,
			}
			if len(real.pcr16) != 32 {
				t.Fatalf("PCR 16 is %d bytes", len(real.pcr16))
			}
			real.check(t)
			if os.Getenv(tpm2UpdateEnv) == "1" {
				tpm2WriteSwtpmFixture(t, kind.name, real)
			}
		})
	}
}

// Real swtpm output kept in testdata: each file as tpm2-tools wrote it,
// and the nonce and firmware digest in hex.
var tpm2SwtpmFixtureFiles = []string{"ak.pem", "quote.msg", "quote.sig", "pcr16.bin", "nonce.hex", "firmware.hex"}

func tpm2WriteSwtpmFixture(t *testing.T, kind string, r tpm2RealEvidence) {
	dir := filepath.Join("testdata", "tpm2", "swtpm-"+kind)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, b := range [][]byte{r.ak, r.quote, r.sig, r.pcr16, []byte(hex.EncodeToString(r.nonce) + "\n"), []byte(r.firmware + "\n")} {
		if err := os.WriteFile(filepath.Join(dir, tpm2SwtpmFixtureFiles[i]), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTPM2SwtpmFixtures verifies quotes swtpm made (testdata/tpm2/swtpm-*),
// on machines without swtpm too.
func TestTPM2SwtpmFixtures(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join("testdata", "tpm2", "swtpm-*"))
	if len(dirs) == 0 {
		t.Fatal("no testdata/tpm2/swtpm-* fixtures")
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var files [][]byte
			for _, name := range tpm2SwtpmFixtureFiles {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				files = append(files, b)
			}
			r := tpm2RealEvidence{ak: files[0], quote: files[1], sig: files[2], pcr16: files[3],
				nonce: tpm2Unhex(t, strings.TrimSpace(string(files[4]))), firmware: strings.TrimSpace(string(files[5]))}
			r.check(t)
			// and the parsers reproduce tpm2-tools' bytes exactly
			q, err := parseTPMSAttest(r.quote)
			if err != nil || !bytes.Equal(q.marshal(), r.quote) {
				t.Errorf("quote does not round-trip: %v", err)
			}
			s, err := parseTPMTSignature(r.sig)
			if err != nil || !bytes.Equal(s.marshal(), r.sig) {
				t.Fatalf("signature does not round-trip: %v", err)
			}
			// libtpms salts RSAPSS with as many bytes as the hash, as the
			// simulator does
			if s.Alg == tpmAlgRSAPSS {
				digest := sha256.Sum256(r.quote)
				pub := tpm2ParseAKPEM(t, r.ak).(*rsa.PublicKey)
				if err := rsa.VerifyPSS(pub, crypto.SHA256, digest[:], s.RSA, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
					t.Errorf("swtpm's PSS salt is not the hash's length: %v", err)
				}
			}
		})
	}
}

// TestTPM2SimAgainstTPM2Tools: tpm2-tools' own verifier accepts the
// simulator's quotes, and its event log parser reads the simulator's binary
// log and replays it to the simulator's PCR 16.
func TestTPM2SimAgainstTPM2Tools(t *testing.T) {
	tpm2NeedTools(t, "tpm2_checkquote", "tpm2_eventlog")
	dir := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		out, err := swtpmtest.RunIn(dir, args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return out
	}
	write := func(name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, kind := range []struct {
		name string
		pss  bool
	}{{"ecdsa", false}, {"rsa", false}, {"rsa", true}} {
		s := tpm2Sim(t, kind.name)
		s.SetRSAPSS(kind.pss)
		tpm2Measure(t, s, 16, tpm2Hex("bootloader"), "bootloader")
		tpm2Measure(t, s, 16, tpm2Firmware.SHA256, EventFirmware)
		nonce := tpm2Nonce(t)
		q, err := s.Quote(nonce, []int{16})
		if err != nil {
			t.Fatal(err)
		}
		pemText, err := s.AKPublicPEM()
		if err != nil {
			t.Fatal(err)
		}
		write("ak.pem", pemText)
		write("quote.msg", q.Quote)
		write("quote.sig", q.Signature)
		write("binlog", s.BinaryEventLog())
		// tpm2_checkquote (5.4) verifies RSASSA and ECDSA only: it refuses
		// swtpm's own RSAPSS quotes too. The simulator's PSS salt (the hash's
		// length) is checked against swtpm's in TestTPM2SwtpmFixtures.
		if !kind.pss {
			run("tpm2_checkquote", "-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig", "-g", "sha256", "-q", hex.EncodeToString(nonce))

			// ... and a wrong nonce is refused by tpm2-tools too
			if out, err := swtpmtest.RunIn(dir, "tpm2_checkquote", "-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig", "-g", "sha256", "-q", hex.EncodeToString(tpm2Nonce(t))); err == nil {
				t.Errorf("%s: tpm2_checkquote accepted another nonce: %s", kind.name, out)
			} else if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("tpm2_checkquote timed out")
			}
		}

		out := run("tpm2_eventlog", "binlog")
		want := fmt.Sprintf("16 : 0x%x", s.PCR(16))
		found := false
		for sc := bufio.NewScanner(strings.NewReader(out)); sc.Scan(); {
			found = found || strings.TrimSpace(sc.Text()) == want
		}
		if !found {
			t.Errorf("tpm2_eventlog does not replay the simulator's log to %q:\n%s", want, out)
		}
	}
}
