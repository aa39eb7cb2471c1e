// Package spiretest runs the real SPIRE (spire-server and spire-agent, as
// scripts/spire-build.sh builds and caches them) for tests and load tools:
// a server on 127.0.0.1 and a unix API socket, and agents that join it with
// a join token, each configured from the templates in tools/spire/testdata.
//
// With $VIGIL_SPIRE_POSTGRES set to the socket directory of a running
// PostgreSQL server, each spire-server gets a new database there instead of
// its sqlite3 file.
//
// It only ever signals the processes it started, by their PID, every wait
// is bounded, and on Linux a process it started dies with the test binary.
// It imports nothing else of this module (the spire package's own tests use
// it).
package spiretest

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buildTimeout bounds scripts/spire-build.sh; a cold build takes about 10
// minutes on 2 cores.
const buildTimeout = 20 * time.Minute

// RepoRoot is the repository this source file belongs to.
func RepoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("spiretest: cannot locate the repository")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "scripts", "spire-build.sh")); err != nil {
		return "", fmt.Errorf("spiretest: %w", err)
	}
	return root, nil
}

var binaries struct {
	once sync.Once
	dir  string
	err  error
}

// Binaries returns the directory holding spire-server and spire-agent:
// $VIGIL_SPIRE_BIN if set, else what scripts/spire-build.sh prints, which
// builds them once into a cache when they are missing.
func Binaries() (string, error) {
	binaries.once.Do(func() {
		if dir := os.Getenv("VIGIL_SPIRE_BIN"); dir != "" {
			binaries.dir = dir
			return
		}
		root, err := RepoRoot()
		if err != nil {
			binaries.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "spire-build.sh"))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			binaries.err = fmt.Errorf("scripts/spire-build.sh: %w\n%s", err, stderr.String())
			return
		}
		binaries.dir = strings.TrimSpace(stdout.String())
	})
	if binaries.err != nil {
		return "", binaries.err
	}
	for _, b := range []string{"spire-server", "spire-agent"} {
		if _, err := os.Stat(filepath.Join(binaries.dir, b)); err != nil {
			return "", fmt.Errorf("spiretest: %w", err)
		}
	}
	return binaries.dir, nil
}

// Process is a SPIRE process this package started.
type Process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	Log  string // path of its combined output
}

