package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a child process whose exit is collected in the background, so
// that it can be signalled and awaited with a bound. It only ever signals
// the process it started, through its own handle (by PID).
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the result of cmd.Wait, set before done is closed
}

// StartProcess starts cmd. On Linux the child is also killed if the test
// process dies first, so that no member outlives an aborted run.
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID is the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process unless it has already exited.
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %v to pid %d: %w", sig, p.PID(), err)
	}
	return nil
}

// Wait waits up to timeout for the process to exit and returns its exit
// code (-1 if a signal ended it). It is an error if the process is still
// running when the time is up.
func (p *Process) Wait(timeout time.Duration) (int, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), nil
	case <-t.C:
		return 0, fmt.Errorf("pid %d (%s) still running after %v", p.PID(), p.cmd.Path, timeout)
	}
}

// ExitError is what cmd.Wait returned; valid once Done is closed.
func (p *Process) ExitError() error {
	<-p.done
	return p.err
}

// Kill sends SIGKILL and waits (bounded) for the process to be gone.
func (p *Process) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	_, err := p.Wait(10 * time.Second)
	return err
}

// Stop sends SIGTERM and waits up to timeout for the process to exit; if it
// does not, it is killed and Stop reports that. It returns the exit code.
func (p *Process) Stop(timeout time.Duration) (int, error) {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return 0, err
	}
	code, err := p.Wait(timeout)
	if err != nil {
		p.Kill()
		return code, fmt.Errorf("after SIGTERM: %w; killed it", err)
	}
	return code, nil
}

// Env returns the test process's environment without any VIGIL_* variable,
// plus extra ("KEY=value"), so that children see only the settings a test
// gives them.
func Env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VIGIL_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

var ports struct {
	mu    sync.Mutex
	given map[int]bool
}

// FreeAddr returns "127.0.0.1:<port>" for a TCP port that was free a moment
// ago and that this process has not handed out before.
func FreeAddr() (string, error) {
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if ports.given == nil {
		ports.given = make(map[int]bool)
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("find a free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !ports.given[port] {
			ports.given[port] = true
			return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
		}
	}
	return "", errors.New("find a free port: the kernel keeps offering ports already handed out")
}

// listenLoopback listens on a new 127.0.0.1 port that FreeAddr has not
// handed out (a member may not have bound it yet) and never will.
func listenLoopback() (net.Listener, error) {
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if ports.given == nil {
		ports.given = make(map[int]bool)
	}
	var held []net.Listener // refused ones, kept open so the kernel offers others
	defer func() {
		for _, ln := range held {
			ln.Close()
		}
	}()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		if !ports.given[port] {
			ports.given[port] = true
			return ln, nil
		}
		held = append(held, ln)
	}
	return nil, errors.New("the kernel keeps offering ports already handed out")
}
