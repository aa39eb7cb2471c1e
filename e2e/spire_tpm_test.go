package e2e_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	spiretypes "github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/spiretpm"
	"github.com/vigil-iot/vigil/internal/swtpmtest"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/spire/spiretest"
	"github.com/vigil-iot/vigil/topology"
)

const tpmAKHandle = "0x81010002"

var (
	tpmFW500 = attestSHA("gateway firmware 5.0.0")
	tpmFW510 = attestSHA("gateway firmware 5.1.0")
	tpmFWBad = attestSHA("gateway firmware nobody listed")
)

// spireTPMDoc: gateways of class edge-gw attest with vigil_tpm, and their
// identities need a firmware selector of a current reference value.
var spireTPMDoc = `apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}, {name: cloud}]
gateways:
  - {name: gw-1, zone: north, class: edge-gw}
  - {name: gw-2, zone: north, class: edge-gw}
  - {name: gw-3, zone: north, class: edge-gw}
  - {name: gw-4, zone: north}
deviceClasses:
  - name: edge-gw
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      spire: required
      firmware:
        - {version: 5.0.0, sha256: ` + tpmFW500 + `}
        - {version: 5.1.0, sha256: ` + tpmFW510 + `}
  - name: light
devices:
  - {name: l-1, class: light, gateway: gw-1}
`

// tpmWorld is a cluster, a SPIRE server with the vigil_tpm plugin, and
// what the cases share.
type tpmWorld struct {
	c          *harness.Cluster
	srv        *spiretest.Server
	sc         *spire.Client
	env        []string
	spireToken string
	agentPlug  harness.SPIRETPMPlugin
	apiAddrs   []string
}

func startTPMWorld(t testing.TB, doc string) *tpmWorld {
	t.Helper()
	swtpmtest.Require(t, "swtpm", "tpm2_pcrextend", "tpm2_pcrreset", "tpm2_flushcontext")
	if _, err := spiretest.Binaries(); err != nil {
		t.Skipf("%v: %v", harness.ErrNoSPIRE, err)
	}
	serverPlug, agentPlug, err := harness.BuildSPIRETPM(filepath.Dir(vigilBin)) // built once, kept for the process
	if err != nil {
		t.Fatal(err)
	}
	// The members need the SPIRE server's socket and the server the
	// members' addresses: the socket's path is chosen first.
	sockDir, err := os.MkdirTemp("", "vtpm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	socket := filepath.Join(sockDir, "api.sock")
	tok := make([]byte, 16)
	rand.Read(tok)
	w := &tpmWorld{spireToken: hex.EncodeToString(tok), agentPlug: agentPlug}
	tokenFile := filepath.Join(sockDir, "spire-tpm.tokens")
	if err := os.WriteFile(tokenFile, []byte("spire:"+w.spireToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.c = harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, Args: []string{
		"--spire-socket", socket, "--spire-gateway-selector", "unix:uid:" + strconv.Itoa(os.Getuid()), "--spire-resync", "10s",
		"--spire-tpm-token-file", tokenFile}})
	w.env = []string{"VIGIL_TOKEN=" + w.c.Token()}
	var servers []string
	for i := range w.c.Size() {
		w.apiAddrs = append(w.apiAddrs, "http://"+w.c.Member(i).APIAddr)
		servers = append(servers, strconv.Quote(w.apiAddrs[i]))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := w.c.Client(0).ApplyTopology(ctx, []byte(doc)); err != nil {
		t.Fatalf("applying the topology: %v", err)
	}

	w.srv, err = spiretest.StartServerWith("", "city.example", "server-vigil-tpm.conf", map[string]string{
		"SOCKET_PATH": socket, "AGENT_TTL": "1m", "PLUGIN_CMD": serverPlug.Path, "PLUGIN_CHECKSUM": serverPlug.SHA256,
		"VIGIL_SERVERS": strings.Join(servers, ", "), "TOKEN_FILE": tokenFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spire-server log (tail):\n%s", w.srv.Tail(60))
		}
		w.srv.Close()
	})
	if w.sc, err = spire.Dial(socket); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.sc.Close() })
	return w
}

