package tpmplugin_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	"github.com/spiffe/spire-plugin-sdk/plugintest"
	agentna "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/nodeattestor/v1"
	servna "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/internal/spiretpm"
	"github.com/vigil-iot/vigil/internal/swtpmtest"
	"github.com/vigil-iot/vigil/spire/tpmplugin"
	"github.com/vigil-iot/vigil/topology"
)

const (
	fwGood = "1111111111111111111111111111111111111111111111111111111111111111"
	token  = "spire-tpm-0123456789abcdef"
)

// vigilAPI serves the two routes as Vigil does, for one enrolled gateway.
func vigilAPI(t *testing.T, ak []byte) *httptest.Server {
	key := []byte("0123456789abcdef0123456789abcdef")
	var mu sync.Mutex
	used := map[string]bool{}
	blk, _ := pem.Decode(ak)
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	refuse := func(w http.ResponseWriter, msg string) {
		w.WriteHeader(http.StatusForbidden)
		json.NewEncoder(w).Encode(map[string]string{"code": "refused", "message": msg})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+spiretpm.ChallengePath, func(w http.ResponseWriter, r *http.Request) {
		var req spiretpm.ChallengeRequest
		if r.Header.Get("Authorization") != "Bearer "+token || json.NewDecoder(r.Body).Decode(&req) != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if req.AKPublic != string(ak) {
			refuse(w, "the AK is not the one enrolled for "+req.Subject.String())
			return
		}
		n, exp, _ := attest.NewNonce(key, req.Subject.String(), time.Now(), time.Minute)
		json.NewEncoder(w).Encode(spiretpm.ChallengeResponse{Nonce: hex.EncodeToString(n), Expires: exp, PCRs: []int{16}})
	})
	mux.HandleFunc("POST "+spiretpm.AttestPath, func(w http.ResponseWriter, r *http.Request) {
		var req spiretpm.AttestRequest
		if json.NewDecoder(r.Body).Decode(&req) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		ev, _ := attest.ParseEvidence(req.Evidence)
		nonce, _ := hex.DecodeString(ev.Nonce)
		if _, err := attest.CheckNonce(key, req.Subject.String(), nonce, time.Now()); err != nil {
			refuse(w, err.Error())
			return
		}
		res := attest.Verify(req.Evidence, ev, attest.Enrolled{AK: pub}, attest.Policy{Formats: []string{topology.AttestTPM2Quote}, PCRs: []int{16},
			Firmware: []topology.FirmwareRef{{Version: "5.0.0", SHA256: fwGood}}}, nonce, time.Now())
		mu.Lock()
		replay := used[ev.Nonce]
		used[ev.Nonce] = true
		mu.Unlock()
		switch {
		case replay:
			w.WriteHeader(http.StatusConflict)
			json.NewEncoder(w).Encode(map[string]string{"code": "replay", "message": "nonce already used: this evidence is a replay"})
		case !res.Passed():
			refuse(w, req.Subject.String()+": attestation failed: "+strings.Join(res.Reasons, "; "))
		default:
			json.NewEncoder(w).Encode(spiretpm.AttestResponse{AgentID: "spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-1",
				Selectors: []string{"firmware:" + res.FirmwareVersion, "kind:gateway", "subject:gw-1", "zone:north"}})
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

type plugins struct {
	agent  *agentna.NodeAttestorPluginClient
	server *servna.NodeAttestorPluginClient
	logs   *bytes.Buffer
}

func start(t *testing.T, tpm *attest.SimTPM, vigilURL string) plugins {
	t.Helper()
	return startWith(t, func(tpmplugin.AgentConfig) (spiretpm.TPM, error) { return tpm, nil }, `subject = "gateway/gw-1"`, vigilURL)
}

// startWith serves both plugins, the agent's opening its TPM with open (nil:
// the real device) and configured with agentHCL.
func startWith(t *testing.T, open tpmplugin.OpenTPM, agentHCL, vigilURL string) plugins {
	t.Helper()
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte("# the SPIRE server's\nspire:"+token+"\n"), 0o600)

	var logs bytes.Buffer
	ap := &tpmplugin.AgentPlugin{Open: open}
	aClient, aConfig := new(agentna.NodeAttestorPluginClient), new(configv1.ConfigServiceClient)
	plugintest.ServeInBackground(t, plugintest.Config{PluginServer: agentna.NodeAttestorPluginServer(ap), PluginClient: aClient,
		ServiceServers: []pluginsdk.ServiceServer{configv1.ConfigServiceServer(ap)}, ServiceClients: []pluginsdk.ServiceClient{aConfig}})
	sp := new(tpmplugin.ServerPlugin)
	sClient, sConfig := new(servna.NodeAttestorPluginClient), new(configv1.ConfigServiceClient)
	plugintest.ServeInBackground(t, plugintest.Config{PluginServer: servna.NodeAttestorPluginServer(sp), PluginClient: sClient,
		ServiceServers: []pluginsdk.ServiceServer{configv1.ConfigServiceServer(sp)}, ServiceClients: []pluginsdk.ServiceClient{sConfig},
		Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Debug})})

	ctx := context.Background()
	core := &configv1.CoreConfiguration{TrustDomain: "city.example"}
	if _, err := aConfig.Configure(ctx, &configv1.ConfigureRequest{CoreConfiguration: core, HclConfiguration: agentHCL}); err != nil {
		t.Fatal(err)
	}
	if _, err := sConfig.Configure(ctx, &configv1.ConfigureRequest{CoreConfiguration: core,
		HclConfiguration: `vigil_api = "` + vigilURL + `"` + "\ntoken_file = \"" + tokFile + "\"\ntimeout = \"5s\""}); err != nil {
		t.Fatal(err)
	}
	return plugins{agent: aClient, server: sClient, logs: &logs}
}

// attest relays between the two plugins as SPIRE's agent and server do;
// tamper may change the agent's answer on its way.
func (p plugins) attest(t *testing.T, tamper func([]byte) []byte) (*servna.AgentAttributes, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	as, err := p.agent.AidAttestation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := p.server.Attest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first, err := as.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.Send(&servna.AttestRequest{Request: &servna.AttestRequest_Payload{Payload: first.GetPayload()}}); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := ss.Recv()
		if err != nil {
			as.CloseSend()
			return nil, err
		}
		if attrs := resp.GetAgentAttributes(); attrs != nil {
			as.CloseSend()
			return attrs, nil
		}
		if err := as.Send(&agentna.Challenge{Challenge: resp.GetChallenge()}); err != nil {
			t.Fatal(err)
		}
		answer, err := as.Recv()
		if err != nil {
			t.Fatal(err)
		}
		a := answer.GetChallengeResponse()
		if tamper != nil {
			a = tamper(a)
		}
		if err := ss.Send(&servna.AttestRequest{Request: &servna.AttestRequest_ChallengeResponse{ChallengeResponse: a}}); err != nil {
			t.Fatal(err)
		}
	}
}

