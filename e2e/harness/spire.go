package harness

import (
	"errors"
	"fmt"
	"os"

	"github.com/vigil-iot/vigil/spire/spiretest"
)

// ErrNoSPIRE wraps the reason the real SPIRE is not available here; tests
// skip on it.
var ErrNoSPIRE = errors.New("real SPIRE is not available")

// StartSPIREServer runs the real spire-server (the version pinned in
// tools/spire, built once into a cache by scripts/spire-build.sh) for
// trustDomain on 127.0.0.1 and a unix socket under /tmp, and stops it
// when the test ends. Members reach it with --spire-socket server.Socket.
func StartSPIREServer(t TB, trustDomain string) (*spiretest.Server, error) {
	t.Helper()
	if _, err := spiretest.Binaries(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoSPIRE, err)
	}
	srv, err := spiretest.StartServer("", trustDomain)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spire-server log (tail):\n%s", srv.Tail(40))
		}
		srv.Close()
	})
	return srv, nil
}

// StartSPIREAgent runs a spire-agent that joins srv with token (as a
// gateway's agent would), allowing delegate to use its Delegated Identity
// API, and stops it when the test ends.
func StartSPIREAgent(t TB, srv *spiretest.Server, token, delegate string) (*spiretest.Agent, error) {
	t.Helper()
	a, err := srv.StartAgent("", token, delegate)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spire-agent log (tail):\n%s", a.Tail(40))
		}
		a.Stop()
		os.RemoveAll(a.Dir)
	})
	return a, nil
}