// tpmGateway is a gateway's swtpm with an enrolled AK and measured firmware.
type tpmGateway struct {
	*attestTPM
	name, events string
}

func (w *tpmWorld) gateway(t *testing.T, name, firmware string) *tpmGateway {
	t.Helper()
	g := &tpmGateway{attestTPM: startAttestSwtpm(t, name), name: name}
	res := mustCLI(t, nil, "attest", "tpm", "ak-public", "--tpm", g.spec(), "--ak-handle", tpmAKHandle)
	ak := g.write(t, "ak.pem", []byte(res.stdout))
	mustCLI(t, w.env, "gateway", "enroll", name, "--tpm-ak", ak, "--server", w.c.Member(0).APIAddr)
	g.events = g.measure(t, firmware)
	return g
}

// remeasure resets PCR 16 (resettable from locality 0) and measures
// another firmware, as a reflashed and rebooted gateway would.
func (g *tpmGateway) remeasure(t *testing.T, firmware string) {
	t.Helper()
	g.tool(t, "reset PCR 16", "tpm2_pcrreset", "16")
	g.measure(t, firmware)
}

func (w *tpmWorld) agentValues(g *tpmGateway) map[string]string {
	return map[string]string{"DELEGATE_ID": "spiffe://city.example/zone/north/gateway/" + g.name,
		"PLUGIN_CMD": w.agentPlug.Path, "PLUGIN_CHECKSUM": w.agentPlug.SHA256,
		"SUBJECT": "gateway/" + g.name, "TPM": g.spec(), "AK_HANDLE": tpmAKHandle, "EVENT_LOG": g.events}
}

// startAgent runs spire-agent for g with vigil_tpm (no join token); err
// is set when it exits before it is healthy.
func (w *tpmWorld) startAgent(t *testing.T, g *tpmGateway) (*spiretest.Agent, error) {
	t.Helper()
	a, err := w.srv.NewAgent("", "agent-vigil-tpm.conf", w.agentValues(g))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && a.Process != nil {
			t.Logf("spire-agent %s log (tail):\n%s", g.name, a.Tail(30))
		}
		if a.Process != nil {
			a.Stop()
		}
		os.RemoveAll(a.Dir)
	})
	start := time.Now()
	err = a.Restart()
	if err == nil {
		t.Logf("%s: spire-agent healthy %v after its start", g.name, time.Since(start).Round(time.Millisecond))
	}
	return a, err
}

// agentShow is `spire-server agent show` for id ("" if it has no agent).
func (w *tpmWorld) agentShow(t *testing.T, id string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(w.srv.Bin, "spire-server"), "agent", "show", "-socketPath", w.srv.Socket, "-spiffeID", id).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

func (w *tpmWorld) serverLog() string {
	b, _ := os.ReadFile(w.srv.Log)
	return string(b)
}

