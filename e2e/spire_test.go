package e2e_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/spire/spiretest"
)

const (
	gwNorth1   = "spiffe://city.example/zone/north/gateway/gw-north-1"
	slcN1001ID = "spiffe://city.example/zone/north/device/slc-n1-001"
)

// TestSPIREIdentities runs a 3-member cluster against the real SPIRE
// (server and a gateway's agent on 127.0.0.1 and unix sockets): the gateway
// is onboarded through Vigil, a device gets its X509-SVID through the
// gateway's delegated identity, the agent's SDS serves what the xDS config
// names, and removal and quarantine take identities away.
func TestSPIREIdentities(t *testing.T) {
	srv := spireServer(t)
	uid := strconv.Itoa(os.Getuid())
	// This test process plays the gateway's Envoy and device bridge: the
	// gateway's binding gives processes of its uid the gateway's SVID.
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, Args: []string{
		"--spire-socket", srv.Socket, "--spire-gateway-selector", "unix:uid:" + uid, "--spire-resync", "10s"}})
	env := []string{"VIGIL_TOKEN=" + c.Token()}
	follower := c.Member(aFollower(t, c)).APIAddr
	path, doc := smartCity(t)
	mustCLI(t, env, "topology", "apply", "-f", path, "--server", follower)
	sc, err := spire.Dial(srv.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	const smartCityServices = 4
	testwait.For(t, 30*time.Second, "an entry for every device and service", func() bool {
		list, err := sc.ListEntries(ctxFor(t, 10*time.Second), "vigil", "")
		return err == nil && len(list) == smartCityDevices+smartCityServices
	})

	// Onboarding goes through a follower, which forwards to the leader.
	var tok spire.Token
	res := mustCLI(t, env, "gateway", "token", "gw-north-1", "--ttl", "10m", "-o", "json", "--server", follower)
	if err := json.Unmarshal([]byte(res.stdout), &tok); err != nil || tok.Token == "" || tok.SPIFFEID != gwNorth1 {
		t.Fatalf("gateway token: %+v, %v\n%s", tok, err, res)
	}
	agent, err := harness.StartSPIREAgent(t, srv, tok.Token, gwNorth1)
	if err != nil {
		t.Fatal(err)
	}
	list := gatewayAgents(t, env, follower, "gw-north-1")
	if len(list) != 1 || !list[0].Attested || list[0].Agent.AttestationType != "join_token" || list[0].Agent.Banned {
		t.Fatalf("gateway list after the agent joined: %+v", list)
	}
	if out := mustCLI(t, env, "gateway", "list", "--server", follower).stdout; !strings.Contains(out, tok.AgentID) {
		t.Errorf("gateway list table lacks the agent:\n%s", out)
	}

	start := time.Now()
	svid, err := spire.FetchDeviceSVID(ctxFor(t, 30*time.Second), agent.AdminSocket, "slc-n1-001")
	if err != nil {
		t.Fatalf("device SVID through the gateway's delegated identity: %v", err)
	}
	if svid.ID.String() != slcN1001ID {
		t.Errorf("device SVID is for %s, want %s", svid.ID, slcN1001ID)
	}
	t.Logf("device X509-SVID through delegated identity %v after the agent was healthy", time.Since(start).Round(time.Millisecond))

	checkSDS(t, env, follower, agent)

	// The gateway's bridge keeps its devices' SVIDs in files; another
	// gateway's device in its list gets none.
	bridgeDir := filepath.Join(t.TempDir(), "devices")
	devicesFile := filepath.Join(t.TempDir(), "devices.txt")
	os.WriteFile(devicesFile, []byte("# gw-north-1\nslc-n1-001\nslc-n1-002\nslc-n1-003\nslc-s1-001 # not ours\n"), 0o600)
	bridge := startBridge(t, agent.AdminSocket, devicesFile, bridgeDir)
	testwait.For(t, 30*time.Second, "the bridge to write slc-n1-001's SVID and the bundle", func() bool {
		_, err1 := os.Stat(filepath.Join(bridgeDir, "slc-n1-001", "svid.key"))
		_, err2 := os.Stat(filepath.Join(bridgeDir, "bundle.pem"))
		return err1 == nil && err2 == nil
	})
	checkBridgeFiles(t, bridgeDir, "slc-n1-001", slcN1001ID)

	// A device removed from the topology loses its entry and its SVID.
	removed := bytes.Replace(doc, []byte("  - {name: slc-n1-002,"), []byte("  # - {name: slc-n1-002,"), 1)
	removedPath := filepath.Join(t.TempDir(), "topology.yaml")
	os.WriteFile(removedPath, removed, 0o600)
	mustCLI(t, env, "topology", "apply", "-f", removedPath, "--server", follower)
	waitNoEntry(t, sc, "vigil.device.slc-n1-002")
	waitNoSVID(t, agent, "slc-n1-002")
	waitNoDir(t, bridgeDir, "slc-n1-002")

	// A quarantined device gets no new SVID.
	mustCLI(t, env, "device", "quarantine", "slc-n1-003", "--reason", "e2e", "--server", follower)
	waitNoEntry(t, sc, "vigil.device.slc-n1-003")
	waitNoSVID(t, agent, "slc-n1-003")
	waitNoDir(t, bridgeDir, "slc-n1-003")
	if _, err := os.Stat(filepath.Join(bridgeDir, "slc-s1-001")); err == nil {
		t.Error("the bridge holds an SVID of another gateway's device")
	}
	checkBridgeFiles(t, bridgeDir, "slc-n1-001", slcN1001ID)
	bridge.Stop(10 * time.Second)

	// A quarantined gateway's agent is banned and cannot come back; no
	// token is issued for it meanwhile.
	mustCLI(t, env, "gateway", "quarantine", "gw-north-1", "--reason", "e2e", "--server", follower)
	testwait.For(t, 10*time.Second, "the gateway's agent to be banned", func() bool {
		l := gatewayAgents(t, env, follower, "gw-north-1")
		return len(l) == 1 && l[0].Agent != nil && l[0].Agent.Banned
	})
	if err := agent.Restart(); err == nil {
		t.Error("the banned agent restarted and became healthy again")
	} else {
		t.Logf("the banned agent, restarted: %s", lastLine(err.Error()))
	}
	if r := runCLI(t, env, "gateway", "token", "gw-north-1", "--server", follower); r.code == 0 || !strings.Contains(r.stderr, "quarantined") {
		t.Errorf("token for a quarantined gateway: %s", r)
	}

	// Release: the banned agent is evicted; a new token onboards again.
	mustCLI(t, env, "gateway", "release", "gw-north-1", "--server", follower)
	testwait.For(t, 10*time.Second, "the banned agent's binding to go", func() bool { return len(gatewayAgents(t, env, follower, "gw-north-1")) == 0 })
	if _, found, _ := getAgent(t, sc, tok.AgentID); found {
		t.Error("the banned agent's record is still on the server after the release")
	}
	mustCLI(t, env, "gateway", "token", "gw-north-1", "--server", follower)
}

