package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/spire/spiretest"
	"github.com/vigil-iot/vigil/topology"
)

// vigilBin is the binary under test, built once by TestMain.
var vigilBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	dir, err := os.MkdirTemp("", "vigil-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	if vigilBin, err = harness.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the vigil binary:", err)
		return 1
	}
	if testing.Verbose() {
		fmt.Printf("e2e: built %s in %v\n", vigilBin, time.Since(start).Round(time.Millisecond))
	}
	return m.Run()
}

// startCluster starts n members; they are killed when the test ends.
func startCluster(t *testing.T, n int) *harness.Cluster {
	t.Helper()
	return harness.Start(t, harness.Options{Binary: vigilBin, Members: n})
}

// ctxFor is a context that ends after d or with the test.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// smartCity is examples/smart-city/topology.yaml, read from the repository.
func smartCity(t *testing.T) (path string, data []byte) {
	t.Helper()
	path, err := harness.ExamplePath("smart-city/topology.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if data, err = os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	return path, data
}

const smartCityDevices = 60

// cliResult is how one run of the binary ended.
type cliResult struct {
	code           int
	stdout, stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// runCLI runs the vigil binary with args (bounded) in an environment that
// holds no VIGIL_* variable but those in env.
func runCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	return runCLIFor(t, time.Minute, env, args...)
}

// runCLIFor is runCLI with another bound than a minute.
func runCLIFor(t *testing.T, bound time.Duration, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := exec.CommandContext(ctx, vigilBin, args...)
	cmd.Env = harness.Env(env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("vigil %s did not finish within %v\n%s", strings.Join(args, " "), bound, res)
	case errors.As(err, &exit):
		res.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("run vigil %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// mustCLI runs the binary and fails the test unless it exits 0.
func mustCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	res := runCLI(t, env, args...)
	if res.code != 0 {
		t.Fatalf("vigil %s: want exit 0, got %s", strings.Join(args, " "), res)
	}
	return res
}

// aFollower returns a running member that does not lead.
func aFollower(t *testing.T, c *harness.Cluster) int {
	t.Helper()
	fs, err := c.Followers()
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) == 0 {
		t.Fatal("the cluster has no running follower")
	}
	return fs[0]
}

// checkDocument asserts that each member has applied the document of
// docRev (holding devices devices) and reached at least revision atLeast.
func checkDocument(t *testing.T, c *harness.Cluster, members []int, docRev, atLeast topology.Revision, devices int) {
	t.Helper()
	for _, i := range members {
		cl := c.Client(i)
		cl.MinRevision = atLeast
		top, err := cl.Topology(ctxFor(t, 30*time.Second))
		if err != nil {
			t.Errorf("%s: GET /v1/topology with min_revision %d: %v", c.Member(i).ID, atLeast, err)
			continue
		}
		if top.Revision < atLeast || top.DocumentRevision != docRev || len(top.Document.Devices) != devices {
			t.Errorf("%s: revision %d, document revision %d, %d devices; want revision >= %d, document revision %d, %d devices",
				c.Member(i).ID, top.Revision, top.DocumentRevision, len(top.Document.Devices), atLeast, docRev, devices)
		}
	}
}

// asAPIError unwraps the typed client's error.
func asAPIError(t *testing.T, err error) *api.Error {
	t.Helper()
	var apiErr *api.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("want an *api.Error, got %T: %v", err, err)
	}
	return apiErr
}

// spireServer runs the real spire-server for city.example, or skips the
// test when SPIRE is not built here (make spire builds it).
func spireServer(t testing.TB) *spiretest.Server {
	t.Helper()
	srv, err := harness.StartSPIREServer(t, "city.example")
	if errors.Is(err, harness.ErrNoSPIRE) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return srv
}
