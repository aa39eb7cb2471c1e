package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/internal/swtpmtest"
	"github.com/vigil-iot/vigil/internal/tpmdev"
	"github.com/vigil-iot/vigil/topology"
)

// runAttestCLI runs the root command in-process and returns its output.
func runAttestCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func atWriteFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func atSHA256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// atTCGBinaryLog is a crypto-agile TCG binary event log (SHA-256, the firmware
// event EV_EFI_PLATFORM_FIRMWARE_BLOB2) of firmware measured into PCR 16,
// as attest.SimTPM writes it.
func atTCGBinaryLog(pcr uint32, digests ...string) []byte {
	if pcr != 16 {
		panic("only PCR 16 holds firmware")
	}
	sim, err := attest.NewSimTPM(false)
	if err != nil {
		panic(err)
	}
	for _, d := range digests {
		if err := sim.MeasureFirmware(d); err != nil {
			panic(err)
		}
	}
	return sim.BinaryEventLog()
}

func atPolicy(firmware string) attest.Policy {
	return attest.Policy{Class: "sensor", Formats: []string{topology.AttestTPM2Quote}, PCRs: []int{16},
		Firmware: []topology.FirmwareRef{{Version: "1.0.0", SHA256: firmware}}}
}

func atParseAKPEM(t *testing.T, b []byte) any {
	t.Helper()
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("not one PEM PUBLIC KEY: %q", b)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// atVerifyEvidence checks the JSON a command printed with attest's verifier.
func atVerifyEvidence(t *testing.T, raw []byte, ak any, nonce []byte, firmware string) attest.Result {
	t.Helper()
	ev, err := attest.ParseEvidence(raw)
	if err != nil {
		t.Fatalf("the printed evidence does not parse: %v\n%s", err, raw)
	}
	return attest.Verify(raw, ev, attest.Enrolled{AK: ak}, atPolicy(firmware), nonce, time.Now())
}

// atSwtpmFixture is a quote swtpm made (attest/testdata/tpm2/swtpm-ecdsa).
type atSwtpmFixture struct {
	dir                    string
	ak, quote, sig, pcr16  []byte
	nonce                  string
	firmware               string
	quoteFile, sigFile     string
	eventLogFile, pcr16Hex string
}

func atLoadSwtpmFixture(t *testing.T) atSwtpmFixture {
	t.Helper()
	src := filepath.Join("..", "..", "attest", "testdata", "tpm2", "swtpm-ecdsa")
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	f := atSwtpmFixture{dir: t.TempDir(), ak: read("ak.pem"), quote: read("quote.msg"), sig: read("quote.sig"), pcr16: read("pcr16.bin"),
		nonce: strings.TrimSpace(string(read("nonce.hex"))), firmware: strings.TrimSpace(string(read("firmware.hex")))}
	f.quoteFile = atWriteFile(t, f.dir, "quote.msg", f.quote)
	f.sigFile = atWriteFile(t, f.dir, "quote.sig", f.sig)
	f.pcr16Hex = hex.EncodeToString(f.pcr16)
	f.eventLogFile = atWriteFile(t, f.dir, "events.json", fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, f.firmware))
	return f
}

