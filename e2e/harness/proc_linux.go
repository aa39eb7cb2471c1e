package harness

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill the child when the test process
// exits, so that an aborted run (a test binary timing out) leaves no member
// behind.
func setDeathSignal(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