// TestSPIRETPMNodeAttestation runs the real spire-server and spire-agent
// (v1.13.3) with the vigil_tpm plugins and swtpm as each gateway's TPM,
// against a 3-member Vigil cluster.
func TestSPIRETPMNodeAttestation(t *testing.T) {
	w := startTPMWorld(t, spireTPMDoc)
	gw1 := w.gateway(t, "gw-1", tpmFW500)
	agentID := spire.TPMAgentID("city.example", topology.GatewaySubject("gw-1"))

	// 1. A gateway running listed firmware attests and gets the selector
	// and, through its node alias, its devices' identities.
	a1, err := w.startAgent(t, gw1)
	if err != nil {
		t.Fatalf("gw-1's agent: %v", err)
	}
	if n := agentStoredSVIDs(t, a1); n == 0 {
		t.Fatal("gw-1's agent stored no SVID")
	}
	show := w.agentShow(t, agentID)
	for _, want := range []string{"vigil_tpm:firmware:5.0.0", "vigil_tpm:firmware-sha256:" + tpmFW500, "vigil_tpm:ak:", "vigil_tpm:subject:gw-1",
		"vigil_tpm:kind:gateway", "vigil_tpm:zone:north", "vigil_tpm:class:edge-gw"} {
		if !strings.Contains(show, want) {
			t.Errorf("spire-server agent show %s lacks %s:\n%s", agentID, want, show)
		}
	}
	if l := gatewayAgents(t, w.env, w.c.Member(1).APIAddr, "gw-1"); len(l) != 1 || !l[0].Attested || l[0].Agent == nil ||
		l[0].Agent.AttestationType != spire.TPMAttestor || l[0].Agent.ID != agentID || !l[0].Agent.CanReattest {
		t.Errorf("vigil gateway list, gw-1: %+v", l)
	}
	start := time.Now()
	svid, err := spire.FetchDeviceSVID(ctxFor(t, 60*time.Second), a1.AdminSocket, "l-1")
	if err != nil {
		t.Fatalf("l-1's SVID through gw-1's delegated identity: %v", err)
	}
	t.Logf("l-1's X509-SVID %s %v after gw-1's agent was healthy", svid.ID, time.Since(start).Round(time.Millisecond))
	// Join tokens are for gateways without a TPM.
	if res := runCLI(t, w.env, "gateway", "token", "gw-1", "--server", w.c.Member(1).APIAddr); res.code == 0 || !strings.Contains(res.stderr, "onboards with vigil_tpm") {
		t.Errorf("a join token for gw-1, which onboards with vigil_tpm: %s", res)
	}
	mustCLI(t, w.env, "gateway", "token", "gw-4", "--server", w.c.Member(1).APIAddr)

	// 2. Unlisted firmware: refused, the reason in the server's log.
	gw2 := w.gateway(t, "gw-2", tpmFWBad)
	if _, err := w.startAgent(t, gw2); err == nil {
		t.Fatal("gw-2, running unlisted firmware, attested")
	}
	if log := w.serverLog(); !strings.Contains(log, "gateway/gw-2: attestation failed") {
		t.Fatalf("the server's log does not say why gw-2 was refused:\n%s", w.srv.Tail(20))
	}
	t.Logf("gw-2 refused: %s", lineWith(w.serverLog(), "gateway/gw-2: attestation failed"))

	// 3. A rogue agent: a quote replayed into a new attestation, the same
	// evidence given to Vigil again, and an AK Vigil never enrolled.
	gw3 := w.gateway(t, "gw-3", tpmFW500)
	w.rogue(t, gw3)

	// 4. A quarantined gateway's agent is banned and cannot attest again;
	// released, its agent is evicted and attests afresh.
	mustCLI(t, w.env, "gateway", "quarantine", "gw-1", "--reason", "e2e: tamper switch", "--server", w.c.Member(2).APIAddr)
	testwait.For(t, 30*time.Second, "gw-1's agent to be banned and to exit", func() bool {
		select {
		case <-a1.Exited():
			return true
		default:
			return false
		}
	})
	if err := a1.Restart(); err == nil {
		t.Fatal("the quarantined gateway's agent attested again")
	}
	refusal := lineWith(w.serverLog(), "gateway gw-1 is quarantined")
	if refusal == "" {
		t.Fatalf("the server's log does not say why the quarantined gw-1 was refused:\n%s", w.srv.Tail(20))
	}
	t.Logf("gw-1 quarantined, restarted: %s", refusal)
	mustCLI(t, w.env, "gateway", "release", "gw-1", "--server", w.c.Member(2).APIAddr)
	testwait.For(t, 30*time.Second, "gw-1's banned agent to be evicted", func() bool { return w.agentShow(t, agentID) == "" })
	if err := a1.Restart(); err != nil {
		t.Fatalf("gw-1's agent after the release: %v", err)
	}
	if _, err := spire.FetchDeviceSVID(ctxFor(t, 60*time.Second), a1.AdminSocket, "l-1"); err != nil {
		t.Fatalf("l-1's SVID after gw-1's release: %v", err)
	}

	// 5. Reflashed with another listed version, the gateway keeps its
	// identities and its selector follows at the next re-attestation;
	// reflashed with unlisted firmware, it loses them.
	gw1.remeasure(t, tpmFW510)
	testwait.For(t, 90*time.Second, "gw-1 to re-attest with firmware 5.1.0", func() bool {
		return strings.Contains(w.agentShow(t, agentID), "vigil_tpm:firmware:5.1.0")
	})
	if _, err := spire.FetchDeviceSVID(ctxFor(t, 30*time.Second), a1.AdminSocket, "l-1"); err != nil {
		t.Fatalf("l-1's SVID after gw-1 moved to 5.1.0: %v", err)
	}
	gw1.remeasure(t, tpmFWBad)
	changed := time.Now()
	testwait.For(t, 120*time.Second, "gw-1's agent, reflashed with unlisted firmware, to be refused and exit", func() bool {
		select {
		case <-a1.Exited():
			return true
		default:
			return false
		}
	})
	t.Logf("gw-1's agent exited %v after its firmware changed: %s", time.Since(changed).Round(time.Millisecond),
		lineWith(w.serverLog(), "gateway/gw-1: attestation failed"))
	if show := w.agentShow(t, agentID); show != "" {
		t.Errorf("gw-1's agent is still attested after its firmware failed:\n%s", show)
	}
	if svids := agentStoredSVIDs(t, a1); svids != 0 {
		t.Errorf("gw-1's agent kept its SVID on disk (%d certificates)", svids)
	}
}