// TestAttestTPM2Evidence: vigil attest tpm2-evidence turns tpm2-tools'
// files (a real swtpm quote kept in attest's testdata) into evidence the
// verifier accepts, with a JSON or a binary event log, warns of a log that
// does not replay, and refuses files that do not belong together with an
// error and no output (internal/tpmdev's tests go through the errors).
func TestAttestTPM2Evidence(t *testing.T) {
	f := atLoadSwtpmFixture(t)
	nonce, _ := hex.DecodeString(f.nonce)
	ak := atParseAKPEM(t, f.ak)
	base := []string{"attest", "tpm2-evidence", "--quote", f.quoteFile, "--signature", f.sigFile, "--nonce", f.nonce}

	out, stderr, err := runAttestCLI(t, append(base, "--pcr", "16="+f.pcr16Hex, "--event-log", f.eventLogFile)...)
	if err != nil || stderr != "" {
		t.Fatalf("tpm2-evidence: %v\n%s", err, stderr)
	}
	if res := atVerifyEvidence(t, []byte(out), ak, nonce, f.firmware); !res.Passed() || res.FirmwareVersion != "1.0.0" {
		t.Fatalf("the evidence does not verify: %s %q", res.Status, res.Reasons)
	}
	var doc map[string]any
	json.Unmarshal([]byte(out), &doc)
	if doc["format"] != "tpm2-quote" || doc["nonce"] != f.nonce {
		t.Errorf("evidence JSON: %s", out)
	}

	// The PCR as sha256:16=0x..., and as a file; a binary event log.
	pcrFile := atWriteFile(t, f.dir, "pcr16.bin", f.pcr16)
	binLog := atWriteFile(t, f.dir, "binary_bios_measurements", atTCGBinaryLog(16, f.firmware))
	for _, pcr := range []string{"sha256:16=0x" + strings.ToUpper(f.pcr16Hex), "16=@" + pcrFile} {
		out, _, err := runAttestCLI(t, append(base, "--pcr", pcr, "--event-log", binLog)...)
		if err != nil {
			t.Fatalf("--pcr %s: %v", pcr, err)
		}
		if res := atVerifyEvidence(t, []byte(out), ak, nonce, f.firmware); !res.Passed() {
			t.Errorf("--pcr %s with a binary log: %s %q", pcr, res.Status, res.Reasons)
		}
		if !strings.Contains(out, `"binaryEventLog"`) || strings.Contains(out, `"eventLog"`) {
			t.Errorf("a binary log is not sent as binaryEventLog: %s", out)
		}
	}

	// A log that does not replay to the PCR: evidence, with a warning.
	other := atWriteFile(t, f.dir, "other.json", fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, atSHA256Hex("other")))
	_, stderr, err = runAttestCLI(t, append(base, "--pcr", "16="+f.pcr16Hex, "--event-log", other)...)
	if err != nil || !strings.Contains(stderr, "replays PCR 16") {
		t.Errorf("a log that does not replay: err %v, stderr %q; want a warning", err, stderr)
	}

	otherNonce := make([]byte, 32)
	rand.Read(otherNonce)
	notJSON := atWriteFile(t, f.dir, "log.txt", []byte("PCR 16 firmware\n"))
	bad := make([]byte, len(f.pcr16))
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"another nonce", []string{"attest", "tpm2-evidence", "--quote", f.quoteFile, "--signature", f.sigFile, "--nonce", hex.EncodeToString(otherNonce), "--pcr", "16=" + f.pcr16Hex, "--event-log", f.eventLogFile}, "extraData"},
		{"wrong PCR value", append(base, "--pcr", "16="+hex.EncodeToString(bad), "--event-log", f.eventLogFile), "pcrDigest"},
		{"no --pcr", append(base, "--event-log", f.eventLogFile), "--pcr INDEX=HEX is required"},
		{"short PCR", append(base, "--pcr", "16=abcd", "--event-log", f.eventLogFile), "is 32 bytes, not 2"},
		{"short nonce", []string{"attest", "tpm2-evidence", "--quote", f.quoteFile, "--signature", f.sigFile, "--nonce", "abcd", "--pcr", "16=" + f.pcr16Hex, "--event-log", f.eventLogFile}, "is not 32 bytes of hex"},
		{"no event log", append(base, "--pcr", "16="+f.pcr16Hex), "--event-log is required"},
		{"text event log", append(base, "--pcr", "16="+f.pcr16Hex, "--event-log", notJSON), "neither a JSON array of events nor a TCG"},
		{"missing quote file", []string{"attest", "tpm2-evidence", "--quote", filepath.Join(f.dir, "nope"), "--signature", f.sigFile, "--nonce", f.nonce, "--pcr", "16=" + f.pcr16Hex, "--event-log", f.eventLogFile}, "--quote: open"},
	} {
		out, _, err := runAttestCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want one saying %q", c.name, err, c.want)
		}
		if out != "" {
			t.Errorf("%s: printed evidence despite the error: %s", c.name, out)
		}
	}
}

// TestAttestTPMFlags: --tpm and --ak-handle are checked before any TPM is
// touched, with errors naming what is wrong.
func TestAttestTPMFlags(t *testing.T) {
	nonce := strings.Repeat("ab", 32)
	dir := t.TempDir()
	regular := atWriteFile(t, dir, "not-a-tpm", []byte("x"))
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"attest", "tpm", "ak-public", "--ak-handle", "0x80000001"}, "is not a persistent handle"},
		{[]string{"attest", "tpm", "ak-public", "--tpm", "mssim:host=x"}, "unknown kind of TPM"},
		{[]string{"attest", "tpm", "ak-public", "--tpm", "swtpm:host=127.0.0.1,port=x"}, `port "x" is not a TCP port`},
		{[]string{"attest", "tpm", "ak-public", "--tpm", regular}, "is not a character device"},
		{[]string{"attest", "tpm", "ak-public", "--tpm", filepath.Join(dir, "tpmrm9")}, "no such file"},
		{[]string{"attest", "tpm", "quote", "--tpm", regular}, "--nonce is required"},
		{[]string{"attest", "tpm", "quote", "--nonce", nonce, "--pcrs", "24"}, "PCR 24 does not exist"},
		{[]string{"attest", "tpm", "quote", "--nonce", nonce, "--event-log", filepath.Join(dir, "none.json"), "--tpm", regular}, "--event-log: open"},
	} {
		_, _, err := runAttestCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("vigil %s: err %v, want one saying %q", strings.Join(c.args, " "), err, c.want)
		}
	}
	// Nothing listens: the error names swtpm and the address.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().(*net.TCPAddr)
	l.Close()
	_, _, err := runAttestCLI(t, "attest", "tpm", "ak-public", "--tpm", fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", addr.Port))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("swtpm at 127.0.0.1:%d", addr.Port)) {
		t.Errorf("no swtpm listening: %v", err)
	}
}

