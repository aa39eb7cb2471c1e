package tpmdev

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/topology"
)

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// tcgBinaryLog is a crypto-agile TCG binary event log (SHA-256, the firmware
// event EV_EFI_PLATFORM_FIRMWARE_BLOB2) of firmware measured into PCR 16,
// as attest.SimTPM writes it.
func tcgBinaryLog(pcr uint32, digests ...string) []byte {
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

func policy(firmware string, pcrs ...int) attest.Policy {
	if len(pcrs) == 0 {
		pcrs = []int{16}
	}
	return attest.Policy{Class: "sensor", Formats: []string{topology.AttestTPM2Quote}, PCRs: pcrs,
		Firmware: []topology.FirmwareRef{{Version: "1.0.0", SHA256: firmware}}}
}

func parseAKPEM(t *testing.T, b []byte) any {
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

// verify checks evidence as Vigil does, after a round trip through the
// JSON WriteEvidence prints.
func verify(t *testing.T, ev *attest.Evidence, ak any, nonce []byte, pol attest.Policy) attest.Result {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteEvidence(&buf, ev); err != nil {
		t.Fatal(err)
	}
	parsed, err := attest.ParseEvidence(buf.Bytes())
	if err != nil {
		t.Fatalf("the evidence does not parse: %v\n%s", err, buf.Bytes())
	}
	return attest.Verify(buf.Bytes(), parsed, attest.Enrolled{AK: ak}, pol, nonce, time.Now())
}

// swtpmFixture is a quote swtpm made (attest/testdata/tpm2/swtpm-ecdsa).
type swtpmFixture struct {
	dir                   string
	ak, quote, sig, pcr16 []byte
	nonce                 []byte
	firmware              string
	eventLogFile          string
}

func loadSwtpmFixture(t *testing.T) swtpmFixture {
	t.Helper()
	src := filepath.Join("..", "..", "attest", "testdata", "tpm2", "swtpm-ecdsa")
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	nonce, err := hex.DecodeString(strings.TrimSpace(string(read("nonce.hex"))))
	if err != nil {
		t.Fatal(err)
	}
	f := swtpmFixture{dir: t.TempDir(), ak: read("ak.pem"), quote: read("quote.msg"), sig: read("quote.sig"), pcr16: read("pcr16.bin"),
		nonce: nonce, firmware: strings.TrimSpace(string(read("firmware.hex")))}
	f.eventLogFile = writeFile(t, f.dir, "events.json", fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, f.firmware))
	return f
}

func TestFormatIsTopologys(t *testing.T) {
	if formatTPM2Quote != topology.AttestTPM2Quote {
		t.Errorf("formatTPM2Quote %q, topology.AttestTPM2Quote %q", formatTPM2Quote, topology.AttestTPM2Quote)
	}
}

// TestBuildEvidence: a real swtpm quote (kept in attest's testdata) with
// its PCR value and a JSON or binary event log makes evidence the verifier
// accepts; files that do not belong together are refused with an error
// that says which and why.
func TestBuildEvidence(t *testing.T) {
	f := loadSwtpmFixture(t)
	ak := parseAKPEM(t, f.ak)
	values := PCRValues{}
	values.Set("sha256", 16, f.pcr16)

	log, err := ReadEventLog(f.eventLogFile)
	if err != nil {
		t.Fatal(err)
	}
	ev, warnings, err := BuildEvidence(f.quote, f.sig, f.nonce, values, log)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("BuildEvidence: %v, warnings %q", err, warnings)
	}
	if ev.Format != topology.AttestTPM2Quote || ev.Nonce != hex.EncodeToString(f.nonce) || len(ev.TPM2.EventLog) != 1 || ev.TPM2.BinaryEventLog != nil {
		t.Errorf("evidence: %+v", ev)
	}
	if res := verify(t, ev, ak, f.nonce, policy(f.firmware)); !res.Passed() || res.FirmwareVersion != "1.0.0" {
		t.Fatalf("the evidence does not verify: %s %q", res.Status, res.Reasons)
	}

	binLog, err := ReadEventLog(writeFile(t, f.dir, "binary_bios_measurements", tcgBinaryLog(16, f.firmware)))
	if err != nil {
		t.Fatal(err)
	}
	ev, _, err = BuildEvidence(f.quote, f.sig, f.nonce, values, binLog)
	if err != nil {
		t.Fatal(err)
	}
	if ev.TPM2.BinaryEventLog == nil || ev.TPM2.EventLog != nil {
		t.Errorf("a binary log is not sent as binaryEventLog: %+v", ev.TPM2)
	}
	if res := verify(t, ev, ak, f.nonce, policy(f.firmware)); !res.Passed() {
		t.Errorf("with a binary log: %s %q", res.Status, res.Reasons)
	}

	// A log that does not replay to the PCR: evidence, with a warning.
	other, err := ReadEventLog(writeFile(t, f.dir, "other.json", fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, sha256Hex("other"))))
	if err != nil {
		t.Fatal(err)
	}
	if _, warnings, err := BuildEvidence(f.quote, f.sig, f.nonce, values, other); err != nil || len(warnings) != 1 || !strings.Contains(warnings[0], "replays PCR 16") {
		t.Errorf("a log that does not replay: err %v, warnings %q; want one", err, warnings)
	}

	otherNonce := make([]byte, 32)
	rand.Read(otherNonce)
	wrong := PCRValues{}
	wrong.Set("sha256", 16, make([]byte, 32))
	pcr17 := PCRValues{}
	pcr17.Set("sha256", 17, f.pcr16)
	extra := PCRValues{}
	extra.Set("sha256", 16, f.pcr16)
	extra.Set("sha256", 17, f.pcr16)
	for _, c := range []struct {
		name             string
		quote, sig, once []byte
		values           PCRValues
		want             string
	}{
		{"another nonce", f.quote, f.sig, otherNonce, values, "extraData"},
		{"wrong PCR value", f.quote, f.sig, f.nonce, wrong, "pcrDigest"},
		{"no value for a quoted PCR", f.quote, f.sig, f.nonce, pcr17, "covers PCR sha256:16 but no value"},
		{"a value the quote does not cover", f.quote, f.sig, f.nonce, extra, "PCR sha256:17, which the quote does not cover"},
		{"plain signature", f.quote, f.sig[6:], f.nonce, values, "TPMT_SIGNATURE"},
		{"signature as quote", f.sig, f.sig, f.nonce, values, "TPMS_ATTEST"},
	} {
		ev, _, err := BuildEvidence(c.quote, c.sig, c.once, c.values, log)
		if err == nil || !strings.Contains(err.Error(), c.want) || ev != nil {
			t.Errorf("%s: err %v, want one saying %q", c.name, err, c.want)
		}
		if errors.Is(err, ErrPCRDigest) != (c.name == "wrong PCR value") {
			t.Errorf("%s: errors.Is(err, ErrPCRDigest) is %v", c.name, errors.Is(err, ErrPCRDigest))
		}
	}
}

