//go:build !linux

package spiretest

import "syscall"

func deathSignal() *syscall.SysProcAttr { return nil }
