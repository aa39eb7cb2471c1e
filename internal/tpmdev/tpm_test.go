package tpmdev

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/internal/swtpmtest"
)

// The agent's view of a TPM: *Device has the shape of *attest.SimTPM.
type agentTPM interface {
	AKPublicPEM() ([]byte, error)
	Evidence([]byte, []int) (*attest.Evidence, error)
}

var (
	_ agentTPM = (*Device)(nil)
	_ agentTPM = (*attest.SimTPM)(nil)
)

// startSwtpm starts swtpm on loopback with --flags flags (none when empty)
// and returns its spec; it is killed by its PID when the test ends.
func startSwtpm(t *testing.T, flags string) string {
	t.Helper()
	return swtpmtest.Start(t, swtpmtest.Flags(flags)).TCTI()
}

// transientHandles counts the transient objects loaded in the TPM.
func transientHandles(t *testing.T, spec string) int {
	t.Helper()
	c, err := Open(spec)
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

// extend extends a SHA-256 digest into a PCR.
func extend(t *testing.T, tpm transport.TPM, pcr int, digestHex string) {
	t.Helper()
	digest, _ := hex.DecodeString(digestHex)
	_, err := tpm2.PCRExtend{PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}}}.Execute(tpm)
	if err != nil {
		t.Fatalf("extending PCR %d: %v", pcr, err)
	}
}

func newNonce() []byte {
	n := make([]byte, attest.NonceSize)
	rand.Read(n)
	return n
}

// TestOpenErrors: a spec that names no TPM, or a TPM that is not there, is
// refused with an error naming what is wrong.
func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	regular := writeFile(t, dir, "not-a-tpm", []byte("x"))
	for spec, want := range map[string]string{
		"":                              "--tpm is empty",
		"mssim:host=x":                  "unknown kind of TPM",
		"swtpm:host=127.0.0.1,port=x":   `port "x" is not a TCP port`,
		"swtpm:host=127.0.0.1,port=0":   `port "0" is not a TCP port`,
		"swtpm:hostname=h":              `unknown setting "hostname"`,
		"swtpm:host":                    `"host" is not KEY=VALUE`,
		regular:                         "is not a character device",
		filepath.Join(dir, "tpmrm9"):    "no such file",
		"swtpm:path=" + dir + "/nosock": "swtpm at " + dir + "/nosock",
	} {
		c, err := Open(spec)
		if err == nil {
			c.Close()
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q): %v, want an error saying %q", spec, err, want)
		}
	}
	// Nothing listens: the error names swtpm and the address.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().(*net.TCPAddr)
	l.Close()
	_, err := Open(fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", addr.Port))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("swtpm at 127.0.0.1:%d", addr.Port)) || !strings.Contains(err.Error(), "is swtpm running") {
		t.Errorf("no swtpm listening: %v", err)
	}
}