// agentStoredSVIDs counts the certificates of the agent's SVID in its
// data dir (agent-data.json, SPIRE v1.13.3's pkg/agent/storage); the agent
// deletes its SVID when it is refused for good.
func agentStoredSVIDs(t *testing.T, a *spiretest.Agent) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(a.Dir, "data", "agent-data.json"))
	if err != nil {
		t.Fatalf("the agent's stored data: %v", err)
	}
	var data struct {
		SVID [][]byte `json:"svid"`
	}
	if err := json.Unmarshal(b, &data); err != nil {
		t.Fatalf("the agent's stored data: %v", err)
	}
	return len(data.SVID)
}

// wantRefused checks that SPIRE refused an attestation with a reference
// and no reason, and that its log holds the reason under that reference.
func (w *tpmWorld) wantRefused(t *testing.T, what string, err error, reason string) {
	t.Helper()
	m := regexp.MustCompile(`\(ref ([0-9a-f]{8})\)`).FindStringSubmatch(status.Convert(err).Message())
	if status.Code(err) != codes.PermissionDenied || m == nil {
		t.Fatalf("%s: %v, want PermissionDenied with a reference", what, err)
	}
	if strings.Contains(err.Error(), reason) {
		t.Errorf("%s: the caller is told the reason: %v", what, err)
	}
	testwait.For(t, 5*time.Second, what+": the reason in the server's log", func() bool {
		for _, l := range strings.Split(w.serverLog(), "\n") {
			if strings.Contains(l, "ref="+m[1]) && strings.Contains(l, reason) {
				return true
			}
		}
		return false
	})
}

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// rogueAgent speaks SPIRE's agent API itself, as an attacker on the
// network (or the benchmark) would.
type rogueAgent struct {
	conn *grpc.ClientConn
	cl   agentv1.AgentClient
	csr  []byte
}

func newRogueAgent(t testing.TB, srv *spiretest.Server) *rogueAgent {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(srv.TrustDomain)
	bundle, err := x509bundle.Load(td, srv.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(td, "/spire/server")))
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", srv.Port), grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	return &rogueAgent{conn: conn, cl: agentv1.NewAgentClient(conn), csr: csr}
}

func tpmPayload(s topology.Subject, akPEM []byte) []byte {
	b, _ := json.Marshal(spiretpm.Payload{V: spiretpm.WireVersion, Subject: s, AKPublic: string(akPEM)})
	return b
}