// wantRefused checks err's code, and that the SPIRE server's log (the
// plugin's logger) holds the reason under the reference the agent was
// given, and the agent not the reason.
func (p plugins) wantRefused(t *testing.T, what string, err error, code codes.Code, reason string) {
	t.Helper()
	m := regexp.MustCompile(`\(ref ([0-9a-f]{8})\)`).FindStringSubmatch(status.Convert(err).Message())
	if status.Code(err) != code || m == nil {
		t.Fatalf("%s: err = %v, want %v with a reference", what, err, code)
	}
	if strings.Contains(err.Error(), reason) {
		t.Errorf("%s: the agent is told the reason: %v", what, err)
	}
	for _, l := range strings.Split(p.logs.String(), "\n") {
		if strings.Contains(l, "ref="+m[1]) && strings.Contains(l, reason) {
			return
		}
	}
	t.Fatalf("%s: no line of SPIRE's log has ref=%s and %q:\n%s", what, m[1], reason, p.logs.String())
}

func simTPM(t *testing.T, fw string) *attest.SimTPM {
	tpm, err := attest.NewSimTPM(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.MeasureFirmware(fw); err != nil {
		t.Fatal(err)
	}
	return tpm
}

func TestPluginsAttestThroughVigil(t *testing.T) {
	tpm := simTPM(t, fwGood)
	ak, _ := tpm.AKPublicPEM()
	p := start(t, tpm, vigilAPI(t, ak).URL)
	attrs, err := p.attest(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if attrs.SpiffeId != "spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-1" || !attrs.CanReattest ||
		strings.Join(attrs.SelectorValues, ",") != "firmware:5.0.0,kind:gateway,subject:gw-1,zone:north" {
		t.Fatalf("attributes: %+v", attrs)
	}

	// The same evidence again, to a new challenge: the server plugin sees
	// it answers another nonce and never asks Vigil.
	var old []byte
	if _, err := p.attest(t, func(b []byte) []byte { old = b; return b }); err != nil {
		t.Fatal(err)
	}
	_, err = p.attest(t, func([]byte) []byte { return old })
	p.wantRefused(t, "replayed quote", err, codes.PermissionDenied, "the quote answers another nonce")
	if strings.Contains(err.Error(), "nonce") {
		t.Fatalf("the agent is told the reason: %v", err)
	}
	// Garbage for evidence.
	if _, err := p.attest(t, func([]byte) []byte { return []byte("{") }); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("garbage evidence: %v", err)
	}
}

func TestPluginsRefuse(t *testing.T) {
	t.Run("unlisted firmware", func(t *testing.T) {
		tpm := simTPM(t, strings.Repeat("2", 64))
		ak, _ := tpm.AKPublicPEM()
		p := start(t, tpm, vigilAPI(t, ak).URL)
		_, err := p.attest(t, nil)
		p.wantRefused(t, "unlisted firmware", err, codes.PermissionDenied, "gateway/gw-1: attestation failed")
	})
	t.Run("an AK Vigil does not know", func(t *testing.T) {
		enrolled, _ := simTPM(t, fwGood).AKPublicPEM()
		p := start(t, simTPM(t, fwGood), vigilAPI(t, enrolled).URL)
		_, err := p.attest(t, nil)
		p.wantRefused(t, "an unknown AK", err, codes.PermissionDenied, "not the one enrolled")
	})
	t.Run("Vigil out of reach", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		p := start(t, simTPM(t, fwGood), srv.URL)
		_, err := p.attest(t, nil)
		p.wantRefused(t, "Vigil out of reach", err, codes.Unavailable, "no Vigil member answered")
	})
}