// TestSwtpm: against swtpm started without startup-clear (Conn sends
// TPM2_Startup itself), EnsureAK creates the AK once and finds it after;
// QuoteEvidence of more PCRs than one PCR_Read returns (8) verifies; no
// transient object is left loaded; a key that is no AK is refused.
func TestSwtpm(t *testing.T) {
	spec := startSwtpm(t, "not-need-init")
	c, err := Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	handle, _ := ParseAKHandle(DefaultAKHandle)
	if ak, err := ReadAK(c, handle); ak != nil || err != nil {
		t.Fatalf("ReadAK of an empty handle: %v, %v; want nil, nil", ak, err)
	}
	ak, created, err := EnsureAK(c, handle)
	if err != nil || !created || ak.Handle() != handle {
		t.Fatalf("EnsureAK: created %v, %v", created, err)
	}
	pemA, err := ak.PublicPEM()
	if err != nil {
		t.Fatal(err)
	}
	again, created, err := EnsureAK(c, handle)
	if err != nil || created {
		t.Fatalf("EnsureAK again: created %v, %v", created, err)
	}
	if pemB, _ := again.PublicPEM(); !bytes.Equal(pemA, pemB) {
		t.Fatalf("EnsureAK again found another key:\n%s\n%s", pemA, pemB)
	}
	pub := parseAKPEM(t, pemA)

	firmware := sha256Hex("vigil attest tpm firmware 1.0.0")
	extend(t, c, 16, firmware)
	log, err := ReadEventLog(writeFile(t, t.TempDir(), "events.json", fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, firmware)))
	if err != nil {
		t.Fatal(err)
	}
	pcrs := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16}
	nonce := newNonce()
	q, err := Quote(c, ak, nonce, pcrs)
	if err != nil || len(q.Values["sha256"]) != len(pcrs) {
		t.Fatalf("Quote of %d PCRs: %v, %d values", len(pcrs), err, len(q.Values["sha256"]))
	}
	ev, warnings, err := QuoteEvidence(c, ak, nonce, pcrs, log)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("QuoteEvidence: %v, warnings %q", err, warnings)
	}
	if res := verify(t, ev, pub, nonce, policy(firmware)); !res.Passed() || res.FirmwareSHA256 != firmware {
		t.Errorf("quote of %d PCRs: %s %q", len(pcrs), res.Status, res.Reasons)
	}
	if res := verify(t, ev, pub, nonce, policy(sha256Hex("another image"))); res.Passed() || !strings.Contains(strings.Join(res.Reasons, ";"), "is not a reference value") {
		t.Errorf("unlisted firmware: %s %q", res.Status, res.Reasons)
	}
	c.Close()
	if n := transientHandles(t, spec); n != 0 {
		t.Errorf("%d transient objects left loaded in the TPM", n)
	}

	// A handle holding a key that is no AK (a storage key) is refused.
	c, err = Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	srk, err := tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(c)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tpm2.EvictControl{Auth: owner, ObjectHandle: &tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}, PersistentHandle: 0x81000001}.Execute(c)
	tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(c)
	if err != nil {
		t.Fatal(err)
	}
	const notAK = "is not an attestation key Vigil can verify: it is not a restricted signing key"
	if _, err := ReadAK(c, 0x81000001); err == nil || !strings.Contains(err.Error(), notAK) {
		t.Errorf("ReadAK of a storage key: %v", err)
	}
	if _, _, err := EnsureAK(c, 0x81000001); err == nil || !strings.Contains(err.Error(), notAK) {
		t.Errorf("EnsureAK of a storage key: %v", err)
	}
}

// extendingTPM extends PCR 16 right after each of the first n quotes, as
// another process measuring something between the quote and the read would.
type extendingTPM struct {
	t      *testing.T
	tpm    transport.TPM
	n      int
	quotes int
}

func (e *extendingTPM) Send(cmd []byte) ([]byte, error) {
	rsp, err := e.tpm.Send(cmd)
	if err == nil && len(cmd) >= 10 && binary.BigEndian.Uint32(cmd[6:]) == uint32(tpm2.TPMCCQuote) {
		if e.quotes++; e.quotes <= e.n {
			extend(e.t, e.tpm, 16, sha256Hex(fmt.Sprint("measured meanwhile ", e.quotes)))
		}
	}
	return rsp, err
}

