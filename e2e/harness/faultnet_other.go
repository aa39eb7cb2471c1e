//go:build !linux

package harness

import (
	"fmt"
	"net"
	"os"
	"runtime"
)

// PIDIdentifier names every source ClientEndpoint: finding the process
// behind a socket needs Linux's /proc.
func PIDIdentifier(func() map[string]int) func(net.Addr) string {
	return func(net.Addr) string { return ClientEndpoint }
}

// pauseSignals: pausing members is supported on Linux only.
func pauseSignals() (stop, cont os.Signal, err error) {
	return nil, nil, fmt.Errorf("pausing a member is not supported on %s", runtime.GOOS)
}