// TestParsePCRArgs: --pcr as INDEX=HEX, BANK:INDEX=0xHEX and INDEX=@FILE,
// and its errors.
func TestParsePCRArgs(t *testing.T) {
	dir := t.TempDir()
	v := bytes.Repeat([]byte{0xab}, 32)
	file := writeFile(t, dir, "pcr.bin", v)
	for _, arg := range []string{"16=" + hex.EncodeToString(v), "sha256:16=0x" + strings.ToUpper(hex.EncodeToString(v)), "16=@" + file} {
		got, err := ParsePCRArgs([]string{arg})
		if err != nil || len(got) != 1 || !bytes.Equal(got["sha256"][16], v) {
			t.Errorf("--pcr %s: %v %v", arg, got, err)
		}
	}
	if got, err := ParsePCRArgs([]string{"sha1:0=" + strings.Repeat("00", 20), "7=" + strings.Repeat("11", 32)}); err != nil || len(got["sha1"][0]) != 20 || len(got["sha256"][7]) != 32 {
		t.Errorf("two banks: %v %v", got, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"16"}, "want INDEX=HEX"},
		{[]string{"16=abcd"}, "is 32 bytes, not 2"},
		{[]string{"md5:16=" + hex.EncodeToString(v)}, `unknown bank "md5"`},
		{[]string{"24=" + hex.EncodeToString(v)}, "is not a PCR index"},
		{[]string{"16=xyz"}, "the value is not hex"},
		{[]string{"16=" + hex.EncodeToString(v), "sha256:16=" + hex.EncodeToString(v)}, "PCR sha256:16 is given twice"},
		{[]string{"16=@" + filepath.Join(dir, "nope")}, "--pcr 16: open"},
	} {
		if _, err := ParsePCRArgs(c.args); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--pcr %q: err %v, want one saying %q", c.args, err, c.want)
		}
	}
}