func gatewayAgents(t *testing.T, env []string, server, gateway string) []spire.BoundAgent {
	t.Helper()
	res := mustCLI(t, env, "gateway", "list", "-o", "json", "--server", server)
	var list []spire.SubjectAgents
	if err := json.Unmarshal([]byte(res.stdout), &list); err != nil {
		t.Fatalf("gateway list: %v\n%s", err, res)
	}
	for _, s := range list {
		if s.Subject.Name == gateway {
			return s.Agents
		}
	}
	t.Fatalf("gateway list has no %s:\n%s", gateway, res.stdout)
	return nil
}

func getAgent(t *testing.T, sc *spire.Client, id string) (spire.Agent, bool, error) {
	return sc.GetAgent(ctxFor(t, 10*time.Second), id)
}

func waitNoEntry(t *testing.T, sc *spire.Client, id string) {
	t.Helper()
	testwait.For(t, 10*time.Second, "entry "+id+" to go", func() bool {
		_, found, err := sc.GetEntry(ctxFor(t, 10*time.Second), id)
		return err == nil && !found
	})
}

// waitNoSVID waits (up to 30 s: the agent syncs its entries every few
// seconds) until the agent hands out no SVID for device.
func waitNoSVID(t *testing.T, a *spiretest.Agent, device string) {
	t.Helper()
	testwait.For(t, 30*time.Second, "the agent to stop issuing an SVID for "+device, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := spire.FetchDeviceSVID(ctx, a.AdminSocket, device)
		return err != nil && (errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded)
	})
}