func start(name, log string, bin string, args ...string) (*Process, error) {
	out, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = deathSignal()
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{name: name, cmd: cmd, done: make(chan struct{}), Log: log}
	go func() {
		cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

// PID is the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Stop sends SIGTERM, waits up to 10 s, then kills the process.
func (p *Process) Stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	p.cmd.Process.Kill()
	select {
	case <-p.done:
		return fmt.Errorf("%s (pid %d) ignored SIGTERM for 10s and was killed", p.name, p.PID())
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not die", p.name, p.PID())
	}
}

// Tail is the end of the process's log, for a failing test's output.
func (p *Process) Tail(n int) string {
	data, _ := os.ReadFile(p.Log)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Server is a running spire-server.
type Server struct {
	*Process
	Bin         string
	Dir         string
	TrustDomain string
	// Socket is the server API's unix socket; Port its agent-facing TCP
	// port on 127.0.0.1.
	Socket string
	Port   int
	// Bundle is a PEM file with the server's CA, for agents.
	Bundle string

	dropDB func()
}

// StartServer runs spire-server for trustDomain with its data and sockets
// in a new directory under dir (keep dir short: unix socket paths are
// limited to about 100 bytes), and waits up to 60 s until it answers.
func StartServer(dir, trustDomain string) (*Server, error) {
	return StartServerWith(dir, trustDomain, "server.conf", nil)
}

// StartServerWith is StartServer from another template of
// tools/spire/testdata, with values for its placeholders besides
// TRUST_DOMAIN, BIND_PORT, SOCKET_PATH and DATA_DIR.
func StartServerWith(dir, trustDomain, template string, values map[string]string) (*Server, error) {
	bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	dir, err = os.MkdirTemp(dir, "srv-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Bin: bin, Dir: dir, TrustDomain: trustDomain, Socket: filepath.Join(dir, "api.sock"), Port: port,
		Bundle: filepath.Join(dir, "bundle.pem")}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	if sock := values["SOCKET_PATH"]; sock != "" {
		s.Socket = sock // chosen before the server starts, for the members' --spire-socket
	}
	vals := map[string]string{"TRUST_DOMAIN": trustDomain, "BIND_PORT": fmt.Sprint(port), "SOCKET_PATH": s.Socket, "DATA_DIR": data}
	maps.Copy(vals, values)
	conf, err := render(template, vals)
	if err != nil {
		return nil, err
	}
	if pg := os.Getenv("VIGIL_SPIRE_POSTGRES"); pg != "" {
		if conf, err = s.usePostgres(conf, pg); err != nil {
			return nil, err
		}
	}
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		return nil, err
	}
	if s.Process, err = start("spire-server", filepath.Join(dir, "server.log"), filepath.Join(bin, "spire-server"), "run", "-config", confPath); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	server := filepath.Join(bin, "spire-server")
	for {
		ca, err := exec.CommandContext(ctx, server, "bundle", "show", "-socketPath", s.Socket).Output()
		if err == nil && len(ca) > 0 {
			if err := os.WriteFile(s.Bundle, ca, 0o600); err != nil {
				s.Stop()
				return nil, err
			}
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("spire-server exited at start:\n%s", s.Tail(20))
		case <-ctx.Done():
			s.Stop()
			return nil, fmt.Errorf("spire-server did not answer within 60s: %v\n%s", err, s.Tail(20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close stops the server and removes its directory (and its database).
func (s *Server) Close() error {
	err := s.Stop()
	os.RemoveAll(s.Dir)
	if s.dropDB != nil {
		s.dropDB()
	}
	return err
}

// usePostgres replaces the template's sqlite3 datastore with a new
// database on the PostgreSQL server whose unix socket directory is pgDir
// (user postgres, trust authentication), as $VIGIL_SPIRE_POSTGRES asks:
// SPIRE's production datastore, for benchmarks.
func (s *Server) usePostgres(conf []byte, pgDir string) ([]byte, error) {
	db := "spire_" + strings.TrimPrefix(filepath.Base(s.Dir), "srv-")
	if out, err := exec.Command("createdb", "-h", pgDir, "-U", "postgres", db).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("spiretest: createdb %s: %v: %s", db, err, out)
	}
	s.dropDB = func() { exec.Command("dropdb", "-h", pgDir, "-U", "postgres", db).Run() }
	var out []byte
	for line := range bytes.Lines(conf) {
		switch t := bytes.TrimSpace(line); {
		case bytes.HasPrefix(t, []byte("database_type")):
			line = []byte(`            database_type = "postgres"` + "\n")
		case bytes.HasPrefix(t, []byte("connection_string")):
			line = fmt.Appendf(nil, "            connection_string = \"dbname=%s host=%s user=postgres sslmode=disable\"\n", db, pgDir)
		}
		out = append(out, line...)
	}
	return out, nil
}

// Agent is a running spire-agent.
type Agent struct {
	*Process
	Dir string
	// WorkloadSocket serves the Workload API (and Envoy SDS);
	// AdminSocket the Delegated Identity API.
	WorkloadSocket, AdminSocket string

	bin  string
	args []string
}

// StartAgent runs spire-agent against s with a join token, with its data
// and sockets in a new directory under dir; delegate is the SPIFFE ID
// allowed to use the Delegated Identity API. It waits up to 60 s until the
// agent has attested (its Workload API answers a health check).
func (s *Server) StartAgent(dir, token, delegate string) (*Agent, error) {
	return s.StartAgentWith(dir, "agent.conf", map[string]string{"DELEGATE_ID": cmp.Or(delegate, "spiffe://"+s.TrustDomain+"/none")},
		"-joinToken", token)
}

// StartAgentWith is StartAgent from another template of
// tools/spire/testdata, with values for its placeholders besides those
// StartAgent fills, and args after `run -config FILE`. An agent that exits
// before it is healthy (refused at attestation) is an error with the tail
// of its log; its directory is kept for a Restart.
func (s *Server) StartAgentWith(dir, template string, values map[string]string, args ...string) (*Agent, error) {
	a, err := s.NewAgent(dir, template, values, args...)
	if err != nil {
		return nil, err
	}
	if err := a.start(60 * time.Second); err != nil {
		return a, err
	}
	return a, nil
}

// NewAgent writes an agent's configuration and directories without
// starting it; Restart starts it.
func (s *Server) NewAgent(dir, template string, values map[string]string, args ...string) (*Agent, error) {
	dir, err := os.MkdirTemp(dir, "agt-")
	if err != nil {
		return nil, err
	}
	a := &Agent{Dir: dir, WorkloadSocket: filepath.Join(dir, "workload", "api.sock"), AdminSocket: filepath.Join(dir, "admin", "admin.sock")}
	data := filepath.Join(dir, "data")
	for _, d := range []string{data, filepath.Dir(a.WorkloadSocket), filepath.Dir(a.AdminSocket)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	vals := map[string]string{"TRUST_DOMAIN": s.TrustDomain, "SERVER_PORT": fmt.Sprint(s.Port),
		"TRUST_BUNDLE": s.Bundle, "DATA_DIR": data, "SOCKET_PATH": a.WorkloadSocket, "ADMIN_SOCKET_PATH": a.AdminSocket,
		"DELEGATE_ID": "spiffe://" + s.TrustDomain + "/none"}
	maps.Copy(vals, values)
	conf, err := render(template, vals)
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		return nil, err
	}
	a.bin = filepath.Join(s.Bin, "spire-agent")
	a.args = append([]string{"run", "-config", confPath}, args...)
	return a, nil
}

// Restart stops the agent (if it runs) and runs it again on the same data
// dir, the way a rebooted gateway would, and waits up to 20 s until it is
// healthy.
func (a *Agent) Restart() error {
	if a.Process != nil {
		if err := a.Stop(); err != nil {
			return err
		}
	}
	return a.start(20 * time.Second)
}

func (a *Agent) start(timeout time.Duration) error {
	var err error
	if a.Process, err = start("spire-agent", filepath.Join(a.Dir, "agent.log"), a.bin, a.args...); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := exec.CommandContext(ctx, a.bin, "healthcheck", "-socketPath", a.WorkloadSocket).Run()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-a.done:
			return fmt.Errorf("spire-agent exited at start:\n%s", a.Tail(20))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.Stop()
			return fmt.Errorf("spire-agent not healthy within %v:\n%s", timeout, a.Tail(20))
		}
	}
}

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

// render fills a template of tools/spire/testdata.
func render(name string, values map[string]string) ([]byte, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(root, "tools", "spire", "testdata", name))
	if err != nil {
		return nil, err
	}
	for k, v := range values {
		data = bytes.ReplaceAll(data, []byte("@"+k+"@"), []byte(v))
	}
	if i := bytes.IndexByte(stripComments(data), '@'); i >= 0 {
		return nil, fmt.Errorf("spiretest: %s: a placeholder is left unfilled", name)
	}
	return data, nil
}

func stripComments(data []byte) []byte {
	var out []byte
	for line := range bytes.Lines(data) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line...)
		}
	}
	return out
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