// TestQuoteEvidenceRequotes: a PCR extended between the quote and the read
// makes QuoteEvidence quote again, up to quoteAttempts quotes.
func TestQuoteEvidenceRequotes(t *testing.T) {
	spec := startSwtpm(t, "startup-clear")
	c, err := Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ak, _, err := EnsureAK(c, 0x81010002)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := ak.PublicPEM()
	pub := parseAKPEM(t, pem)

	e := &extendingTPM{t: t, tpm: c, n: quoteAttempts - 1}
	nonce := newNonce()
	ev, _, err := QuoteEvidence(e, ak, nonce, []int{16}, nil)
	if err != nil || e.quotes != quoteAttempts {
		t.Fatalf("QuoteEvidence with %d extends meanwhile: %v after %d quotes", e.n, err, e.quotes)
	}
	// No event log: the signature and PCRs check out, the firmware does not.
	res := verify(t, ev, pub, nonce, policy(sha256Hex("fw")))
	if res.Clock == nil {
		t.Errorf("the signature of the last quote does not verify: %s %q", res.Status, res.Reasons)
	}

	e = &extendingTPM{t: t, tpm: c, n: quoteAttempts}
	_, _, err = QuoteEvidence(e, ak, newNonce(), []int{16}, nil)
	if err == nil || !errors.Is(err, ErrPCRDigest) || !strings.Contains(err.Error(), "the TPM's own quote does not check out") || e.quotes != quoteAttempts {
		t.Errorf("QuoteEvidence with an extend after every quote: %v after %d quotes", err, e.quotes)
	}
}

// TestSwtpmUninitialised: a swtpm that needs CMD_INIT is named as such
// rather than failing obscurely.
func TestSwtpmUninitialised(t *testing.T) {
	spec := startSwtpm(t, "")
	c, err := Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = ReadAK(c, 0x81010002)
	if err == nil || !strings.Contains(err.Error(), "TPM_RC_FAILURE") || !strings.Contains(err.Error(), "not-need-init") {
		t.Errorf("uninitialised swtpm: %v", err)
	}
}