// checkSDS asks the agent's SDS (as the gateway's Envoy would) for every
// secret the gateway's xDS configuration names, and checks it gets each.
func checkSDS(t *testing.T, env []string, server string, a *spiretest.Agent) {
	t.Helper()
	dump := mustCLI(t, env, "xds", "dump", "--node", "gw-north-1", "--server", server).stdout
	names := sdsNames(t, dump)
	if !slices.Contains(names, gwNorth1) || !slices.Contains(names, "spiffe://city.example") {
		t.Fatalf("xds dump of gw-north-1 names SDS secrets %v; want the gateway's SVID and the trust bundle", names)
	}
	conn, err := grpc.NewClient("unix://"+a.WorkloadSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctxFor(t, 10*time.Second), &discoveryv3.DiscoveryRequest{
		Node: &corev3.Node{Id: "gw-north-1", Cluster: "north"}, ResourceNames: names,
		TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
	})
	if err != nil {
		t.Fatalf("SDS FetchSecrets %v: %v", names, err)
	}
	var got []string
	for _, r := range resp.Resources {
		var s tlsv3.Secret
		if err := r.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		got = append(got, s.Name)
	}
	slices.Sort(got)
	if !slices.Equal(got, names) {
		t.Errorf("SDS served %v, want %v", got, names)
	}
}

// sdsNames collects, sorted and once each, the names of the SDS secrets
// (every object with an sdsConfig) in an xds dump.
func sdsNames(t *testing.T, dump string) []string {
	t.Helper()
	var names []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if _, ok := v["sdsConfig"]; ok {
				if n, ok := v["name"].(string); ok {
					names = append(names, n)
				}
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	dec := yaml.NewDecoder(strings.NewReader(dump))
	for {
		var doc any
		if err := dec.Decode(&doc); err != nil {
			break
		}
		walk(doc)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// startBridge runs "vigil gateway bridge" as this test's process does its
// work: the same uid, so the agent hands it the gateway's SVID.
func startBridge(t *testing.T, adminSocket, devicesFile, dir string) *harness.Process {
	t.Helper()
	cmd := exec.Command(vigilBin, "gateway", "bridge", "--admin-socket", adminSocket,
		"--devices-file", devicesFile, "--out", dir, "--resync", "1s")
	logPath := filepath.Join(t.TempDir(), "bridge.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	p, err := harness.StartProcess(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		log.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("bridge log:\n%s", out)
		}
	})
	return p
}

// checkBridgeFiles checks dir/device holds a key only its owner reads and
// a certificate for id that the bundle verifies.
func checkBridgeFiles(t *testing.T, dir, device, id string) {
	t.Helper()
	info, err := os.Stat(filepath.Join(dir, device, "svid.key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("%s's key: %v, mode %v", device, err, info.Mode().Perm())
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, device, "svid.pem"), filepath.Join(dir, device, "svid.key"))
	if err != nil {
		t.Fatalf("%s's SVID files: %v", device, err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	bundle, err := os.ReadFile(filepath.Join(dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		c, _ := x509.ParseCertificate(der)
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("%s's SVID does not chain to the bridge's bundle: %v", device, err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("%s's SVID is for %v, want %s", device, leaf.URIs, id)
	}
}

func waitNoDir(t *testing.T, dir, device string) {
	t.Helper()
	testwait.For(t, 30*time.Second, "the bridge to remove "+device+"'s files", func() bool {
		_, err := os.Stat(filepath.Join(dir, device))
		return errors.Is(err, os.ErrNotExist)
	})
}
