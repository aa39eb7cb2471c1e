package spiretest

import "syscall"

// deathSignal makes the kernel kill a child when the test process exits,
// so that an aborted run leaves no SPIRE process behind.
func deathSignal() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