// TestDevice: a Device's AKPublicPEM is the AK EnsureAK made, and its
// Evidence verifies against that AK, a policy of the firmware in the event
// log and the nonce it was made over, and no other nonce. The event log is
// read again for every call; an empty handle is named; no transient object
// is left loaded.
func TestDevice(t *testing.T) {
	spec := startSwtpm(t, "startup-clear")
	const handle = tpm2.TPMHandle(0x81010002)
	c, err := Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	ak, _, err := EnsureAK(c, handle)
	if err != nil {
		t.Fatal(err)
	}
	firmware := sha256Hex("vigil device firmware 1.0.0")
	extend(t, c, 16, firmware)
	c.Close()
	wantPEM, _ := ak.PublicPEM()

	dir := t.TempDir()
	logFile := writeFile(t, dir, "events.json", fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, firmware))
	var warnings []string
	d := &Device{Spec: spec, AKHandle: handle, EventLog: logFile, Warn: func(w string) { warnings = append(warnings, w) }}

	gotPEM, err := d.AKPublicPEM()
	if err != nil || !bytes.Equal(gotPEM, wantPEM) {
		t.Fatalf("AKPublicPEM: %v\n%s\nwant\n%s", err, gotPEM, wantPEM)
	}
	pub := parseAKPEM(t, gotPEM)

	nonce := newNonce()
	ev, err := d.Evidence(nonce, []int{16})
	if err != nil || len(warnings) != 0 {
		t.Fatalf("Evidence: %v, warnings %q", err, warnings)
	}
	if ev.Format != "tpm2-quote" || ev.Nonce != hex.EncodeToString(nonce) || len(ev.TPM2.EventLog) != 1 {
		t.Errorf("evidence: format %q nonce %q, %d events", ev.Format, ev.Nonce, len(ev.TPM2.EventLog))
	}
	if res := verify(t, ev, pub, nonce, policy(firmware)); !res.Passed() || res.FirmwareSHA256 != firmware || res.FirmwareVersion != "1.0.0" {
		t.Fatalf("the evidence does not verify: %s %q", res.Status, res.Reasons)
	}
	// The nonce is bound: the evidence does not answer another nonce, even
	// when it says it does (the signed quote's extraData is the nonce).
	other := newNonce()
	if res := verify(t, ev, pub, other, policy(firmware)); res.Passed() {
		t.Errorf("the evidence verifies for another nonce")
	}
	forged := *ev
	forged.Nonce = hex.EncodeToString(other)
	if res := verify(t, &forged, pub, other, policy(firmware)); res.Passed() {
		t.Errorf("the evidence verifies for another nonce it claims")
	}
	// Two calls make two quotes over their own nonces.
	ev2, err := d.Evidence(other, []int{16})
	if err != nil {
		t.Fatal(err)
	}
	if res := verify(t, ev2, pub, other, policy(firmware)); !res.Passed() {
		t.Errorf("a second Evidence: %s %q", res.Status, res.Reasons)
	}
	if bytes.Equal(ev.TPM2.Quote, ev2.TPM2.Quote) {
		t.Errorf("the second Evidence has the first one's quote")
	}

	// The event log is read for each call: a log that no longer replays
	// gives evidence with a warning, a binary log is sent as such.
	writeFile(t, dir, "events.json", fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, sha256Hex("other")))
	nonce = newNonce()
	ev, err = d.Evidence(nonce, []int{16})
	if err != nil || len(warnings) != 1 || !strings.Contains(warnings[0], "replays PCR 16") {
		t.Errorf("a log that does not replay: %v, warnings %q", err, warnings)
	}
	if res := verify(t, ev, pub, nonce, policy(firmware)); res.Passed() {
		t.Errorf("evidence with a log that does not replay verifies")
	}
	d.EventLog = writeFile(t, dir, "binary_bios_measurements", tcgBinaryLog(16, firmware))
	nonce = newNonce()
	if ev, err = d.Evidence(nonce, []int{16}); err != nil || ev.TPM2.BinaryEventLog == nil || ev.TPM2.EventLog != nil {
		t.Fatalf("Evidence with a binary log: %v", err)
	}
	if res := verify(t, ev, pub, nonce, policy(firmware)); !res.Passed() {
		t.Errorf("Evidence with a binary log: %s %q", res.Status, res.Reasons)
	}
	d.EventLog = filepath.Join(dir, "gone.json")
	if _, err := d.Evidence(newNonce(), []int{16}); err == nil || !strings.Contains(err.Error(), "--event-log: open") {
		t.Errorf("Evidence with a missing log: %v", err)
	}

	// An empty handle, a handle that is not persistent, bad arguments.
	empty := &Device{Spec: spec, AKHandle: 0x81010003}
	if _, err := empty.AKPublicPEM(); !errors.Is(err, ErrNoAK) || !strings.Contains(err.Error(), "there is no key at persistent handle 0x81010003") {
		t.Errorf("AKPublicPEM of an empty handle: %v", err)
	}
	if _, err := empty.Evidence(newNonce(), []int{16}); !errors.Is(err, ErrNoAK) {
		t.Errorf("Evidence with an empty handle: %v", err)
	}
	if _, err := (&Device{Spec: spec}).AKPublicPEM(); err == nil || !strings.Contains(err.Error(), "is not a persistent handle") {
		t.Errorf("AKPublicPEM of handle 0: %v", err)
	}
	d.EventLog = ""
	for _, c := range []struct {
		nonce []byte
		pcrs  []int
		want  string
	}{
		{nonce[:16], []int{16}, "the nonce is 16 bytes"},
		{nil, []int{16}, "the nonce is 0 bytes"},
		{nonce, nil, "no PCR to quote"},
		{nonce, []int{16, 24}, "PCR 24 does not exist"},
	} {
		if _, err := d.Evidence(c.nonce, c.pcrs); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Evidence(%x, %v): %v, want an error saying %q", c.nonce, c.pcrs, err, c.want)
		}
	}
	if _, err := (&Device{Spec: "swtpm:host=127.0.0.1,port=x", AKHandle: handle}).Evidence(nonce, []int{16}); err == nil || !strings.Contains(err.Error(), "is not a TCP port") {
		t.Errorf("Evidence with a bad spec: %v", err)
	}

	if n := transientHandles(t, spec); n != 0 {
		t.Errorf("%d transient objects left loaded in the TPM", n)
	}
}
