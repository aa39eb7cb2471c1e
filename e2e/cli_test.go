package e2e_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/e2e/harness"
)

func TestCLIWalkthrough(t *testing.T) {
	c := startCluster(t, 1)
	path, _ := smartCity(t)
	server := c.Member(0).APIAddr
	env := []string{"VIGIL_TOKEN_FILE=" + c.TokenFile()}
	const device = "slc-n2-004"
	const wantID = "spiffe://city.example/zone/north/device/" + device

	res := mustCLI(t, nil, "topology", "validate", "-f", path)
	if !strings.Contains(res.stdout, "is valid") || !strings.Contains(res.stdout, fmt.Sprintf("%d devices", smartCityDevices)) {
		t.Errorf("topology validate: want it to say the document is valid with %d devices, got %s", smartCityDevices, res)
	}

	res = mustCLI(t, env, "topology", "apply", "-f", path, "--server", server)
	if !strings.Contains(res.stdout, "applied") {
		t.Errorf("topology apply: want it to say applied, got %s", res)
	}

	getDevice := func(step string) *api.Subject {
		t.Helper()
		res := mustCLI(t, env, "device", "get", device, "-o", "json", "--server", server)
		var s api.Subject
		if err := json.Unmarshal([]byte(res.stdout), &s); err != nil {
			t.Fatalf("%s: device get -o json: output is not a subject: %v\n%s", step, err, res)
		}
		return &s
	}
	s := getDevice("after apply")
	if s.SPIFFEID != wantID || s.Name != device || s.Zone != "north" || s.Quarantined {
		t.Errorf("device get after apply: got name %q zone %q SPIFFE ID %q quarantined %v; want %q, north, %q, false",
			s.Name, s.Zone, s.SPIFFEID, s.Quarantined, device, wantID)
	}

	mustCLI(t, env, "device", "quarantine", device, "--reason", "x", "--server", server)
	s = getDevice("after quarantine")
	if !s.Quarantined || s.State == nil || s.State.Quarantine == nil || s.State.Quarantine.Reason != "x" {
		t.Errorf("device get after quarantine --reason x: got quarantined %v, state %+v; want quarantined with reason \"x\"", s.Quarantined, s.State)
	}
	quarantinedAt := s.Revision

	mustCLI(t, env, "device", "release", device, "--server", server)
	s = getDevice("after release")
	if s.Quarantined || s.Revision <= quarantinedAt {
		t.Errorf("device get after release: got quarantined %v at revision %d; want not quarantined, at a revision after %d",
			s.Quarantined, s.Revision, quarantinedAt)
	}
	released := s.Revision

	// The server comes from the environment this time.
	res = mustCLI(t, append(env, "VIGIL_SERVER="+server), "cluster", "status", "-o", "json")
	var st api.ClusterStatus
	if err := json.Unmarshal([]byte(res.stdout), &st); err != nil {
		t.Fatalf("cluster status -o json: %v\n%s", err, res)
	}
	if len(st.Members) != 1 || st.Members[0].ID != c.Member(0).ID || st.Members[0].Revision != released || st.LeaderID != c.Member(0).ID {
		t.Errorf("cluster status: got leader %q and members %+v; want one member %s, leading, at revision %d",
			st.LeaderID, st.Members, c.Member(0).ID, released)
	}

	// Without a token, and with a wrong one.
	res = runCLI(t, nil, "device", "get", device, "--server", server)
	if res.code == 0 || !strings.Contains(strings.ToLower(res.stderr), "token") {
		t.Errorf("device get without a token: want a non-zero exit and an error about the token, got %s", res)
	}
	res = runCLI(t, []string{"VIGIL_TOKEN=not-a-token-vigil-knows-of-0123456789"}, "device", "get", device, "--server", server)
	if res.code == 0 || !strings.Contains(strings.ToLower(res.stderr), "token") {
		t.Errorf("device get with a wrong token: want a non-zero exit and an error about the token, got %s", res)
	}
}

