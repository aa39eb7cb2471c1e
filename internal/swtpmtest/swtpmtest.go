// Package swtpmtest starts swtpm for tests and runs tpm2-tools against it;
// test support only.
//
// swtpm (libtpms) is a real TPM 2.0 implementation, independent of Vigil's
// own simulator. Start runs one on a free pair of loopback ports (data P,
// control P+1) with its state in a temporary directory and kills it, by its
// PID, when the test ends; Tool runs a tpm2-tools command against it. Both
// come from Debian packages (swtpm, tpm2-tools; .ci/run installs them), and
// Require skips a test on a machine without them.
package swtpmtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ToolTimeout bounds one tpm2-tools command.
const ToolTimeout = time.Minute

// attempts is how many port pairs Start tries before it fails the test.
const attempts = 5

// listenWait is how long Start waits for one swtpm to listen.
const listenWait = 10 * time.Second

// Require skips the test when one of tools is not on PATH.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not on PATH: install the Debian packages swtpm and tpm2-tools (.ci/run does)", tool)
		}
	}
}

// TPM is a running swtpm and the directory tpm2-tools work in.
type TPM struct {
	Dir  string // tpm2-tools' working directory; the state is in Dir/state
	Port int    // the data port; the control port is Port+1
	PID  int    // swtpm's process
}

// TCTI is how tpm2-tools reach the TPM (TPM2TOOLS_TCTI), and what
// `vigil attest tpm --tpm` takes.
func (p *TPM) TCTI() string { return fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", p.Port) }

type config struct {
	dir   string
	flags string
}

// Option changes how Start runs swtpm.
type Option func(*config)

// Flags sets swtpm's --flags (the default is "startup-clear"); "" starts
// swtpm without --flags, so that it needs CMD_INIT and TPM2_Startup.
func Flags(flags string) Option { return func(c *config) { c.flags = flags } }

// Dir makes Start work in dir instead of a new temporary directory; the
// state is dir/state, made when missing and kept when there (as
// swtpm_setup leaves it).
func Dir(dir string) Option { return func(c *config) { c.dir = dir } }

// Start starts swtpm on a free loopback port pair, trying other ports a few
// times when one is taken meanwhile. It skips the test without swtpm; the
// swtpm is killed by its PID when the test ends.
func Start(t testing.TB, opts ...Option) *TPM {
	t.Helper()
	Require(t, "swtpm")
	c := config{flags: "startup-clear"}
	for _, o := range opts {
		o(&c)
	}
	if c.dir == "" {
		c.dir = t.TempDir()
	}
	state := filepath.Join(c.dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	var last string
	for attempt := 1; attempt <= attempts; attempt++ {
		port := freePortPair(t)
		pid, out, ok := try(t, state, port, c.flags)
		if ok {
			return &TPM{Dir: c.dir, Port: port, PID: pid}
		}
		last = out
		t.Logf("swtpm on port %d did not start (attempt %d): %s", port, attempt, out)
	}
	t.Fatalf("swtpm did not start on a loopback port in %d attempts: %s", attempts, last)
	return nil
}

// try starts swtpm on port and waits until it listens; it reports false,
// with swtpm's output, when swtpm exited (the port was taken meanwhile) or
// did not listen in time.
func try(t testing.TB, state string, port int, flags string) (int, string, bool) {
	t.Helper()
	args := []string{"socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--tpmstate", "dir=" + state}
	if flags != "" {
		args = append(args, "--flags", flags)
	}
	var out bytes.Buffer // read only once swtpm has exited
	cmd := exec.Command("swtpm", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting swtpm: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		cmd.Process.Kill() // this swtpm, by its PID
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("swtpm (pid %d) did not exit within 10s of SIGKILL", cmd.Process.Pid)
		}
	}
	for deadline := time.Now().Add(listenWait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			return 0, fmt.Sprintf("exited (%v): %s", err, out.String()), false
		default:
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			c.Close()
			t.Cleanup(stop)
			return cmd.Process.Pid, "", true
		}
	}
	stop()
	return 0, fmt.Sprintf("not listening after %v: %s", listenWait, out.String()), false
}

// freePortPair finds a free loopback port p with p+1 free too.
func freePortPair(t testing.TB) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatal("no two consecutive free loopback ports")
	return 0
}

// Tool runs a tpm2-tools command against the TPM, in Dir, bounded by
// ToolTimeout, and returns its output; it fails the test with the output
// when the command fails.
func (p *TPM) Tool(t testing.TB, args ...string) string {
	t.Helper()
	out, err := p.Run(args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// Run is Tool for a command that may fail: it returns the command's output
// and an error naming the command.
func (p *TPM) Run(args ...string) (string, error) {
	return run(p.Dir, []string{"TPM2TOOLS_TCTI=" + p.TCTI()}, args)
}

// RunIn runs a tpm2-tools command that needs no TPM (tpm2_checkquote,
// tpm2_eventlog) in dir, bounded by ToolTimeout. When the command did not
// finish in time, the error wraps context.DeadlineExceeded.
func RunIn(dir string, args ...string) (string, error) {
	return run(dir, nil, args)
}

func run(dir string, env, args []string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s did not finish within %v: %w", strings.Join(args, " "), ToolTimeout, ctx.Err())
	}
	if err != nil {
		return string(out), fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}