// TestReadEventLog: a JSON array of events (digests lowercased) or a TCG
// binary log, and the errors for anything else.
func TestReadEventLog(t *testing.T) {
	dir := t.TempDir()
	d := sha256Hex("fw")
	log, err := ReadEventLog(writeFile(t, dir, "events.json", fmt.Appendf(nil, ` [{"pcr": 16, "sha256": %q, "type": "firmware"}]`, strings.ToUpper(d))))
	if err != nil || len(log.Events) != 1 || log.Events[0].SHA256 != d || log.Binary != nil {
		t.Errorf("JSON log: %+v %v", log, err)
	}
	bin := tcgBinaryLog(16, d)
	log, err = ReadEventLog(writeFile(t, dir, "binary_bios_measurements", bin))
	if err != nil || !bytes.Equal(log.Binary, bin) || log.Events != nil {
		t.Errorf("binary log: %+v %v", log, err)
	}
	for _, c := range []struct {
		content, want string
	}{
		{"PCR 16 firmware\n", "neither a JSON array of events nor a TCG"},
		{`{"eventLog": []}`, "not an object"},
		{`[{"pcr": 16, "sha256": "xyz", "type": "firmware"}]`, "event 0: sha256"},
		{fmt.Sprintf(`[{"pcr": 24, "sha256": %q}]`, d), "names PCR 24, which does not exist"},
		{`[]`, "the JSON array has no event"},
		{fmt.Sprintf(`[{"pcr": 16, "sha256": %q}] []`, d), "data after the JSON array"},
		{fmt.Sprintf(`[{"pcr": 16, "sha256": %q, "extra": 1}]`, d), "not a JSON array of"},
		{"", "is empty"},
	} {
		if _, err := ReadEventLog(writeFile(t, dir, "log", []byte(c.content))); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("event log %q: err %v, want one saying %q", c.content, err, c.want)
		}
	}
	if _, err := ReadEventLog(filepath.Join(dir, "none.json")); err == nil || !strings.Contains(err.Error(), "--event-log: open") {
		t.Errorf("missing event log: %v", err)
	}
}

// TestParseArgs: nonces, AK handles and PCR lists.
func TestParseArgs(t *testing.T) {
	n := strings.Repeat("ab", 32)
	for _, s := range []string{n, "0x" + n, " " + n + "\n"} {
		if b, err := ParseNonce(s); err != nil || hex.EncodeToString(b) != n {
			t.Errorf("ParseNonce(%q): %x %v", s, b, err)
		}
	}
	for s, want := range map[string]string{"": "--nonce is required", "abcd": "is not 32 bytes of hex", n + "zz": "is not 32 bytes of hex"} {
		if _, err := ParseNonce(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseNonce(%q): %v, want %q", s, err, want)
		}
	}
	if h, err := ParseAKHandle(DefaultAKHandle); err != nil || h != 0x81010002 {
		t.Errorf("ParseAKHandle(%s): %#x %v", DefaultAKHandle, h, err)
	}
	for _, s := range []string{"0x80000001", "eleven", "0x82000000", ""} {
		if _, err := ParseAKHandle(s); err == nil || !strings.Contains(err.Error(), "is not a persistent handle") {
			t.Errorf("ParseAKHandle(%q): %v", s, err)
		}
	}
	if err := CheckPCRIndexes([]int{0, 16, 23}); err != nil {
		t.Error(err)
	}
	if err := CheckPCRIndexes(nil); err == nil || !strings.Contains(err.Error(), "names no PCR") {
		t.Errorf("no PCRs: %v", err)
	}
	if err := CheckPCRIndexes([]int{16, 24}); err == nil || !strings.Contains(err.Error(), "PCR 24 does not exist") {
		t.Errorf("PCR 24: %v", err)
	}
}

// TestWriteEvidence: indented JSON and a newline; too large is refused.
func TestWriteEvidence(t *testing.T) {
	ev := &attest.Evidence{Format: formatTPM2Quote, Nonce: strings.Repeat("ab", 32), TPM2: &attest.TPM2Evidence{Quote: []byte{1}, Signature: []byte{2}}}
	var buf bytes.Buffer
	if err := WriteEvidence(&buf, ev); err != nil {
		t.Fatal(err)
	}
	want, _ := json.MarshalIndent(ev, "", "  ")
	if buf.String() != string(want)+"\n" {
		t.Errorf("WriteEvidence wrote %q", buf.String())
	}
	ev.TPM2.BinaryEventLog = make([]byte, attest.MaxEvidenceBytes)
	buf.Reset()
	if err := WriteEvidence(&buf, ev); err == nil || !strings.Contains(err.Error(), "Vigil accepts at most") || buf.Len() != 0 {
		t.Errorf("too large: %v, wrote %d bytes", err, buf.Len())
	}
}