func TestConfigure(t *testing.T) {
	ctx := context.Background()
	core := &configv1.CoreConfiguration{TrustDomain: "city.example"}
	tok := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tok, []byte("spire:"+token+"\n"), 0o600)
	for _, tc := range []struct{ hcl, want string }{
		{`vigil_api = ["https://v:7070"]`, "token_file is required"},
		{`vigil_api = "https://v:7070"` + "\ntoken_file = \"/nonexistent\"", "no such file"},
		{`token_file = "` + tok + `"`, "vigil_api must be"},
		{`vigil_api = 7` + "\ntoken_file = \"" + tok + `"`, "vigil_api must be"},
		{`vigil_api = ["https://v:7070", 7]` + "\ntoken_file = \"" + tok + `"`, "vigil_api must be"},
		{`vigil_api = []` + "\ntoken_file = \"" + tok + `"`, "no Vigil servers"},
		{`vigil_api = ["http://vigil.example:7070"]` + "\ntoken_file = \"" + tok + `"`, "http only to loopback"},
		{`vigil_api = "https://v:7070"` + "\ntoken_file = \"" + tok + "\"\ntimeout = \"soon\"", "not a positive duration"},
		{`vigil_api = "https://v:7070"` + "\ntoken_file = \"" + tok + "\"\nca_file = \"" + tok + `"`, "holds no PEM certificate"},
		{`vigil_api = [`, "plugin_data"},
		{`vigil_api = "https://v:7070"` + "\ntoken_file = \"" + tok + "\"\nca_flie = \"/etc/ca.pem\"", "unknown key ca_flie"},
		{`servers = ["https://v:7070"]` + "\ntoken_file = \"" + tok + `"`, "unknown key servers"},
	} {
		sp := new(tpmplugin.ServerPlugin)
		_, err := sp.Configure(ctx, &configv1.ConfigureRequest{CoreConfiguration: core, HclConfiguration: tc.hcl})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("server %q: err = %v, want %q", tc.hcl, err, tc.want)
		}
		v, _ := sp.Validate(ctx, &configv1.ValidateRequest{CoreConfiguration: core, HclConfiguration: tc.hcl})
		if v.Valid || len(v.Notes) == 0 {
			t.Errorf("server %q: validate %+v", tc.hcl, v)
		}
	}
	tpm := simTPM(t, fwGood)
	for _, tc := range []struct{ hcl, want string }{
		{``, "subject"},
		{`subject = "service/s"`, "subject"},
		{`subject = "gateway/Bad"`, "subject"},
		{`subject = "gateway/gw-1"` + "\nek_cert = \"/nonexistent\"", "ek_cert"},
		{`subject = "gateway/gw-1"` + "\nevent_log = \"/nonexistent\"", "event_log"},
		{`subject = "gateway/gw-1"` + "\nak = \"0x81010002\"", "unknown key ak"},
	} {
		ap := &tpmplugin.AgentPlugin{Open: func(tpmplugin.AgentConfig) (spiretpm.TPM, error) { return tpm, nil }}
		_, err := ap.Configure(ctx, &configv1.ConfigureRequest{CoreConfiguration: core, HclConfiguration: tc.hcl})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("agent %q: err = %v, want %q", tc.hcl, err, tc.want)
		}
	}
	// Unconfigured plugins refuse.
	sp := new(tpmplugin.ServerPlugin)
	if err := sp.Attest(nil); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("unconfigured server: %v", err)
	}
}