// attest runs one attestation with payload p; answer turns each challenge
// into the evidence sent (nil on a challenge it cannot parse).
func (r *rogueAgent) attest(p []byte, answer func(ch *spiretpm.Challenge) []byte) (*agentv1.AttestAgentResponse_Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := r.cl.AttestAgent(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
		Data: &spiretypes.AttestationData{Type: spire.TPMAttestor, Payload: p}, Params: &agentv1.AgentX509SVIDParams{Csr: r.csr}}}}); err != nil {
		return nil, err
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return nil, err
		}
		if res := resp.GetResult(); res != nil {
			return res, nil
		}
		ch, err := spiretpm.ParseChallenge(resp.GetChallenge())
		if err != nil {
			return nil, fmt.Errorf("the server's challenge: %w", err)
		}
		if err := s.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_ChallengeResponse{ChallengeResponse: answer(ch)}}); err != nil {
			return nil, err
		}
	}
}

// rogue attacks with gw's TPM: a quote replayed into a new attestation,
// the same evidence given to Vigil again, and an AK Vigil never enrolled.
func (w *tpmWorld) rogue(t *testing.T, g *tpmGateway) {
	t.Helper()
	r := newRogueAgent(t, w.srv)
	ak, _ := os.ReadFile(g.path("ak.pem"))
	subject := topology.GatewaySubject(g.name)
	payload := func(akPEM []byte) []byte { return tpmPayload(subject, akPEM) }
	attest := r.attest
	quote := func(ch *spiretpm.Challenge) []byte {
		res := mustCLI(t, nil, "attest", "tpm", "quote", "--nonce", ch.Nonce, "--tpm", g.spec(), "--ak-handle", tpmAKHandle,
			"--pcrs", "16", "--event-log", g.events)
		return []byte(res.stdout)
	}

	// An AK Vigil never enrolled for the gateway.
	other := startAttestSwtpm(t, g.name+"-impostor")
	otherAK := mustCLI(t, nil, "attest", "tpm", "ak-public", "--tpm", other.spec(), "--ak-handle", tpmAKHandle).stdout
	_, err := attest(payload([]byte(otherAK)), func(*spiretpm.Challenge) []byte { t.Fatal("challenged with an unenrolled AK"); return nil })
	w.wantRefused(t, "an unenrolled AK", err, "not the one enrolled")

	// The genuine attestation, whose evidence is kept.
	var kept []byte
	res, err := attest(payload(ak), func(ch *spiretpm.Challenge) []byte { kept = quote(ch); return kept })
	if err != nil {
		t.Fatalf("the rogue's genuine attestation: %v", err)
	}
	if res.GetSvid().GetId().GetPath() != "/spire/agent/vigil_tpm/gateway/"+g.name {
		t.Fatalf("agent SVID: %v", res.GetSvid().GetId())
	}
	// Replayed into a new attestation.
	_, err = attest(payload(ak), func(*spiretpm.Challenge) []byte { return kept })
	w.wantRefused(t, "a replayed quote", err, "answers another nonce")
	// Replayed with its nonce field rewritten to the new nonce: the quote
	// still names the old one; Vigil refuses it and records nothing.
	_, err = attest(payload(ak), func(ch *spiretpm.Challenge) []byte {
		var ev map[string]any
		json.Unmarshal(kept, &ev)
		ev["nonce"] = ch.Nonce
		b, _ := json.Marshal(ev)
		return b
	})
	w.wantRefused(t, "a replayed quote under a new nonce", err, "not recorded")
	sub := mustCLI(t, w.env, "gateway", "get", g.name, "-o", "json", "--server", w.c.Member(0).APIAddr).stdout
	if !strings.Contains(sub, `"passed"`) || strings.Contains(sub, `"failed"`) {
		t.Fatalf("the replayed quote was recorded as a failure:\n%s", sub)
	}
	// Given to Vigil again, by whoever holds the SPIRE server's token.
	body, _ := json.Marshal(spiretpm.AttestRequest{Subject: topology.GatewaySubject(g.name), Evidence: kept})
	req, _ := http.NewRequest(http.MethodPost, w.apiAddrs[0]+spiretpm.AttestPath, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+w.spireToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("the same evidence to Vigil again: %s, want 409 (replay)", resp.Status)
	}
}
