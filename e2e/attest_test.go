package e2e_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/swtpmtest"
	"github.com/vigil-iot/vigil/topology"
)

// The attestation test's topology: one class of meters that must present a
// TPM 2.0 quote every attestMaxAge, two firmware releases in the field.
const (
	attestMaxAge   = "8s"
	attestTD       = "attest.example"
	attestTopology = `apiVersion: vigil/v1
trustDomain: ` + attestTD + `
zones:
  - name: site
  - name: cloud
gateways:
  - {name: gw-site, zone: site}
deviceClasses:
  - name: meter
    attestation:
      maxAge: ` + attestMaxAge + `
      formats: [tpm2-quote]
      pcrs: [16]
      firmware:
        - {version: "3.1.0", sha256: "%s"}
        - {version: "3.2.0", sha256: "%s"}
devices:
  - {name: meter-1, class: meter, gateway: gw-site}
  - {name: meter-2, class: meter, gateway: gw-site}
  - {name: meter-3, class: meter, gateway: gw-site}
services:
  - name: readings
    zone: cloud
    protocol: http
    hosts: [readings.` + attestTD + `]
flows:
  - name: meter-readings
    from: {zones: [site], classes: [meter]}
    to: {service: readings}
    http: {methods: [POST], paths: ["/v1/readings"]}
`
)

func attestSHA(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// attestTPM is one swtpm (an independent TPM 2.0) and the directory its
// device's files are written to.
type attestTPM struct {
	name string // for messages
	*swtpmtest.TPM
}

// spec is how `vigil attest tpm --tpm` reaches it.
func (s *attestTPM) spec() string { return s.TCTI() }

// startAttestSwtpm starts swtpm on two loopback ports it picked (data P,
// control P+1), state in its own directory; it is killed by its PID when
// the test ends.
func startAttestSwtpm(t *testing.T, name string) *attestTPM {
	t.Helper()
	tpm := swtpmtest.Start(t, swtpmtest.Flags("not-need-init,startup-clear"))
	t.Logf("%s: swtpm pid %d on 127.0.0.1:%d", name, tpm.PID, tpm.Port)
	return &attestTPM{name: name, TPM: tpm}
}

// tool runs a tpm2-tools command against this TPM, bounded, in its
// directory; step names what the test was doing.
func (s *attestTPM) tool(t *testing.T, step string, args ...string) string {
	t.Helper()
	out, err := s.Run(args...)
	if err != nil {
		t.Fatalf("%s (%s): %v\n%s", step, s.name, err, out)
	}
	return out
}

// flush flushes the transient objects and sessions tpm2-tools left loaded:
// swtpm has no resource manager, and a second key would fail with 0x902.
func (s *attestTPM) flush(t *testing.T, step string) {
	t.Helper()
	s.tool(t, step+": flush transient objects", "tpm2_flushcontext", "-t")
	s.tool(t, step+": flush sessions", "tpm2_flushcontext", "-s")
}

func (s *attestTPM) path(name string) string { return filepath.Join(s.Dir, name) }

func (s *attestTPM) write(t *testing.T, name string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(s.path(name), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return s.path(name)
}

// makeAK gives the TPM an EK and an ECDSA AK under it (tpm2-tools), and
// returns the AK's PEM file.
func (s *attestTPM) makeAK(t *testing.T) string {
	t.Helper()
	s.tool(t, "create the EK", "tpm2_createek", "-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub")
	s.flush(t, "create the EK")
	s.tool(t, "create the AK", "tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa",
		"-u", "ak.pem", "-f", "pem", "-n", "ak.name")
	s.flush(t, "create the AK")
	return s.path("ak.pem")
}

// measure extends PCR 16 with a firmware image's digest, as a boot loader
// would, and writes the JSON event log that explains it.
func (s *attestTPM) measure(t *testing.T, firmware string) string {
	t.Helper()
	s.tool(t, "measure the firmware", "tpm2_pcrextend", "16:sha256="+firmware)
	return s.write(t, "events.json", fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, firmware))
}

// quoteWithTools quotes PCR 16 over nonce with tpm2-tools and builds the
// evidence with `vigil attest tpm2-evidence`; it returns the evidence file.
func (s *attestTPM) quoteWithTools(t *testing.T, nonce, eventLog string) string {
	t.Helper()
	s.tool(t, "quote", "tpm2_quote", "-c", "ak.ctx", "-l", "sha256:16", "-q", nonce, "-m", "quote.msg", "-s", "quote.sig", "-g", "sha256")
	s.flush(t, "quote")
	out := s.tool(t, "read PCR 16", "tpm2_pcrread", "sha256:16")
	var pcr16 string
	for sc := bufio.NewScanner(strings.NewReader(out)); sc.Scan(); {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "16:"); ok {
			pcr16 = strings.TrimSpace(v)
		}
	}
	if pcr16 == "" {
		t.Fatalf("read PCR 16 (%s): no \"16: 0x...\" line in tpm2_pcrread's output:\n%s", s.name, out)
	}
	res := mustCLI(t, nil, "attest", "tpm2-evidence", "--quote", s.path("quote.msg"), "--signature", s.path("quote.sig"),
		"--pcr", "16="+pcr16, "--event-log", eventLog, "--nonce", nonce)
	return s.write(t, "evidence.json", []byte(res.stdout))
}

