package e2e_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/e2e/harness"
)

// TestEnvoyAcceptsGatewayConfig runs a real Envoy, if one is on PATH, with
// the bootstrap `vigil envoy bootstrap` prints, against a Vigil member, and
// checks that Envoy ACKs every resource type it was sent. Envoy cannot be
// installed on the machines this project is built on, so there the test
// skips and says so; the translator's resources are still validated by
// go-control-plane's Validate in every unit test.
func TestEnvoyAcceptsGatewayConfig(t *testing.T) {
	envoy, err := exec.LookPath("envoy")
	if err != nil {
		t.Skip("no envoy binary on PATH (install Envoy to run this test; every resource is still validated by the unit tests)")
	}
	c := startCluster(t, 1)
	_, doc := smartCity(t)
	if _, err := c.Client(0).ApplyTopology(ctxFor(t, time.Minute), doc); err != nil {
		t.Fatal(err)
	}
	env := []string{"VIGIL_TOKEN_FILE=" + c.TokenFile(), "VIGIL_SERVER=" + c.Member(0).APIAddr}
	boot := mustCLI(t, env, "envoy", "bootstrap", "--node", "gw-north-1", "--xds-server", c.Member(0).XDSAddr,
		"--sds-socket", filepath.Join(t.TempDir(), "spire-agent.sock"))
	path := filepath.Join(t.TempDir(), "envoy.yaml")
	if err := os.WriteFile(path, []byte(boot.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	// The admin interface on an ephemeral loopback port, so that runs do
	// not collide.
	admin := `admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}`
	validate := exec.Command(envoy, "--mode", "validate", "-c", path, "--config-yaml", admin)
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("envoy --mode validate rejects the bootstrap: %v\n%s", err, out)
	}
	cmd := exec.Command(envoy, "-c", path, "--config-yaml", admin, "--base-id-path", filepath.Join(t.TempDir(), "base-id"), "--use-dynamic-base-id", "-l", "warning")
	logf, err := os.Create(filepath.Join(t.TempDir(), "envoy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := harness.StartProcess(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Signal(os.Interrupt)
		p.Wait(10 * time.Second)
		logf.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		st, err := c.Client(0).Proxies(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok, why := allAcked(st, "gw-north-1"); ok {
			return
		} else if ctx.Err() != nil {
			data, _ := os.ReadFile(logf.Name())
			t.Fatalf("envoy did not ACK every type within a minute: %s\nenvoy log:\n%s", why, tailBytes(data, 4096))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// allAcked reports whether node has ACKed the last version sent of every
// type, or why not.
func allAcked(st map[string]any, node string) (bool, string) {
	var out struct {
		Proxies []struct {
			NodeID string
			Types  []struct {
				TypeURL, Sent, Acked string
				Nack                 *struct{ Message string }
			}
		}
	}
	data, _ := json.Marshal(st)
	if err := json.Unmarshal(data, &out); err != nil {
		return false, err.Error()
	}
	for _, p := range out.Proxies {
		if p.NodeID != node {
			continue
		}
		if len(p.Types) < 4 {
			return false, "fewer than four types requested yet"
		}
		var why []string
		for _, ty := range p.Types {
			if ty.Nack != nil {
				why = append(why, ty.TypeURL+" NACKed: "+ty.Nack.Message)
			} else if ty.Sent == "" || ty.Sent != ty.Acked {
				why = append(why, ty.TypeURL+" sent "+ty.Sent+", acked "+ty.Acked)
			}
		}
		return len(why) == 0, strings.Join(why, "; ")
	}
	return false, "not connected"
}