// TestAgentPluginWithSwtpm runs the agent plugin on a real TPM 2.0 (swtpm):
// it creates the AK at its handle when there is none, and its quotes of the
// measured firmware pass.
func TestAgentPluginWithSwtpm(t *testing.T) {
	swtpmtest.Require(t, "swtpm", "tpm2_pcrextend")
	tpm := swtpmtest.Start(t, swtpmtest.Flags("not-need-init,startup-clear"))
	tpm.Tool(t, "tpm2_pcrextend", "16:sha256="+fwGood)
	events := filepath.Join(t.TempDir(), "events.json")
	os.WriteFile(events, []byte(`[{"pcr": 16, "sha256": "`+fwGood+`", "type": "firmware"}]`), 0o600)
	dev, err := tpmplugin.OpenDevice(tpmplugin.AgentConfig{TPM: tpm.TCTI(), AKHandle: tpmplugin.DefaultAKHandle, EventLog: events})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.AKPublicPEM(); err == nil {
		t.Fatal("a fresh swtpm has an AK already")
	}
	// Configure creates it; the Vigil stand-in is built on it after.
	hclText := `subject = "gateway/gw-1"` + "\ntpm = \"" + tpm.TCTI() + "\"\nevent_log = \"" + events + `"`
	probe := &tpmplugin.AgentPlugin{}
	if _, err := probe.Configure(context.Background(), &configv1.ConfigureRequest{HclConfiguration: hclText}); err != nil {
		t.Fatalf("configure on a fresh TPM: %v", err)
	}
	ak, err := dev.AKPublicPEM()
	if err != nil {
		t.Fatalf("no AK after Configure: %v", err)
	}
	p := startWith(t, nil, hclText, vigilAPI(t, ak).URL)
	attrs, err := p.attest(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(attrs.SelectorValues, "firmware:5.0.0") {
		t.Fatalf("attributes: %+v", attrs)
	}
	// Unlisted firmware measured on top: refused.
	tpm.Tool(t, "tpm2_pcrextend", "16:sha256="+strings.Repeat("3", 64))
	if _, err := p.attest(t, nil); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after an unlisted measurement: %v", err)
	}
}