// challenge asks member i for a nonce for device, with the CLI.
func attestChallenge(t *testing.T, c *harness.Cluster, env []string, i int, device string) string {
	t.Helper()
	res := mustCLI(t, env, "device", "challenge", device, "-o", "json", "--server", c.Member(i).APIAddr)
	var ch api.ChallengeResponse
	if err := json.Unmarshal([]byte(res.stdout), &ch); err != nil || len(ch.Nonce) != 64 || !ch.Expires.After(time.Now()) {
		t.Fatalf("challenge %s at %s: want {nonce: 64 hex, expires: later}, got %v\n%s", device, c.Member(i).ID, err, res)
	}
	return ch.Nonce
}

// attestCheck is the Check a gateway's Envoy sends for a meter's reading.
func attestCheck(spiffeID string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: spiffeID},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "POST", Path: "/v1/readings", Host: "readings." + attestTD,
		}},
	}}
}

// awaitDecision polls every member's ext_authz until each answers want for
// the device, with a denial reason containing each of reasons, before
// deadline; it fails naming the member and its last answer.
func awaitDecision(t *testing.T, c *harness.Cluster, clients []authv3.AuthorizationClient, step, spiffeID string, want codes.Code, deadline time.Time, reasons ...string) {
	t.Helper()
	for i, cl := range clients {
		var last string
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := cl.Check(ctx, attestCheck(spiffeID))
			cancel()
			body := resp.GetDeniedResponse().GetBody()
			ok := err == nil && codes.Code(resp.GetStatus().GetCode()) == want
			for _, r := range reasons {
				ok = ok && strings.Contains(body, r)
			}
			if ok {
				break
			}
			last = fmt.Sprintf("err %v, status %v, body %s", err, codes.Code(resp.GetStatus().GetCode()), body)
			if time.Now().After(deadline) {
				t.Fatalf("%s: ext_authz of %s (%s) did not answer %v %q for %s by %s; last answer: %s",
					step, c.Member(i).ID, c.Member(i).AuthzAddr, want, reasons, spiffeID, deadline.Format(time.RFC3339Nano), last)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestAttestWithAnIndependentTPM: devices with a real TPM 2.0 (swtpm, an
// implementation independent of Vigil's own simulator) driven by tpm2-tools
// attest through a 3-member cluster: enrolled at one member, challenged at
// another, verified through the third; the same evidence again is refused
// as a replay; every member's ext_authz then allows the device; a device
// that measured an unlisted firmware fails and is denied for it; a device
// using `vigil attest tpm` (go-tpm) instead of tpm2-tools passes; and once
// maxAge has passed the first device is denied again.
func TestAttestWithAnIndependentTPM(t *testing.T) {
	swtpmtest.Require(t, "swtpm", "tpm2_createek", "tpm2_createak", "tpm2_flushcontext", "tpm2_pcrextend", "tpm2_quote", "tpm2_pcrread")
	maxAge, err := topology.ParseMaxAge(attestMaxAge)
	if err != nil || maxAge != 8*time.Second {
		t.Fatalf("topology.ParseMaxAge(%q) = %v, %v; want 8s", attestMaxAge, maxAge, err)
	}
	fw310, fw320 := attestSHA("meter firmware 3.1.0"), attestSHA("meter firmware 3.2.0")
	rogue := attestSHA("meter firmware 3.2.0 with a patch nobody released")

	c := startCluster(t, 3)
	env := []string{"VIGIL_TOKEN_FILE=" + c.TokenFile()}
	server := func(i int) string { return c.Member(i).APIAddr }

	// The topology, checked offline, applied through member 0, and known
	// to every member before anything asks them about its devices.
	docPath := filepath.Join(t.TempDir(), "topology.yaml")
	if err := os.WriteFile(docPath, fmt.Appendf(nil, attestTopology, fw310, fw320), 0o600); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, nil, "topology", "validate", "-f", docPath)
	res := mustCLI(t, env, "topology", "apply", "-f", docPath, "--server", server(0))
	var rev topology.Revision
	if f := strings.Fields(res.stdout); len(f) == 0 || func() error { _, err := fmt.Sscan(f[len(f)-1], &rev); return err }() != nil {
		t.Fatalf("topology apply: no revision in its output\n%s", res)
	}
	for i := range c.Size() {
		cl := c.Client(i)
		cl.MinRevision = rev
		if _, err := cl.Topology(ctxFor(t, 30*time.Second)); err != nil {
			t.Fatalf("topology apply: %s did not reach revision %d: %v", c.Member(i).ID, rev, err)
		}
	}
	spiffeID := func(device string) string {
		res := mustCLI(t, env, "device", "get", device, "-o", "json", "--server", server(0))
		var s api.Subject
		if err := json.Unmarshal([]byte(res.stdout), &s); err != nil || !strings.HasPrefix(s.SPIFFEID, "spiffe://"+attestTD+"/") {
			t.Fatalf("device get %s: no SPIFFE ID (%v)\n%s", device, err, res)
		}
		return s.SPIFFEID
	}
	clients := make([]authv3.AuthorizationClient, c.Size())
	for i := range clients {
		clients[i], _ = authzClient(t, c, i)
	}

	// meter-1: not attested yet, so denied everywhere.
	id1 := spiffeID("meter-1")
	awaitDecision(t, c, clients, "meter-1 before attesting", id1, codes.PermissionDenied, time.Now().Add(10*time.Second), "has no attestation")

	// meter-1 runs firmware 3.2.0 on its own TPM.
	tpmA := startAttestSwtpm(t, "meter-1's TPM")
	ak1 := tpmA.makeAK(t)
	log1 := tpmA.measure(t, fw320)
	res = mustCLI(t, env, "device", "enroll", "meter-1", "--tpm-ak", ak1, "--server", server(0))
	if !strings.Contains(res.stdout, "enrolled") {
		t.Errorf("enroll meter-1 at %s: %s", c.Member(0).ID, res)
	}
	nonce1 := attestChallenge(t, c, env, 1, "meter-1")
	evidence1 := tpmA.quoteWithTools(t, nonce1, log1)
	res = runCLI(t, env, "device", "attest", "meter-1", "--evidence", evidence1, "--server", server(2))
	attested1 := time.Now()
	if res.code != 0 || !strings.Contains(res.stdout, "passed") || !strings.Contains(res.stdout, "firmware 3.2.0") {
		t.Fatalf("attest meter-1 at %s: want exit 0 and \"passed ... firmware 3.2.0\", got %s", c.Member(2).ID, res)
	}
	t.Logf("meter-1 attested through %s: %s", c.Member(2).ID, strings.TrimSpace(res.stdout))
	// Every member allows it, from its own replica (before maxAge runs out).
	awaitDecision(t, c, clients, "meter-1 attested", id1, codes.OK, attested1.Add(maxAge-time.Second))

	// The same evidence again, through another member: a replay.
	res = runCLI(t, env, "device", "attest", "meter-1", "--evidence", evidence1, "--server", server(1))
	if res.code == 0 || !strings.Contains(strings.ToLower(res.stdout+res.stderr), "replay") {
		t.Fatalf("the same evidence again at %s: want a non-zero exit and a message about a replay, got %s", c.Member(1).ID, res)
	}

	t.Logf("the same evidence at %s: exit %d: %s", c.Member(1).ID, res.code, strings.TrimSpace(res.stderr))
	// The replay is a monitor finding (nonce-replay, critical): the device
	// is quarantined on every member, whichever member owns it.
	awaitDecision(t, c, clients, "meter-1 after its evidence was replayed", id1, codes.PermissionDenied, time.Now().Add(10*time.Second),
		"quarantined", "nonce-replay")

	// meter-2's TPM measured a firmware that is not a reference value.
	tpmB := startAttestSwtpm(t, "meter-2's TPM")
	ak2 := tpmB.makeAK(t)
	log2 := tpmB.measure(t, rogue)
	mustCLI(t, env, "device", "enroll", "meter-2", "--tpm-ak", ak2, "--server", server(1))
	nonce2 := attestChallenge(t, c, env, 2, "meter-2")
	evidence2 := tpmB.quoteWithTools(t, nonce2, log2)
	res = runCLI(t, env, "device", "attest", "meter-2", "--evidence", evidence2, "--server", server(0))
	if res.code == 0 || !strings.Contains(res.stdout, "FAILED") || !strings.Contains(res.stdout, "firmware "+rogue+" is not a reference value") {
		t.Fatalf("attest meter-2 (unlisted firmware) at %s: want a non-zero exit, FAILED and \"firmware %s is not a reference value\", got %s", c.Member(0).ID, rogue, res)
	}
	t.Logf("meter-2 through %s: exit %d: %s", c.Member(0).ID, res.code, strings.TrimSpace(res.stdout))
	awaitDecision(t, c, clients, "meter-2 failed", spiffeID("meter-2"), codes.PermissionDenied, time.Now().Add(10*time.Second),
		"failed verification", "is not a reference value")

	// meter-3 uses vigil's own TPM commands (go-tpm) instead of tpm2-tools.
	var attested3 time.Time
	t.Run("vigil attest tpm", func(t *testing.T) {
		tpmC := startAttestSwtpm(t, "meter-3's TPM")
		res := mustCLI(t, nil, "attest", "tpm", "ak-public", "--tpm", tpmC.spec())
		if !strings.Contains(res.stderr, "created an ECDSA P-256 attestation key at persistent handle 0x81010002") {
			t.Errorf("ak-public on a fresh TPM: want it to say it created the AK, got %s", res)
		}
		again := mustCLI(t, nil, "attest", "tpm", "ak-public", "--tpm", tpmC.spec(), "--ak-handle", "0x81010002")
		if again.stdout != res.stdout {
			t.Fatalf("ak-public twice gives two keys:\n%s\n%s", res.stdout, again.stdout)
		}
		ak3 := tpmC.write(t, "ak.pem", []byte(res.stdout))
		log3 := tpmC.measure(t, fw310)
		mustCLI(t, env, "device", "enroll", "meter-3", "--tpm-ak", ak3, "--server", server(2))
		nonce3 := attestChallenge(t, c, env, 0, "meter-3")
		res = mustCLI(t, nil, "attest", "tpm", "quote", "--tpm", tpmC.spec(), "--nonce", nonce3, "--pcrs", "16", "--event-log", log3)
		evidence3 := tpmC.write(t, "evidence.json", []byte(res.stdout))
		res = runCLI(t, env, "device", "attest", "meter-3", "--evidence", evidence3, "--server", server(1))
		attested3 = time.Now()
		if res.code != 0 || !strings.Contains(res.stdout, "passed") || !strings.Contains(res.stdout, "firmware 3.1.0") {
			t.Fatalf("attest meter-3 at %s with vigil attest tpm quote's evidence: want exit 0 and \"passed ... firmware 3.1.0\", got %s", c.Member(1).ID, res)
		}
		awaitDecision(t, c, clients, "meter-3 attested", spiffeID("meter-3"), codes.OK, attested3.Add(maxAge-time.Second))
		// vigil flushed every transient object it loaded.
		if out := tpmC.tool(t, "transient objects after vigil's commands", "tpm2_getcap", "handles-transient"); strings.Contains(out, "0x80") {
			t.Errorf("vigil attest tpm left transient objects loaded in %s:\n%s", tpmC.name, out)
		}
	})

	// maxAge after meter-3's attestation it is denied again, everywhere.
	if attested3.IsZero() {
		t.Fatal("meter-3 did not attest")
	}
	if wait := time.Until(attested3.Add(maxAge)); wait > 0 {
		time.Sleep(wait)
	}
	awaitDecision(t, c, clients, "meter-3 after maxAge", spiffeID("meter-3"), codes.PermissionDenied, time.Now().Add(10*time.Second), "expired")
}