// atStartSwtpm starts swtpm on loopback with --flags flags (none when
// empty) and returns its --tpm spec; it is killed by its PID when the test
// ends.
func atStartSwtpm(t *testing.T, flags string) string {
	t.Helper()
	return swtpmtest.Start(t, swtpmtest.Flags(flags)).TCTI()
}

// atTransientHandles counts the transient objects loaded in the TPM.
func atTransientHandles(t *testing.T, spec string) int {
	t.Helper()
	c, err := tpmdev.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x80000000, PropertyCount: 64}.Execute(c)
	if err != nil {
		t.Fatal(err)
	}
	h, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return len(h.Handle)
}

// TestAttestTPMSwtpm: against swtpm started without startup-clear (the
// command sends TPM2_Startup itself), ak-public creates the AK once and
// prints the same key after; quote's evidence verifies, with a JSON and a
// binary event log, refuses an unlisted firmware; no transient object is
// left loaded; a key that is no AK is refused by both commands.
func TestAttestTPMSwtpm(t *testing.T) {
	spec := atStartSwtpm(t, "not-need-init")
	akPEM, stderr, err := runAttestCLI(t, "attest", "tpm", "ak-public", "--tpm", spec)
	if err != nil || !strings.Contains(stderr, "created an ECDSA P-256 attestation key at persistent handle 0x81010002") {
		t.Fatalf("ak-public: %v\n%s", err, stderr)
	}
	again, stderr, err := runAttestCLI(t, "attest", "tpm", "ak-public", "--tpm", spec, "--ak-handle", "0x81010002")
	if err != nil || again != akPEM || stderr != "" {
		t.Fatalf("ak-public again: %v, same key %v, stderr %q", err, again == akPEM, stderr)
	}
	ak := atParseAKPEM(t, []byte(akPEM))

	firmware := atSHA256Hex("vigil attest tpm firmware 1.0.0")
	c, err := tpmdev.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := hex.DecodeString(firmware)
	_, err = tpm2.PCRExtend{PCRHandle: tpm2.AuthHandle{Handle: 16, Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}}}.Execute(c)
	c.Close()
	if err != nil {
		t.Fatalf("extending PCR 16: %v", err)
	}

	dir := t.TempDir()
	jsonLog := atWriteFile(t, dir, "events.json", fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, firmware))
	binLog := atWriteFile(t, dir, "binary_bios_measurements", atTCGBinaryLog(16, firmware))
	for _, log := range []string{jsonLog, binLog} {
		nonce := make([]byte, 32)
		rand.Read(nonce)
		out, stderr, err := runAttestCLI(t, "attest", "tpm", "quote", "--tpm", spec, "--nonce", hex.EncodeToString(nonce), "--event-log", log)
		if err != nil || stderr != "" {
			t.Fatalf("quote with %s: %v\n%s", filepath.Base(log), err, stderr)
		}
		if res := atVerifyEvidence(t, []byte(out), ak, nonce, firmware); !res.Passed() || res.FirmwareSHA256 != firmware {
			t.Errorf("quote with %s: %s %q", filepath.Base(log), res.Status, res.Reasons)
		}
		if res := atVerifyEvidence(t, []byte(out), ak, nonce, atSHA256Hex("another image")); res.Passed() || !strings.Contains(strings.Join(res.Reasons, ";"), "is not a reference value") {
			t.Errorf("unlisted firmware: %s %q", res.Status, res.Reasons)
		}
	}

	if n := atTransientHandles(t, spec); n != 0 {
		t.Errorf("%d transient objects left loaded in the TPM", n)
	}

	// A handle holding a key that is no AK (a storage key) is refused.
	c, err = tpmdev.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	srk, err := tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(c)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tpm2.EvictControl{Auth: owner, ObjectHandle: &tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}, PersistentHandle: 0x81000001}.Execute(c)
	tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(c)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 32)
	rand.Read(nonce)
	for _, sub := range []string{"ak-public", "quote"} {
		_, _, err := runAttestCLI(t, "attest", "tpm", sub, "--tpm", spec, "--ak-handle", "0x81000001", "--nonce", hex.EncodeToString(nonce), "--event-log", jsonLog)
		if sub == "ak-public" {
			_, _, err = runAttestCLI(t, "attest", "tpm", sub, "--tpm", spec, "--ak-handle", "0x81000001")
		}
		if err == nil || !strings.Contains(err.Error(), "is not an attestation key Vigil can verify: it is not a restricted signing key") {
			t.Errorf("%s with a storage key at the handle: %v", sub, err)
		}
	}
}