func TestDevCommand(t *testing.T) {
	apiAddr, raftAddr, authzAddr, xdsAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	tmp := t.TempDir() // the dev member's temporary data dir goes here
	logPath := filepath.Join(t.TempDir(), "dev.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(vigilBin, "dev", "--api-addr", apiAddr, "--raft-addr", raftAddr, "--authz-addr", authzAddr, "--xds-addr", xdsAddr)
	cmd.Env = harness.Env("TMPDIR=" + tmp)
	cmd.Stderr = logFile
	// A pipe of our own rather than cmd.StdoutPipe, which Wait (running in
	// the background) would close under the reader.
	stdout, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	cmd.Stdout = w
	p, err := harness.StartProcess(cmd)
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })

	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var banner []string
	timeout := time.After(time.Minute)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("vigil dev closed its output before the banner was complete (%v); output:\n%s\nlog:\n%s",
					p.ExitError(), strings.Join(banner, "\n"), readFile(logPath))
			}
			banner = append(banner, l)
			if strings.Contains(l, "Press Ctrl-C to stop") {
				break wait
			}
		case <-timeout:
			t.Fatalf("waited a minute for vigil dev's banner; output so far:\n%s\nlog:\n%s", strings.Join(banner, "\n"), readFile(logPath))
		}
	}
	go func() {
		for range lines { // keep draining stdout
		}
	}()

	var tokenFile, dataDir string
	for _, l := range banner {
		l = strings.TrimSpace(l)
		if v, ok := strings.CutPrefix(l, "export VIGIL_TOKEN_FILE="); ok {
			tokenFile = v
		}
		if v, ok := strings.CutPrefix(l, "Data dir"); ok {
			dataDir, _, _ = strings.Cut(strings.TrimSpace(v), " ")
		}
	}
	text := strings.Join(banner, "\n")
	if tokenFile == "" || dataDir == "" {
		t.Fatalf("vigil dev's banner names no token file or no data dir:\n%s", text)
	}
	if !strings.Contains(text, "http://"+apiAddr) {
		t.Errorf("vigil dev's banner does not show the API at http://%s:\n%s", apiAddr, text)
	}
	// The example's devices attested through the real path, and decisions
	// follow: an allowed flow, a denied non-flow, and the device whose
	// firmware is not a reference value denied for that reason.
	for _, want := range []string{"59 devices enrolled simulated TPMs and passed", "FAILED slc-s1-009",
		"ALLOW POST telemetry.city.example/api/v1/telemetry", "DENY  GET video.city.example/upload/",
		"is not a reference value of class streetlight"} {
		if !strings.Contains(text, want) {
			t.Errorf("vigil dev's output lacks %q:\n%s", want, text)
		}
	}
	if !strings.HasPrefix(dataDir, tmp) {
		t.Errorf("vigil dev's data dir %s is not under its TMPDIR %s", dataDir, tmp)
	}
	data, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatalf("token file from the banner: %v", err)
	}
	token, err := api.FirstToken(data)
	if err != nil {
		t.Fatalf("token file %s: %v", tokenFile, err)
	}
	top, err := api.NewClient(apiAddr, token).Topology(ctxFor(t, 10*time.Second))
	if err != nil {
		t.Fatalf("GET /v1/topology from vigil dev: %v", err)
	}
	if n := len(top.Document.Devices); n < 50 || top.Document.TrustDomain != "city.example" {
		t.Errorf("vigil dev's topology: %d devices in trust domain %q; want the smart-city example (>= 50 devices, city.example)",
			n, top.Document.TrustDomain)
	}

	code, err := p.Stop(15 * time.Second)
	if err != nil {
		t.Fatalf("vigil dev on SIGTERM: %v\nlog:\n%s", err, readFile(logPath))
	}
	if code != 0 {
		t.Errorf("vigil dev on SIGTERM: exit status %d, want 0\nlog:\n%s", code, readFile(logPath))
	}
	if _, err := os.Stat(dataDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("vigil dev's temporary data dir %s is still there after it stopped (stat: %v)", dataDir, err)
	}
}

func TestServeConfigFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	decoyAPI, apiAddr, raftAddr, authzAddr, xdsAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	config := filepath.Join(dir, "vigil.yaml")
	writeFile(t, config, fmt.Sprintf("node-id: from-config\ndata-dir: %s\napi-addr: %s\nauthz-addr: %s\nxds-addr: %s\nlog-level: warn\n", dataDir, decoyAPI, authzAddr, xdsAddr))
	// The environment sets what the file does not (raft-addr), and wins
	// over the file where both do (api-addr).
	env := harness.Env("VIGIL_API_ADDR="+apiAddr, "VIGIL_RAFT_ADDR="+raftAddr)

	logPath := filepath.Join(dir, "serve.log")
	p := startLogged(t, env, logPath, "serve", "--config", config)
	cl := api.NewClient(apiAddr, "")
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cl.Health(ctxFor(t, time.Second))
		if err == nil {
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("vigil serve --config: no /healthz at %s (from VIGIL_API_ADDR) within 30s: %v\nlog:\n%s", apiAddr, err, readFile(logPath))
		}
		time.Sleep(50 * time.Millisecond)
	}
	data, err := os.ReadFile(filepath.Join(dataDir, "api-tokens"))
	if err != nil {
		t.Fatalf("the data dir from the config file holds no token file: %v", err)
	}
	token, err := api.FirstToken(data)
	if err != nil {
		t.Fatal(err)
	}
	cl = api.NewClient(apiAddr, token)
	var st *api.ClusterStatus
	for {
		st, err = cl.ClusterStatus(ctxFor(t, 5*time.Second))
		if err == nil && len(st.Members) == 1 && st.Members[0].APIAddr != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster status: want one registered member within 30s; got %+v, %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	m := st.Members[0]
	if st.AnsweredBy != "from-config" || m.ID != "from-config" || m.RaftAddr != raftAddr || m.APIAddr != apiAddr {
		t.Errorf("cluster status: answered by %q, member %q at raft %s, API %s; want from-config, from-config, %s, %s",
			st.AnsweredBy, m.ID, m.RaftAddr, m.APIAddr, raftAddr, apiAddr)
	}
	if conn, err := net.DialTimeout("tcp", decoyAPI, time.Second); err == nil {
		conn.Close()
		t.Errorf("something listens on %s, the config file's api-addr, which VIGIL_API_ADDR should have overridden", decoyAPI)
	}
	if code, err := p.Stop(15 * time.Second); err != nil || code != 0 {
		t.Errorf("vigil serve on SIGTERM: exit %d, %v; want 0\nlog:\n%s", code, err, readFile(logPath))
	}

	// A key that names no flag is refused, by name.
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, fmt.Sprintf("node-id: n1\ndata-dir: %s\napi-addr: %s\nraft-addr: %s\ncolour: blue\n",
		filepath.Join(dir, "bad-data"), freeAddr(t), freeAddr(t)))
	res := runCLI(t, nil, "serve", "--config", bad)
	if res.code == 0 || !strings.Contains(res.stderr, `"colour"`) {
		t.Errorf("vigil serve with an unknown config key: want a non-zero exit naming \"colour\", got %s", res)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := harness.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return string(data)
}

// startLogged starts the binary with its output in logPath; it is killed
// when the test ends.
func startLogged(t *testing.T, env []string, logPath string, args ...string) *harness.Process {
	t.Helper()
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	cmd := exec.Command(vigilBin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = log, log
	p, err := harness.StartProcess(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })
	return p
}
